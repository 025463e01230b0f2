"""Developer tools, outside the runtime package: ``python -m tools.gpu_check`` (``make gpu-check``)
compiles every Triton and CUDA kernel for sm_80/sm_90 without a GPU and gates on compile errors,
spills and vector width; ``tools/op_schemas.py`` writes the op schemas as C++ for the CMake build;
``tools/lucidrains_stubs.py`` lets the tests and benchmarks import denoising_diffusion_pytorch
without its training-only dependencies."""
