#!/usr/bin/env python3
"""qrange's dynamic quantization (``quantize --mode dynamic``) against ONNX Runtime's
``quantize_dynamic``, on real models, scored in ONNX Runtime.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/dynamic_bench.py [--models DIR] [--qrange PATH] [--out DIR]
                                     [--only NAME[,NAME]] [--markdown]

Per model (``DIR/<name>/model.onnx`` with ``eval.npz``):
- fp32: the original model in ONNX Runtime (CPU EP, default session) gives the reference
  outputs on every evaluation sample.
- ``ORT quantize_dynamic``: ONNX Runtime's ``quantize_dynamic`` with its defaults
  (QInt8 weights per tensor, activations QUInt8, no reduce_range), and ``ORT
  quantize_dynamic per_channel``: the same with ``per_channel=True``.
- ``qrange dynamic``: ``qrange quantize MODEL --mode dynamic -o OUT --no-validate`` (``--pin
  sr=16000`` for silero_vad, whose network sits inside If branches decided by the sample
  rate); no calibration data. ``qrange dynamic --weight-method mse``: the same with weight
  ranges of least squared error. silero_vad also ``qrange dynamic --no-reduce-range``: its
  LSTM weights (DynamicQuantizeLSTM) on all 8 bits instead of 7.
Each model is run in ONNX Runtime on the evaluation samples; reported: file size against
fp32, output SQNR and cosine against fp32, the task metric (minilm_l3: mean and minimum
cosine of the pooled embedding ``461``, and nearest-neighbour agreement; the others: their
accuracy, see quant_bench.py), the median single-thread latency against fp32's, and the
quantizer's wall time. Exit status 0 when the run completed (a quantizer failing is a
result), 2 when it could not run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quant_bench as qb  # noqa: E402  (the shared ONNX Runtime helpers)

MODELS = {
    "minilm_l3": {"metric": "embedding", "pins": {}, "output": "461"},
    "silero_vad": {"metric": "vad", "pins": {"sr": "16000"}, "output": None},
    "magika": {"metric": "top1", "pins": {}, "output": None},
    "ppocr_cls": {"metric": "top1", "pins": {}, "output": None},
}


def embedding_metrics(ref, q) -> dict:
    """Per-sample cosine of the embeddings (mean, min) and nearest-neighbour agreement."""
    import numpy as np

    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = q.reshape(q.shape[0], -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    def nn(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    return {
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "nn_agreement": float((nn(a) == nn(b)).mean()),
    }


def score(path: str, cfg: dict, data: dict, labels, n: int, ref: dict, primary: str) -> dict:
    sess = qb.make_session(path)
    outs = qb.run_all(sess, data, n, cfg["pins"])
    q, r = outs[primary], ref[primary]
    res = {
        "size": qb.model_facts(path)["size_mb"] * 1e6,
        "sqnr_db": qb.sqnr_db(r, q),
        "cosine": qb.cosine(r, q),
    }
    if cfg["metric"] == "embedding":
        res.update(embedding_metrics(r, q))
    else:
        res["metric"] = qb.task_metric(cfg["metric"], q, r, labels)
    return res


def ort_dynamic(model: str, out: str, per_channel: bool) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t = time.perf_counter()
    quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=per_channel)
    return time.perf_counter() - t


def qrange_dynamic(qrange: str, model: str, out: str, pins: dict, extra: list[str]) -> float:
    cmd = [qrange, "quantize", model, "--mode", "dynamic", "-o", out, "--no-validate", *extra]
    for k, v in pins.items():
        cmd += ["--pin", f"{k}={v}"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


class Reference:
    """A shipped model's evaluation data and its fp32 outputs in ONNX Runtime, which every
    quantized variant is scored against (`scored`)."""

    def __init__(self, models: str, name: str, cfg: dict):
        self.cfg = cfg
        self.model = os.path.join(models, name, "model.onnx")
        self.data = qb.load_npz(os.path.join(models, name, "eval.npz"))
        self.labels = self.data.pop("label", None)
        self.n = qb.n_samples(self.data)
        sess = qb.make_session(self.model)
        self.primary = cfg["output"] or sess.get_outputs()[0].name
        self.ref = qb.run_all(sess, self.data, self.n, cfg["pins"])
        self.fp32_size = os.path.getsize(self.model)

    def scored(self, path: str) -> dict:
        """`score` of the model at `path`, with its size against the fp32 file."""
        res = score(path, self.cfg, self.data, self.labels, self.n, self.ref, self.primary)
        res["size_ratio"] = res["size"] / self.fp32_size
        return res

    def latencies(self, rows: list[dict], runs: int, budget_s: float) -> dict:
        """Single-thread latency (ms) of every row without an error, by row index."""
        paths = {i: r["path"] for i, r in enumerate(rows) if "error" not in r}
        return qb.latencies_ms(paths, self.data, self.cfg["pins"], runs, budget_s)


def bench_models(args, models: dict, bench) -> list[dict] | None:
    """`bench(name, args)`'s rows for each model of `--only` (every one of `models` without
    it), after checking that each model and the qrange binary exist (`None`, said on stderr,
    when one does not)."""
    names = [n for n in args.only.split(",") if n] or list(models)
    for n in names:
        if n not in models or not os.path.exists(os.path.join(args.models, n, "model.onnx")):
            print(f"error: no model {n!r} under {args.models}", file=sys.stderr)
            return None
    if not os.path.exists(args.qrange):
        print(f"error: no qrange binary at {args.qrange} (cargo build --release)", file=sys.stderr)
        return None
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for n in names:
        qb.log(f"{n}...")
        rows += bench(n, args)
    return rows


def bench(name: str, args) -> list[dict]:
    r = Reference(args.models, name, MODELS[name])
    cfg, model, n = r.cfg, r.model, r.n
    rows = [{"model": name, "method": "fp32", "path": model, "seconds": 0.0}]
    runs = [
        ("ORT quantize_dynamic", lambda o: ort_dynamic(model, o, False)),
        ("ORT quantize_dynamic per_channel", lambda o: ort_dynamic(model, o, True)),
        ("qrange dynamic", lambda o: qrange_dynamic(args.qrange, model, o, cfg["pins"], [])),
        ("qrange dynamic --weight-method mse",
         lambda o: qrange_dynamic(args.qrange, model, o, cfg["pins"], ["--weight-method", "mse"])),
    ]
    if name == "silero_vad":
        # LSTM weights on all 8 bits instead of 7 (only LSTMs depend on it)
        runs.append(("qrange dynamic --no-reduce-range",
                     lambda o: qrange_dynamic(args.qrange, model, o, cfg["pins"],
                                              ["--no-reduce-range"])))
    for i, (label, run) in enumerate(runs):
        out = os.path.join(args.out, f"{name}.{i}.onnx")
        row = {"model": name, "method": label, "path": out}
        try:
            row["seconds"] = run(out)
        except Exception as e:  # a quantizer failing is a result
            row["error"] = qb.one_line(str(e))
        rows.append(row)
    for row in rows:
        if "error" in row:
            continue
        try:
            row.update(r.scored(row["path"]))
        except Exception as e:
            row["error"] = qb.one_line(str(e))
    lat = r.latencies(rows, args.latency_runs, args.latency_budget)
    for i, row in enumerate(rows):
        if i in lat:
            row["latency_ms"] = lat[i]
            row["latency_vs_fp32"] = lat[i] / lat[0]
        row["samples"] = n
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | quantizer | SQNR dB | cosine | task metric | size vs fp32 | latency vs fp32 (1 thread) | quantize s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | failed: {r['error']} | | | | | |")
            continue
        if "nn_agreement" in r:
            metric = f"cos mean {r['cos_mean']:.4f} / min {r['cos_min']:.4f}, NN {r['nn_agreement']:.3f}"
        else:
            metric = qb.fmt(r.get("metric"), ".4f")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['sqnr_db']:.2f} | {r['cosine']:.5f} | {metric} | "
            f"{r['size_ratio']:.3f} | {r.get('latency_vs_fp32', float('nan')):.2f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = qb.bench_parser(__doc__, "dynamic_bench")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--latency-budget", type=float, default=10.0)
    args = ap.parse_args()
    rows = bench_models(args, MODELS, bench)
    if rows is None:
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
