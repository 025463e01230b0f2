// The CPU noise generator: Philox4x32-10 words -> uniforms or Box-Muller normals for a run of
// consecutive counters, in SIMD (AVX-512 or AVX2, chosen once at run time from ATen's CPU capability,
// so ATEN_CPU_CAPABILITY=default / avx2 forces a narrower path) or scalar code. Every path gives the
// reference's uniforms bitwise; normals are within the ulp bound of docs/ops_contract.md (Noise).
#pragma once

#include <cstdint>

namespace ddpm_fast {
namespace cpu {

// Counters (q0 + i, c1, c2, c3), i = 0 .. nq-1, with key (k0, k1): out[4i + j] = the uniform
// (kNormal false) or normal (true) of word j of counter q0 + i. out holds 4 * nq floats.
struct PhiloxRun {
  uint32_t k0, k1;
  uint64_t q0;
  int64_t nq;
  uint32_t c1, c2, c3;
};
void philox_uniforms(const PhiloxRun& run, float* out);
void philox_normals(const PhiloxRun& run, float* out);

// The path the two functions above take on this machine: "avx512", "avx2" or "scalar".
const char* philox_simd_path();

}  // namespace cpu
}  // namespace ddpm_fast
