#!/usr/bin/env python3
"""qrange on a transformer: minilm_l3 quantized with qrange, scored in ONNX Runtime.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/transformer_bench.py [--models DIR] [--qrange PATH] [--out DIR]
                                         [--markdown] [--json FILE] [--latency-runs N]
                                         [--config NAME[,NAME]] [--reuse]

Per configuration (``CONFIGS`` below: the default command, and the variants that show what
each choice buys), ``qrange quantize model.onnx --calib calib.npz -o OUT --no-validate`` with
the configuration's extra flags, then the written model in an ONNX Runtime CPU session with
default options, on all 256 evaluation sentences, against the fp32 model in the same kind of
session. Reported on the pooled sentence embedding ``461`` (metrics of
``../shared/models/README.md``):

- SQNR in dB: 10·log10(Σ ref² / Σ (ref − q)²) over the whole evaluation set;
- mean and minimum cosine of each quantized embedding with its fp32 embedding;
- nearest-neighbour agreement: for each sentence, whether its most similar other sentence
  (cosine) is the same under fp32 and quantized;
- size of the written file against the fp32 file;
- median one-thread latency of one sentence (``intra_op_num_threads = 1``) against fp32's;
- the seconds ``qrange quantize`` took (debug or release, as the binary is: the table says).

stdout gets the table (Markdown with ``--markdown``), stderr the progress. Exit status 0 when
the run completed, 1 when a configuration failed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUTPUT = "461"

WORD_GATHER = "/model/model.0/auto_model/embeddings/word_embeddings/Gather"

# name → extra `qrange quantize` flags. The first is the default command; the others show
# what the embedding table, the activation grid and SmoothQuant's migration (--smooth) do.
CONFIGS = {
    "default": [],
    "float-embeddings": ["--exclude-nodes", WORD_GATHER],
    "i8-activations": ["--activation-type", "i8"],
    "no-smooth": ["--smooth", "off"],
    "smooth-0.8": ["--smooth", "0.8"],
    "i8-activations-no-smooth": ["--activation-type", "i8", "--smooth", "off"],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_qrange() -> str:
    for kind in ("release", "debug"):
        p = os.path.join(REPO, "target", kind, "qrange")
        if os.path.exists(p):
            return p
    return os.path.join(REPO, "target", "release", "qrange")


def load_npz(path: str) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("meta_")}


def session(path: str, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds(sess, data: dict, i: int) -> dict:
    names = {x.name for x in sess.get_inputs()}
    return {k: v[i] for k, v in data.items() if k in names}


def embeddings(path: str, data: dict):
    import numpy as np

    sess = session(path)
    n = len(next(iter(data.values())))
    rows = [sess.run([OUTPUT], feeds(sess, data, i))[0].reshape(-1) for i in range(n)]
    return np.stack(rows).astype(np.float64)


def latency_ms(path: str, data: dict, runs: int) -> float:
    import numpy as np

    sess = session(path, threads=1)
    n = len(next(iter(data.values())))
    for i in range(min(3, n)):
        sess.run([OUTPUT], feeds(sess, data, i))
    times = []
    for r in range(runs):
        f = feeds(sess, data, r % n)
        t = time.perf_counter()
        sess.run([OUTPUT], f)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def score(ref, q) -> dict:
    import numpy as np

    err = ((ref - q) ** 2).sum()
    sqnr = float("inf") if err == 0 else 10 * np.log10((ref**2).sum() / err)

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    ur, uq = unit(ref), unit(q)
    cos = (ur * uq).sum(axis=1)

    def nearest(u):
        s = u @ u.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(axis=1)

    nn = float((nearest(ur) == nearest(uq)).mean())
    return {
        "sqnr_db": float(sqnr),
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "nn_agree": nn,
    }


def quantize(qrange: str, model: str, calib: str, out: str, extra: list[str], reuse: bool) -> dict:
    if reuse and os.path.exists(out):
        return {"seconds": None, "reused": True}
    cmd = [qrange, "quantize", model, "--calib", calib, "-o", out, "--no-validate", *extra]
    log("$ " + " ".join(cmd))
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        return {"seconds": secs, "error": (p.stderr.strip().splitlines() or ["?"])[0]}
    return {"seconds": secs}


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], markdown: bool) -> str:
    head = ["config", "flags", "SQNR dB", "cos mean", "cos min", "NN agree", "size ×", "latency ×", "quantize s"]
    lines = []
    for r in rows:
        lines.append(
            [
                r["config"],
                " ".join(r["flags"]) or "(none)",
                fmt(r.get("sqnr_db"), ".1f"),
                fmt(r.get("cos_mean"), ".4f"),
                fmt(r.get("cos_min"), ".4f"),
                fmt(r.get("nn_agree"), ".3f"),
                fmt(r.get("size_ratio"), ".3f"),
                fmt(r.get("latency_ratio"), ".2f"),
                fmt(r.get("seconds"), ".1f") if "error" not in r else "error: " + r["error"],
            ]
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(head)]
    fmt_row = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt_row(head)] + [fmt_row(row) for row in lines])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=os.path.join(REPO, "..", "shared", "models"))
    ap.add_argument("--qrange", default=default_qrange())
    ap.add_argument("--out", default=os.path.join(REPO, "target", "transformer-bench"))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--config", help="comma-separated configuration names (default: all)")
    ap.add_argument("--reuse", action="store_true", help="score models written by an earlier run")
    args = ap.parse_args()
    try:
        import numpy  # noqa: F401
        import onnxruntime
    except ImportError as e:
        log(f"error: {e} (pip install -r benches/requirements.txt)")
        return 2
    d = os.path.join(args.models, "minilm_l3")
    model, calib, evalp = (os.path.join(d, f) for f in ("model.onnx", "calib.npz", "eval.npz"))
    for p in (model, calib, evalp, args.qrange):
        if not os.path.exists(p):
            log(f"error: {p} does not exist")
            return 2
    os.makedirs(args.out, exist_ok=True)
    names = args.config.split(",") if args.config else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        log(f"error: unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
        return 2
    data = load_npz(evalp)
    log(f"fp32 on {len(next(iter(data.values())))} evaluation sentences")
    ref = embeddings(model, data)
    base_ms = latency_ms(model, data, args.latency_runs)
    rows = [
        {
            "config": "fp32",
            "flags": ["(float model)"],
            **score(ref, ref),
            "size_ratio": 1.0,
            "latency_ratio": 1.0,
            "latency_ms": base_ms,
        }
    ]
    failed = False
    for name in names:
        out = os.path.join(args.out, f"{name}.onnx")
        row = {"config": name, "flags": CONFIGS[name]}
        row.update(quantize(args.qrange, model, calib, out, CONFIGS[name], args.reuse))
        if "error" not in row:
            row.update(score(ref, embeddings(out, data)))
            row["size_ratio"] = os.path.getsize(out) / os.path.getsize(model)
            row["latency_ms"] = latency_ms(out, data, args.latency_runs)
            row["latency_ratio"] = row["latency_ms"] / base_ms
        else:
            failed = True
        log(json.dumps(row))
        rows.append(row)
    build = "release" if "/release/" in args.qrange else "debug"
    print(table(rows, args.markdown))
    print(f"\nqrange: {args.qrange} ({build} build); ONNX Runtime {onnxruntime.__version__}, "
          f"fp32 latency {base_ms:.2f} ms (1 thread, median of {args.latency_runs})")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"qrange": args.qrange, "build": build, "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
