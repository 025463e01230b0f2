// CPU kernel of conv3x3: a 3x3 convolution, stride 1, padding 1, no dilation, one group (what
// every UNet's resnet blocks run), by Winograd's F(2x2, 3x3) (docs/ops_contract.md, "conv3x3").
// The compiled sampler routes such convolutions here (samplers/conv_pass.py): 16 products per 2x2
// output tile instead of 36, so 2.25x fewer multiply-adds than a direct convolution, whose small
// batch-1 shapes ATen runs through im2col + sgemm or oneDNN at ~60% of the FMA peak.
//
// Per image: the input is copied, float32, into a zero-bordered channels-last scratch (so any
// layout and dtype comes in, and no tile needs a bounds check); the tiles are cut into blocks
// whose transformed inputs V [16][tiles][C] and products M [16][tiles][K] stay in L2; per block,
// the input transform (vectorised over channels), 16 GEMMs [tiles, C] x [C, K] with a register-
// blocked kernel (6 tiles x 16 channels on AVX2) and the output transform, written channels-last.
// The transformed weights U [16][C][K] are cached per weight tensor and recomputed whenever the
// weight's values differ from the copy kept with them (compared every call: an in-place update,
// also through `.data`, is seen).
//
// AVX2+FMA only (a `#pragma GCC target` region, chosen at run time from ATen's CPU capability;
// AVX-512 CPUs run it too). Without AVX2 the op runs ATen's convolution (float32) instead.
// Output: x's dtype, channels-last strides (the layout Inductor gives a CPU convolution's output).
#include <torch/library.h>

#include <ATen/Parallel.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cstring>
#include <list>
#include <type_traits>
#include <mutex>
#include <utility>
#include <vector>

#include "../op_checks.h"
#include "cpu_common.h"  // dispatch_dtype, to_float
#include "simd_path.h"  // DDPM_FAST_X86_SIMD, simd_path()

