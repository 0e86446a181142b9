#!/usr/bin/env python3
"""Learned rounding (``quantize --rounding adaround``) against round-to-nearest for 4-bit
per-channel uniform weights (static mode, u8 activations calibrated as by default), scored
in ONNX Runtime.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/adaround_bench.py [--models DIR] [--qrange PATH] [--out DIR]
                                      [--only NAME[,NAME]] [--bits 4] [--iters N] [--rows N]
                                      [--passes N]

Per model (``DIR/<name>/model.onnx`` with ``calib.npz`` and ``eval.npz``) and bit width B,
both roundings are written by

    qrange quantize MODEL --calib calib.npz --weight-bits B [--rounding adaround] \\
        --no-validate --json -o OUT

Reported: wall time of the command; the layers' output SQNR on their calibration rows as
the summary's adaround note gives it (nearest and learned); weight SQNR (the summary's
``weight_sqnr_db``); in ONNX Runtime (CPU EP) on every evaluation sample, output SQNR and
the task metric against fp32 (ppocr_det: mask IoU at threshold 0.3; magika: top-1 agreement
with fp32 / accuracy, as in codebook_bench.py). Exit status 0 when the run completed (a
failing configuration is a result), 2 when it could not run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import codebook_bench as cb  # noqa: E402  (the models and their metrics)
import dynamic_bench as db  # noqa: E402  (scoring)
import quant_bench as qb  # noqa: E402  (the shared ONNX Runtime helpers)

MODELS = {k: cb.MODELS[k] for k in ("ppocr_det", "magika")}


def quantize(qrange: str, model: str, calib: str, out: str, flags: list[str]) -> tuple[dict, float]:
    cmd = [qrange, "quantize", model, "--calib", calib, "--no-validate", "--json", "-o", out, *flags]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(qb.one_line(p.stderr or p.stdout))
    return json.loads(p.stdout), wall


def layer_sqnr(summary: dict) -> tuple[float | None, float | None]:
    for n in summary.get("notes", []):
        m = re.search(r"calibration rows ([-\d.]+) dB \(nearest ([-\d.]+) dB\)", n)
        if m:
            return float(m.group(2)), float(m.group(1))
    return None, None


def bench(name: str, args) -> list[dict]:
    ref = db.Reference(args.models, name, MODELS[name])
    model, calib = ref.model, os.path.join(args.models, name, "calib.npz")
    rows = []
    for b in args.bits:
        for label, flags in [
            ("nearest", []),
            ("adaround", ["--rounding", "adaround", "--adaround-iters", str(args.iters),
                          "--adaround-rows", str(args.rows),
                          *(["--adaround-passes", str(args.passes)] if args.passes else [])]),
        ]:
            out = os.path.join(args.out, f"{name}.w{b}.{label}.onnx")
            row = {"model": name, "bits": b, "rounding": label}
            qb.log(f"  {name}: {label} {b}-bit")
            try:
                s, wall = quantize(args.qrange, model, calib, out, ["--weight-bits", str(b), *flags])
                row["wall_s"] = wall
                row["weight_sqnr_db"] = s.get("weight_sqnr_db")
                row["layer_nearest_db"], row["layer_db"] = layer_sqnr(s)
                row.update(ref.scored(out))
            except Exception as e:  # a configuration failing is a result
                row["error"] = qb.one_line(str(e))
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | weights | rounding | layer output SQNR dB (calibration rows) | weight SQNR dB | output SQNR dB | task metric | quantize wall s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        w = f"W{r['bits']}A8 per channel"
        if "error" in r:
            lines.append(f"| {r['model']} | {w} | {r['rounding']} | failed: {r['error']} | | | | |")
            continue
        layer = "" if r["layer_db"] is None else f"{r['layer_db']:.2f} (nearest {r['layer_nearest_db']:.2f})"
        lines.append(
            f"| {r['model']} | {w} | {r['rounding']} | {layer} | {qb.fmt(r.get('weight_sqnr_db'), '.2f')} | "
            f"{r['sqnr_db']:.2f} | {qb.fmt(r.get('metric'), '.4f')} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = qb.bench_parser(__doc__, "adaround_bench")
    ap.add_argument("--bits", default="4")
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--passes", type=int, default=0, help="--adaround-passes (default: qrange's, one per depth)")
    args = ap.parse_args()
    args.bits = [int(b) for b in args.bits.split(",") if b]
    rows = db.bench_models(args, MODELS, bench)
    if rows is None:
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
