"""The Triton ops as torch ops: fake implementations (opcheck), torch.compile(fullgraph=True)
with no graph breaks, and ahead-of-time compiles of the kernels for sm_80/sm_90 (in a subprocess
without TRITON_INTERPRET) with 16-byte vector accesses in the PTX."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ddpm_fast.ops import dispatch
from ddpm_fast.schedule import NoiseSchedule

pytestmark = pytest.mark.triton

from triton_env import DEV, HAS_CUDA, triton_ops_or_skip  # noqa: E402

ops = triton_ops_or_skip()
import ddpm_fast.ops.triton as T  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED = torch.tensor(42, dtype=torch.int64, device=DEV)


def _samples():
    table = NoiseSchedule.linear(10).table(DEV)
    x = torch.randn(2, 3, 2, 2, device=DEV)
    m = torch.randn(2, 3, 2, 2, device=DEV)
    t = torch.tensor([0, 7], device=DEV)
    tp = torch.tensor([-1, 5], device=DEV)
    w, b, temb = torch.randn(3, device=DEV), torch.randn(3, device=DEV), torch.randn(2, 3, device=DEV)
    return [
        (ops.philox_normal, (SEED, t, 2, 12, 3, 1)),
        (ops.philox_uniform, (SEED, t, 2, 12, 3, 1)),
        (ops.q_sample, (x, t, table, m)),
        (ops.q_sample_seeded, (x, t, table, SEED, 0, 2)),
        (ops.reverse_step, (x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None)),
        (ops.reverse_step_out, (x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None, torch.empty_like(x))),
        (ops.ddim_step, (x, m, t.clamp(min=1), tp, table, None, SEED, 0, 0.5, 0, True, 1.0, 1.0, None)),
        (ops.temb_add, (x, temb)),
        (ops.groupnorm_temb_silu, (x, w, b, temb, 3, 1e-5, 1, True)),
    ]


@pytest.mark.parametrize("op,args", _samples(), ids=lambda v: getattr(v, "__name__", "")[:40] or None)
def test_opcheck(op, args):
    # schema, fake tensor and dispatch checks; no autograd (the ops are inference-only)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor",
                                                "test_aot_dispatch_static"))


def test_fake_shapes_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(4, 3, 5, 5, dtype=torch.bfloat16, device=DEV)
        table = torch.empty(10, 16, dtype=torch.float64, device=DEV)
        t = torch.empty(4, dtype=torch.int64, device=DEV)
        seed = torch.empty((), dtype=torch.int64, device=DEV)
        y = ops.reverse_step(x, x, t, table, None, seed, 0, 0, 0, True, 1.0, None)
        xt, tgt = ops.q_sample_seeded(x, t, table, seed, 0, 2)
        z = ops.philox_normal(seed, t, 4, 75, 0, 1)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert xt.shape == tgt.shape == x.shape and tgt.dtype == torch.bfloat16
    assert z.shape == (4, 75) and z.dtype == torch.float32


def test_torch_compile_fullgraph_no_graph_breaks():
    """A sampler step through the dispatcher's triton implementations compiles as one graph.
    On CPU the ops are custom_ops around interpreter kernels, so the 'aot_eager' backend (no
    Inductor C++ codegen needed) checks the tracing; on CUDA Inductor compiles it."""
    table = NoiseSchedule.linear(10).table(DEV)
    rs = dispatch.implementation("reverse_step", "triton", DEV)
    ta = dispatch.implementation("temb_add", "triton", DEV)
    gn = dispatch.implementation("groupnorm_temb_silu", "triton", DEV)

    def step(x, t, temb, w, b):
        h = gn(x, w, b, temb, 3, 1e-5, 2, True)
        m = ta(h, temb) * 0.5
        return rs(x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None)

    x = torch.randn(2, 3, 4, 4, device=DEV)
    t = torch.tensor([3, 0], device=DEV)
    temb, w, b = torch.randn(2, 3, device=DEV), torch.randn(3, device=DEV), torch.randn(3, device=DEV)
    torch._dynamo.reset()
    explain = torch._dynamo.explain(step)(x, t, temb, w, b)
    assert explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(step, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    torch.testing.assert_close(compiled(x, t, temb, w, b), step(x, t, temb, w, b))


_AOT_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from tools.triton_specs import aot_specs
    want = json.loads(sys.argv[1])
    out = []
    for s in aot_specs():
        if s.name not in want:
            continue
        names = list(s.fn.arg_names)
        attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in s.divisible_args}
        for cc in (80, 90):
            k = triton.compile(ASTSource(fn=s.fn, signature=s.signature, constexprs=s.constexprs, attrs=attrs),
                               target=GPUTarget("cuda", cc, 32),
                               options={"num_warps": s.num_warps, "num_stages": s.num_stages})
            ptx = k.asm["ptx"]
            out.append({"name": s.name, "cc": cc, "elementwise": s.elementwise,
                        "ld_v4": bool(re.search(r"ld\\.global(\\.\\w+)*\\.v4\\.", ptx)),
                        "st_v4": bool(re.search(r"st\\.global(\\.\\w+)*\\.v4\\.", ptx)),
                        "st_shared": len(re.findall(r"st\\.shared", ptx)),
                        "cubin": len(k.asm.get("cubin", b""))})
    print("JSON" + json.dumps(out))
""")


