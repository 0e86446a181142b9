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
- median one-thread latency of the first sentence (``intra_op_num_threads = 1``) against fp32's, every
  model timed round-robin so that load elsewhere on the machine hits them alike;
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
# what the embedding table (float, or int4 blocks of 32 and 16 instead of int8 rows), the
# activation grid and SmoothQuant's migration (--smooth) do.
CONFIGS = {
    "default": [],
    "float-embeddings": ["--exclude-nodes", WORD_GATHER],
    "i8-activations": ["--activation-type", "i8"],
    "no-smooth": ["--smooth", "off"],
    "smooth-0.8": ["--smooth", "0.8"],
    "i8-activations-no-smooth": ["--activation-type", "i8", "--smooth", "off"],
    "int4-embeddings": ["--embedding-bits", "4"],
    "int4-embeddings-b16": ["--embedding-bits", "4", "--embedding-block", "16"],
}


sys.path.insert(0, HERE)
import dynamic_bench as db  # noqa: E402  (the embedding metrics)
import quant_bench as qb  # noqa: E402  (the shared ONNX Runtime helpers)

log = qb.log


def embeddings(path: str, data: dict):
    """The pooled embedding of every evaluation sentence, one row each."""
    import numpy as np

    out = qb.run_all(qb.make_session(path), data, qb.n_samples(data), {})[OUTPUT]
    return out.reshape(out.shape[0], -1).astype(np.float64)


def score(ref, q) -> dict:
    return {"sqnr_db": qb.sqnr_db(ref, q), **db.embedding_metrics(ref, q)}


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


def table(rows: list[dict], markdown: bool) -> str:
    head = ["config", "flags", "SQNR dB", "cos mean", "cos min", "NN agree", "size ×", "latency ×", "quantize s"]
    lines = []
    for r in rows:
        lines.append(
            [
                r["config"],
                " ".join(r["flags"]) or "(none)",
                qb.fmt(r.get("sqnr_db"), ".1f"),
                qb.fmt(r.get("cos_mean"), ".4f"),
                qb.fmt(r.get("cos_min"), ".4f"),
                qb.fmt(r.get("nn_agreement"), ".3f"),
                qb.fmt(r.get("size_ratio"), ".3f"),
                qb.fmt(r.get("latency_ratio"), ".2f"),
                qb.fmt(r.get("seconds"), ".1f") if "error" not in r else "error: " + r["error"],
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
    ap.add_argument("--qrange", default=qb.default_qrange())
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
    data = qb.load_npz(evalp)
    log(f"fp32 on {qb.n_samples(data)} evaluation sentences")
    ref = embeddings(model, data)
    rows = [{"config": "fp32", "flags": ["(float model)"], "path": model, **score(ref, ref), "size_ratio": 1.0}]
    failed = False
    for name in names:
        out = os.path.join(args.out, f"{name}.onnx")
        row = {"config": name, "flags": CONFIGS[name], "path": out}
        row.update(quantize(args.qrange, model, calib, out, CONFIGS[name], args.reuse))
        if "error" not in row:
            row.update(score(ref, embeddings(out, data)))
            row["size_ratio"] = os.path.getsize(out) / os.path.getsize(model)
        else:
            failed = True
        log(json.dumps(row))
        rows.append(row)
    # every model timed round-robin on the first sentence, so load elsewhere hits all alike
    paths = {i: r["path"] for i, r in enumerate(rows) if "error" not in r}
    lat = qb.latencies_ms(paths, data, {}, args.latency_runs, 10.0)
    base_ms = lat[0]
    for i, ms in lat.items():
        rows[i]["latency_ms"] = ms
        rows[i]["latency_ratio"] = ms / base_ms
    build = "release" if "/release/" in args.qrange else "debug"
    print(table(rows, args.markdown))
    print(f"\nqrange: {args.qrange} ({build} build); ONNX Runtime {onnxruntime.__version__}, "
          f"fp32 latency {base_ms:.2f} ms (1 thread, median of at most {args.latency_runs} round-robin runs)")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"qrange": args.qrange, "build": build, "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
