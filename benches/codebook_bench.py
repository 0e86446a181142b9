#!/usr/bin/env python3
"""Non-uniform weight grids (``quantize --weight-grid kmeans|pow2``) against uniform ones at
4 and 3 bits per weight, static mode (u8 activations calibrated as by default), scored in
ONNX Runtime.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/codebook_bench.py [--models DIR] [--qrange PATH] [--out DIR]
                                      [--only NAME[,NAME]] [--bits 4,3] [--size-budget F[,F]]

Per model (``DIR/<name>/model.onnx`` with ``calib.npz`` and ``eval.npz``) and bit width B,
each grid below is written by

    qrange quantize MODEL --calib calib.npz --weight-bits B [grid flags] --no-validate --json -o OUT

- ``uniform RTN``: per-channel symmetric codes on the min/max range (int4 [-(2^(B-1)-1), …]);
- ``uniform MSE clip``: the same with ``--weight-method mse`` (per channel, the range shrink
  of least squared error: the best uniform grid qrange has);
- ``kmeans``: ``--weight-grid kmeans``, 2^B levels per channel, weighted by input energy;
- ``pow2``: ``--weight-grid pow2``, levels 0, ±2^j per channel;
plus the int8 default as a reference, and with ``--size-budget F[,F…]`` a row for
``--size-budget`` at each F × the float model's size (each weight's storage chosen by qrange;
the weight SQNR column then shows the written model's, and the storage column counts the
weights per storage, ``w4b32`` for int4 in blocks of 32…). Reported: weight SQNR over every quantized weight
(qrange's summary, ``weight_sqnr_db``); in ONNX Runtime (CPU EP) on every evaluation sample,
output SQNR and the task metric against fp32 (see quant_bench.py and dynamic_bench.py);
file size against fp32; median single-thread latency against fp32's. Exit status 0 when the
run completed (a failing configuration is a result), 2 when it could not run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dynamic_bench as db  # noqa: E402  (scoring and the embedding metrics)
import quant_bench as qb  # noqa: E402  (the shared ONNX Runtime helpers)

MODELS = {
    "magika": {"metric": "top1", "pins": {}, "output": None},
    "ppocr_cls": {"metric": "top1", "pins": {}, "output": None},
    "ppocr_det": {"metric": "iou", "pins": {}, "output": None},
    "minilm_l3": {"metric": "embedding", "pins": {}, "output": "461"},
}
GRIDS = [
    ("uniform RTN", []),
    ("uniform MSE clip", ["--weight-method", "mse"]),
    ("kmeans", ["--weight-grid", "kmeans"]),
    ("pow2", ["--weight-grid", "pow2"]),
]


def quantize(qrange: str, model: str, calib: str, out: str, flags: list[str]) -> dict:
    cmd = [qrange, "quantize", model, "--calib", calib, "--no-validate", "--json", "-o", out, *flags]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(qb.one_line(p.stderr or p.stdout))
    return json.loads(p.stdout)


def bench(name: str, args) -> list[dict]:
    ref = db.Reference(args.models, name, MODELS[name])
    model, calib = ref.model, os.path.join(args.models, name, "calib.npz")
    rows = [{"model": name, "grid": "fp32", "bits": 32, "path": model}]
    runs = [("uniform int8 (default)", 8, [])]
    for b in args.bits:
        for label, flags in GRIDS:
            runs.append((label, b, ["--weight-bits", str(b), *flags]))
    for f in args.size_budget:
        mb = math.floor(f * os.path.getsize(model) / 1e6 * 1e4) / 1e4  # never above F x fp32
        runs.append((f"--size-budget {mb:.4f} ({f}x fp32)", "mixed", ["--size-budget", f"{mb:.4f}"]))
    for i, (label, b, flags) in enumerate(runs):
        out = os.path.join(args.out, f"{name}.{i}.onnx")
        row = {"model": name, "grid": label, "bits": b, "path": out}
        qb.log(f"  {name}: {label} {b}-bit")
        try:
            s = quantize(args.qrange, model, calib, out, flags)
            row["weight_sqnr_db"] = s.get("weight_sqnr_db")
            budget = s.get("size_budget") or {}
            kinds: dict[str, int] = {}
            for w in budget.get("weights", []):
                kinds[w["storage"]] = kinds.get(w["storage"], 0) + 1
            row["storage"] = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            row.update(ref.scored(out))
        except Exception as e:  # a configuration failing is a result
            row["error"] = qb.one_line(str(e))
        rows.append(row)
    lat = ref.latencies(rows, args.latency_runs, args.latency_budget)
    for i, r in enumerate(rows):
        if i in lat:
            r["latency_vs_fp32"] = lat[i] / lat[0]
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | bits | weight grid | weight SQNR dB | output SQNR dB | task metric | size vs fp32 | latency vs fp32 (1 thread) | storage (size budget) |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if r["grid"] == "fp32":
            continue
        if "error" in r:
            lines.append(f"| {r['model']} | {r['bits']} | {r['grid']} | failed: {r['error']} | | | | | |")
            continue
        if "nn_agreement" in r:
            metric = f"cos {r['cos_mean']:.4f} / min {r['cos_min']:.4f}, NN {r['nn_agreement']:.3f}"
        else:
            metric = qb.fmt(r.get("metric"), ".4f")
        lines.append(
            f"| {r['model']} | {r['bits']} | {r['grid']} | {qb.fmt(r.get('weight_sqnr_db'), '.2f')} | "
            f"{r['sqnr_db']:.2f} | {metric} | {r['size_ratio']:.3f} | {r.get('latency_vs_fp32', float('nan')):.2f} | "
            f"{r.get('storage', '')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = qb.bench_parser(__doc__, "codebook_bench")
    ap.add_argument("--bits", default="4,3")
    ap.add_argument("--size-budget", default="",
                    help="also run --size-budget at these fractions of the float model's size (comma-separated)")
    ap.add_argument("--latency-runs", type=int, default=30)
    ap.add_argument("--latency-budget", type=float, default=5.0)
    args = ap.parse_args()
    args.bits = [int(b) for b in args.bits.split(",") if b]
    args.size_budget = [float(f) for f in args.size_budget.split(",") if f]
    rows = db.bench_models(args, MODELS, bench)
    if rows is None:
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
