// The op schemas are not written here: ddpm_fast/ops/table.py defines them (torch.library) once
// this library is loaded, and the kernels register against them (csrc/cpu/*.cpp: CPU,
// csrc/cuda/bindings.cpp: CUDA). The CMake build, loaded without Python, compiles a TORCH_LIBRARY
// block generated from the same table (tools/op_schemas.py). Semantics: docs/ops_contract.md.

#ifndef DDPM_FAST_TORCH_VERSION
#define DDPM_FAST_TORCH_VERSION "unknown"
#endif

// Read by ddpm_fast/ops/extension.py from the library file BEFORE loading it, so an extension
// built for another torch is refused instead of loaded (undefined symbols or worse).
extern "C" __attribute__((used, visibility("default")))
const char ddpm_fast_build_info[] = "ddpm_fast-build-info:torch=" DDPM_FAST_TORCH_VERSION ";";
