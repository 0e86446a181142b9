"""Writes tests/data/silero_vad_reference.npz: ONNX Runtime outputs of the original
silero_vad model (sr pinned to 16000) on the first samples of
fixtures/silero_vad/calib.npz, so that `cargo test` can check the folded model in the
project's own engine without Python.

Usage (from the repository root, with numpy and onnxruntime installed):
    python3 tests/ort/gen_silero_reference.py [--samples 8]

Deterministic: same inputs, same bytes (fixed zip timestamps, sorted keys).
"""

import argparse
import io
import zipfile

import numpy as np
import onnxruntime as ort

MODEL = "fixtures/silero_vad/model.onnx"
DATA = "fixtures/silero_vad/calib.npz"
OUT = "tests/data/silero_vad_reference.npz"


def write_npz(path, arrays):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
    data = np.load(DATA)
    n = a.samples
    inputs = {"input": data["input"][:n], "state": data["state"][:n]}
    outs = {"output": [], "stateN": []}
    for i in range(n):
        feed = {"input": inputs["input"][i], "state": inputs["state"][i], "sr": np.array(16000, dtype=np.int64)}
        o, s = sess.run(["output", "stateN"], feed)
        outs["output"].append(o)
        outs["stateN"].append(s)
    arrays = dict(inputs)
    arrays["output"] = np.stack(outs["output"])
    arrays["stateN"] = np.stack(outs["stateN"])
    write_npz(OUT, arrays)
    print(f"wrote {OUT}: " + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in sorted(arrays.items())))


if __name__ == "__main__":
    main()
