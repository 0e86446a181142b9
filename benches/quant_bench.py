#!/usr/bin/env python3
"""qrange's static quantization against ONNX Runtime's reference quantizer, on real models.

Usage (from the repository root, with a python that has benches/requirements.txt):
    python3 benches/quant_bench.py [--models DIR] [--qrange PATH] [--out DIR] [--only NAME[,NAME]]
                                   [--report FILE.json] [--markdown] [--quick] [--scaling]
                                   [--methods M[,M]] [--no-ref] [--no-qrange] [--reuse]

Not run by CI: the whole run takes about an hour and ~9 GB of RAM (ONNX Runtime's
Entropy and Percentile calibrators on ppocr_det). See benches/README.md.

Per model (``DIR/<name>/model.onnx`` with ``calib.npz`` and ``eval.npz``; silero_vad_ifless
uses silero_vad's data):

- fp32: the original model in ONNX Runtime gives the reference outputs.
- ``ORT <method>`` for MinMax, Entropy, Percentile: ``ref_quantize.py`` in a fresh process
  under ``/usr/bin/time -v`` (quant_pre_process, then quantize_static: QDQ, per-channel,
  activations QUInt8, weights QInt8, every calibration sample). A model ONNX Runtime
  refuses to load is quantized again from the model upgraded to opset 13.
- ``qrange``: ``qrange quantize MODEL --calib calib.npz -o OUT --no-validate`` (``--pin
  sr=16000`` for the silero models); ``qrange --no-reduce-range``: the same on the reference's
  weight grid (all 8 bits of int8, which u8 x s8 kernels of x86 CPUs without VNNI can
  saturate); and ``qrange (validate)``: the same as the first with ``--eval
  eval.npz [--labels label]``, for its time and memory.

Every produced model is run in ONNX Runtime (CPU EP) on the evaluation samples; reported:
wall time and peak RSS of the quantization process, file size, Q/DQ node counts (subgraphs
included), output SQNR and cosine against the fp32 outputs, the task metric, and the median
single-thread latency of one sample against fp32's.

``--scaling``: calibration sets of 32, 128 and 512 samples for ppocr_cls and magika (the
calibration samples repeated, the copies perturbed with small seeded noise); peak RSS and
wall time of qrange and of ORT MinMax for each, and of ``qrange run`` (plain float inference
in tract) over the same samples.

stdout gets the tables (Markdown with ``--markdown``), stderr the progress. Exit status 0
when the run completed (failures of the quantizers are results, not errors), 2 when it
could not run (missing models, /usr/bin/time or python packages).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TIME_BIN = "/usr/bin/time"
METHODS = ("MinMax", "Entropy", "Percentile")
RUN_TIMEOUT_S = 4 * 3600


# Per model: directory of its data, task metric, inputs pinned for qrange, how many
# evaluation samples `--quick` keeps, and the output scored (`output`; default the first).
MODELS = {
    "ppocr_cls": {"data": "ppocr_cls", "metric": "top1", "pins": {}, "quick": 32},
    "ppocr_det": {"data": "ppocr_det", "metric": "iou", "pins": {}, "quick": 3},
    "magika": {"data": "magika", "metric": "top1", "pins": {}, "quick": 64},
    "silero_vad": {"data": "silero_vad", "metric": "vad", "pins": {"sr": "16000"}, "quick": 200},
    "silero_vad_ifless": {
        "data": "silero_vad",
        "metric": "vad",
        "pins": {"sr": "16000"},
        "quick": 200,
    },
    # Its first outputs echo the int64 inputs; `461` is the mean-pooled sentence embedding.
    "minilm_l3": {"data": "minilm_l3", "metric": "embcos", "pins": {}, "quick": 64, "output": "461"},
}
METRIC_NAMES = {
    "top1": "top-1 accuracy vs label",
    "iou": "IoU of maps > 0.3 vs fp32 (mean)",
    "vad": "frame accuracy of output > 0.5 vs label",
    "embcos": "cosine of each embedding with fp32's (mean over samples)",
}
SCALING_MODELS = ("ppocr_cls", "magika")
SCALING_SIZES = (32, 128, 512)
SCALING_SEED = 20240607
IOU_THRESHOLD = 0.3
VAD_THRESHOLD = 0.5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one_line(text: str, limit: int = 240) -> str:
    """The most telling line of a tool's stderr: the first `error:` line, else a Python
    traceback's last line, else the first non-empty line; trimmed."""
    raw = [ln.rstrip() for ln in str(text).splitlines() if ln.strip()]
    if not raw:
        return "(no message)"
    line = next((ln for ln in raw if ln.startswith("error:")), None)
    if line is None:
        tb = [i for i, ln in enumerate(raw) if ln.startswith("Traceback")]
        if tb:
            tail = [ln for ln in raw[tb[-1] :] if not ln.startswith(" ")]
            line = tail[-1] if tail else raw[-1]
        else:
            line = raw[0]
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def ort_error_short(msg: str, limit: int = 160) -> str:
    """ONNX Runtime's load/run error without the boilerplate and the node's whole
    signature: `CODE: the error (op node)`."""
    text = " ".join(str(msg).split())
    m = re.match(r"\[ONNXRuntimeError\] : \d+ : (\w+) : (.*)", text)
    code, rest = (m.group(1), m.group(2)) if m else ("", text)
    rest = re.sub(r"^Load model from \S+ failed:\s*", "", rest)
    rest = re.sub(r"^This is an invalid model\.\s*", "", rest)
    node = re.search(r'In Node, \("([^"]*)", (\w+),', rest)
    err = re.search(r", Error (.*)$", rest)
    if node and err:
        rest = f"{err.group(1)} (node {node.group(1)!r}, {node.group(2)})"
    line = f"{code}: {rest}" if code else rest
    return line if len(line) <= limit else line[: limit - 3] + "..."


