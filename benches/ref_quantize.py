#!/usr/bin/env python3
"""One reference quantization run with ONNX Runtime's quantizer, in its own process.

Launched by ``quant_bench.py`` (under ``/usr/bin/time -v``) once per model and
calibration method, so that wall time and peak RSS belong to this run alone.

Usage:
    ref_quantize.py --model IN.onnx --calib calib.npz --method {MinMax,Entropy,Percentile}
                    --out OUT.onnx --status STATUS.json [--opset13] [--workdir DIR]

Steps:
1. ``--opset13``: upgrade the model to opset 13 with ``onnx.version_converter``
   first (ONNX Runtime refuses per-channel DequantizeLinear below opset 13);
   a model already at opset 13 or above is left as it is.
2. ``quant_pre_process`` (shape inference + optimisation). When it fails, retry
   with ``skip_symbolic_shape=True``; when that fails too, quantize the model as
   it is. Which of the three happened is recorded.
3. ``quantize_static``: QDQ format, per-channel weights, activations QUInt8,
   weights QInt8, the given calibration method, fed every sample of the
   calibration set (keys of the npz that are model inputs; other keys such as
   ``label`` and ``meta_*`` are skipped).

STATUS.json gets ``{"ok": bool, "stage": ..., "error": first line or null,
"preprocess": "full" | "skip_symbolic_shape" | "none", "preprocess_error":
..., "opset13": bool, "seconds": {stage: s}, "calib_samples": n, "calib_mb":
size of the calibration arrays this process holds in memory}``. Exit
status 0 on success, 1 when a stage raised (the error is in STATUS.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message (file:line in function)` of the innermost
    frame, trimmed: an assertion has no message, its place says what failed."""
    msg = str(exc).strip().splitlines()
    text = type(exc).__name__ + (f": {msg[0]}" if msg else "")
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        fr = tb[-1]
        text += f" ({os.path.basename(fr.filename)}:{fr.lineno} in {fr.name})"
    return text[:400]


def write_status(path: str, status: dict) -> None:
    """Write the status atomically (temp file in the same directory + rename)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(status, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--method", required=True, choices=["MinMax", "Entropy", "Percentile"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--opset13", action="store_true")
    ap.add_argument("--workdir", default=None, help="for intermediate models (default: beside --out)")
    args = ap.parse_args()

    status: dict = {
        "ok": False,
        "stage": "import",
        "error": None,
        "preprocess": None,
        "preprocess_error": None,
        "opset13": bool(args.opset13),
        "method": args.method,
        "seconds": {},
        "calib_samples": None,
    }
    workdir = args.workdir or os.path.dirname(os.path.abspath(args.out))
    os.makedirs(workdir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.out))[0]

    def stage(name: str) -> None:
        status["stage"] = name
        write_status(args.status, status)

    try:
        t0 = time.perf_counter()
        stage("import")
        import numpy as np
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        status["seconds"]["import"] = round(time.perf_counter() - t0, 3)

        src = args.model
        if args.opset13:
            stage("opset13")
            t = time.perf_counter()
            from onnx import version_converter

            m = onnx.load(src)
            before = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
            status["opset_before"] = before
            if before is not None and before < 13:
                m = version_converter.convert_version(m, 13)
                src = os.path.join(workdir, f"{stem}.opset13.onnx")
                onnx.save(m, src)
            else:
                status["opset13"] = False  # already at 13 or above: nothing to upgrade
            del m
            status["seconds"]["opset13"] = round(time.perf_counter() - t, 3)

        stage("preprocess")
        t = time.perf_counter()
        pre = os.path.join(workdir, f"{stem}.pre.onnx")
        try:
            quant_pre_process(src, pre)
            status["preprocess"] = "full"
        except Exception as e:  # symbolic shape inference fails on most real models
            status["preprocess_error"] = first_line(e)
            try:
                quant_pre_process(src, pre, skip_symbolic_shape=True)
                status["preprocess"] = "skip_symbolic_shape"
            except Exception as e2:
                status["preprocess_error"] += " | then: " + first_line(e2)
                status["preprocess"] = "none"
                pre = src
        status["seconds"]["preprocess"] = round(time.perf_counter() - t, 3)

        stage("calib_load")
        sess_inputs = [i.name for i in onnx.load(pre, load_external_data=False).graph.input]
        data = np.load(args.calib, allow_pickle=False)
        keys = [k for k in data.files if k in sess_inputs]
        arrays = {k: data[k] for k in keys}
        n = min(a.shape[0] for a in arrays.values()) if arrays else 0
        status["calib_samples"] = n
        status["calib_mb"] = round(sum(a.nbytes for a in arrays.values()) / 1e6, 3)
        status["calib_inputs"] = keys

        class Reader(CalibrationDataReader):
            """Every calibration sample once, in order."""

            def __init__(self) -> None:
                self.i = 0

            def get_next(self):
                if self.i >= n:
                    return None
                s = {k: np.ascontiguousarray(a[self.i]) for k, a in arrays.items()}
                self.i += 1
                return s

            def rewind(self) -> None:
                self.i = 0

        stage("quantize")
        t = time.perf_counter()
        quantize_static(
            pre,
            args.out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, args.method),
        )
        status["seconds"]["quantize"] = round(time.perf_counter() - t, 3)
        status["ok"] = True
        status["stage"] = "done"
        write_status(args.status, status)
        return 0
    except Exception as e:
        status["error"] = first_line(e)
        write_status(args.status, status)
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
