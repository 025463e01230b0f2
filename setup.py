"""Build of ddpm_fast and its C++/CUDA extension ``ddpm_fast._C``.

    pip install -e .      # builds against the torch of the environment you install into

pyproject.toml hands the build to build_backend/ddpm_fast_build.py, which makes that torch
importable here even under pip's build isolation (and refuses any other torch); with
``--no-build-isolation`` or ``python setup.py build_ext --inplace`` the torch importable here is used.

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
csrc/cuda/*.cpp when building CUDA. The C++ standard and compiler flags come from
csrc/compile_flags.cmake, which CMakeLists.txt includes too.
The module is built for Python's limited API (abi3): one wheel serves CPython >= 3.10.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
# Python's stable ABI from 3.10 on: the wheel tag; torch.utils.cpp_extension compiles a
# py_limited_api extension with -DPy_LIMITED_API=0x030A0000, the same version.
LIMITED_API = "cp310"


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
        sys.exit(f"ddpm_fast: torch is not importable by {sys.executable}; install torch first (e.g. "
                 "`pip install torch`), then run this command again (or DDPM_FAST_BUILD_EXT=0 for a "
                 "pure-Python install without the compiled kernels)")
    return torch, cpp_extension


def _compile_flags() -> dict:
    """The set(NAME values...) lines of csrc/compile_flags.cmake, as NAME -> list of values."""
    with open(os.path.join(ROOT, CSRC, "compile_flags.cmake")) as f:
        return {m.group(1): m.group(2).split()
                for m in re.finditer(r"^set\((DDPM_FAST_\w+)\s+([^)]*)\)", f.read(), re.M)}


class _StaleModuleCleaner:
    """Mixin for build_ext: when the module is copied into the source tree (--inplace, editable
    installs), delete ddpm_fast/_C.*.so files of other ABI tags: Python prefers
    _C.cpython-311-*.so to _C.abi3.so, so a library left by an older build would shadow the new one."""

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            built, _ = self._get_inplace_equivalent(build_py, ext)
            stem = os.path.basename(built).split(".")[0]
            for old in glob.glob(os.path.join(os.path.dirname(built), stem + ".*.so")):
                if os.path.basename(old) != os.path.basename(built):
                    print(f"ddpm_fast: removing {old} (an older build that would shadow {built})")
                    os.remove(old)


def _empty_dir(path: str) -> bool:
    """A folder without a file anywhere below it (a venv's include/ holds an empty python3.X/)."""
    return os.path.isdir(path) and not any(files for _, _, files in os.walk(path))


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
    flags = _compile_flags()
    std = f"-std=c++{flags['DDPM_FAST_CXX_STANDARD'][0]}"  # torch adds its default only when absent
    version = f'-DDDPM_FAST_TORCH_VERSION="{torch.__version__}"'
    cxx = [std, *flags["DDPM_FAST_CXX_FLAGS"], version]
    if _env_flag("DDPM_FAST_NATIVE"):
        cxx.append("-march=native")
    nvcc = [std, *flags["DDPM_FAST_CUDA_FLAGS"], version]
    if _env_flag("DDPM_FAST_PTXAS_VERBOSE"):
        nvcc += ["-Xptxas", "-v"]
    Ext = cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension
    ext = Ext(
        name="ddpm_fast._C",
        sources=cpp + cu,
        include_dirs=[os.path.join(ROOT, CSRC, "include"), os.path.join(ROOT, CSRC)],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if cuda else {"cxx": cxx},
        extra_link_args=flags["DDPM_FAST_LINK_FLAGS"],
        py_limited_api=True,  # csrc/python/module.cpp uses only the limited API; nothing else touches Python
    )
    print(f"ddpm_fast: building the extension for torch {torch.__version__} "
          f"({'CPU + CUDA ' + os.environ['TORCH_CUDA_ARCH_LIST'] if cuda else 'CPU only'}), "
          f"{len(cpp)} C++ and {len(cu)} CUDA sources")
    base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    temp = os.environ.get("DDPM_FAST_BUILD_TEMP") or os.path.join(ROOT, "build", f"temp-{torch.__version__}")

    class BuildExt(_StaleModuleCleaner, base):
        """pip builds in a fresh temporary folder each time; a fixed one makes rebuilds incremental."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = temp
            # distutils adds <venv>/include inside a virtual environment: normally empty, and a
            # different path in each venv, which would change every compile command and make ninja
            # rebuild everything when the same sources are installed into another venv
            self.include_dirs = [d for d in self.include_dirs or [] if not _empty_dir(d)]

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
    # the abi3 tag (cp310-abi3-<platform>) for a wheel with the limited-API module
    options={"bdist_wheel": {"py_limited_api": LIMITED_API}} if ext_modules else {},
    zip_safe=False,
)
