"""The GPU check itself (tools/gpu_check.py): its parsers on canned compiler output, and
its gate on real sm_80/sm_90 compiles of small kernels made to pass or fail — a vectorised
element-wise kernel passes; the same kernel without the runtime's divisibility specialisation
(scalar 4-byte accesses), a kernel whose per-thread tile spills, and a kernel that does not
compile, each fail. The compiles run in subprocesses without TRITON_INTERPRET.
"""
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from tools import gpu_check  # noqa: E402
from tools.cuda_ext import _template_args, short_name  # noqa: E402
from tools.ptx_report import (parse_ptxas_log, ptx_access_widths,  # noqa: E402
                                        sass_access_widths, split_sass_functions)
from tools.triton_aot import describe  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The fields of tools.triton_specs.AotSpec that the checker reads.
Spec = collections.namedtuple("Spec", "name op fn signature constexprs divisible_args num_warps "
                                      "num_stages elementwise")


@triton.jit
def _vec_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.jit
def _row_normalize(x_ptr, out_ptr, R: tl.constexpr, C: tl.constexpr):
    # the whole [R, C] tile stays live across two row reductions: R*C/32 floats per thread
    r = tl.arange(0, R)[:, None]
    c = tl.arange(0, C)[None, :]
    x = tl.load(x_ptr + r * C + c)
    y = x - tl.sum(x, axis=1)[:, None] / C
    y = y * tl.rsqrt(tl.sum(y * y, axis=1)[:, None] / C + 1e-5)
    tl.store(out_ptr + r * C + c, y)


_ADD_SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
_ALIGNED = ["x_ptr", "y_ptr", "out_ptr", "n"]


def check_specs():
    return [
        Spec("add_vec", "add", _vec_add, _ADD_SIG, {"BLOCK": 1024}, _ALIGNED, 4, 1, True),
        # what the runtime compiles for unaligned tensors: scalar ld/st.global.b32
        Spec("add_scalar", "add", _vec_add, _ADD_SIG, {"BLOCK": 1024}, [], 4, 1, True),
        # 8 x 1024 floats on one warp: 256 live floats per thread > 255 registers
        Spec("norm_spill", "norm", _row_normalize,
             {"x_ptr": "*fp32", "out_ptr": "*fp32", "R": "constexpr", "C": "constexpr"},
             {"R": 8, "C": 1024}, ["x_ptr", "out_ptr"], 1, 1, False),
        # the interpreter would run this; the compiler rejects a non-power-of-2 arange
        Spec("add_bad_block", "add", _vec_add, _ADD_SIG, {"BLOCK": 1000}, _ALIGNED, 4, 1, True),
    ]


