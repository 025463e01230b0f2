"""Build of ddpm_fast and its C++/CUDA extension ``ddpm_fast._C``.

    pip install --no-build-isolation -e .      # the documented form: builds against YOUR torch

Environment switches:
  DDPM_FAST_CUDA=0|1         build the CUDA kernels: default when torch has CUDA and nvcc is found
  TORCH_CUDA_ARCH_LIST       CUDA architectures (default "8.0;9.0")
  DDPM_FAST_PTXAS_VERBOSE=1  pass -Xptxas -v to nvcc (register/spill report)
  DDPM_FAST_BUILD_EXT=0      skip the extension (pure Python; the reference backend only)
  DDPM_FAST_NATIVE=1         compile the CPU kernels for this machine's instruction set (-march=native)
  MAX_JOBS                   parallel compile jobs (ninja)
  DDPM_FAST_BUILD_TEMP       object-file folder (default build/temp-<torch version>: kept between
                             `pip install -e .` runs, so ninja recompiles only what changed)
Sources are globbed: every csrc/**/*.cpp (CPU, schemas, Python module), plus csrc/cuda/*.cu and
csrc/cuda/*.cpp when building CUDA.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _version() -> str:
    with open(os.path.join(ROOT, "ddpm_fast", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _env_flag(name: str):
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    return v.lower() not in ("0", "false", "no", "off")


def _import_torch():
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension  # noqa: F401
    except ImportError:
        sys.exit(
            "ddpm_fast: building the C++/CUDA extension needs the torch you will run it with, and "
            "none is importable here.\n"
            "  * Under pip's build isolation (plain `pip install -e .`) the build runs in a fresh "
            "environment without your torch: use\n"
            "        pip install --no-build-isolation -e .\n"
            "  * If torch is not installed yet: pip install torch, then the command above.\n"
            "  * For a pure-Python install (reference backend only): DDPM_FAST_BUILD_EXT=0 pip install -e .")
    return torch, cpp_extension


def _want_cuda(torch, cpp_extension) -> bool:
    forced = _env_flag("DDPM_FAST_CUDA")
    nvcc = None
    if cpp_extension.CUDA_HOME:
        cand = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
        nvcc = cand if os.path.exists(cand) else None
    nvcc = nvcc or shutil.which("nvcc")
    have = torch.version.cuda is not None and nvcc is not None
    if forced is True and not have:
        sys.exit(f"ddpm_fast: DDPM_FAST_CUDA=1 but torch.version.cuda={torch.version.cuda!r} and "
                 f"nvcc={nvcc!r}: install a CUDA build of torch and the CUDA toolkit (or set CUDA_HOME)")
    return have if forced is None else forced


def _extensions():
    if _env_flag("DDPM_FAST_BUILD_EXT") is False:
        return [], {}
    torch, cpp_extension = _import_torch()
    cuda = _want_cuda(torch, cpp_extension)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cpp = sorted(p for p in glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True)
                 if not p.startswith(os.path.join(CSRC, "cuda", "")))
    if cuda:
        cpp += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
        cu = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    else:
        cu = []
    version = f'-DDDPM_FAST_TORCH_VERSION="{torch.__version__}"'
    # -fno-trapping-math lets GCC if-convert the clamps of exp_f32 so the SiLU loop vectorises;
    # neither flag changes a computed value (no reassociation, no fast-math).
    # The C++ standard is left to torch.utils.cpp_extension (C++17 up to torch 2.13, C++20 from 2.14).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", version]
    if _env_flag("DDPM_FAST_NATIVE"):
        cxx.append("-march=native")
    nvcc = ["-O3", "-lineinfo", version]
    if _env_flag("DDPM_FAST_PTXAS_VERBOSE"):
        nvcc += ["-Xptxas", "-v"]
    Ext = cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension
    ext = Ext(
        name="ddpm_fast._C",
        sources=cpp + cu,
        include_dirs=[os.path.join(ROOT, CSRC, "include"), os.path.join(ROOT, CSRC)],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"],
        define_macros=[("DDPM_FAST_WITH_CUDA", "1")] if cuda else [],
    )
    print(f"ddpm_fast: building the extension for torch {torch.__version__} "
          f"({'CPU + CUDA ' + os.environ['TORCH_CUDA_ARCH_LIST'] if cuda else 'CPU only'}), "
          f"{len(cpp)} C++ and {len(cu)} CUDA sources")
    base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    temp = os.environ.get("DDPM_FAST_BUILD_TEMP") or os.path.join(ROOT, "build", f"temp-{torch.__version__}")

    class BuildExt(base):
        """pip builds in a fresh temporary folder each time; a fixed one makes rebuilds incremental."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = temp

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _extensions()

setup(
    name="ddpm_fast",
    version=_version(),
    description="Fast DDPM training and sampling for PyTorch: fused ops (C++/CUDA/Triton), "
                "sync-free samplers, exact against a plain-PyTorch reference",
    python_requires=">=3.10",
    packages=find_packages(include=["ddpm_fast", "ddpm_fast.*"]),
    install_requires=["torch>=2.11", "numpy", "triton>=3.6; platform_system == 'Linux'"],
    # training/CLI extras: checkpoints, PNG grids, progress bars, the bundled digits data set
    extras_require={"train": ["safetensors", "pillow", "tqdm", "scikit-learn"],
                    "test": ["pytest", "pytest-benchmark", "hypothesis==6.155.2", "diffusers", "safetensors", "pillow", "tqdm",
                             "scikit-learn"]},
    entry_points={"console_scripts": ["ddpm-fast = ddpm_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
