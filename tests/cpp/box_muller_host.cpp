// Host build of the CUDA kernels' float32 Box-Muller (csrc/include/ddpm_fast/box_muller_math.h,
// philox.h) for tests/test_box_muller_math.py: reads binary float32 / uint32 values on stdin,
// writes float32 results on stdout.
//   box_muller_host log      u[n]        -> log_unit(u)[n]
//   box_muller_host sincos   theta[n]    -> (cos, sin)[n]
//   box_muller_host normals  words[4 n]  -> normals4(words)[4 n]
// and of the CPU SIMD paths' float-float Box-Muller (csrc/include/ddpm_fast/box_muller_ff_body.h,
// instantiated here on scalar floats: the same operations, so the same bits):
//   box_muller_host ff_radius   u[n]        -> (r_hi, r_lo)[n]
//   box_muller_host ff_cos_sin  theta[n]    -> (cos_hi, cos_lo, sin_hi, sin_lo)[n]
//   box_muller_host ff_normals  words[4 n]  -> normals[4 n]
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "ddpm_fast/philox.h"

namespace ff_scalar {
using VF = float;
using VU = uint32_t;
inline VF splat_f(float x) { return x; }
inline VU splat_u(uint32_t x) { return x; }
inline VF vadd(VF a, VF b) { return a + b; }
inline VF vsub(VF a, VF b) { return a - b; }
inline VF vmul(VF a, VF b) { return a * b; }
inline VF vdiv(VF a, VF b) { return a / b; }
inline VF vfma(VF a, VF b, VF c) { return std::fma(a, b, c); }
inline VF vsqrt(VF a) { return std::sqrt(a); }
inline VF vfloor(VF a) { return std::floor(a); }
inline VF vneg(VF a) { return -a; }
inline VU as_bits(VF a) { return ddpm_fast::float_bits(a); }
inline VF from_bits(VU a) { return ddpm_fast::bits_float(a); }
inline VU iadd(VU a, VU b) { return a + b; }
inline VU isub(VU a, VU b) { return a - b; }
inline VU iand(VU a, VU b) { return a & b; }
inline VU isra23(VU a) { return static_cast<VU>(static_cast<int32_t>(a) >> 23); }
inline VU ishl(VU a, int n) { return a << n; }
inline VF to_float(VU a) { return static_cast<float>(static_cast<int32_t>(a)); }
inline VU to_int(VF a) { return static_cast<VU>(static_cast<int32_t>(a)); }
inline VF vxor_f(VF a, VU s) { return from_bits(as_bits(a) ^ s); }
inline VF vsel_odd(VU q, VF a, VF b) { return (q & 1u) ? a : b; }
#include "ddpm_fast/box_muller_ff_body.h"
}  // namespace ff_scalar

template <class T>
static std::vector<T> read_all() {
  std::vector<T> v;
  T x;
  while (std::fread(&x, sizeof x, 1, stdin) == 1) v.push_back(x);
  return v;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::vector<float> out;
  if (std::strcmp(argv[1], "log") == 0) {
    for (float u : read_all<float>()) out.push_back(ddpm_fast::log_unit(u));
  } else if (std::strcmp(argv[1], "sincos") == 0) {
    for (float th : read_all<float>()) {
      float c, s;
      ddpm_fast::sincos_0_2pi(th, c, s);
      out.push_back(c);
      out.push_back(s);
    }
  } else if (std::strcmp(argv[1], "normals") == 0) {
    const std::vector<uint32_t> w = read_all<uint32_t>();
    for (size_t i = 0; i + 4 <= w.size(); i += 4) {
      float z[4];
      ddpm_fast::normals4(ddpm_fast::Philox4{{w[i], w[i + 1], w[i + 2], w[i + 3]}}, z);
      out.insert(out.end(), z, z + 4);
    }
  } else if (std::strcmp(argv[1], "ff_radius") == 0) {
    for (float u : read_all<float>()) {
      float hi, lo;
      ff_scalar::ff_radius(u, hi, lo);
      out.push_back(hi);
      out.push_back(lo);
    }
  } else if (std::strcmp(argv[1], "ff_cos_sin") == 0) {
    for (float th : read_all<float>()) {
      float v[4];
      ff_scalar::ff_cos_sin(th, v[0], v[1], v[2], v[3]);
      out.insert(out.end(), v, v + 4);
    }
  } else if (std::strcmp(argv[1], "ff_normals") == 0) {
    const std::vector<uint32_t> w = read_all<uint32_t>();
    for (size_t i = 0; i + 2 <= w.size(); i += 2) {
      float za, zb;
      ff_scalar::ff_box_muller(ddpm_fast::uniform_from_word(w[i]),
                               ddpm_fast::uniform_from_word(w[i + 1]) * ddpm_fast::kTwoPiF32, za, zb);
      out.push_back(za);
      out.push_back(zb);
    }
  } else {
    return 2;
  }
  return std::fwrite(out.data(), sizeof(float), out.size(), stdout) == out.size() ? 0 : 1;
}
