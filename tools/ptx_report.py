"""Parsers for what the GPU compilers say about a kernel, usable without a GPU.

- ``parse_ptxas_log``: the ``ptxas -v`` report (registers, spills, stack, shared memory) per
  function and architecture, from Triton's ptxas run or from ``nvcc -Xptxas -v``.
- ``ptx_access_widths``: the widest global load and store in PTX text (``ld.global.v4.b32`` = 16
  bytes per thread).
- ``sass_access_widths``: the same from ``cuobjdump -sass`` output (``LDG.E.128`` = 16 bytes), for
  the CUDA extension whose PTX is not kept.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Iterable

__all__ = ["parse_ptxas_log", "ptx_access_widths", "sass_access_widths", "split_sass_functions",
           "demangle"]

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(text: str, default_arch: str = "") -> dict[tuple[str, str], dict]:
    """``ptxas -v`` output -> {(function, arch): {regs, stack, spill_stores, spill_loads, smem}}.

    Entry functions get all five fields; device functions that ptxas compiled separately get the
    stack/spill fields only ("Function properties for f" without "Compiling entry function").
    ``arch`` is the name ptxas printed ("sm_90a"); ``default_arch`` is used before any
    "Compiling ... for" line (Triton's log of one kernel always has one).
    """
    out: dict[tuple[str, str], dict] = {}
    entry = None            # the entry function whose "Used N registers" line comes next
    arch = default_arch
    props_for = None        # the function whose "N bytes stack frame ..." line comes next
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            entry, arch = m.group(1), m.group(2)
            out.setdefault((entry, arch), {})
            continue
        m = _PROPS.search(line)
        if m:
            props_for = m.group(1)
            continue
        m = _SPILL.search(line)
        if m and props_for is not None:
            rec = out.setdefault((props_for, arch), {})
            rec["stack"], rec["spill_stores"], rec["spill_loads"] = map(int, m.groups())
            props_for = None
            continue
        m = _USED.search(line)
        if m and entry is not None:
            rec = out.setdefault((entry, arch), {})
            rec["regs"] = int(m.group(1))
            s = _SMEM.search(line)
            rec["smem"] = int(s.group(1)) if s else 0
            entry = None
    return out


# PTX: ld.global[.qualifiers][.vN].<type>  — qualifiers like .nc, .L1::evict_last, .L2::64B
_PTX_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[A-Za-z0-9_:]+)*)")
_PTX_TYPE = re.compile(r"^[bsuf](8|16|32|64|128)$")


def _ptx_bytes(quals: str) -> int:
    vec, bits = 1, 0
    for q in quals.split(".")[1:]:
        if q in ("v2", "v4", "v8"):
            vec = int(q[1:])
        else:
            m = _PTX_TYPE.match(q)
            if m:
                bits = int(m.group(1))
    return vec * bits // 8


def ptx_access_widths(ptx: str) -> dict:
    """Widest global load / store (bytes per thread per instruction) in PTX text, and how many
    of each there are: {"load": 16, "store": 16, "n_load": 4, "n_store": 2}. 0 when none."""
    return _tally_accesses(_PTX_ACCESS.finditer(ptx), "ld", _ptx_bytes)


def _tally_accesses(matches, load_op: str, width_of) -> dict:
    """Widest load/store and their counts from regex matches (group 1 = op, group 2 = modifiers)."""
    res = {"load": 0, "store": 0, "n_load": 0, "n_store": 0}
    for m in matches:
        kind = "load" if m.group(1) == load_op else "store"
        res[kind] = max(res[kind], width_of(m.group(2)))
        res["n_" + kind] += 1
    return res


# SASS: LDG.E[.modifiers] / STG.E[.modifiers]; width from .128/.64/.U8/.S8/.U16/.S16, else 32 bits.
_SASS_ACCESS = re.compile(r"\b(LDG|STG)((?:\.[A-Z0-9_]+)*)")
_SASS_WIDTH = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def _sass_bytes(mods: str) -> int:
    for q in mods.split(".")[1:]:
        if q in _SASS_WIDTH:
            return _SASS_WIDTH[q]
    return 4


def sass_access_widths(sass: str) -> dict:
    """Like ``ptx_access_widths`` for ``cuobjdump -sass`` text of one function."""
    return _tally_accesses(_SASS_ACCESS.finditer(sass), "LDG", _sass_bytes)


_SASS_ARCH = re.compile(r"arch = (sm_\d+a?)")
_SASS_FUNC = re.compile(r"^\s*Function : (\S+)", re.M)


def split_sass_functions(dump: str) -> dict[tuple[str, str], str]:
    """``cuobjdump -sass`` of a library -> {(mangled function, arch): its SASS text}."""
    out: dict[tuple[str, str], str] = {}
    arch, func, buf = "", None, []

    def flush():
        if func is not None:
            out[(func, arch)] = out.get((func, arch), "") + "\n".join(buf)

    for line in dump.splitlines():
        m = _SASS_ARCH.search(line)
        if m:
            flush()
            func, buf, arch = None, [], m.group(1)
            continue
        m = _SASS_FUNC.match(line)
        if m:
            flush()
            func, buf = m.group(1), []
            continue
        if func is not None:
            buf.append(line)
    flush()
    return out


def demangle(names: Iterable[str]) -> dict[str, str]:
    """Itanium C++ names -> readable names via c++filt (identity where it is missing)."""
    names = list(dict.fromkeys(names))
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return {n: n for n in names}
    res = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True)
    lines = res.stdout.splitlines()
    if res.returncode != 0 or len(lines) != len(names):
        return {n: n for n in names}
    return dict(zip(names, lines))