namespace ddpm_fast {
namespace cpu {
namespace {

constexpr int64_t kLanes = 8;         // channel padding of the scratch: one AVX2 vector
constexpr int64_t kKBlock = 16;       // output-channel padding of U and M: the GEMM kernel's width
constexpr int64_t kTileRows = 6;      // tiles per GEMM kernel call
constexpr int64_t kBlockFloats = 48 * 1024;  // V + M of a block: 192 KiB, within L2 beside U

// Sizes of one call: tiles of 2x2 outputs, the padded scratch (th + 1 rows of 2x2 pixel pairs
// plus the border), channels padded to kLanes (input) and kKBlock (output).
struct Plan {
  int64_t N, C, H, W, K, cp, kp, th, tw, T, hp, wp, tblk;
};

Plan plan_of(const at::Tensor& x, const at::Tensor& w) {
  Plan p{};
  p.N = x.size(0), p.C = x.size(1), p.H = x.size(2), p.W = x.size(3), p.K = w.size(0);
  p.cp = (p.C + kLanes - 1) / kLanes * kLanes;
  p.kp = (p.K + kKBlock - 1) / kKBlock * kKBlock;
  p.th = (p.H + 1) / 2, p.tw = (p.W + 1) / 2, p.T = p.th * p.tw;
  p.hp = 2 * p.th + 2, p.wp = 2 * p.tw + 2;  // input row r at scratch row r + 1; the rest zero
  const int64_t fit = kBlockFloats / std::max<int64_t>(16 * (p.cp + p.kp), 1) / kTileRows * kTileRows;
  const int64_t all = (p.T + kTileRows - 1) / kTileRows * kTileRows;
  p.tblk = std::max(kTileRows, std::min(fit, all));
  return p;
}

#ifdef DDPM_FAST_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "simd_lanes_avx2.h"
constexpr int kTiles = static_cast<int>(kTileRows);
constexpr int kKv = static_cast<int>(kKBlock / kW);  // 6 x 2 accumulators of the 16 ymm
#include "conv3x3_simd_body.h"

// Tiles [t0, t0 + nt) of one image: xp its scratch, out its channels-last output [H][W][K].
void tile_block(const Plan& p, const float* xp, int64_t t0, int64_t nt, const float* U, const float* bias, float* V,
                float* M, float* out) {
  const int64_t ntp = (nt + kTiles - 1) / kTiles * kTiles, v_xi = p.tblk * p.cp, m_xi = p.tblk * p.kp;
  const int64_t tw = p.tw, wp = p.wp, cp = p.cp, H = p.H, W = p.W, K = p.K;
  input_transform(xp, wp, cp, nt, ntp, [=](int64_t t) { return (2 * ((t0 + t) / tw) * wp + 2 * ((t0 + t) % tw)) * cp; },
                  V, v_xi);
  transformed_gemms(V, v_xi, U, cp, p.kp, ntp, M, m_xi);
  output_transform(M, m_xi, p.kp, K, nt, bias, [=](int64_t t, int i, int j, int64_t k, VF y) {
    const int64_t yy = 2 * ((t0 + t) / tw) + i, xx = 2 * ((t0 + t) % tw) + j;
    if (yy >= H || xx >= W) return;  // the last tile row or column of an odd size
    float* dst = out + (yy * W + xx) * K + k;
    if (k + kW <= K) {
      vstoreu(dst, y);
    } else {  // the last, partial vector of channels
      float tail[kW];
      vstoreu(tail, y);
      for (int64_t e = 0; e < K - k; ++e) dst[e] = tail[e];
    }
  });
}
}  // namespace avx2
#pragma GCC pop_options
#endif  // DDPM_FAST_X86_SIMD

// U[xi][c][k] = (G g G^T)[xi] of filter g = w[k][c], in double rounded once, zero for the padded
// channels. G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
at::Tensor transformed_weights(const float* w, const Plan& p) {
  at::Tensor U = at::zeros({16, p.cp, p.kp}, at::TensorOptions().dtype(at::kFloat));
  float* u = U.data_ptr<float>();
  for (int64_t k = 0; k < p.K; ++k)
    for (int64_t c = 0; c < p.C; ++c) {
      const float* g = w + (k * p.C + c) * 9;
      double a[4][3];  // G g
      for (int j = 0; j < 3; ++j) {
        const double g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
        a[0][j] = g0, a[1][j] = 0.5 * (g0 + g1 + g2), a[2][j] = 0.5 * (g0 - g1 + g2), a[3][j] = g2;
      }
      for (int i = 0; i < 4; ++i) {  // (G g) G^T
        const double r[4] = {a[i][0], 0.5 * (a[i][0] + a[i][1] + a[i][2]), 0.5 * (a[i][0] - a[i][1] + a[i][2]), a[i][2]};
        for (int j = 0; j < 4; ++j) u[((4 * i + j) * p.cp + c) * p.kp + k] = static_cast<float>(r[j]);
      }
    }
  return U;
}

// Transformed weights per weight tensor, most recent first. An entry keeps a copy of the values
// it was computed from: a lookup compares them with the weight's values now (~0.15 MB for a
// 64 -> 64 filter: microseconds against the convolution's ~0.2 ms), so no update of the weight
// (in place, through `.data`, or a new tensor at a freed address) can reuse a stale U.
class WeightCache {
 public:
  at::Tensor get(const at::Tensor& w, const at::Tensor& w32, const Plan& p) {
    const Key key{w.data_ptr(), w.scalar_type(), p.K, p.C, w.strides().vec()};
    const size_t bytes = static_cast<size_t>(w32.numel()) * sizeof(float);
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (!(it->first == key)) continue;
      if (std::memcmp(it->second.values.data_ptr<float>(), w32.data_ptr<float>(), bytes) == 0) {
        entries_.splice(entries_.begin(), entries_, it);  // most recent first
        return entries_.front().second.U;
      }
      entries_.erase(it);
      break;
    }
    Entry e{w32.clone(), transformed_weights(w32.data_ptr<float>(), p)};
    entries_.emplace_front(key, e);
    if (entries_.size() > kMaxEntries) entries_.pop_back();
    return e.U;
  }

 private:
  struct Key {
    const void* data;
    at::ScalarType dtype;
    int64_t K, C;
    std::vector<int64_t> strides;
    bool operator==(const Key& o) const {
      return data == o.data && dtype == o.dtype && K == o.K && C == o.C && strides == o.strides;
    }
  };
  struct Entry {
    at::Tensor values, U;
  };
  static constexpr size_t kMaxEntries = 256;  // a UNet has tens of 3x3 convolutions
  std::mutex mu_;
  std::list<std::pair<Key, Entry>> entries_;
};

WeightCache& weight_cache() {
  static WeightCache cache;
  return cache;
}

// Per-thread V and M of a block, grown once: no allocation (nor page faults) per call.
float* block_scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(floats);
  return buf.data();
}

