#!/usr/bin/env python3
"""Mixed precision judged on calibration data only, against unseen data in ONNX Runtime.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/mixed_precision.py [--models DIR] [--qrange PATH] [--out DIR]
                                       [--only NAME[,NAME]] [--json FILE] [--markdown]

Per model (``DIR/<name>/model.onnx`` with ``calib.npz`` and ``eval.npz``; default
``shared/models`` beside the checkout or one level up when it exists, else
``fixtures/``), one run of

    qrange quantize MODEL --calib calib.npz GOAL -o OUT --json

with only the calibration data (no ``--eval``: qrange judges the goal out of fold on the
calibration samples), then the written model and the float model in ONNX Runtime (CPU EP)
on every sample of ``eval.npz``. Reported per model: the goal, qrange's out-of-fold
estimate with its 90 % bounds and sample count, whether qrange said the samples cannot
support the goal, the figure on the unseen evaluation set in ONNX Runtime, and the
search's cost: seconds of fold calibration, of sensitivity + search (``sensitivity``),
of validation, and the whole run (wall, and user CPU from ``/usr/bin/time -v`` when it
exists: on a shared machine the wall time grows with the load, the CPU time much less).

A warning that qrange printed on the estimate (the samples cannot support the goal; an
output fed back as an input whose range clips what calibration saw) is kept in the JSON
and marked in the table.

Goals: ppocr_cls ``--target-sqnr 30``; magika ``--max-drop 0.5 --labels label`` (judged
on accuracy against the labels); ppocr_det ``--target-sqnr 25``; minilm_l3 ``--target-sqnr
25`` (the worst output, the embedding ``461`` reported too); silero_vad ``--pin sr=16000
--target-sqnr 25``. SQNR is pooled over the evaluation set, 10·log10(Σ ref² / Σ (ref −
q)²), the worst of the float outputs; an accuracy drop is in points of top-1 accuracy
against ``label``.

Exit status 0 when every run completed (a goal qrange refuses is a result), 2 when it could
not run (missing models, packages, binary).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GOALS = {
    "ppocr_cls": ["--target-sqnr", "30"],
    "magika": ["--max-drop", "0.5", "--labels", "label"],
    "ppocr_det": ["--target-sqnr", "25"],
    "minilm_l3": ["--target-sqnr", "25"],
    "silero_vad": ["--pin", "sr=16000", "--target-sqnr", "25"],
}
# The output each model is judged on besides the worst one.
MAIN_OUTPUT = {"minilm_l3": "461"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def samples(npz, names):
    """Sample i of every array named like a model input (leading sample axis)."""
    arrays = {k: npz[k] for k in npz.files if k in names}
    n = min(len(a) for a in arrays.values())
    for i in range(n):
        yield {k: a[i] for k, a in arrays.items()}


def run_all(sess, data):
    import numpy as np

    names = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    res = []
    for s in samples(data, names):
        feed = {k: np.asarray(v) for k, v in s.items() if k in names}
        res.append(dict(zip(outs, sess.run(outs, feed))))
    return res


def unseen(model, quantized, eval_path, labels):
    """Float vs quantized on every evaluation sample in ONNX Runtime: per-output pooled
    SQNR, the worst float output's, and top-1 accuracy against the labels."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    data = np.load(eval_path, allow_pickle=False)
    ref = run_all(ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"]), data)
    q = run_all(ort.InferenceSession(str(quantized), opts, providers=["CPUExecutionProvider"]), data)
    sqnr = {}
    for name in ref[0]:
        if name not in q[0]:
            raise SystemExit(f"error: {quantized}: output '{name}' missing")
        if not np.issubdtype(ref[0][name].dtype, np.floating):
            continue
        sig = sum(float(np.sum(r[name].astype(np.float64) ** 2)) for r in ref)
        noise = sum(
            float(np.sum((r[name].astype(np.float64) - t[name].astype(np.float64)) ** 2))
            for r, t in zip(ref, q)
        )
        sqnr[name] = float("inf") if noise == 0 else 10 * np.log10(sig / noise)
    acc = None
    if labels and "label" in data.files:
        lab = data["label"]
        first = next(iter(ref[0]))
        top = lambda rs: np.array([int(np.argmax(r[first])) for r in rs])
        n = len(ref)
        acc = (
            float(np.mean(top(ref) == lab[:n])) * 100,
            float(np.mean(top(q) == lab[:n])) * 100,
        )
    return {"sqnr_db": sqnr, "worst_db": min(sqnr.values()), "accuracy": acc, "samples": len(ref)}


def one(name, d, qrange, out):
    goal = GOALS[name]
    dst = out / f"{name}.onnx"
    args = [str(qrange), "quantize", str(d / "model.onnx"), "--calib", str(d / "calib.npz"),
            *goal, "-o", str(dst), "--json"]
    log("$", " ".join(args))
    timed = Path("/usr/bin/time").exists()
    tv = out / f"{name}.time.txt"
    t = time.time()
    p = subprocess.run((["/usr/bin/time", "-v", "-o", str(tv)] if timed else []) + args,
                       capture_output=True, text=True)
    wall = time.time() - t
    row = {"model": name, "goal": " ".join(goal), "exit": p.returncode, "wall_s": wall}
    if timed and tv.exists():
        for line in tv.read_text().splitlines():
            k, _, v = line.strip().partition(": ")
            if k in ("User time (seconds)", "System time (seconds)"):
                row["user_s" if k.startswith("User") else "system_s"] = float(v)
    if p.returncode != 0:
        row["error"] = next((l for l in p.stderr.splitlines() if l.startswith("error:")), p.stderr[-300:])
        return row
    s = json.loads(p.stdout)
    pr = s.get("precision") or {}
    secs = s.get("seconds", {})
    row.update(
        estimate=pr.get("estimate"),
        samples_needed=pr.get("samples_needed"),
        promoted=len(pr.get("promoted", [])),
        units=pr.get("units"),
        configurations=pr.get("evaluations"),
        folds_s=secs.get("folds", 0.0),
        search_s=secs.get("sensitivity", 0.0),
        validate_s=secs.get("validate", 0.0),
        warnings=[l for l in p.stderr.splitlines() if "cannot support" in l or "fed back" in l],
    )
    row["unseen"] = unseen(d / "model.onnx", dst, d / "eval.npz", "--labels" in goal)
    return row


def fmt(row):
    if row.get("error"):
        return (f"| {row['model']} | `{row['goal']}` | refused: {row['error']} | | | | "
                f"{row['wall_s']:.1f} | {row.get('user_s', float('nan')):.1f} |")
    e = row["estimate"] or {}
    u = row["unseen"]
    if "--max-drop" in row["goal"]:
        est = f"drop {-e.get('figure', 0):.2f} [{-e.get('upper', 0):.2f}, {-e.get('lower', 0):.2f}] pt"
        r, t = u["accuracy"]
        seen = f"drop {r - t:.2f} pt ({r:.2f} → {t:.2f} %)"
    else:
        est = f"{e.get('figure', float('nan')):.2f} [{e.get('lower', float('nan')):.2f}, {e.get('upper', float('nan')):.2f}] dB"
        seen = f"{u['worst_db']:.2f} dB"
        main = MAIN_OUTPUT.get(row["model"])
        if main in u["sqnr_db"]:
            seen += f" (`{main}` {u['sqnr_db'][main]:.2f} dB)"
    more = f"; cannot support it, about {row['samples_needed']} samples would" if row["samples_needed"] else ""
    if any("fed back" in w for w in row.get("warnings", [])):
        more += "; warns: a state fed back is clipped"
    return (
        f"| {row['model']} | `{row['goal']}` | {est} on {e.get('samples', 0)} calib samples{more} "
        f"| {seen} on {u['samples']} | {row['promoted']}/{row['units']} "
        f"| {row['folds_s']:.1f} + {row['search_s']:.1f} + {row['validate_s']:.1f} | {row['wall_s']:.1f} "
        f"| {row.get('user_s', float('nan')):.1f} |"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = [p / "shared" / "models" for p in (ROOT.parent, ROOT.parent.parent)]
    shared = next((p for p in shared if p.is_dir()), ROOT / "fixtures")
    ap.add_argument("--models", type=Path, default=shared)
    rel = ROOT / "target" / "release" / "qrange"
    ap.add_argument("--qrange", type=Path, default=rel if rel.exists() else ROOT / "target" / "debug" / "qrange")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "mixed-bench")
    ap.add_argument("--only", default=",".join(GOALS))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        print(f"error: {e}: install benches/requirements.txt", file=sys.stderr)
        return 2
    if not a.qrange.exists():
        print(f"error: {a.qrange}: no qrange binary; cargo build --release", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.only.split(","):
        d = a.models / name
        if not (d / "model.onnx").exists():
            log(f"skipped {name}: no {d / 'model.onnx'}")
            continue
        rows.append(one(name, d, a.qrange, a.out))
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(f"qrange: {a.qrange}; models: {a.models}")
    print("| model | goal | out-of-fold estimate [90% bounds] | unseen eval set, ONNX Runtime | promoted | seconds: folds + sensitivity/search + validation | whole run s | user CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(fmt(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
