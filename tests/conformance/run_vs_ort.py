#!/usr/bin/env python3
"""`qrange run` against ONNX Runtime on the real fixture models and their data.

Usage:
    run_vs_ort.py --qrange PATH --fixtures DIR [--report FILE] [--max-samples N]
                  [--atol A] [--rtol R] [--filter REGEX] [--timeout S] [--workdir DIR]

Models (labels as in roundtrip.py):

- ``DIR/<name>/model.onnx`` with the first of ``calib.npz``, ``eval.npz`` beside
  it; a fixture listed in DATA_FALLBACK without data of its own uses the data of
  the fixture named there (silero_vad_ifless uses silero_vad's);
- ``DIR/tiny/<stem>.onnx`` with ``DIR/tiny/<stem>.npz``.

A model without data is listed as not run (it is not a failure). Every sample
of the data is used, except that SAMPLE_CAP limits some fixtures to their first
samples (ppocr_det: 2) and ``--max-samples N`` limits all of them; qrange then
gets a copy of the data cut the same way.

Data layout: one array per model input, named like the input, with a leading
sample axis (sample i is ``{name: arr[i]}``). Keys that are not model inputs
(``label``, unicode ``meta_*`` notes, ...) are ignored.

For each model, ONNX Runtime (CPU EP, one thread) runs every sample, and
``qrange run MODEL --data DATA -o OUT.npz`` (plus ``--pin NAME=VALUE`` for the
inputs PINS fixes for that fixture) runs the same data. OUT.npz must hold one
array per model output, named like the output, stacked on axis 0 in sample
order: the same dtype and shape as ORT's outputs stacked the same way. Every
element must satisfy ``|a - b| <= atol + rtol * |b|`` (a = qrange, b = ORT;
atol 1e-4, rtol 1e-3 by default; NaN matches only NaN, an infinity only the
same infinity). Per output the worst absolute error and the worst ratio
``|a - b| / (atol + rtol * |b|)`` are printed (a ratio above 1 fails).

A pinned input is not fed to qrange, but ORT still needs it: ORT takes it from
the data, or from the pin when the data lacks it. Data whose values of a pinned
input differ from the pin fail the model (the two engines would compute
different things).

Exit status: 0 when every model with data passed, 1 when any failed, 2 when the
harness could not run (missing executable or directory, no model with data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ATOL = 1e-4
RTOL = 1e-3
RUN_TIMEOUT_S = 900
DATA_NAMES = ("calib.npz", "eval.npz")

# Inputs whose value is fixed for qrange (`--pin NAME=VALUE`), per fixture
# directory name. tract only loads silero_vad once its If nodes on the sample
# rate are specialised, and silero_vad_ifless keeps the same interface.
PINS = {
    "silero_vad": {"sr": "16000"},
    "silero_vad_ifless": {"sr": "16000"},
}
# Fixtures that ship no data of their own and use another fixture's.
DATA_FALLBACK = {"silero_vad_ifless": "silero_vad"}
# At most this many samples (the first ones) per fixture: a ppocr_det sample is
# a 1x3x640x640 page, and a debug build of qrange takes long on each.
SAMPLE_CAP = {"ppocr_det": 2}
# Known gaps of the execution engine, by fixture label, with the text its error must
# contain. Such a model must still fail exactly this way: when the gap closes, the
# check fails and the entry has to go. FIXME: inline model-local functions before
# execution.
KNOWN_GAPS = {
    "fixtures/tiny/tiny_all_attrs.onnx": "operator 'LeakyPlus' (domain qrange.test) is not implemented",
}


def one_line(text: str, limit: int = 300) -> str:
    """The first line starting with `error:` and the indented lines after it
    (its causes), joined with " / "; else the first non-empty line, or a Python
    traceback's last line. Trimmed to `limit` characters."""
    raw = [ln.rstrip() for ln in str(text).splitlines() if ln.strip()]
    if not raw:
        return "(no message)"
    start = next((i for i, ln in enumerate(raw) if ln.startswith("error:")), None)
    if start is not None:
        parts = [raw[start]]
        for ln in raw[start + 1 :]:
            if not ln[:1].isspace():
                break
            parts.append(ln.strip())
        line = " / ".join(parts)
    elif raw[0].startswith("Traceback"):
        line = raw[-1].strip()  # a Python traceback ends with the exception
    else:
        line = raw[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------


@dataclass
class Fixture:
    label: str
    model: str  # absolute path
    data: str | None  # absolute path of the npz, None when there is none
    data_label: str | None  # the data path relative to the fixtures directory
    pins: dict = field(default_factory=dict)
    no_data_reason: str | None = None
    sample_cap: int | None = None


def discover(root: str) -> list[Fixture]:
    root = os.path.abspath(root)
    found = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        model = os.path.join(d, "model.onnx")
        if not os.path.isfile(model):
            continue
        data = None
        for cand_dir in (name, DATA_FALLBACK.get(name)):
            if cand_dir is None:
                continue
            for fname in DATA_NAMES:
                p = os.path.join(root, cand_dir, fname)
                if os.path.isfile(p):
                    data = p
                    break
            if data:
                break
        reason = None
        if data is None:
            reason = "no " + " or ".join(DATA_NAMES) + " beside it"
            if name in DATA_FALLBACK:
                reason += f" nor in {DATA_FALLBACK[name]}/"
        found.append(
            Fixture(
                label=f"fixtures/{name}",
                model=model,
                data=data,
                data_label=os.path.relpath(data, root) if data else None,
                pins=dict(PINS.get(name, {})),
                no_data_reason=reason,
                sample_cap=SAMPLE_CAP.get(name),
            )
        )
    tiny = os.path.join(root, "tiny")
    if os.path.isdir(tiny):
        for fname in sorted(os.listdir(tiny)):
            if not fname.endswith(".onnx") or fname == "model.onnx":
                continue
            stem = fname[: -len(".onnx")]
            npz = os.path.join(tiny, stem + ".npz")
            has = os.path.isfile(npz)
            found.append(
                Fixture(
                    label=f"fixtures/tiny/{fname}",
                    model=os.path.join(tiny, fname),
                    data=npz if has else None,
                    data_label=os.path.relpath(npz, root) if has else None,
                    no_data_reason=None if has else f"no {stem}.npz beside it",
                )
            )
    return found


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------


def json_float(x: float):
    """Finite floats as numbers; inf and NaN as strings (strict JSON has neither)."""
    return x if math.isfinite(x) else str(x)


def compare_output(name: str, got, ref, atol: float, rtol: float) -> dict:
    """Compare qrange's stacked output `got` with ORT's stacked output `ref`.

    Returns a dict with `ok`, `max_abs_err`, `worst_ratio`, `worst_at`
    ([sample, index within the sample]), `n_bad`, and `problem` (a sentence)
    when the arrays cannot be compared element by element or fail.
    """
    import numpy as np

    res = {
        "output": name,
        "shape": list(ref.shape),
        "dtype": str(ref.dtype),
        "ok": False,
        "max_abs_err": None,
        "worst_ratio": None,
        "worst_at": None,
        "n_bad": None,
        "problem": None,
    }
    if got is None:
        res["problem"] = f"output {name!r} missing from qrange's npz"
        return res
    if got.dtype != ref.dtype:
        res["problem"] = f"output {name!r}: dtype {got.dtype}, ORT gives {ref.dtype}"
        return res
    if got.shape != ref.shape:
        res["problem"] = (
            f"output {name!r}: shape {list(got.shape)}, ORT gives {list(ref.shape)} (samples stacked on axis 0)"
        )
        return res
    if ref.size == 0:
        res.update(ok=True, max_abs_err=0.0, worst_ratio=0.0, n_bad=0)
        return res
    if ref.dtype.kind not in "biuf":
        same = got == ref
        n_bad = int(np.size(same) - np.count_nonzero(same))
        res.update(n_bad=n_bad, ok=n_bad == 0)
        if n_bad:
            res["problem"] = f"output {name!r}: {n_bad} of {ref.size} elements differ"
        return res
    a = got.astype(np.float64)
    b = ref.astype(np.float64)
    special = ~(np.isfinite(a) & np.isfinite(b))
    special_ok = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - b)
        bound = atol + rtol * np.abs(b)
        ratio = err / bound
    err = np.where(special, np.where(special_ok, 0.0, np.inf), err)
    ratio = np.where(special, np.where(special_ok, 0.0, np.inf), ratio)
    worst = int(np.argmax(ratio))
    idx = np.unravel_index(worst, ratio.shape)
    n_bad = int(np.count_nonzero(ratio > 1.0))
    res.update(
        max_abs_err=float(err.max()),
        worst_ratio=float(ratio.reshape(-1)[worst]),
        worst_at=[int(idx[0]), [int(i) for i in idx[1:]]],
        n_bad=n_bad,
        ok=n_bad == 0,
    )
    if n_bad:
        res["problem"] = (
            f"output {name!r}: {n_bad} of {ref.size} elements outside |a-b| <= {atol:g} + {rtol:g}*|b| "
            f"(worst at sample {idx[0]} index {[int(i) for i in idx[1:]]}: "
            f"qrange {a.reshape(-1)[worst].item()!r} vs ORT {b.reshape(-1)[worst].item()!r}, "
            f"ratio {ratio.reshape(-1)[worst]:.3g})"
        )
    return res