// xp[n][1 + y][1 + x][c] = float(x[n][c][y][x]), the border and the padded channels zero. A
// channels-last x copies rows of C floats; any other layout is gathered through its strides.
void pack_input(const at::Tensor& x, const Plan& p, float* xp) {
  const int64_t sN = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
  const int64_t row = p.wp * p.cp, image = p.hp * row;
  at::parallel_for(0, p.N * p.hp, 1, [&](int64_t lo, int64_t hi) {
    dispatch_dtype(dtype_code(x), [&](auto tag) {
      using T = decltype(tag);
      const T* src = static_cast<const T*>(x.data_ptr());
      for (int64_t nr = lo; nr < hi; ++nr) {
        const int64_t n = nr / p.hp, r = nr % p.hp;
        float* dst = xp + n * image + r * row;
        if (r == 0 || r > p.H) {
          std::memset(dst, 0, row * sizeof(float));
          continue;
        }
        std::memset(dst, 0, p.cp * sizeof(float));  // column 0
        std::memset(dst + (p.W + 1) * p.cp, 0, (p.wp - p.W - 1) * p.cp * sizeof(float));
        const T* s = src + n * sN + (r - 1) * sH;
        for (int64_t w = 0; w < p.W; ++w) {
          float* d = dst + (w + 1) * p.cp;
          if (p.cp > p.C) std::memset(d + p.C, 0, (p.cp - p.C) * sizeof(float));
        }
        if (sC == 1 && std::is_same<T, float>::value) {
          for (int64_t w = 0; w < p.W; ++w)
            std::memcpy(dst + (w + 1) * p.cp, s + w * sW, p.C * sizeof(float));
        } else {
          for (int64_t c = 0; c < p.C; ++c)
            for (int64_t w = 0; w < p.W; ++w) dst[(w + 1) * p.cp + c] = to_float<T>(s[c * sC + w * sW]);
        }
      }
    });
  });
}

at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const char* op = "conv3x3";
  check_conv3x3_args(op, x, weight, bias);
  const auto cl = at::MemoryFormat::ChannelsLast;
#ifdef DDPM_FAST_X86_SIMD
  const bool simd = simd_path() != SimdPath::kScalar;
#else
  const bool simd = false;
#endif
  if (!simd) {  // no AVX2: ATen's convolution, float32, in the same layout and dtype
    const c10::optional<at::Tensor> b32 = bias.has_value() ? c10::optional<at::Tensor>(bias->to(at::kFloat)) : c10::nullopt;
    return at::conv2d(x.to(at::kFloat), weight.to(at::kFloat), b32, 1, 1).to(x.scalar_type()).contiguous(cl);
  }
#ifdef DDPM_FAST_X86_SIMD
  const Plan p = plan_of(x, weight);
  at::Tensor out = at::empty({p.N, p.K, p.H, p.W}, x.options().dtype(at::kFloat).memory_format(cl));
  if (out.numel() == 0) return out.to(x.scalar_type());
  const at::Tensor w32 = weight.to(at::kFloat).contiguous();
  const at::Tensor U = weight_cache().get(weight, w32, p);
  std::vector<float> b(p.kp, 0.0f);
  if (bias.has_value()) {
    const at::Tensor b32 = bias->to(at::kFloat).contiguous();
    std::memcpy(b.data(), b32.data_ptr<float>(), p.K * sizeof(float));
  }
  // the scratch: [N][hp][wp][cp], x at rows 1..H, columns 1..W, channels 0..C; zero elsewhere
  at::Tensor xp = at::empty({p.N, p.hp, p.wp, p.cp}, x.options().dtype(at::kFloat));
  pack_input(x, p, xp.data_ptr<float>());
  const float* xpp = xp.data_ptr<float>();
  const float* u = U.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t nblk = (p.T + p.tblk - 1) / p.tblk, scratch = 16 * p.tblk * (p.cp + p.kp);
  at::parallel_for(0, p.N * nblk, 1, [&](int64_t lo, int64_t hi) {
    float* V = block_scratch(scratch);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t n = task / nblk, t0 = (task % nblk) * p.tblk;
      avx2::tile_block(p, xpp + n * p.hp * p.wp * p.cp, t0, std::min(p.tblk, p.T - t0), u, b.data(), V,
                       V + 16 * p.tblk * p.cp, o + n * p.H * p.W * p.K);
    }
  });
  return out.to(x.scalar_type());  // out itself when x is float32
#endif
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) { m.impl("conv3x3", &conv3x3); }

}  // namespace cpu
}  // namespace ddpm_fast