def short_exc(text: str) -> str:
    """A worker's `Type: message (file:line in func)` for a table: the message alone,
    or `Type in func` when there is no message."""
    text = text.split(" | then:")[0]
    m = re.match(r"^(\w+)(?:: (.*?))? \((\S+):\d+ in (\S+)\)$", text)
    if not m:
        return text
    typ, msg, _, func = m.groups()
    return f"{typ}: {msg}" if msg else f"{typ} in {func}"


def write_atomic(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def json_safe(x):
    """inf/NaN as strings (strict JSON has neither), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


# --------------------------------------------------------------------------
# Timed runs in fresh processes
# --------------------------------------------------------------------------


def parse_time_v(text: str) -> dict:
    """Wall seconds, peak RSS (MB), exit status and terminating signal from `time -v`."""
    out = {"wall_s": None, "peak_mb": None, "exit": None, "signal": None}
    for ln in text.splitlines():
        ln = ln.strip()
        if ln.startswith("Elapsed (wall clock) time"):
            v = ln.rsplit(": ", 1)[-1].strip()
            secs = 0.0
            for part in v.split(":"):
                secs = secs * 60 + float(part)
            out["wall_s"] = secs
        elif ln.startswith("User time (seconds):"):
            out["user_s"] = float(ln.rsplit(":", 1)[-1])
        elif ln.startswith("System time (seconds):"):
            out["sys_s"] = float(ln.rsplit(":", 1)[-1])
        elif ln.startswith("Maximum resident set size (kbytes):"):
            out["peak_mb"] = int(ln.rsplit(":", 1)[-1]) / 1024.0
        elif ln.startswith("Exit status:"):
            out["exit"] = int(ln.rsplit(":", 1)[-1])
        elif ln.startswith("Command terminated by signal"):
            out["signal"] = int(ln.rsplit(" ", 1)[-1])
    return out


def timed_run(cmd: list[str], key: str, workdir: str, reuse: bool, timeout: float) -> dict:
    """Run `cmd` under `/usr/bin/time -v` in a fresh process whose working directory is
    `workdir/tmp` (ONNX Runtime's quantizer leaves files in its working directory:
    `sym_shape_infer_temp.onnx`, `<uuid>.data` after a crash); stdout/stderr go to
    `workdir/key.{out,err}`. Returns the record (also saved as `key.run.json`): rc,
    wall_s, peak_mb, signal, err_line, stdout_tail. With `reuse`, a saved record of the
    same command is returned without running it again."""
    rec_path = os.path.join(workdir, key + ".run.json")
    if reuse and os.path.isfile(rec_path):
        with open(rec_path) as f:
            rec = json.load(f)
        if rec.get("cmd") == cmd:
            rec["reused"] = True
            return rec
    tfile = os.path.join(workdir, key + ".time.txt")
    ofile = os.path.join(workdir, key + ".out")
    efile = os.path.join(workdir, key + ".err")
    log(f"    $ {' '.join(shlex.quote(c) for c in cmd)}")
    cwd = os.path.join(workdir, "tmp")
    os.makedirs(cwd, exist_ok=True)
    t0 = time.perf_counter()
    timed_out = False
    with open(ofile, "w") as fo, open(efile, "w") as fe:
        try:
            p = subprocess.run(
                [TIME_BIN, "-v", "-o", tfile] + cmd,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                cwd=cwd,
            )
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc, timed_out = -9, True
    elapsed = time.perf_counter() - t0
    tv = parse_time_v(open(tfile).read()) if os.path.isfile(tfile) else {}
    err = open(efile, errors="replace").read()
    out = open(ofile, errors="replace").read()
    rec = {
        "cmd": cmd,
        "rc": rc,
        "wall_s": tv.get("wall_s") if tv.get("wall_s") is not None else elapsed,
        "wall_s_perf": elapsed,
        "peak_mb": tv.get("peak_mb"),
        "cpu_s": (tv["user_s"] + tv["sys_s"]) if "user_s" in tv and "sys_s" in tv else None,
        "signal": tv.get("signal"),
        "timed_out": timed_out,
        "err_line": one_line(err) if rc != 0 else None,
        "stdout_tail": out.splitlines()[-25:],
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    write_atomic(rec_path, json.dumps(rec, indent=1))
    return rec


def crash_text(rec: dict) -> str:
    if rec.get("timed_out"):
        return "timed out"
    if rec.get("signal"):
        sig = rec["signal"]
        return f"killed by signal {sig}" + (" (out of memory?)" if sig == 9 else "")
    return rec.get("err_line") or f"exit {rec.get('rc')}"


# --------------------------------------------------------------------------
# Data and ONNX Runtime evaluation
# --------------------------------------------------------------------------


def load_npz(path: str) -> dict:
    """Arrays of an npz, unicode/object arrays (notes) skipped."""
    import numpy as np

    d = np.load(path, allow_pickle=False)
    out = {}
    for k in d.files:
        a = d[k]
        if a.dtype.kind in "USO":
            continue
        out[k] = a
    return out


def n_samples(data: dict) -> int:
    return min(a.shape[0] for a in data.values()) if data else 0


def make_session(path: str, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds_for(sess, data: dict, i: int, pins: dict) -> dict:
    """Sample `i` for the session's inputs; a pinned input missing from the data takes
    the pinned value."""
    import numpy as np

    feed = {}
    for inp in sess.get_inputs():
        if inp.name in data:
            feed[inp.name] = np.ascontiguousarray(data[inp.name][i])
        elif inp.name in pins:
            dt = np.int64 if "int64" in inp.type else np.float32
            feed[inp.name] = np.array(int(pins[inp.name]) if dt == np.int64 else float(pins[inp.name]), dtype=dt)
        else:
            raise KeyError(f"input {inp.name!r} is neither in the data nor pinned")
    return feed


def run_all(sess, data: dict, n: int, pins: dict) -> dict:
    """Outputs over `n` samples, stacked on a new axis 0, by output name."""
    import numpy as np

    names = [o.name for o in sess.get_outputs()]
    acc = {k: [] for k in names}
    for i in range(n):
        res = sess.run(names, feeds_for(sess, data, i, pins))
        for k, v in zip(names, res):
            acc[k].append(np.asarray(v))
    return {k: np.stack(v) for k, v in acc.items()}


def latencies_ms(paths: dict, data: dict, pins: dict, runs: int, budget_s: float) -> dict:
    """Median single-thread latency (ms) of sample 0 for each model in `paths` (key ->
    file), measured round-robin (one run of each model per round) so that load from
    other processes on the machine affects all of them alike. 3 warm-up rounds, then
    at most `runs` rounds, fewer (at least 5) once they take more than `budget_s` per
    model."""
    import numpy as np

    sessions = {}
    for key, path in paths.items():
        sess = make_session(path, threads=1)
        sessions[key] = (sess, [o.name for o in sess.get_outputs()], feeds_for(sess, data, 0, pins))
    times = {k: [] for k in sessions}
    for _ in range(3):
        for sess, names, feed in sessions.values():
            sess.run(names, feed)
    start = time.perf_counter()
    for r in range(runs):
        for k, (sess, names, feed) in sessions.items():
            t = time.perf_counter()
            sess.run(names, feed)
            times[k].append(time.perf_counter() - t)
        if r + 1 >= 5 and time.perf_counter() - start > budget_s * len(sessions):
            break
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def sqnr_db(ref, q) -> float:
    import numpy as np

    ref = ref.astype(np.float64).ravel()
    q = q.astype(np.float64).ravel()
    noise = float(np.sum((ref - q) ** 2))
    sig = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / noise)


def cosine(ref, q) -> float:
    import numpy as np

    a = ref.astype(np.float64).ravel()
    b = q.astype(np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / den) if den > 0 else float("nan")


def task_metric(kind: str, out, ref_out, labels) -> float | None:
    """The model's task metric (see METRIC_NAMES) of stacked outputs `out`."""
    import numpy as np

    n = out.shape[0]
    if kind == "top1":
        if labels is None:
            return None
        pred = out.reshape(n, -1).argmax(axis=1)
        return float(np.mean(pred == labels[:n]))
    if kind == "iou":
        ious = []
        for i in range(n):
            a = ref_out[i] > IOU_THRESHOLD
            b = out[i] > IOU_THRESHOLD
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
        return float(np.mean(ious))
    if kind == "vad":
        if labels is None:
            return None
        pred = out.reshape(n, -1)[:, 0] > VAD_THRESHOLD
        return float(np.mean(pred == (labels[:n] > 0)))
    if kind == "embcos":
        a = ref_out.reshape(n, -1).astype(np.float64)
        b = out.reshape(n, -1).astype(np.float64)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return float(np.mean((a * b).sum(1) / den))
    raise ValueError(kind)


def model_facts(path: str) -> dict:
    """Q/DQ node counts (subgraphs included), opsets, and size in bytes with external data."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    ext = set()

    def walk(g):
        for t in g.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                for e in t.external_data:
                    if e.key == "location":
                        ext.add(e.value)
        for n in g.node:
            if n.op_type in counts:
                counts[n.op_type] += 1
            for a in n.attribute:
                if a.HasField("g"):
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)

    walk(m.graph)
    size = os.path.getsize(path)
    for loc in ext:
        p = os.path.join(os.path.dirname(path), loc)
        if os.path.isfile(p):
            size += os.path.getsize(p)
    opsets = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
    return {
        "n_q": counts["QuantizeLinear"],
        "n_dq": counts["DequantizeLinear"],
        "size_mb": size / 1e6,
        "opset": opsets.get("ai.onnx"),
    }


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Evaluator:
    """fp32 reference outputs of one model on its evaluation samples, and the scoring
    of other models against them."""

    def __init__(self, name: str, model: str, data: dict, labels, n: int, args) -> None:
        self.name = name
        self.cfg = MODELS[name]
        self.data = data
        self.labels = labels
        self.n = n
        self.args = args
        self.pins = self.cfg["pins"]
        sess = make_session(model)
        self.primary = self.cfg.get("output") or sess.get_outputs()[0].name
        t = time.perf_counter()
        self.ref = run_all(sess, data, n, self.pins)
        self.eval_s = time.perf_counter() - t
        self.model = model

    def score(self, path: str) -> dict:
        """Load `path` in ONNX Runtime and score it; `{"rejected": line}` when ORT refuses it."""
        res = {}
        res.update(model_facts(path))
        try:
            sess = make_session(path)
        except Exception as e:
            res["rejected"] = ort_error_short(str(e))
            res["rejected_full"] = str(e)
            return res
        try:
            outs = run_all(sess, self.data, self.n, self.pins)
        except Exception as e:
            res["run_error"] = ort_error_short(str(e))
            res["run_error_full"] = str(e)
            return res
        q = outs.get(self.primary)
        if q is None:
            q = next(iter(outs.values()))
        ref = self.ref[self.primary]
        if q.shape != ref.shape:
            res["run_error"] = f"output shape {list(q.shape)} differs from fp32's {list(ref.shape)}"
            return res
        res["sqnr_db"] = sqnr_db(ref, q)
        res["cosine"] = cosine(ref, q)
        res["metric"] = task_metric(self.cfg["metric"], q, ref, self.labels)
        res["per_output_sqnr_db"] = {
            k: sqnr_db(self.ref[k], outs[k])
            for k in self.ref
            if k in outs and outs[k].shape == self.ref[k].shape
        }
        res["latency_path"] = path  # measured later, together with fp32 (see measure_latency)
        return res

    def measure_latency(self, rows: list[dict]) -> None:
        """Latency of fp32 and of every row's model that ONNX Runtime ran, round-robin;
        sets `latency_ms` and `latency_vs_fp32` on the rows."""
        paths = {"fp32": self.model}
        for i, r in enumerate(rows):
            if r.get("latency_path"):
                paths[i] = r["latency_path"]
        lat = latencies_ms(paths, self.data, self.pins, self.args.latency_runs, self.args.latency_budget)
        for i, r in enumerate(rows):
            if r["method"] == "fp32":
                r["latency_ms"] = lat["fp32"]
            elif i in lat:
                r["latency_ms"] = lat[i]
                r["latency_vs_fp32"] = lat[i] / lat["fp32"]


# --------------------------------------------------------------------------
# The quantizers
# --------------------------------------------------------------------------


def ref_run(name: str, model: str, calib: str, method: str, wd: str, args, opset13: bool) -> tuple[dict, str, dict]:
    """One ORT reference run; returns (run record, output path, worker status)."""
    tag = f"ort_{method}" + ("_opset13" if opset13 else "")
    out = os.path.join(wd, tag + ".onnx")
    status_path = os.path.join(wd, tag + ".status.json")
    cmd = [
        sys.executable,
        os.path.join(HERE, "ref_quantize.py"),
        "--model",
        model,
        "--calib",
        calib,
        "--method",
        method,
        "--out",
        out,
        "--status",
        status_path,
        "--workdir",
        os.path.join(wd, "tmp"),
    ]
    if opset13:
        cmd.append("--opset13")
    reuse = False
    if args.reuse and os.path.isfile(status_path):
        with open(status_path) as f:
            old = json.load(f)
        # a finished run: its model is there, or it crashed (nothing to find)
        reuse = os.path.isfile(out) if old.get("ok") else old.get("stage") != "done"
    if not reuse:
        for p in (out, status_path):
            if os.path.exists(p):
                os.remove(p)
    rec = timed_run(cmd, tag, wd, reuse, args.timeout)
    status = {}
    if os.path.isfile(status_path):
        with open(status_path) as f:
            status = json.load(f)
    return rec, out, status


def ref_method(name: str, model: str, calib: str, method: str, wd: str, ev: Evaluator | None, args) -> dict:
    """ORT quantize_static with `method`: the first attempt, and the opset-13 retry when
    ORT refuses the first model. Scored with `ev` when given."""
    row = {"method": f"ORT {method}", "notes": [], "attempts": []}
    for opset13 in (False, True):
        log(f"  ORT {method}{' (opset 13)' if opset13 else ''}")
        rec, out, status = ref_run(name, model, calib, method, wd, args, opset13)
        attempt = {"opset13": opset13, "run": rec, "status": status}
        row["attempts"].append(attempt)
        row.update(wall_s=rec["wall_s"], peak_mb=rec["peak_mb"])
        pre = status.get("preprocess")
        if pre and pre != "full" and not opset13:
            why = short_exc(status.get("preprocess_error") or "?")
            row["notes"].append(
                f"symbolic shape inference fails ({why}): skip_symbolic_shape"
                if pre == "skip_symbolic_shape"
                else f"pre-processing fails ({why}): quantized without it"
            )
        if rec["rc"] != 0 or not status.get("ok"):
            err = status.get("error") or crash_text(rec)
            stage = status.get("stage")
            row["notes"].append(f"crash{' in ' + stage if stage and stage != 'done' else ''}: {err}")
            return row
        if ev is None:
            return row
        sc = ev.score(out)
        attempt["score"] = sc
        if "rejected" in sc:
            row["notes"].append(f"ORT rejects its model ({sc['rejected'].split(' (node ')[0]})")
            row.update({k: sc[k] for k in ("n_q", "n_dq", "size_mb")})
            if opset13:
                return row
            if (model_facts(model)["opset"] or 0) >= 13:
                row["notes"].append("no retry: the model is already at opset 13 or above")
                return row
            row["notes"].append("retried on the model upgraded to opset 13 (numbers are the retry's)")
            continue
        row.update(sc)
        if "run_error" in sc:
            row["notes"].append(f"ORT run fails: {sc['run_error']}")
        return row
    return row


def qrange_available(qrange: str) -> tuple[bool, str]:
    if not os.path.isfile(qrange):
        return False, f"no qrange binary at {qrange}"
    p = subprocess.run([qrange, "quantize", "--help"], capture_output=True, text=True)
    if p.returncode != 0:
        return False, "qrange has no `quantize` command (" + one_line(p.stderr or p.stdout, 120) + ")"
    return True, ""


def qrange_rows(name: str, model: str, calib: str, evalp: str, has_labels: bool, wd: str, ev, args, avail) -> list[dict]:
    ok, why = avail
    rows = [{"method": "qrange", "notes": []}, {"method": "qrange (validate)", "notes": []}]
    if not ok:
        for r in rows:
            r["notes"].append(why)
        return rows
    pins = []
    for k, v in MODELS[name]["pins"].items():
        pins += ["--pin", f"{k}={v}"]
    out = os.path.join(wd, "qrange.onnx")
    out_v = os.path.join(wd, "qrange_validate.onnx")
    if not args.reuse:
        for p in (out, out_v):
            if os.path.exists(p):
                os.remove(p)
    log("  qrange quantize --no-validate")
    cmd = [args.qrange, "quantize", model, "--calib", calib, "-o", out, "--no-validate"] + pins
    rec = timed_run(cmd, "qrange", wd, args.reuse and os.path.isfile(out), args.timeout)
    rows[0].update(wall_s=rec["wall_s"], peak_mb=rec["peak_mb"], run=rec)
    if rec["rc"] != 0 or not os.path.isfile(out):
        rows[0]["notes"].append(f"failed: {crash_text(rec)}")
    elif ev is not None:
        sc = ev.score(out)
        rows[0].update(sc)
        if "rejected" in sc:
            rows[0]["notes"].append(f"ORT rejects its model ({sc['rejected']})")
        if "run_error" in sc:
            rows[0]["notes"].append(f"ORT run fails: {sc['run_error']}")
    # The reference's weight grid (all 8 bits): the same command with --no-reduce-range.
    out_8 = os.path.join(wd, "qrange_w8.onnx")
    if not args.reuse and os.path.exists(out_8):
        os.remove(out_8)
    log("  qrange quantize --no-validate --no-reduce-range")
    cmd = [args.qrange, "quantize", model, "--calib", calib, "-o", out_8, "--no-validate", "--no-reduce-range"] + pins
    rec = timed_run(cmd, "qrange_w8", wd, args.reuse and os.path.isfile(out_8), args.timeout)
    row8 = {"method": "qrange --no-reduce-range", "notes": [], "wall_s": rec["wall_s"], "peak_mb": rec["peak_mb"], "run": rec}
    if rec["rc"] != 0 or not os.path.isfile(out_8):
        row8["notes"].append(f"failed: {crash_text(rec)}")
    elif ev is not None:
        sc = ev.score(out_8)
        row8.update(sc)
        if "rejected" in sc:
            row8["notes"].append(f"ORT rejects its model ({sc['rejected']})")
        if "run_error" in sc:
            row8["notes"].append(f"ORT run fails: {sc['run_error']}")
    rows.append(row8)
    log("  qrange quantize with validation")
    cmd = [args.qrange, "quantize", model, "--calib", calib, "-o", out_v, "--eval", evalp] + pins
    if has_labels:
        cmd += ["--labels", "label"]
    rec = timed_run(cmd, "qrange_validate", wd, args.reuse and os.path.isfile(out_v), args.timeout)
    rows[1].update(wall_s=rec["wall_s"], peak_mb=rec["peak_mb"], run=rec)
    if rec["rc"] != 0:
        rows[1]["notes"].append(f"failed: {crash_text(rec)}")
    elif os.path.isfile(out_v):
        rows[1].update(model_facts(out_v))
        if os.path.isfile(out) and sha256(out) == sha256(out_v):
            rows[1]["notes"].append("same model as --no-validate")
        elif ev is not None:
            rows[1]["notes"].append("model differs from --no-validate's")
            rows[1].update(ev.score(out_v))
    return rows


# --------------------------------------------------------------------------
# Benchmark drivers
# --------------------------------------------------------------------------


def bench_model(name: str, args, avail) -> dict:
    cfg = MODELS[name]
    model = os.path.join(args.models, name, "model.onnx")
    calib = os.path.join(args.models, cfg["data"], "calib.npz")
    evalp = os.path.join(args.models, cfg["data"], "eval.npz")
    wd = os.path.join(args.out, name)
    os.makedirs(os.path.join(wd, "tmp"), exist_ok=True)
    data = load_npz(evalp)
    labels = data.pop("label", None)
    n = n_samples(data)
    if args.quick:
        n = min(n, cfg["quick"])
    n_calib = n_samples({k: v for k, v in load_npz(calib).items() if k != "label"})
    log(f"== {name}: {n} eval samples, {n_calib} calibration samples")
    res = {
        "model": name,
        "metric": METRIC_NAMES[cfg["metric"]],
        "eval_samples": n,
        "calib_samples": n_calib,
        "rows": [],
    }
    ev = Evaluator(name, model, data, labels, n, args)
    fp32 = {"method": "fp32", "notes": [], "sqnr_db": math.inf, "cosine": 1.0}
    fp32.update(model_facts(model))
    fp32["metric"] = task_metric(cfg["metric"], ev.ref[ev.primary], ev.ref[ev.primary], labels)
    res["rows"].append(fp32)
    res["primary_output"] = ev.primary
    if not args.no_qrange:
        res["rows"] += qrange_rows(name, model, calib, evalp, labels is not None, wd, ev, args, avail)
    if not args.no_ref:
        for method in args.methods:
            res["rows"].append(ref_method(name, model, calib, method, wd, ev, args))
    log("  latency")
    ev.measure_latency(res["rows"])
    return res


def perturbed_calib(name: str, calib: str, size: int, path: str) -> None:
    """`size` samples: the calibration samples in order, repeated; every copy after the
    first is perturbed with seeded noise (images: gaussian sigma 0.02 clipped to [-1, 1];
    byte sequences: 1% of the non-padding bytes replaced by random bytes)."""
    import numpy as np

    src = load_npz(calib)
    base_n = n_samples(src)
    rng = np.random.default_rng(SCALING_SEED + size)
    idx = np.arange(size) % base_n
    out = {}
    for k, a in src.items():
        arr = a[idx].copy()
        if k == "label":
            out[k] = arr
            continue
        copies = np.arange(size) >= base_n
        if arr.dtype.kind == "f":
            noise = rng.normal(0.0, 0.02, size=arr.shape).astype(arr.dtype)
            arr[copies] = np.clip(arr[copies] + noise[copies], -1.0, 1.0)
        elif arr.dtype.kind in "iu":
            flip = (rng.random(arr.shape) < 0.01) & (arr < 256) & copies.reshape((-1,) + (1,) * (arr.ndim - 1))
            arr[flip] = rng.integers(0, 256, size=int(flip.sum()), dtype=arr.dtype)
        out[k] = arr
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz")
    os.close(fd)
    np.savez(tmp, **out)
    os.replace(tmp, path)


def calib_mb(path: str) -> float:
    """Size in memory of the model-input arrays of a calibration npz (label excluded)."""
    return sum(a.nbytes for k, a in load_npz(path).items() if k != "label") / 1e6


def bench_scaling(name: str, args, avail) -> list[dict]:
    cfg = MODELS[name]
    model = os.path.join(args.models, name, "model.onnx")
    calib = os.path.join(args.models, cfg["data"], "calib.npz")
    wd = os.path.join(args.out, "scaling", name)
    os.makedirs(os.path.join(wd, "tmp"), exist_ok=True)
    rows = []
    for size in args.sizes:
        log(f"== scaling {name} N={size}")
        cp = os.path.join(wd, f"calib_{size}.npz")
        if not (args.reuse and os.path.isfile(cp)):
            perturbed_calib(name, calib, size, cp)
        row = {"model": name, "n": size, "notes": [], "calib_mb": calib_mb(cp)}
        ok, why = avail
        if args.no_qrange:
            pass
        elif ok:
            out = os.path.join(wd, f"qrange_{size}.onnx")
            rec = timed_run(
                [args.qrange, "quantize", model, "--calib", cp, "-o", out, "--no-validate", "--json"],
                f"qrange_{size}",
                wd,
                args.reuse,
                args.timeout,
            )
            row["qrange"] = rec
            if rec["rc"] != 0:
                row["notes"].append(f"qrange failed: {crash_text(rec)}")
            else:
                # The calibration phase alone, as the summary times it.
                try:
                    with open(os.path.join(wd, f"qrange_{size}.out")) as f:
                        row["calibrate_s"] = json.load(f)["seconds"]["calibrate"]
                except (OSError, ValueError, KeyError) as e:
                    row["notes"].append(f"no calibration time in qrange's summary: {e}")
        else:
            row["notes"].append(why)
        if not args.no_qrange and os.path.isfile(args.qrange):
            rec = timed_run(
                [args.qrange, "run", model, "--data", cp, "-o", os.path.join(wd, f"run_{size}.npz")],
                f"run_{size}",
                wd,
                args.reuse,
                args.timeout,
            )
            row["tract_run"] = rec
            if rec["rc"] != 0:
                row["notes"].append(f"qrange run failed: {crash_text(rec)}")
            else:
                # "ran N samples of MODEL in X ms/sample (load Y ms)": the inferences alone.
                m = re.search(r"ran (\d+) samples .* in ([0-9.]+) ms/sample", open(os.path.join(wd, f"run_{size}.out")).read())
                if m:
                    row["inference_s"] = int(m.group(1)) * float(m.group(2)) / 1000.0
        if not args.no_ref:
            sub = os.path.join(wd, f"n{size}")
            os.makedirs(os.path.join(sub, "tmp"), exist_ok=True)
            rec, _, status = ref_run(name, model, cp, "MinMax", sub, args, False)
            row["ort_minmax"] = rec
            row["ort_minmax_status"] = status
            if rec["rc"] != 0 or not status.get("ok"):
                stage = status.get("stage")
                err = short_exc(status["error"]) if status.get("error") else crash_text(rec)
                row["notes"].append(f"ORT MinMax crash{' in ' + stage if stage else ''}: {err}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def fmt(x, spec: str, none: str = "-") -> str:
    if x is None:
        return none
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


COLUMNS = (
    "method",
    "wall s",
    "peak MB",
    "size MB",
    "Q/DQ nodes",
    "SQNR dB",
    "cosine",
    "task metric",
    "ORT ms (vs fp32)",
    "notes",
)


def row_cells(r: dict) -> list[str]:
    qdq = f"{r['n_q']}/{r['n_dq']}" if r.get("n_q") is not None else "-"
    lat = "-"
    if r.get("latency_ms") is not None:
        lat = f"{r['latency_ms']:.2f}"
        if r.get("latency_vs_fp32") is not None and r["method"] != "fp32":
            lat += f" ({r['latency_vs_fp32']:.2f}x)"
    return [
        r["method"],
        fmt(r.get("wall_s"), ".1f"),
        fmt(r.get("peak_mb"), ".0f"),
        fmt(r.get("size_mb"), ".2f"),
        qdq,
        fmt(r.get("sqnr_db"), ".1f"),
        fmt(r.get("cosine"), ".4f"),
        fmt(r.get("metric"), ".4f"),
        lat,
        "; ".join(r.get("notes", [])),
    ]


def render_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        esc = [[c.replace("|", "\\|") for c in row] for row in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in esc]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # notes: no padding
    fmt_row = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows])


def model_table(res: dict, markdown: bool) -> str:
    head = (
        f"{res['model']}: task metric = {res['metric']}; {res['eval_samples']} eval samples, "
        f"{res['calib_samples']} calibration samples"
    )
    body = render_table(list(COLUMNS), [row_cells(r) for r in res["rows"]], markdown)
    return (f"### {head}\n\n" if markdown else head + "\n") + body + "\n"


def scaling_table(rows: list[dict], markdown: bool) -> str:
    header = [
        "model",
        "N",
        "qrange wall s",
        "qrange peak MB",
        "ORT MinMax wall s",
        "ORT MinMax peak MB",
        "tract run wall s",
        "tract run peak MB",
        "qrange CPU s",
        "calibration s",
        "inferences s",
        "calibration / inferences",
        "calib data MB",
        "notes",
    ]
    cells = []
    for r in rows:
        q = r.get("qrange") or {}
        o = r.get("ort_minmax") or {}
        t = r.get("tract_run") or {}
        cells.append(
            [
                r["model"],
                str(r["n"]),
                fmt(q.get("wall_s"), ".1f"),
                fmt(q.get("peak_mb"), ".0f"),
                fmt(o.get("wall_s"), ".1f"),
                fmt(o.get("peak_mb"), ".0f"),
                fmt(t.get("wall_s"), ".1f"),
                fmt(t.get("peak_mb"), ".0f"),
                fmt(q.get("cpu_s"), ".1f"),
                fmt(r.get("calibrate_s"), ".2f"),
                fmt(r.get("inference_s"), ".2f"),
                fmt(r["calibrate_s"] / r["inference_s"], ".2f") + "x" if r.get("calibrate_s") and r.get("inference_s") else "-",
                fmt(r.get("calib_mb"), ".1f"),
                "; ".join(r.get("notes", [])),
            ]
        )
    title = "calibration-set scaling (peak RSS and wall time against N)"
    return (f"### {title}\n\n" if markdown else title + "\n") + render_table(header, cells, markdown) + "\n"


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def environment(args) -> dict:
    import numpy
    import onnx
    import onnxruntime

    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "qrange": args.qrange,
        "quick": bool(args.quick),
    }
    try:
        import sympy

        env["sympy"] = sympy.__version__
    except ImportError:
        env["sympy"] = None
    if os.path.isfile(args.qrange):
        p = subprocess.run([args.qrange, "--version"], capture_output=True, text=True)
        env["qrange_version"] = (p.stdout or p.stderr).strip()
    return env


def bench_parser(doc: str, out_name: str):
    """The argument parser the per-mode benches share: ``--models`` (``QRANGE_MODELS`` or
    ``../shared/models`` beside the checkout), ``--qrange``, ``--out`` (``target/OUT_NAME``)
    and ``--only``; each bench adds its own options."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=os.environ.get("QRANGE_MODELS", os.path.join(REPO, "..", "shared", "models")))
    ap.add_argument("--qrange", default=default_qrange())
    ap.add_argument("--out", default=os.path.join(REPO, "target", out_name))
    ap.add_argument("--only", default="")
    return ap


def default_qrange() -> str:
    """The most recently built of target/release/qrange and target/debug/qrange (a release
    binary left from an older commit must not be measured in place of a fresh debug build);
    target/release/qrange when neither exists."""
    built = [
        p
        for p in (os.path.join(REPO, "target", prof, "qrange") for prof in ("release", "debug"))
        if os.path.isfile(p)
    ]
    if not built:
        return os.path.join(REPO, "target", "release", "qrange")
    return max(built, key=os.path.getmtime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default=os.path.join(REPO, "..", "shared", "models"), help="models (default ../shared/models)"
    )
    ap.add_argument("--qrange", default=None, help="qrange binary (default: target/release, else target/debug)")
    ap.add_argument("--out", default=os.path.join(REPO, "target", "quant-bench"), help="work files")
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--report", default=None, help="write every measurement to this JSON file")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument("--quick", action="store_true", help="few evaluation samples and latency runs")
    ap.add_argument("--scaling", action="store_true", help="the calibration-set scaling runs instead")
    ap.add_argument("--sizes", default=",".join(map(str, SCALING_SIZES)), help="scaling: calibration set sizes")
    ap.add_argument("--methods", default=",".join(METHODS), help="reference calibration methods")
    ap.add_argument("--no-ref", action="store_true", help="skip ONNX Runtime's quantizer")
    ap.add_argument("--no-qrange", action="store_true", help="skip qrange")
    ap.add_argument("--reuse", action="store_true", help="reuse quantized models and timings left in --out")
    ap.add_argument("--latency-runs", type=int, default=None, help="timed runs per latency (default 50, quick 10)")
    ap.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, help="per quantization process, seconds")
    args = ap.parse_args()

    args.models = os.path.abspath(args.models)
    args.out = os.path.abspath(args.out)
    args.qrange = os.path.abspath(args.qrange) if args.qrange else default_qrange()
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in METHODS]
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.latency_runs is None:
        args.latency_runs = 10 if args.quick else 50
    args.latency_budget = 3.0 if args.quick else 10.0
    if bad:
        log(f"error: unknown method(s) {bad}; known: {list(METHODS)}")
        return 2
    if not os.access(TIME_BIN, os.X_OK):
        log(f"error: {TIME_BIN} not found (Debian package `time`)")
        return 2
    try:
        import numpy  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        log(f"error: {e}; install benches/requirements.txt")
        return 2
    pool = SCALING_MODELS if args.scaling else tuple(MODELS)
    names = list(pool)
    if args.only:
        want = [s for s in args.only.split(",") if s]
        unknown = [s for s in want if s not in MODELS]
        if unknown:
            log(f"error: unknown model(s) {unknown}; known: {list(MODELS)}")
            return 2
        names = [n for n in pool if n in want]
        if not names:
            log(f"error: none of {want} is benchmarked in this mode (models: {list(pool)})")
            return 2
    missing = [n for n in names if not os.path.isfile(os.path.join(args.models, n, "model.onnx"))]
    if missing:
        log(f"error: no model.onnx for {missing} under {args.models}")
        return 2
    if "/debug/" in args.qrange:
        log(f"note: {args.qrange} is a debug build; its times are not representative")
    os.makedirs(args.out, exist_ok=True)

    avail = qrange_available(args.qrange) if not args.no_qrange else (False, "skipped (--no-qrange)")
    if not avail[0]:
        log(f"note: {avail[1]}")
    report = {"environment": environment(args), "models": {}, "scaling": []}

    def save():
        if args.report:
            write_atomic(args.report, json.dumps(json_safe(report), indent=1, sort_keys=True))

    texts = []
    if args.scaling:
        for name in names:
            report["scaling"] += bench_scaling(name, args, avail)
            save()
        texts.append(scaling_table(report["scaling"], args.markdown))
    else:
        for name in names:
            res = bench_model(name, args, avail)
            report["models"][name] = res
            save()
            log(model_table(res, False))
            texts.append(model_table(res, args.markdown))
    print("\n".join(texts))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