# --------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------


class ModelError(Exception):
    """The model fails before its outputs can be compared."""


def ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def graph_io(model_path: str):
    """(inputs as [(name, numpy dtype, static shape or None)], output names)."""
    import onnx
    from onnx import helper

    graph = onnx.load(model_path, load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    inputs = []
    for vi in graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        shape = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = [d.dim_value for d in tt.shape.dim]
        inputs.append((vi.name, dtype, shape))
    return inputs, [o.name for o in graph.output]


def pin_array(name: str, value: str, dtype, shape):
    import numpy as np

    if dtype is None or shape is None:
        raise ModelError(f"pinned input {name!r} has no static type and shape to build {value!r} from")
    try:
        scalar = int(value) if np.dtype(dtype).kind in "iub" else float(value)
    except ValueError as e:
        raise ModelError(f"pin {name}={value}: not a number") from e
    return np.full(shape, scalar, dtype=dtype)


def load_data(fx: Fixture, inputs, max_samples: int | None, workdir: str):
    """Per-input sample arrays, the sample count used, the sample count in the
    data, and the npz path to give qrange (a copy cut to the first samples when
    max_samples or the fixture's cap is below the count)."""
    import numpy as np

    caps = [c for c in (max_samples, fx.sample_cap) if c is not None]
    max_samples = min(caps) if caps else None

    arrays = {}
    with np.load(fx.data, allow_pickle=False) as z:
        files = set(z.files)
        for name, _, _ in inputs:
            if name in files:
                arrays[name] = z[name]
            elif name not in fx.pins:
                raise ModelError(f"{fx.data_label} has no array for input {name!r}")
        counts = {}
        for name, arr in arrays.items():
            if arr.ndim == 0:
                raise ModelError(f"{fx.data_label}: {name!r} has no sample axis")
            counts[name] = arr.shape[0]
        if not counts:
            raise ModelError(f"{fx.data_label} feeds none of the model's inputs")
        n = set(counts.values())
        if len(n) != 1:
            raise ModelError(f"{fx.data_label}: inputs disagree on the sample count {counts}")
        total = in_data = n.pop()
        if total == 0:
            raise ModelError(f"{fx.data_label} has no samples")
        data_path = fx.data
        if max_samples is not None and max_samples < total:
            keep = {}
            for key in sorted(files):
                try:
                    arr = z[key]
                except ValueError:
                    continue  # object arrays cannot be loaded without pickle; not inputs
                keep[key] = arr[:max_samples] if arr.ndim and arr.shape[0] == total else arr
            data_path = os.path.join(workdir, "data.npz")
            np.savez(data_path, **keep)
            arrays = {k: v[:max_samples] for k, v in arrays.items()}
            total = max_samples
    return arrays, total, in_data, data_path


def check_pins(fx: Fixture, inputs, arrays) -> dict:
    """ORT values of the pinned inputs that the data lacks; fails on data that disagrees with a pin."""
    import numpy as np

    by_name = {name: (dtype, shape) for name, dtype, shape in inputs}
    extra = {}
    for name, value in sorted(fx.pins.items()):
        if name not in by_name:
            raise ModelError(f"pinned input {name!r} is not an input of the model")
        dtype, shape = by_name[name]
        if name in arrays:
            want = pin_array(name, value, arrays[name].dtype, list(arrays[name].shape[1:]))
            diff = [i for i in range(arrays[name].shape[0]) if not np.array_equal(arrays[name][i], want)]
            if diff:
                raise ModelError(
                    f"{fx.data_label}: {name!r} of sample {diff[0]} is {arrays[name][diff[0]].tolist()!r}, "
                    f"not the pinned {value} ({len(diff)} samples differ)"
                )
        else:
            extra[name] = pin_array(name, value, dtype, shape)
    return extra


def run_model(fx: Fixture, args, workdir: str) -> tuple[dict, dict]:
    """The model's result (JSON-ready) and its wall times (qrange, ORT) in seconds."""
    import numpy as np

    res = {
        "label": fx.label,
        "data": fx.data_label,
        "pins": [f"{k}={v}" for k, v in sorted(fx.pins.items())],
        "samples": None,
        "samples_in_data": None,
        "outputs": [],
        "failures": [],
        "passed": False,
    }
    timing = {"qrange": None, "ort": None}

    def scrub(msg: str) -> str:
        return str(msg).replace(workdir + os.sep, "").replace(os.path.dirname(fx.model) + os.sep, "")

    proc = None
    try:
        inputs, output_names = graph_io(fx.model)
        arrays, n, in_data, data_path = load_data(fx, inputs, args.max_samples, workdir)
        res["samples"] = n
        res["samples_in_data"] = in_data
        pinned_for_ort = check_pins(fx, inputs, arrays)

        out_path = os.path.join(workdir, "out.npz")
        cmd = [args.qrange, "run", fx.model, "--data", data_path, "-o", out_path]
        for k, v in sorted(fx.pins.items()):
            cmd += ["--pin", f"{k}={v}"]
        out_log = open(os.path.join(workdir, "stdout.txt"), "wb")
        err_log = open(os.path.join(workdir, "stderr.txt"), "wb")
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_log, stderr=err_log)
        except OSError as e:
            raise ModelError(f"cannot start {args.qrange}: {e}") from e
        finally:
            out_log.close()
            err_log.close()

        # ORT works while qrange runs.
        t1 = time.monotonic()
        try:
            sess = ort_session(fx.model)
        except Exception as e:  # noqa: BLE001 - any load error
            raise ModelError(f"ORT cannot load the model: {one_line(scrub(e))}") from e
        per_sample = []
        for i in range(n):
            feeds = {name: np.asarray(arr[i]) for name, arr in arrays.items()}
            feeds.update(pinned_for_ort)
            try:
                per_sample.append(sess.run(output_names, feeds))
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"ORT cannot run sample {i}: {one_line(scrub(e))}") from e
        ref = {}
        for k, name in enumerate(output_names):
            shapes = {tuple(np.shape(s[k])) for s in per_sample}
            if len(shapes) != 1:
                raise ModelError(f"ORT output {name!r} changes shape between samples {sorted(shapes)}")
            ref[name] = np.stack([np.asarray(s[k]) for s in per_sample])
        timing["ort"] = time.monotonic() - t1

        try:
            rc = proc.wait(timeout=max(1.0, args.timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired as e:
            proc.kill()
            proc.wait()
            raise ModelError(f"qrange run timed out after {args.timeout:g} s") from e
        finally:
            timing["qrange"] = time.monotonic() - t0
        if rc != 0:
            with open(os.path.join(workdir, "stderr.txt"), "rb") as f:
                msg = f.read().decode("utf-8", "replace")
            if not msg.strip():
                with open(os.path.join(workdir, "stdout.txt"), "rb") as f:
                    msg = f.read().decode("utf-8", "replace")
            raise ModelError(f"qrange run exited with {rc}: {one_line(scrub(msg))}")
        if not os.path.isfile(out_path):
            raise ModelError("qrange run exited with 0 but wrote no output file")
        try:
            with np.load(out_path, allow_pickle=False) as z:
                got = {key: z[key] for key in z.files}
        except Exception as e:  # noqa: BLE001 - any unreadable npz
            raise ModelError(f"qrange's output is not a readable npz: {one_line(scrub(e))}") from e

        for name in output_names:
            cmp = compare_output(name, got.get(name), ref[name], args.atol, args.rtol)
            res["outputs"].append(cmp)
            if cmp["problem"]:
                res["failures"].append(cmp["problem"])
        unexpected = sorted(set(got) - set(output_names))
        if unexpected:
            res["failures"].append(f"qrange's npz has arrays that are not model outputs: {unexpected}")
    except ModelError as e:
        res["failures"].append(scrub(str(e)))
    except Exception as e:  # noqa: BLE001 - bad data files and the like fail this model only
        res["failures"].append(f"{type(e).__name__}: {one_line(scrub(e))}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    res["passed"] = not res["failures"]
    return res, timing


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def fmt_err(x) -> str:
    return "-" if x is None else f"{x:.3e}"


def fmt_ratio(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def table(results: list[dict]) -> list[str]:
    """One row per output (verdict of that output); a model that failed for
    another reason (qrange error, stray arrays...) gets a row "(model)" FAIL."""
    rows = [["model", "data", "samples", "output", "max abs err", "worst ratio", "result"]]
    for r in results:
        samples = "-" if r["samples"] is None else str(r["samples"])
        if r["samples"] is not None and r["samples"] != r["samples_in_data"]:
            samples += f"/{r['samples_in_data']}"
        lines = [
            [o["output"], fmt_err(o["max_abs_err"]), fmt_ratio(o["worst_ratio"]), "ok" if o["ok"] else "FAIL"]
            for o in r["outputs"]
        ]
        if not r["passed"] and all(o["ok"] for o in r["outputs"]):
            lines.append(["(model)", "-", "-", "FAIL"])
        for j, line in enumerate(lines):
            head = [r["label"], r["data"] or "-", samples] if j == 0 else ["", "", ""]
            rows.append(head + line)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 4, 5}
    lines = []
    for j, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="`qrange run` against ONNX Runtime on the fixture models.")
    parser.add_argument("--qrange", required=True, help="path to the qrange executable")
    parser.add_argument("--fixtures", required=True, help="fixtures directory")
    parser.add_argument("--report", help="write a JSON report here")
    parser.add_argument("--max-samples", type=int, help="use at most the first N samples of each data file")
    parser.add_argument("--atol", type=float, default=ATOL, help=f"absolute tolerance (default {ATOL:g})")
    parser.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance (default {RTOL:g})")
    parser.add_argument("--filter", help="only models whose label matches this regex")
    parser.add_argument(
        "--timeout", type=float, default=RUN_TIMEOUT_S, help=f"seconds per qrange run (default {RUN_TIMEOUT_S})"
    )
    parser.add_argument("--workdir", help="keep each model's qrange output here (default: a temp dir, removed)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    qrange = shutil.which(args.qrange) if os.sep not in args.qrange else args.qrange
    if not qrange or not os.path.isfile(qrange) or not os.access(qrange, os.X_OK):
        print(f"error: qrange executable not found: {args.qrange}", file=sys.stderr)
        return 2
    args.qrange = os.path.abspath(qrange)
    if args.max_samples is not None and args.max_samples < 1:
        print("error: --max-samples must be at least 1", file=sys.stderr)
        return 2
    if not os.path.isdir(args.fixtures):
        print(f"error: not a directory: {args.fixtures}", file=sys.stderr)
        return 2
    fixtures = discover(args.fixtures)
    if args.filter:
        pat = re.compile(args.filter)
        fixtures = [f for f in fixtures if pat.search(f.label)]
    runnable = [f for f in fixtures if f.data]
    not_run = [f for f in fixtures if not f.data]
    if not runnable:
        print(f"error: no fixture model with data under {args.fixtures}", file=sys.stderr)
        for f in not_run:
            print(f"  {f.label}: {f.no_data_reason}", file=sys.stderr)
        return 2

    scratch = tempfile.mkdtemp(prefix="qrange-run-vs-ort-")
    root = os.path.abspath(args.workdir) if args.workdir else scratch
    cap = "" if args.max_samples is None else f", at most {args.max_samples} samples each"
    print(
        f"run-vs-ort: {len(runnable)} models{cap}, tolerance |a-b| <= {args.atol:g} + {args.rtol:g}*|b|, "
        f"qrange = {args.qrange}",
        flush=True,
    )
    results = []
    try:
        for fx in runnable:
            workdir = os.path.join(root, re.sub(r"[^A-Za-z0-9_.-]+", "_", fx.label))
            shutil.rmtree(workdir, ignore_errors=True)
            os.makedirs(workdir)
            res, timing = run_model(fx, args, workdir)
            results.append(res)
            times = ", ".join(f"{k} {v:.1f} s" for k, v in timing.items() if v is not None)
            samples = "?" if res["samples"] is None else str(res["samples"])
            if res["samples"] is not None and res["samples"] != res["samples_in_data"]:
                samples += f" of {res['samples_in_data']}"
            print(
                f"  {fx.label}: {samples} samples"
                + (f" ({times})" if times else "")
                + (": ok" if res["passed"] else ": FAIL"),
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    out = [""]
    if not_run:
        out.append(f"not run (no data): {len(not_run)}")
        out.extend(f"  {f.label}: {f.no_data_reason}" for f in not_run)
        out.append("")
    gaps = []
    for r in results:
        expect = KNOWN_GAPS.get(r["label"])
        if expect is None:
            continue
        if not r["passed"] and any(expect in f for f in r["failures"]):
            r["passed"] = True
            r["known_gap"] = expect
            gaps.append(r)
        else:
            r["passed"] = False
            r["failures"].append(
                f"listed as a known engine gap ({expect!r}) but did not fail that way: update KNOWN_GAPS"
            )
    if gaps:
        out.append(f"known engine gaps (failing as expected): {len(gaps)}")
        out.extend(f"  {r['label']}: {r['known_gap']}" for r in gaps)
        out.append("")
    failed = [r for r in results if not r["passed"]]
    n_fail = sum(len(r["failures"]) for r in failed)
    out.append(f"FAILURES: {n_fail}" if failed else "failures: 0")
    for r in failed:
        out.extend(f"  {r['label']}: {f}" for f in r["failures"])
    out.append("")
    out.extend(table(results))
    print("\n".join(out))
    print(f"time: {time.monotonic() - start:.1f} s")

    if args.report:
        for r in results:
            for o in r["outputs"]:
                for key in ("max_abs_err", "worst_ratio"):
                    if o[key] is not None:
                        o[key] = json_float(o[key])
        report = {
            "qrange": os.path.basename(args.qrange),
            "tolerance": {"atol": args.atol, "rtol": args.rtol},
            "max_samples": args.max_samples,
            "counts": {"passed": len(results) - len(failed), "failed": len(failed), "not_run": len(not_run)},
            "not_run": [[f.label, f.no_data_reason] for f in not_run],
            "models": results,
        }
        tmp = args.report + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, sort_keys=True, indent=1)
            f.write("\n")
        os.replace(tmp, args.report)

    if gaps:
        print(f"known engine gaps, failing as expected: {len(gaps)}")
    print(f"run-vs-ort: {len(results) - len(failed) - len(gaps)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