def _run_check(tmp_path, provider, archs, cache):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["DDPM_FAST_GPU_CHECK_CACHE"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--skip-cuda-build",
                        "--specs", provider, "--archs", archs, "--json", str(out)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    report = json.loads(out.read_text()) if out.exists() else None
    return p, report


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    """One real run of the CLI over check_specs() for sm_80 (Triton's ptxas) and sm_90
    (ptxas-blackwell on Triton 3.9)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    return (*_run_check(tmp, "test_gpu_check:check_specs", "80,90", tmp / "cache"), tmp)


def test_unchanged_kernels_come_from_the_cache(check_run):
    tmp = check_run[2]
    (tmp / "again").mkdir()
    p2, again = _run_check(tmp / "again", "test_gpu_check:check_specs", "90", tmp / "cache")
    assert p2.returncode == gpu_check.FAIL
    assert all(r.get("cached") for r in again["kernels"]), [r["name"] for r in again["kernels"]]
    assert {r["kernel"] for r in again["failures"]} == {"add_scalar", "norm_spill", "add_bad_block"}


def _by_name(report):
    return {(r["kernel"], r["arch"]): r for r in report["kernels"]}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_gate_passes_a_vectorised_kernel(check_run, arch):
    p, report, _ = check_run
    assert report is not None, p.stdout + p.stderr
    rec = _by_name(report)[("add_vec", arch)]
    assert rec["ok"] and rec["regs"] > 0 and rec["spill_stores"] == rec["spill_loads"] == 0
    assert rec["load_bytes"] == 16 and rec["store_bytes"] == 16
    assert rec["elementwise"] and rec["fp32"] and rec["problems"] == []
    assert rec["fn"] == "_vec_add" and rec["config"] == "fp32 BLOCK=1024 w4 s1"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_gate_fails_scalar_spilling_and_broken_kernels(check_run, arch):
    p, report, _ = check_run
    assert p.returncode == gpu_check.FAIL, p.stdout + p.stderr
    assert report["status"] == "fail"
    recs = _by_name(report)
    scalar = recs[("add_scalar", arch)]
    assert scalar["load_bytes"] == 4 and scalar["store_bytes"] == 4
    assert any("< 16 B" in x for x in scalar["problems"])
    spill = recs[("norm_spill", arch)]
    assert spill["spill_stores"] > 0 and any("spills" in x for x in spill["problems"])
    broken = recs[("add_bad_block", arch)]
    assert not broken["ok"] and "compile failed" in broken["problems"][0]
    failing = {f["kernel"] for f in report["failures"] if f["arch"] == arch}
    assert failing == {"add_scalar", "norm_spill", "add_bad_block"}
    assert f"FAIL triton add_scalar [fp32 BLOCK=1024 w4 s1] {arch}" in p.stdout


def test_clean_run_passes_and_writes_report(monkeypatch, tmp_path, capsys):
    good = dict(kernel="k", name="k", config="fp32", arch="sm_90", ok=True, regs=20, spill_stores=0,
                spill_loads=0, smem=0, load_bytes=16, store_bytes=16, elementwise=True, fp32=True)
    monkeypatch.setattr(gpu_check, "run_workers", lambda *a, **k: [good])
    out = tmp_path / "r.json"
    assert gpu_check.main(["--skip-cuda-build", "--json", str(out)]) == gpu_check.PASS
    assert json.loads(out.read_text())["status"] == "pass-triton-only"
    assert "PASS" in capsys.readouterr().out
    monkeypatch.setattr(gpu_check, "run_workers", lambda *a, **k: [])
    assert gpu_check.main(["--skip-cuda-build", "--json", ""]) == gpu_check.INCOMPLETE


def test_describe_reads_dtype_and_config():
    sig = dict(_ADD_SIG, x_ptr="*fp16", y_ptr="*bf16", out_ptr="*fp16", t_ptr="*i64", tab="*fp64")
    d = describe(Spec("k", "op", _vec_add, sig, {"BLOCK": 256}, [], 8, 2, True))
    assert d["dtype"] == "fp16+bf16" and not d["fp32"]
    assert d["config"] == "fp16+bf16 BLOCK=256 w8 s2"
    d = describe(Spec("k", "op", _vec_add, dict(_ADD_SIG, tab="*fp64"), {"BLOCK": 256}, [], 4, 1, True))
    assert d["dtype"] == "fp32" and d["fp32"] and d["gate_loads"]
    gen = {"out_ptr": "*fp32", "seed_ptr": "*i64", "N": "i32", "BLOCK": "constexpr"}
    assert not describe(Spec("g", "op", _vec_add, gen, {"BLOCK": 256}, [], 4, 1, True))["gate_loads"]


def test_problems_only_gate_fp32_elementwise_widths():
    rec = dict(ok=True, spill_stores=0, spill_loads=0, elementwise=True, fp32=False,
               load_bytes=4, store_bytes=4)
    assert gpu_check.problems(rec) == []                       # fp16: reported, not gated
    assert len(gpu_check.problems(dict(rec, fp32=True))) == 2  # load and store
    assert gpu_check.problems(dict(rec, fp32=True, elementwise=False)) == []
    assert gpu_check.problems(dict(rec, fp32=True, load_bytes=None, store_bytes=None)) == []
    # a generator (one data pointer, the output) loads only scalar parameters: stores are gated
    assert len(gpu_check.problems(dict(rec, fp32=True, gate_loads=False))) == 1



def test_problems_gate_noise_stack_frames_and_groupnorm_widths():
    """A noise kernel with any stack frame fails; a GroupNorm kernel without 16-byte accesses
    fails (fp32 Triton configs; CUDA's vector kernels, not its W = 1 fallback or finalize)."""
    ok = dict(ok=True, spill_stores=0, spill_loads=0, elementwise=False, fp32=True, load_bytes=16,
              store_bytes=16, stack=0)
    for k in ("philox_kernel", "q_sample_seeded_kernel", "reverse_step_kernel", "ddim_step_kernel"):
        assert gpu_check.problems(dict(ok, kernel=k)) == []
        assert gpu_check.problems(dict(ok, kernel=k, stack=32)) == ["noise kernel has a 32 B stack frame"]
    assert gpu_check.problems(dict(ok, kernel="groupnorm_finalize_kernel", stack=16)) == []
    narrow = dict(ok, load_bytes=4, store_bytes=4)
    cases = [("triton", "groupnorm_temb_silu_kernel", "-", 2), ("triton", "groupnorm_apply_kernel", "-", 2),
             ("triton", "groupnorm_stats_kernel", "-", 1), ("cuda", "groupnorm_apply_kernel", "8", 2),
             ("cuda", "groupnorm_stats_kernel", "8", 1), ("cuda", "groupnorm_apply_kernel", "1", 0),
             ("cuda", "groupnorm_finalize_kernel", "-", 0)]
    for source, kernel, config, n in cases:
        rec = dict(narrow, source=source, kernel=kernel, config=config)
        assert len(gpu_check.problems(rec)) == n, (source, kernel, config)
        assert gpu_check.problems(dict(rec, load_bytes=16, store_bytes=16)) == []
    assert gpu_check.problems(dict(narrow, source="triton", kernel="groupnorm_apply_kernel", fp32=False)) == []

_NVCC_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3bigPf' for 'sm_80'
ptxas info    : Function properties for _Z3bigPf
    800 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 800 bytes cumulative stack size, 1024 bytes smem, 360 bytes cmem[0]
ptxas info    : Compile time = 131.549 ms
ptxas info    : Compiling entry function '_Z19reverse_step_kernelIfEvPKT_PS0_PKdl' for 'sm_90'
ptxas info    : Function properties for _Z19reverse_step_kernelIfEvPKT_PS0_PKdl
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""


def test_parse_ptxas_log():
    got = parse_ptxas_log(_NVCC_LOG)
    assert got[("_Z3bigPf", "sm_80")] == dict(stack=800, spill_stores=8, spill_loads=12, regs=32,
                                               smem=1024)
    rs = got[("_Z19reverse_step_kernelIfEvPKT_PS0_PKdl", "sm_90")]
    assert rs["regs"] == 14 and rs["smem"] == 0 and rs["spill_stores"] == 0
    assert got[("_Z6helperv", "sm_90")] == dict(stack=16, spill_stores=0, spill_loads=0)


def test_ptx_access_widths():
    ptx = """
    @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    ld.global.nc.L1::evict_last.b64 %rd9, [%rd2];
    @%p2 st.global.v2.b16 [ %rd5 + 0 ], { %rs1, %rs2 };
    st.global.b8 [%rd3], %rs4;
    ld.shared.v4.b32 {%r1, %r2, %r3, %r4}, [%r9];
    atom.global.add.f32 %f1, [%rd1], %f2;
    """
    assert ptx_access_widths(ptx) == {"load": 16, "store": 4, "n_load": 2, "n_store": 2}
    assert ptx_access_widths("ld.global.b32 %r1, [%rd1];") == {"load": 4, "store": 0,
                                                                "n_load": 1, "n_store": 0}


_SASS = """
	code for sm_80
		Function : _Z1kPf
	.headerflags	@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM80"
        /*0040*/                   LDG.E.64.CONSTANT R4, [R4.64] ;
        /*0150*/                   LDG.E.CONSTANT R3, [R2.64] ;
        /*01f0*/                   LDG.E.128.CONSTANT R8, [R2.64] ;
        /*0260*/                   STG.E.U16 [R4.64], R8 ;
	code for sm_90
		Function : _Z1kPf
        /*0260*/                   STG.E.128 desc[UR4][R4.64], R8 ;
        /*0270*/                   LDS.128 R8, [R2] ;
"""


def test_sass_access_widths():
    dump = _SASS.replace("code for sm_80", "arch = sm_80").replace("code for sm_90", "arch = sm_90")
    funcs = split_sass_functions(dump)
    assert sass_access_widths(funcs[("_Z1kPf", "sm_80")]) == {"load": 16, "store": 2,
                                                               "n_load": 3, "n_store": 1}
    assert sass_access_widths(funcs[("_Z1kPf", "sm_90")]) == {"load": 0, "store": 16,
                                                               "n_load": 0, "n_store": 1}


def test_cuda_kernel_names():
    name = "void ddpm_fast::cuda::reverse_step_kernel<float, c10::Half>(float const*, long)"
    assert short_name(name) == "reverse_step_kernel"
    assert _template_args(name) == "float, c10::Half"
    assert _template_args("temb_add_f32(float*, int)") == ""
    anon = "void ddpm_fast::cuda::(anonymous namespace)::ddim_step_kernel<2>(void*, int)"
    assert short_name(anon) == "ddim_step_kernel" and _template_args(anon) == "2"


_EXT_LOG = """\
ptxas info    : Compiling entry function '_ZN9ddpm_fast4cuda19reverse_step_kernelIfLi4EEEvPKT_S4_PKdl' for 'sm_80'
ptxas info    : Function properties for _ZN9ddpm_fast4cuda19reverse_step_kernelIfLi4EEEvPKT_S4_PKdl
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 392 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN9ddpm_fast4cuda15temb_add_kernelIN3c104HalfEEEvPKT_S6_PS4_ll' for 'sm_90'
ptxas info    : Function properties for _ZN9ddpm_fast4cuda15temb_add_kernelIN3c104HalfEEEvPKT_S6_PS4_ll
    0 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 18 registers, used 0 barriers
"""


def _fake_build(tmp_path, body):
    script = tmp_path / "build_cuda_extension.sh"
    script.write_text("#!/usr/bin/env bash\nset -e\nOUT=$1\nmkdir -p \"$OUT\"\n" + body)
    return script


def _run_cuda_part(monkeypatch, tmp_path, body):
    monkeypatch.setattr(gpu_check, "run_workers", lambda *a, **k: [])
    (tmp_path / "ptxas.log").write_text(_EXT_LOG)
    script = _fake_build(tmp_path, body)
    out = tmp_path / "r.json"
    rc = gpu_check.main(["--build-script", str(script), "--cuda-out", str(tmp_path / "work"),
                         "--specs", "none:none", "--json", str(out)])
    return rc, json.loads(out.read_text())


def test_cuda_build_log_is_parsed_and_gated(monkeypatch, tmp_path):
    rc, report = _run_cuda_part(monkeypatch, tmp_path, f"cp {tmp_path}/ptxas.log \"$OUT\"/\n")
    recs = {(r["kernel"], r["arch"]): r for r in report["kernels"] if r["source"] == "cuda"}
    rs = recs[("reverse_step_kernel", "sm_80")]
    assert rs["regs"] == 40 and rs["elementwise"] and rs["fp32"] and rs["problems"] == []
    assert rs["config"] == "float, 4" and rs["load_bytes"] is None   # no library: width unknown
    ta = recs[("temb_add_kernel", "sm_90")]
    assert not ta["fp32"] and ta["problems"] == ["spills 4 B stores / 4 B loads"]
    assert rc == gpu_check.FAIL and report["status"] == "fail"
    assert any("no built library" in n for n in report["notes"] + report["incomplete"])


def test_cuda_build_failure_or_missing_script(monkeypatch, tmp_path):
    rc, report = _run_cuda_part(monkeypatch, tmp_path, "echo 'op temb_add has no CUDA kernel'\nexit 2\n")
    assert rc == gpu_check.FAIL
    build = [r for r in report["kernels"] if r["kernel"] == "<build>"][0]
    assert "exited 2" in build["error"] and "no CUDA kernel" in build["error"]
    monkeypatch.setattr(gpu_check, "run_workers", lambda *a, **k: [])
    rc = gpu_check.main(["--build-script", str(tmp_path / "missing.sh"), "--json", ""])
    assert rc == gpu_check.INCOMPLETE


def test_package_specs_compile_smoke():
    """The package's own aot_specs() contract: its first specialisation compiles for sm_90 (the
    whole set is `make gpu-check`, minutes; this keeps the interface honest in `make test`)."""
    from tools.triton_aot import worker_env
    env = worker_env()
    p = subprocess.run([sys.executable, "-m", "tools.triton_aot", "--archs", "90",
                        "--shard", "0/100000", "--cache-dir", ""],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (rec,) = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert rec["ok"], rec["error"]
    assert rec["regs"] > 0 and rec["arch"] == "sm_90" and rec["store_bytes"] >= 4