def test_aot_specs_contract():
    """tools/triton_specs.py describes every kernel/config/dtype the launchers use, one op name
    per launcher of the op table but the out-variant (its kernel is reverse_step's; checked
    without compiling, in a subprocess: under the interpreter fn is not a JITFunction)."""
    code = textwrap.dedent("""
        import json
        from tools.triton_specs import aot_specs
        specs = aot_specs()
        assert len({s.name for s in specs}) == len(specs), "duplicate spec names"
        for s in specs:
            assert list(s.signature) == list(s.fn.arg_names), s.name
            assert all(s.signature[k] == "constexpr" for k in s.constexprs), s.name
            assert all(a in s.signature for a in s.divisible_args), s.name
        print("JSON" + json.dumps(sorted({s.op for s in specs})))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    # a spec's op may carry a ":phase" suffix (one op launched as several kernels, e.g. the
    # GroupNorm split path's statistics and apply passes): the suffix groups gpu-check's rows
    got = sorted({op.split(":", 1)[0] for op in json.loads(res.stdout.split("JSON", 1)[1])})
    from ddpm_fast.ops.table import BY_NAME
    assert got == sorted(op for op in T.LAUNCHERS if not BY_NAME[op].out_of)


@pytest.mark.slow
def test_default_configs_compile_for_sm80_sm90_with_16_byte_accesses():
    """The default (first) config of each element-wise kernel at fp32 and bf16, and groupnorm,
    compile ahead of time for sm_80 and sm_90; element-wise kernels use ld/st.global.v4 and
    no shared-memory shuffles. (The full spec list is tools/gpu_check.py's job.)"""
    pytest.importorskip("triton.backends.nvidia")
    names = [f"{op}[{dt},BLOCK=1024,warps=4]" for op in ("reverse_step", "q_sample_seeded", "ddim_step",
                                                         "temb_add", "philox_normal") for dt in ("fp32", "bf16")
             if not (op == "philox_normal" and dt == "bf16")]
    names.append("groupnorm_temb_silu[fp32,BLOCK=1024,warps=4]")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, json.dumps(names)], env=env, capture_output=True,
                         text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = json.loads(res.stdout.split("JSON", 1)[1])
    assert {r["name"] for r in recs} == set(names) and len(recs) == 2 * len(names)
    for r in recs:
        assert r["cubin"] > 0, r
        assert r["st_v4"], r
        if r["elementwise"]:
            assert r["st_shared"] == 0, r
            assert r["ld_v4"] or r["name"].startswith("philox"), r
