#!/usr/bin/env python3
"""Weight-only quantization (``qrange quantize --mode weight-only``) scored in ONNX Runtime.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/weight_only_bench.py [--models DIR] [--qrange PATH] [--out DIR]
                                         [--only NAME[,NAME]] [--configs TEXT[,TEXT]]
                                         [--reference] [--json FILE]

Per model (``DIR/<name>/model.onnx`` with ``calib.npz`` and ``eval.npz``; default
``shared/models`` beside the checkout or one level up, else ``fixtures/``), each
configuration below is written by

    qrange quantize MODEL --mode weight-only ... [--calib calib.npz] --no-validate -o OUT --json

(``--calib`` only for GPTQ), then the float and the written model run in ONNX Runtime (CPU
EP, default session options, one intra-op thread) on every sample of ``eval.npz``. Reported:
output SQNR pooled over the evaluation set, 10·log10(Σ ref² / Σ (ref − q)²); mean and minimum
cosine of each sample's output with the float one; for minilm_l3 (output ``461``, the pooled
sentence embedding) nearest-neighbour agreement (each sentence's most similar other sentence
is the same under fp32 and quantized); for models with ``label``, top-1 accuracy; the size
ratio of the files; the SQNR of the largest stored embedding table against the float one (from
qrange's summary); ONNX Runtime's mean latency per sample (1 thread); qrange's seconds.
``--configs`` runs only the configurations whose names contain one of the given texts.

``--reference`` adds ONNX Runtime's own ``MatMulNBitsQuantizer`` (int4 RTN, asymmetric,
blocks of 32 and 128, MatMul only) on the same data.

Exit status 0 when every run completed, 2 when it could not run (missing models, packages,
binary).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (extra flags, needs calibration data)
CONFIGS = [
    ("int4 RTN b32 (MatMulNBits)", ["--weight-bits", "4", "--block-size", "32"], False),
    ("int4 RTN b32 (DequantizeLinear)", ["--weight-bits", "4", "--block-size", "32", "--target", "generic"], False),
    ("int4 RTN b128 (MatMulNBits)", ["--weight-bits", "4", "--block-size", "128"], False),
    ("int4 sym RTN b32 (MatMulNBits)", ["--weight-bits", "4", "--block-size", "32", "--weight-symmetric"], False),
    ("int4 clip b32 (MatMulNBits)", ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "clip"], False),
    ("int4 GPTQ b32 (MatMulNBits)", ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "gptq"], True),
    ("int4 GPTQ act-order b32", ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "gptq", "--act-order"], True),
    ("int4 GPTQ b128 (MatMulNBits)", ["--weight-bits", "4", "--block-size", "128", "--weight-algo", "gptq"], True),
    ("int8 RTN per channel (DequantizeLinear)", ["--weight-bits", "8", "--block-size", "channel"], False),
    ("int4 RTN b32, embedding tables float", ["--weight-bits", "4", "--block-size", "32", "--embedding-bits", "float"], False),
    ("int4 RTN b32, embedding tables int8", ["--weight-bits", "4", "--block-size", "32", "--embedding-bits", "8"], False),
    ("int4 GPTQ b32, embedding tables int8", ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "gptq", "--embedding-bits", "8"], True),
    ("int4 RTN b16 (MatMulNBits, GatherBlockQuantized)", ["--weight-bits", "4", "--block-size", "16"], False),
    ("int4 GPTQ b16 (MatMulNBits, GatherBlockQuantized)", ["--weight-bits", "4", "--block-size", "16", "--weight-algo", "gptq"], True),
    # The tables' own block (--embedding-block; the rows above use the default, 16 for int4
    # tables under weights in blocks of 32).
    ("int4 RTN b32, tables b32", ["--weight-bits", "4", "--block-size", "32", "--embedding-block", "32"], False),
    ("int4 clip b32, tables b32", ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "clip", "--embedding-block", "32"], False),
    ("int4 GPTQ b32, tables b32 (clip)", ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "gptq", "--embedding-block", "32"], True),
    ("int4 RTN b32, tables b16 (DequantizeLinear)", ["--weight-bits", "4", "--block-size", "32", "--embedding-block", "16", "--target", "generic"], False),
]
MODELS = ["minilm_l3", "magika", "ppocr_det"]
MAIN_OUTPUT = {"minilm_l3": "461"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def samples(npz, names):
    arrays = {k: npz[k] for k in npz.files if k in names}
    n = min(len(a) for a in arrays.values())
    return [{k: a[i] for k, a in arrays.items()} for i in range(n)]


def run_model(ort, path, feeds, output):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    outs = []
    t = time.perf_counter()
    for f in feeds:
        outs.append(sess.run([output], f)[0])
    return outs, (time.perf_counter() - t) / max(1, len(feeds))


def score(np, ref, got, labels):
    r = np.concatenate([x.reshape(-1) for x in ref]).astype(np.float64)
    q = np.concatenate([x.reshape(-1) for x in got]).astype(np.float64)
    noise = ((r - q) ** 2).sum()
    sqnr = float("inf") if noise == 0 else 10 * np.log10((r ** 2).sum() / noise)
    cos = []
    for a, b in zip(ref, got):
        a = a.reshape(-1).astype(np.float64)
        b = b.reshape(-1).astype(np.float64)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
    out = {"sqnr_db": float(sqnr), "cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos))}
    if len(ref) > 2 and ref[0].reshape(-1).size > 2:
        def nn(vs):
            m = np.stack([v.reshape(-1) for v in vs]).astype(np.float64)
            m /= np.linalg.norm(m, axis=1, keepdims=True) + 1e-30
            s = m @ m.T
            np.fill_diagonal(s, -np.inf)
            return s.argmax(axis=1)
        out["nn_agreement"] = float((nn(ref) == nn(got)).mean())
    if labels is not None:
        out["accuracy"] = float(np.mean([int(np.argmax(g)) == int(l) for g, l in zip(got, labels)]))
    return out


def reference_models(model, out_dir):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    import onnx
    made = []
    for bs in (32, 128):
        m = onnx.load(str(model))
        q = MatMulNBitsQuantizer(m, block_size=bs, is_symmetric=False)
        q.process()
        path = out_dir / f"ref_nbits_b{bs}.onnx"
        q.model.save_model_to_file(str(path), use_external_data_format=False)
        made.append((f"ORT MatMulNBitsQuantizer int4 RTN b{bs}", path))
    return made


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models")
    ap.add_argument("--qrange", default=str(ROOT / "target" / "release" / "qrange"))
    ap.add_argument("--out", default="/tmp/weight_only_bench")
    ap.add_argument("--only")
    ap.add_argument("--configs", help="comma-separated substrings: run only the configurations "
                    "whose name contains one of them (default: all)")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        log(f"error: {e}")
        return 2
    if a.models:
        models_dir = Path(a.models)
    else:
        cands = [ROOT.parent / "shared" / "models", ROOT.parent.parent / "shared" / "models"]
        models_dir = next((c for c in cands if c.is_dir()), ROOT / "fixtures")
    if not Path(a.qrange).exists():
        log(f"error: no qrange binary at {a.qrange} (cargo build --release)")
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = a.only.split(",") if a.only else MODELS
    results = []
    for name in names:
        d = models_dir / name
        model = d / "model.onnx"
        if not model.exists():
            log(f"error: {model} missing")
            return 2
        import onnx
        om = onnx.load(str(model), load_external_data=False)
        inputs = {i.name for i in om.graph.input} - {x.name for x in om.graph.initializer}
        output = MAIN_OUTPUT.get(name, om.graph.output[0].name)
        ev = np.load(d / "eval.npz", allow_pickle=False)
        feeds = samples(ev, inputs)
        labels = ev["label"] if "label" in ev.files else None
        ref, fp_lat = run_model(ort, model, feeds, output)
        fsize = model.stat().st_size
        row = {"model": name, "config": "fp32", "latency_ms": fp_lat * 1e3, "size_ratio": 1.0}
        if labels is not None:
            row["accuracy"] = score(np, ref, ref, labels)["accuracy"]
        results.append(row)
        log(json.dumps(row))
        runs = []
        wanted = a.configs.split(",") if a.configs else None
        for cname, flags, calib in CONFIGS:
            if wanted and not any(w in cname for w in wanted):
                continue
            path = out / f"{name}.{len(runs)}.onnx"
            cmd = [a.qrange, "quantize", str(model), "--mode", "weight-only", *flags,
                   "--no-validate", "-o", str(path), "--json"]
            if calib:
                cmd += ["--calib", str(d / "calib.npz")]
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            secs = time.perf_counter() - t
            if p.returncode != 0:
                log(f"{name} {cname}: qrange failed: {p.stderr.strip()}")
                results.append({"model": name, "config": cname, "error": p.stderr.strip()})
                continue
            s = json.loads(p.stdout)
            tables = sorted(s.get("tables", []), key=lambda t: -t["shape"][0] * t["shape"][1])
            table_db = tables[0]["sqnr_db"] if tables else None
            runs.append((cname, path, secs, len(s["layers"]), table_db))
        if a.reference:
            try:
                runs += [(c, pth, None, None, None) for c, pth in reference_models(model, out)]
            except Exception as e:  # the reference tool's own failure is a result
                results.append({"model": name, "config": "ORT MatMulNBitsQuantizer", "error": str(e)})
        for cname, path, secs, layers, table_db in runs:
            got, lat = run_model(ort, path, feeds, output)
            row = {"model": name, "config": cname, **score(np, ref, got, labels),
                   "size_ratio": path.stat().st_size / fsize, "latency_ms": lat * 1e3,
                   "qrange_seconds": secs, "layers": layers, "table_sqnr_db": table_db}
            results.append(row)
            log(json.dumps(row))
    print("| model | configuration | SQNR dB | mean cos | min cos | NN agr. | accuracy | size | largest table SQNR dB | ORT ms (1 thr) | qrange s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda r, k, fmt: (fmt.format(r[k]) if r.get(k) is not None else "")
    for r in results:
        if "error" in r:
            print(f"| {r['model']} | {r['config']} | failed: {r['error'][:80]} ||||||||| ")
            continue
        print(f"| {r['model']} | {r['config']} | {f(r, 'sqnr_db', '{:.1f}')} | {f(r, 'cos_mean', '{:.4f}')} | "
              f"{f(r, 'cos_min', '{:.4f}')} | {f(r, 'nn_agreement', '{:.3f}')} | {f(r, 'accuracy', '{:.3f}')} | "
              f"{f(r, 'size_ratio', '{:.3f}')} | {f(r, 'table_sqnr_db', '{:.1f}')} | {f(r, 'latency_ms', '{:.2f}')} | "
              f"{f(r, 'qrange_seconds', '{:.2f}')} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
