// The op schemas of ddpm_fast, defined once. Backends add kernels in their own files:
// csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL CPU) and csrc/cuda/bindings.cpp (TORCH_LIBRARY_IMPL CUDA).
// Fake (meta) kernels for torch.compile live in ddpm_fast/ops/extension.py (register_fake).
// Argument order = the backend interface of ddpm_fast/ops/reference.py; semantics:
// docs/ops_contract.md.
#include <torch/library.h>

#ifndef DDPM_FAST_TORCH_VERSION
#define DDPM_FAST_TORCH_VERSION "unknown"
#endif

// Read by ddpm_fast/ops/extension.py from the library file BEFORE loading it, so an extension
// built for another torch is refused instead of loaded (undefined symbols or worse).
extern "C" __attribute__((used, visibility("default")))
const char ddpm_fast_build_info[] = "ddpm_fast-build-info:torch=" DDPM_FAST_TORCH_VERSION ";";

TORCH_LIBRARY(ddpm_fast, m) {
  // Counter-based noise (Philox4x32-10): float32 [batch, numel] on seed's device.
  m.def("philox_normal(Tensor seed, Tensor t, int batch, int numel, int sample_offset, int stream) -> Tensor");
  m.def("philox_uniform(Tensor seed, Tensor t, int batch, int numel, int sample_offset, int stream) -> Tensor");
  // The raw generator, for known-answer tests: counters int64 [n, 4] and key int64 [2] holding
  // uint32 values -> the output words, int64 [n, 4].
  m.def("_philox4x32_10(Tensor counters, Tensor key) -> Tensor");
  // Forward noising: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.
  m.def("q_sample(Tensor x0, Tensor t, Tensor table, Tensor noise) -> Tensor");
  m.def("q_sample_seeded(Tensor x0, Tensor t, Tensor table, Tensor seed, int sample_offset, "
        "int target_type) -> (Tensor, Tensor)");
  // One ancestral step x_t -> x_{t-1}; reverse_step_out writes `out` (may be x_t itself).
  m.def("reverse_step(Tensor x_t, Tensor model_out, Tensor t, Tensor table, Tensor? noise, Tensor? seed, "
        "int sample_offset, int prediction_type, int variance_type, bool clip, float clip_range) -> Tensor");
  m.def("reverse_step_out(Tensor x_t, Tensor model_out, Tensor t, Tensor table, Tensor? noise, "
        "Tensor? seed, int sample_offset, int prediction_type, int variance_type, bool clip, "
        "float clip_range, Tensor(a!) out) -> ()");
  // One DDIM step x_t -> x_{t_prev}.
  m.def("ddim_step(Tensor x_t, Tensor model_out, Tensor t, Tensor t_prev, Tensor table, Tensor? noise, "
        "Tensor? seed, int sample_offset, float eta, int prediction_type, bool clip, float clip_range, "
        "float final_alpha_bar) -> Tensor");
  // h + temb[:, :, None, ...].
  m.def("temb_add(Tensor h, Tensor temb) -> Tensor");
  // silu(GroupNorm(x [+ temb]) [+ temb]), one pass per group.
  m.def("groupnorm_temb_silu(Tensor x, Tensor weight, Tensor bias, Tensor? temb, int num_groups, float eps, "
        "int temb_mode, bool apply_silu) -> Tensor");
}
