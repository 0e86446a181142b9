#!/usr/bin/env python3
"""Cross-layer equalization (``quantize --equalize``) and empirical bias correction
(``--bias-correction``) in static mode, scored in ONNX Runtime.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/cle_bench.py [--models DIR] [--qrange PATH] [--out DIR]
                                 [--only NAME[,NAME]] [--weights pc8,pt8,pc4]

Per model (``DIR/<name>/model.onnx`` with ``calib.npz`` and ``eval.npz``) and weight setting

- ``pc8``: int8 weights per output channel (the default),
- ``pt8``: int8 weights per tensor (``--per-tensor``),
- ``pc4``: 4-bit uniform weights per output channel (``--weight-bits 4``),

four models are written by

    qrange quantize MODEL --calib calib.npz [setting] --equalize off|on [--bias-correction]
                    --no-validate --json -o OUT

(neither, equalization only, bias correction only, both). Each is run in ONNX Runtime (CPU EP)
on every evaluation sample: output SQNR against fp32 and the task metric (ppocr_cls and
magika: top-1 accuracy against the labels, fp32's in the first row; ppocr_det: IoU of the
maps thresholded at 0.3 against fp32's). Exit status 0 when the run completed (a failing
configuration is a result), 2 when it could not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dynamic_bench as db  # noqa: E402  (the fp32 reference and scoring)
import quant_bench as qb  # noqa: E402  (the shared ONNX Runtime helpers)

MODELS = {
    "ppocr_cls": {"metric": "top1", "pins": {}, "output": None},
    "magika": {"metric": "top1", "pins": {}, "output": None},
    "ppocr_det": {"metric": "iou", "pins": {}, "output": None},
}
WEIGHTS = {
    "pc8": ("int8 per channel", []),
    "pt8": ("int8 per tensor", ["--per-tensor"]),
    "pc4": ("4-bit per channel", ["--weight-bits", "4"]),
}
VARIANTS = [
    ("-", ["--equalize", "off"]),
    ("CLE", ["--equalize", "on"]),
    ("BC", ["--equalize", "off", "--bias-correction"]),
    ("CLE+BC", ["--equalize", "on", "--bias-correction"]),
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
    fp32 = ref.ref[ref.primary]
    fp32_metric = qb.task_metric(MODELS[name]["metric"], fp32, fp32, ref.labels)
    rows = [{"model": name, "weights": "fp32", "variant": "", "metric": fp32_metric}]
    for w in args.weights:
        wlabel, wflags = WEIGHTS[w]
        for vlabel, vflags in VARIANTS:
            out = os.path.join(args.out, f"{name}.{w}.{vlabel.replace('+', '_')}.onnx")
            row = {"model": name, "weights": wlabel, "variant": vlabel}
            qb.log(f"  {name}: {wlabel} {vlabel}")
            try:
                quantize(args.qrange, model, calib, out, [*wflags, *vflags])
                row.update(ref.scored(out))
            except Exception as e:  # a configuration failing is a result
                row["error"] = qb.one_line(str(e))
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | weights | CLE / bias correction | output SQNR dB | task metric |", "|---|---|---|---|---|"]
    for r in rows:
        if r["weights"] == "fp32":
            lines.append(f"| {r['model']} | fp32 | | | {qb.fmt(r.get('metric'), '.4f')} |")
        elif "error" in r:
            lines.append(f"| {r['model']} | {r['weights']} | {r['variant']} | failed: {r['error']} | |")
        else:
            lines.append(
                f"| {r['model']} | {r['weights']} | {r['variant']} | {r['sqnr_db']:.2f} | {qb.fmt(r.get('metric'), '.4f')} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = qb.bench_parser(__doc__, "cle_bench")
    ap.add_argument("--weights", default="pc8,pt8,pc4")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    args = ap.parse_args()
    args.weights = [w for w in args.weights.split(",") if w]
    for w in args.weights:
        if w not in WEIGHTS:
            print(f"error: --weights {w!r} is not one of {', '.join(WEIGHTS)}", file=sys.stderr)
            return 2
    rows = db.bench_models(args, MODELS, bench)
    if rows is None:
        return 2
    if args.json:
        qb.write_atomic(args.json, json.dumps(qb.json_safe(rows), indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
