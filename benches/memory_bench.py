#!/usr/bin/env python3
"""Wall time and peak RSS of qrange's commands on large generated models, as a multiple of the
model's size, with one ONNX Runtime session as the reference.

Usage:
    python3 benches/memory_bench.py [--sizes small,large] [--work DIR] [--qrange PATH]
                                    [--only inspect,convert,...] [--keep] [--json FILE]

For each size, `fixtures/gen/large_model.py --size SIZE` writes the model (N chained MatMul +
Relu layers, float weights in external data) and its data into `--work/SIZE` (default
/tmp/qrange-memory; the large model takes 2.4 GB of disk), then every command runs in a fresh
process under `/usr/bin/time -v` (wall time, "Maximum resident set size"):

| key | command |
|---|---|
| inspect | `qrange inspect model.onnx` |
| convert | `qrange convert model.onnx out.onnx` (external data stays external) |
| convert-inline | `qrange convert model.onnx out.onnx --inline` (past 2 GiB it switches to external data itself) |
| run | `qrange run model.onnx --data run.npz -o out.npz` (2 samples) |
| run-calib | `qrange run model.onnx --data calib.npz -o out.npz` (the 8 samples `quantize` calibrates on) |
| quantize | `qrange quantize model.onnx --calib calib.npz -o q.onnx --no-validate --json` (static, 8 samples; the summary's seconds per step are reported) |
| weight-only | `qrange quantize model.onnx --mode weight-only -o q.onnx --no-validate` (int4, blocks of 32, RTN) |
| read | `dd if=model.onnx.data of=/dev/null bs=4M`: reading the weights once (from the page cache when the commands before it read them) |
| ort | one ONNX Runtime session (CPU) built on model.onnx and run on one sample |

"x model" is peak RSS over the model's size on disk (model file plus its external data). Each
command's outputs are deleted after it ran, and the generated model after its size is done
unless `--keep`. Peak RSS counts file-backed pages the process touched, as the kernel reports
them. Needs: numpy, onnx, onnxruntime; `/usr/bin/time`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_bench as qb  # noqa: E402  (timed runs under /usr/bin/time -v, shared helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "fixtures", "gen", "large_model.py")
KEYS = ["inspect", "convert", "convert-inline", "run", "run-calib", "quantize", "weight-only", "read", "ort"]

ORT_SESSION = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])["x"][0]
s.run(None, {"x": x})
"""


def commands(qrange: str, d: str) -> dict:
    m = os.path.join(d, "model.onnx")
    out = os.path.join(d, "out")
    return {
        "inspect": [qrange, "inspect", m],
        "convert": [qrange, "convert", m, os.path.join(out, "c.onnx")],
        "convert-inline": [qrange, "convert", m, os.path.join(out, "c.onnx"), "--inline"],
        "run": [qrange, "run", m, "--data", os.path.join(d, "run.npz"), "-o",
                os.path.join(out, "y.npz")],
        "run-calib": [qrange, "run", m, "--data", os.path.join(d, "calib.npz"), "-o",
                      os.path.join(out, "y.npz")],
        "quantize": [qrange, "quantize", m, "--calib", os.path.join(d, "calib.npz"), "-o",
                     os.path.join(out, "q.onnx"), "--no-validate", "--json"],
        "weight-only": [qrange, "quantize", m, "--mode", "weight-only", "-o",
                        os.path.join(out, "q.onnx"), "--no-validate"],
        "read": ["dd", f"if={m}.data", "of=/dev/null", "bs=4M"],
        "ort": [sys.executable, "-c", ORT_SESSION, m, os.path.join(d, "run.npz")],
    }


def model_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for f in ("model.onnx", "model.onnx.data"))


def bench_size(size: str, args) -> list[dict]:
    d = os.path.join(args.work, size)
    if not os.path.isfile(os.path.join(d, "model.onnx")):
        qb.log(f"generating the {size} model in {d}")
        subprocess.run([sys.executable, GEN, d, "--size", size], check=True)
    total = model_bytes(d)
    rows = []
    for key, cmd in commands(args.qrange, d).items():
        if args.only and key not in args.only:
            continue
        out = os.path.join(d, "out")
        os.makedirs(out, exist_ok=True)
        rec = qb.timed_run(cmd, key, os.path.join(d, "logs"), False, args.timeout)
        shutil.rmtree(out, ignore_errors=True)
        peak = rec.get("peak_mb")
        steps = None
        if key == "quantize" and rec["rc"] == 0:
            try:
                with open(os.path.join(d, "logs", key + ".out")) as f:
                    steps = json.load(f).get("seconds")
            except (OSError, ValueError):
                steps = None
        rows.append({
            "size": size,
            "model_mb": total / 1e6,
            "command": key,
            "rc": rec["rc"],
            "wall_s": rec["wall_s"],
            "cpu_s": rec.get("cpu_s"),
            "steps_s": steps,
            "peak_mb": peak * 1024 * 1024 / 1e6 if peak is not None else None,
            "x_model": peak * 1024 * 1024 / total if peak is not None else None,
            "error": rec.get("err_line"),
        })
        r = rows[-1]
        qb.log(f"  {size} {key}: rc {r['rc']}, {r['wall_s']:.1f} s (CPU {r['cpu_s'] or 0:.1f} s), "
               f"{r['peak_mb']:.0f} MB, {r['x_model']:.2f}x")
    if not args.keep:
        for f in ("model.onnx", "model.onnx.data", "calib.npz", "run.npz"):
            try:
                os.remove(os.path.join(d, f))
            except FileNotFoundError:
                pass
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | command | wall s | CPU s | peak RSS MB | x model | notes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        note = "" if r["rc"] == 0 else f"exit {r['rc']}: {r['error'] or ''}"
        if r.get("steps_s"):
            note += "steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["steps_s"].items())
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "-"
        lines.append(f"| {r['size']} ({r['model_mb']:.0f} MB) | {r['command']} | "
                     f"{r['wall_s']:.1f} | {cpu} | {r['peak_mb']:.0f} | {r['x_model']:.2f} | {note} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--work", default="/tmp/qrange-memory")
    ap.add_argument("--qrange", default=None)
    ap.add_argument("--only", default="", help=f"commands to run, of {','.join(KEYS)}")
    ap.add_argument("--keep", action="store_true", help="keep the generated models")
    ap.add_argument("--timeout", type=float, default=4 * 3600)
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()
    if args.qrange is None:
        rel = os.path.join(ROOT, "target", "release", "qrange")
        args.qrange = rel if os.path.isfile(rel) else os.path.join(ROOT, "target", "debug", "qrange")
    args.only = [k for k in args.only.split(",") if k]
    bad = [k for k in args.only if k not in KEYS]
    if bad:
        sys.exit(f"error: unknown command key(s) {bad}; known: {KEYS}")
    qb.log(f"qrange: {args.qrange}")
    rows = []
    for size in args.sizes.split(","):
        rows += bench_size(size, args)
        if args.json:
            qb.write_atomic(args.json, json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
