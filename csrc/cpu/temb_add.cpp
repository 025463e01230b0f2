// CPU kernel of temb_add: h [B, C, *spatial] + temb [B, C] broadcast over space. Non-contiguous
// inputs are copied to contiguous; the output is contiguous.
#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"

namespace ddpm_fast {
namespace cpu {
namespace {

at::Tensor temb_add(const at::Tensor& h_in, const at::Tensor& temb_in) {
  const char* op = "temb_add";
  check_temb_add_args(op, h_in, temb_in);
  const at::Tensor h = h_in.contiguous();
  const at::Tensor temb = temb_in.to(at::kFloat).contiguous();  // [B, C], tiny
  at::Tensor out = at::empty_like(h, at::MemoryFormat::Contiguous);
  const int64_t BC = h.size(0) * h.size(1), HW = h.numel() / std::max<int64_t>(BC, 1);
  const int dt = dtype_code(h);
  const float* tb = temb.data_ptr<float>();
  // one "sample" per (b, c) row: the blocks of a row share one temb value
  for_each_block(BC, HW, [&](int64_t row, int64_t e0, int64_t n) {
    alignas(64) float buf[kBlock];
    const float v = tb[row];
    load_block(h.data_ptr(), dt, row * HW + e0, n, buf);
    for (int64_t i = 0; i < n; ++i) buf[i] += v;
    store_block(out.data_ptr(), dt, row * HW + e0, n, buf);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) { m.impl("temb_add", &temb_add); }

}  // namespace cpu
}  // namespace ddpm_fast
