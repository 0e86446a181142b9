"""Steps the checks of quantized models share (``quantized_ort.py``, ``weight_only_ort.py``):
evaluation samples read from an .npz, a written model through ``onnx.checker``'s full check,
run by ``qrange run`` (tract) and by ONNX Runtime at a given optimization level."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import onnx
import onnxruntime as ort


def load_samples(path: str, cap: int | None = None) -> tuple[list[dict], dict]:
    """The samples of an .npz (text members skipped), at most ``cap``: one dict per sample,
    and the same arrays stacked (what ``qrange run --data`` reads)."""
    d = np.load(path)
    keys = [k for k in d.files if d[k].dtype.kind not in "US"]
    n = len(d[keys[0]])
    if cap:
        n = min(n, cap)
    # np.asarray: a scalar input (silero_vad's sample rate) is fed as a 0-d array.
    return ([{k: np.asarray(d[k][i]) for k in keys} for i in range(n)],
            {k: d[k][:n] for k in keys})


def checker_error(path: str) -> str | None:
    """The first line of ``onnx.checker``'s full-check complaint about the model, if any."""
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # noqa: BLE001
        return str(e).splitlines()[0]
    return None


def tract_outputs(qrange: str, model: str, stacked: dict, tmp: str, stem: str) -> dict | str:
    """Every output of ``qrange run`` of the model on the stacked samples, or its error line."""
    npz = os.path.join(tmp, stem + ".eval.npz")
    np.savez(npz, **stacked)
    out = os.path.join(tmp, stem + ".tract.npz")
    r = subprocess.run([qrange, "run", model, "--data", npz, "-o", out], capture_output=True, text=True)
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["?"])[0]
    return dict(np.load(out))


def ort_outputs(path: str, samples: list[dict], level, accuracy_level: str | None = None,
                config: dict | None = None) -> dict:
    """Every output of the model in ONNX Runtime (CPU, 1 thread) over the samples, stacked,
    at graph optimization ``level`` (and MatMulNBits ``accuracy_level`` when given, and the
    session ``config`` entries)."""
    so = ort.SessionOptions()
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    if accuracy_level is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", accuracy_level)
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = level
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    runs = [sess.run(None, {k: s[k] for k in names}) for s in samples]
    return {o: np.stack([r[i] for r in runs]) for i, o in enumerate(outs)}
