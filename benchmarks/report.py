"""Ratio table and bar chart from pytest-benchmark's JSON of the sampler suite.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python -m benchmarks.report bench.json [--png chart.png]

Without a path, the newest JSON under .benchmarks/ (``--benchmark-autosave``) is read.
For each (model, batch) group: time per step (median of the rounds / steps), speedup against
diffusers' DDPMScheduler loop and against our reference loop, and the speed targets:
  CPU tiny UNet              best of ours >= 2x diffusers
  GPU identity model         sampler overhead per step <= 5 us (graph-captured)
  GPU cifar10 batch 1        >= 10x diffusers
  GPU cifar10 batch 256      within 10% of the compiled UNet forward ("forward") per step
  CPU constant model         >= 5x diffusers at 1x1x16x16, >= 2x at 64 and 256 x3x32x32
  CPU diffusers UNet2DModel  compiled sampler >= 2x diffusers' loop at batch 1
The PNG (Pillow, no matplotlib needed) draws the speedup over diffusers per group, log scale.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections import OrderedDict

IMPL_ORDER = ("diffusers", "reference", "fused", "compiled", "graph", "compiled_graph", "graph_loop", "forward")
OURS = ("fused", "compiled", "graph", "compiled_graph", "graph_loop")


def rows_from_json(data: dict) -> list[dict]:
    """One row per sampler benchmark: model, batch, steps, impl, device, s_per_step."""
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if info.get("suite") != "sampler":
            continue
        rows.append({"model": info["model"], "batch": info["batch"], "steps": info["steps"],
                     "impl": info["impl"], "device": info.get("device", "?"),
                     "device_name": info.get("device_name", "?"), "torch": info.get("torch", "?"),
                     "s_per_step": b["stats"]["median"] / info["steps"],
                     "interleaved": info.get("interleaved")})
    return rows


def rows_from_session(rows: list[dict]) -> list[dict]:
    """Rows collected during a pytest run (benchmarks/conftest.py) in the same form."""
    return [{**r, "s_per_step": r["median_s"] / r["steps"]} for r in rows]


def groups(rows: list[dict]) -> "OrderedDict[tuple, dict]":
    out: "OrderedDict[tuple, dict]" = OrderedDict()
    for r in sorted(rows, key=lambda r: (r["device"], ("identity", "tiny", "cifar10").index(r["model"])
                                         if r["model"] in ("identity", "tiny", "cifar10") else 9, r["batch"])):
        out.setdefault((r["device"], r["model"], r["batch"]), {})[r["impl"]] = r
    return out


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:8.1f} us"
    return f"{s * 1e3:8.2f} ms"


def ratio_table(rows: list[dict]) -> str:
    lines = [f"{'device':6} {'model':9} {'batch':>5} {'impl':15} {'per step':>11} {'x diffusers':>12} {'x reference':>12}"]
    for (dev, model, batch), impls in groups(rows).items():
        base_d = impls.get("diffusers", {}).get("s_per_step")
        base_r = impls.get("reference", {}).get("s_per_step")
        for impl in sorted(impls, key=lambda i: IMPL_ORDER.index(i) if i in IMPL_ORDER else 99):
            s = impls[impl]["s_per_step"]
            vd = f"{base_d / s:11.2f}x" if base_d else f"{'-':>12}"
            vr = f"{base_r / s:11.2f}x" if base_r else f"{'-':>12}"
            lines.append(f"{dev:6} {model:9} {batch:5d} {impl:15} {_fmt_time(s):>11} {vd} {vr}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _best(impls: dict, names=OURS):
    cands = [(impls[n]["s_per_step"], n) for n in names if n in impls]
    return min(cands) if cands else (None, None)


# benchmarks/bench_cpu_targets.py: constant model at 1x16x16 (batch 1, per-step overhead) and
# 3x32x32 (batch 64 and 256), and a small diffusers UNet2DModel compiled at batch 1
CPU_TARGETS = {"const1x16": 5.0, "const3x32": 2.0, "dunet": 2.0}


def targets(rows: list[dict]) -> list[str]:
    """The speed targets that these rows can speak to, each with PASS/MISS."""
    out = []
    g = groups(rows)
    for (dev, model, batch), impls in g.items():
        d = impls.get("diffusers", {}).get("s_per_step")
        s, name = _best(impls)
        if dev == "cpu" and model == "tiny" and d and s:
            out.append(_verdict(f"CPU tiny UNet b{batch}: {name} {d / s:.2f}x diffusers (target >= 2x)", d / s >= 2))
        if dev == "cpu" and model in CPU_TARGETS and d and s:
            goal = CPU_TARGETS[model]
            inter = impls[name].get("interleaved")
            if inter:   # alternating rounds in one process (bench_cpu_targets.py): the verdict's ratio
                ratio = inter["ratio"]
                text = (f"CPU {model} b{batch}: {name} {ratio:.2f}x diffusers, interleaved rounds "
                        f"(separate medians {d / s:.2f}x) (target >= {goal:g}x)")
            else:
                ratio, text = d / s, f"CPU {model} b{batch}: {name} {d / s:.2f}x diffusers (target >= {goal:g}x)"
            out.append(_verdict(text, ratio >= goal))
        if dev.startswith("cuda") and model == "identity":
            gs, gname = _best(impls, ("graph", "compiled_graph", "graph_loop"))
            if gs:
                out.append(_verdict(f"GPU identity b{batch}: {gname} {gs * 1e6:.2f} us/step "
                                    "(target <= 5 us)", gs <= 5e-6))
        if dev.startswith("cuda") and model == "cifar10" and batch == 1 and d and s:
            out.append(_verdict(f"GPU cifar10 b1: {name} {d / s:.1f}x diffusers (target >= 10x)", d / s >= 10))
        if dev.startswith("cuda") and model == "cifar10" and batch == 256 and s and "forward" in impls:
            f = impls["forward"]["s_per_step"]
            out.append(_verdict(f"GPU cifar10 b256: {name} {s / f:.3f}x the compiled forward per step "
                                "(target <= 1.10x)", s <= 1.10 * f))
    return out


def _verdict(text: str, ok: bool) -> str:
    return f"[{'PASS' if ok else 'MISS'}] {text}"


# --- the PNG (Pillow) -----------------------------------------------------------------------------

COLORS = {"diffusers": (150, 150, 150), "reference": (90, 120, 200), "fused": (60, 170, 110),
          "compiled": (230, 140, 40), "graph": (200, 60, 60), "compiled_graph": (150, 40, 150),
          "graph_loop": (40, 40, 40), "forward": (200, 200, 80)}


def bar_chart(rows: list[dict], path: str) -> str:
    """Speedup over diffusers (log2 axis) per (model, batch) group, one bar per impl."""
    from PIL import Image, ImageDraw
    g = [(k, v) for k, v in groups(rows).items() if "diffusers" in v]
    impls = [i for i in IMPL_ORDER if any(i in v for _, v in g)]
    bar, gap, left, top, height = 14, 26, 70, 50, 360
    width = left + len(g) * (len(impls) * bar + gap) + 20 + 160
    img = Image.new("RGB", (max(width, 420), top + height + 70), "white")
    d = ImageDraw.Draw(img)
    speeds = [v["diffusers"]["s_per_step"] / v[i]["s_per_step"] for _, v in g for i in v]
    lo = min([1.0] + speeds) / 1.5
    hi = max([2.0] + speeds) * 1.5
    span = math.log2(hi) - math.log2(lo)

    def y(v: float) -> float:
        return top + height - (math.log2(v) - math.log2(lo)) / span * height

    title = f"ddpm_fast sampler: speedup over diffusers' DDPMScheduler loop ({rows[0]['device_name']}, torch {rows[0]['torch']})" if rows else ""
    d.text((10, 10), title, fill="black")
    for k in range(int(math.floor(math.log2(lo))), int(math.ceil(math.log2(hi))) + 1):
        v = 2.0 ** k
        if lo <= v <= hi:
            d.line([(left - 5, y(v)), (width - 170, y(v))], fill=(225, 225, 225))
            d.text((8, y(v) - 6), f"{v:g}x", fill="black")
    d.line([(left, y(1.0)), (width - 170, y(1.0))], fill="black")
    x = left
    for (dev, model, batch), v in g:
        base = v["diffusers"]["s_per_step"]
        for i in impls:
            if i in v:
                sp = base / v[i]["s_per_step"]
                y0, y1 = sorted((y(1.0), y(sp)))
                d.rectangle([x, y0, x + bar - 2, y1], fill=COLORS.get(i, (0, 0, 0)))
            x += bar
        d.text((x - len(impls) * bar, top + height + 8), f"{model}", fill="black")
        d.text((x - len(impls) * bar, top + height + 22), f"b{batch} {dev}", fill="black")
        x += gap
    lx = width - 160
    for n, i in enumerate(impls):
        d.rectangle([lx, top + n * 18, lx + 12, top + n * 18 + 12], fill=COLORS.get(i, (0, 0, 0)))
        d.text((lx + 18, top + n * 18), i, fill="black")
    img.save(path)
    return path


def _newest_json() -> str | None:
    files = glob.glob(os.path.join(".benchmarks", "**", "*.json"), recursive=True)
    return max(files, key=os.path.getmtime) if files else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="?", help="pytest-benchmark JSON (default: newest under .benchmarks/)")
    p.add_argument("--png", help="bar chart path (default: <json without .json>_sampler.png)")
    args = p.parse_args(argv)
    path = args.json or _newest_json()
    if not path:
        print("no JSON given and none under .benchmarks/; run pytest benchmarks/ --benchmark-only "
              "--benchmark-json=bench.json first", file=sys.stderr)
        return 2
    if not os.path.isfile(path):
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    with open(path) as f:
        rows = rows_from_json(json.load(f))
    if not rows:
        print(f"{path}: no sampler benchmarks (extra_info suite=sampler)", file=sys.stderr)
        return 1
    print(f"{path}: {rows[0]['device_name']}, torch {rows[0]['torch']}")
    print(ratio_table(rows))
    print()
    for line in targets(rows):
        print(line)
    png = args.png or (path[:-5] if path.endswith(".json") else path) + "_sampler.png"
    print(f"\nchart: {bar_chart(rows, png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
