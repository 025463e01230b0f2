// Host/device qualifiers shared by every header that both the C++ (CPU) and CUDA code include.
// Plain C++: no torch headers here, so nvcc compiles the kernels without them.
#pragma once

#if defined(__CUDACC__)
#define DDPM_FAST_HD __host__ __device__ __forceinline__
#else
#define DDPM_FAST_HD inline
#endif
