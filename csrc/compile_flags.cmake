# The one place for the extension's C++ standard and compiler flags. CMakeLists.txt include()s
# this file; setup.py reads the set() lines below (one line each, values separated by spaces,
# no CMake variables or quotes), so keep them in that form.
#
# C++20: torch 2.14's headers need it and torch 2.13's accept it (both torch.utils.cpp_extension
# versions default to it); stating it here keeps setup.py and CMake on the same standard whatever
# torch's default becomes.
set(DDPM_FAST_CXX_STANDARD 20)
# -fno-trapping-math lets GCC if-convert the clamps of exp_f32 so the SiLU loop vectorises;
# neither flag changes a computed value (no reassociation, no fast-math). -fopenmp: at::parallel_for
# is serial without it.
set(DDPM_FAST_CXX_FLAGS -O3 -fopenmp -fno-trapping-math -fno-math-errno)
set(DDPM_FAST_LINK_FLAGS -fopenmp)
# -lineinfo maps SASS back to source lines for profilers; it does not change the code.
set(DDPM_FAST_CUDA_FLAGS -O3 -lineinfo)
