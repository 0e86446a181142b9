"""Runs two ONNX models on the same samples with ONNX Runtime and compares their outputs.

Usage: python3 compare_models.py ORIGINAL FOLDED DATA.npz [--pin NAME=VALUE ...] [--tol 1e-5]

DATA.npz holds one array per input with a leading sample axis (the fixtures layout); keys
that are not inputs of ORIGINAL are skipped. Inputs the folded model no longer has (pinned
ones) are fed to the original only, from --pin. Prints one line per output with the max
absolute difference and exits 1 when any exceeds the tolerance, 2 on usage errors.
"""

import argparse
import sys

import numpy as np
import onnxruntime as ort


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("original")
    ap.add_argument("folded")
    ap.add_argument("data")
    ap.add_argument("--pin", action="append", default=[])
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--samples", type=int, default=8)
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    orig = ort.InferenceSession(a.original, so, providers=["CPUExecutionProvider"])
    fold = ort.InferenceSession(a.folded, so, providers=["CPUExecutionProvider"])
    orig_inputs = {i.name: i for i in orig.get_inputs()}
    fold_inputs = [i.name for i in fold.get_inputs()]

    pins = {}
    for p in a.pin:
        name, _, val = p.partition("=")
        if name not in orig_inputs:
            print(f"error: --pin {name}: no such input", file=sys.stderr)
            return 2
        dtype = np.int64 if "int64" in orig_inputs[name].type else np.float32
        pins[name] = np.array(float(val)).astype(dtype)

    data = np.load(a.data)
    keys = [k for k in data.files if k in orig_inputs]
    n = min(a.samples, min(data[k].shape[0] for k in keys))
    worst = {}
    for i in range(n):
        feed = {k: data[k][i] for k in keys}
        feed.update(pins)
        ref = orig.run(None, feed)
        got = fold.run(None, {k: feed[k] for k in fold_inputs})
        for o, r, g in zip(orig.get_outputs(), ref, got):
            if r.shape != g.shape:
                print(f"{o.name}: shapes differ {r.shape} vs {g.shape}")
                return 1
            d = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))) if r.size else 0.0
            worst[o.name] = max(worst.get(o.name, 0.0), d)
    bad = False
    for name, d in worst.items():
        ok = d <= a.tol
        bad |= not ok
        print(f"{name}: max abs diff {d:.3e} over {n} samples {'ok' if ok else 'FAIL'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
