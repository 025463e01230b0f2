"""Developer tools: ``python -m ddpm_fast.tools.gpu_check`` compiles every Triton and CUDA kernel
for sm_80/sm_90 without a GPU and gates on compile errors, spills and vector width (issue 8)."""
