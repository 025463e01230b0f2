// CPU kernel of multistep_update: one step of a multistep solver (DPM-Solver++, UniPC) as one
// pass over x, model_out and the K history buffers, writing x_next and x0. The step's
// coefficients are one float64 row of the table, read once on the host. With classifier-free
// guidance model_out is [2B, ...] = [2N] flat: element e reads m[e] (conditional) and m[N + e].
#include <torch/library.h>

#include <tuple>

#include "../op_checks.h"
#include "cpu_common.h"
#include "simd_path.h"

namespace ddpm_fast {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> multistep_update(const at::Tensor& x_in, const at::Tensor& m_in,
                                                    const at::Tensor& h_in, const at::Tensor& table_in,
                                                    const at::Tensor& step,
                                                    c10::optional<double> guidance_scale) {
  const char* op = "multistep_update";
  const MultistepArgs a = check_multistep_update_args(op, x_in, m_in, h_in, table_in, step, guidance_scale);
  const Guide g = guide_of(guidance_scale);
  const at::Tensor x = x_in.contiguous(), m = m_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor x0 = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t s = a.step.scalar_type() == at::kLong ? a.step.data_ptr<int64_t>()[0]
                                                      : static_cast<int64_t>(a.step.data_ptr<int32_t>()[0]);
  const double* row = a.table.data_ptr<double>() + s * MS_WIDTH;
  const float ca = static_cast<float>(row[MS_X0_X]), cb = static_cast<float>(row[MS_X0_M]);
  const float cx = static_cast<float>(row[MS_X]), c0 = static_cast<float>(row[MS_X0]);
  const int64_t K = h.size(0), N = x.numel();
  float ch[MS_MAX_HISTORY] = {0.0f, 0.0f, 0.0f};
  for (int64_t k = 0; k < K; ++k) ch[k] = static_cast<float>(row[MS_HISTORY + k]);
  const int xdt = dtype_code(x), mdt = dtype_code(m), hdt = dtype_code(h);
  // one flat problem: the coefficients are the same for every sample
  for_each_block(1, N, [&](int64_t, int64_t e0, int64_t n) {
    alignas(64) float xb[kBlock], mb[kBlock], hb[kBlock];
    run_on_simd_path([&]() DDPM_FAST_INLINE_LAMBDA {  // the block's loads, math and stores: simd_path.h
      load_block(x.data_ptr(), xdt, e0, n, xb);
      // the flat problem is one "sample" of N elements: B = 1 puts the unconditional half at N + e0
      load_model_block(m.data_ptr(), mdt, 1, N, 0, e0, n, g.guided, g.w, mb);
      for (int64_t i = 0; i < n; ++i) {
        const float p = ca * xb[i] + cb * mb[i];
        mb[i] = p;
        xb[i] = cx * xb[i] + c0 * p;
      }
      for (int64_t k = 0; k < K; ++k) {
        load_block(h.data_ptr(), hdt, k * N + e0, n, hb);
        const float c = ch[k];
        for (int64_t i = 0; i < n; ++i) xb[i] += c * hb[i];
      }
      store_block(out.data_ptr(), xdt, e0, n, xb);
      store_block(x0.data_ptr(), xdt, e0, n, mb);
    });
  });
  return {out, x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) { m.impl("multistep_update", &multistep_update); }

}  // namespace cpu
}  // namespace ddpm_fast
