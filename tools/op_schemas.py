"""The op table (ddpm_fast/ops/table.py) loaded by path, without importing ddpm_fast (which needs
more than torch): for the CUDA venv of scripts/build_cuda_extension.sh and tools/cuda_ext.py, and
for the CMake build, which compiles the schemas as C++ (``python tools/op_schemas.py OUT.cpp``).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "ddpm_fast" / "ops" / "table.py"


def load_table(path: Path | str = TABLE):
    """ddpm_fast/ops/table.py as a standalone module (it imports only torch)."""
    name = "ddpm_fast_op_table"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve the module of their class through sys.modules
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/op_schemas.py OUT.cpp")
    source = load_table().cpp_source()
    out = Path(sys.argv[1])
    if not out.exists() or out.read_text() != source:  # unchanged: no rebuild
        out.write_text(source)
