#!/usr/bin/env python3
"""Round-trip conformance of `qrange convert` against ONNX Runtime.

Usage:
    roundtrip.py --qrange PATH --corpus DIR [--fixtures DIR] [--report FILE]
                 [--jobs N] [--filter REGEX] [--workdir DIR]

For every model (``*.onnx`` under the corpus made by gen_corpus.py, and under
the fixtures directory if given):

(a) ONNX Runtime (CPU EP) runs the original on each test data set and its
    outputs are compared with the expected outputs (ONNX backend rules: the
    case's rtol/atol, dtype and shape must match, NaN equals NaN, sequences and
    optionals element by element). A model that ORT cannot load, cannot run,
    gets wrong, or does not reproduce bit for bit across two runs is "not
    runnable by ORT as given": it is left out of the comparison and listed with
    its reason.
(b) ``qrange convert model.onnx pass1/model.onnx`` and ``qrange convert
    pass1/model.onnx pass2/model.onnx`` both succeed, and the two outputs (and their
    external data files, if any) are byte-identical.
(c) ORT runs out1 on the same inputs and its outputs are bitwise identical
    (NaN-aware) to ORT's outputs on the original. A model without test data
    only has to load in ORT.
(d) When the original passes ``onnx.checker.check_model(full_check=True)``,
    out1 passes it too.

A failure of (b), (c) or (d) on a model that ORT runs as given fails the run
(exit 1). Failures on other models are listed as not gating. Exit 2 means the
harness could not run (bad arguments, missing files).

Fixture data: ``test_data_set_*`` directories next to a model (used when the
model is named model.onnx or is the only model in its directory), else the
first of ``<stem>.npz``, ``calib.npz``, ``data.npz``, ``eval.npz`` next to it
that holds every graph input (sample 0 of the leading sample axis is used).

Models are processed by N worker processes (default 2); a worker that dies
(for instance ORT crashing) is restarted and the model it held is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-7
CONVERT_TIMEOUT_S = 300
TASK_TIMEOUT_S = 900
NPZ_NAMES = ("calib.npz", "data.npz", "eval.npz")

# Reasons for which ORT does not run a model as given.
SKIP_LOAD = "ORT cannot load the model"
SKIP_RUN = "ORT cannot run the model on its inputs"
SKIP_WRONG = "ORT output differs from the expected output"
SKIP_NONDET = "ORT output differs between two runs"
SKIP_DATA = "test data cannot be fed to ORT"
SKIP_CRASH = "ORT crashed on the original"


def one_line(text: str, limit: int = 300) -> str:
    """First non-empty line of a message, trimmed."""
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return "(no message)"


# --------------------------------------------------------------------------
# Discovery (manager side)
# --------------------------------------------------------------------------


@dataclass
class Task:
    index: int
    label: str  # stable name in the report
    source: str  # "node", "pytorch-converted", ..., or "fixtures"
    model: str  # absolute path
    data_sets: list  # absolute paths of test_data_set_* directories
    npz: str | None
    rtol: float
    atol: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


def data_set_dirs(directory: str) -> list[str]:
    found = []
    for name in os.listdir(directory):
        m = re.fullmatch(r"test_data_set_(\d+)", name)
        if m and os.path.isdir(os.path.join(directory, name)):
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return [p for _, p in sorted(found)]


def discover(root: str, label_prefix: str, default_source: str) -> list[Task]:
    tasks = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        models = sorted(f for f in filenames if f.endswith(".onnx"))
        for fname in models:
            path = os.path.abspath(os.path.join(dirpath, fname))
            rel = os.path.relpath(path, root)
            if fname == "model.onnx":
                rel = os.path.dirname(rel) or "model.onnx"
            label = label_prefix + rel
            source, rtol, atol = default_source, DEFAULT_RTOL, DEFAULT_ATOL
            meta_path = os.path.join(dirpath, "meta.json")
            if fname == "model.onnx" and os.path.isfile(meta_path):
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f)
                source = meta.get("kind", source)
                rtol = float(meta.get("rtol", rtol))
                atol = float(meta.get("atol", atol))
            sets = []
            if fname == "model.onnx" or len(models) == 1:
                sets = data_set_dirs(dirpath)
            npz = None
            if not sets:
                stem = fname[: -len(".onnx")]
                for cand in (stem + ".npz",) + NPZ_NAMES:
                    if os.path.isfile(os.path.join(dirpath, cand)):
                        npz = os.path.abspath(os.path.join(dirpath, cand))
                        break
            tasks.append(Task(0, label, source, path, sets, npz, rtol, atol))
    return tasks


# --------------------------------------------------------------------------
# Worker side: everything that imports onnx / onnxruntime
# --------------------------------------------------------------------------


class Skip(Exception):
    """The original model is not runnable by ORT as given."""

    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


def load_value(path: str, type_proto):
    import onnx
    from onnx import numpy_helper

    with open(path, "rb") as f:
        raw = f.read()
    if type_proto is not None and type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(raw)
        return seq.name, numpy_helper.to_list(seq)
    if type_proto is not None and type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(raw)
        return opt.name, numpy_helper.to_optional(opt)
    if type_proto is not None and type_proto.HasField("map_type"):
        mp = onnx.MapProto()
        mp.ParseFromString(raw)
        return mp.name, numpy_helper.to_dict(mp)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(raw)
    return tensor.name, numpy_helper.to_array(tensor)


def numbered(directory: str, prefix: str) -> list[str]:
    found = []
    for name in os.listdir(directory):
        m = re.fullmatch(prefix + r"_(\d+)\.pb", name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return [p for _, p in sorted(found)]


def load_data_set(graph, ds_dir: str):
    """Feeds (name -> value) and expected outputs (list, or None if absent)."""
    inputs = list(graph.input)
    by_name = {vi.name: vi for vi in inputs}
    feeds = {}
    for k, path in enumerate(numbered(ds_dir, "input")):
        # ONNX's runner binds input_k to graph.input[k]; a name stored in the
        # file wins when it names a graph input.
        positional = inputs[k] if k < len(inputs) else None
        # Peek at the name with the positional type, then reload if needed.
        name, value = load_value(path, positional.type if positional else None)
        vi = by_name.get(name) if name else None
        if vi is not None and positional is not None and vi.name != positional.name:
            name, value = load_value(path, vi.type)
        elif vi is None:
            if positional is None:
                raise Skip(SKIP_DATA, f"{os.path.basename(path)} has no matching graph input")
            vi = positional
        feeds[vi.name] = value
    out_files = numbered(ds_dir, "output")
    if not out_files:
        return feeds, None
    outputs = list(graph.output)
    if len(out_files) != len(outputs):
        raise Skip(
            SKIP_DATA,
            f"{len(out_files)} expected outputs for {len(outputs)} graph outputs",
        )
    expected = [load_value(p, outputs[k].type)[1] for k, p in enumerate(out_files)]
    return feeds, expected


def load_npz(graph, npz_path: str):
    import numpy as np

    init_names = {t.name for t in graph.initializer}
    wanted = [vi.name for vi in graph.input if vi.name not in init_names]
    with np.load(npz_path, allow_pickle=False) as z:
        if not all(name in z.files for name in wanted):
            return None
        return {name: np.asarray(z[name][0]) for name in wanted}


def ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def as_float32_if_exotic(a):
    """ml_dtypes arrays (bfloat16, float8, int4...) compare through float32."""
    import numpy as np

    if a.dtype.kind == "V" or a.dtype.type.__module__.startswith("ml_dtypes"):
        return a.astype(np.float32)
    return a


def compare_close(ref, out, rtol: float, atol: float, where: str) -> str | None:
    """ONNX backend comparison; returns a reason or None."""
    import numpy as np

    if ref is None or out is None:
        if ref is None and out is None:
            return None
        return f"{where}: expected {'nothing' if ref is None else 'a value'}, got {'nothing' if out is None else 'a value'}"
    if isinstance(ref, (list, tuple)) or isinstance(out, (list, tuple)):
        if not (isinstance(ref, (list, tuple)) and isinstance(out, (list, tuple))):
            return f"{where}: expected {type(ref).__name__}, got {type(out).__name__}"
        if len(ref) != len(out):
            return f"{where}: sequence length {len(out)}, expected {len(ref)}"
        for j, (r, o) in enumerate(zip(ref, out)):
            msg = compare_close(r, o, rtol, atol, f"{where}[{j}]")
            if msg:
                return msg
        return None
    if isinstance(ref, dict) or isinstance(out, dict):
        if not (isinstance(ref, dict) and isinstance(out, dict)) or sorted(ref) != sorted(out):
            return f"{where}: map keys differ"
        for key in sorted(ref):
            msg = compare_close(ref[key], out[key], rtol, atol, f"{where}[{key!r}]")
            if msg:
                return msg
        return None
    ref = np.asarray(ref)
    out = np.asarray(out)
    if ref.shape != out.shape:
        return f"{where}: shape {out.shape}, expected {ref.shape}"
    if ref.dtype == object or out.dtype == object:
        if ref.dtype != out.dtype or not np.array_equal(ref, out):
            return f"{where}: string values differ"
        return None
    if ref.dtype != out.dtype:
        return f"{where}: dtype {out.dtype}, expected {ref.dtype}"
    if ref.dtype.name == "bfloat16":
        rtol = max(rtol, 2**-6)
    r = as_float32_if_exotic(ref)
    o = as_float32_if_exotic(out)
    if r.dtype == np.bool_:
        ok = np.array_equal(r, o)
        bad = int(np.count_nonzero(r != o))
    else:
        close = np.isclose(o, r, rtol=rtol, atol=atol, equal_nan=True)
        ok = bool(np.all(close))
        bad = int(close.size - np.count_nonzero(close))
    if not ok:
        return f"{where}: {bad} of {ref.size} elements outside rtol={rtol:g} atol={atol:g}"
    return None


def _nan_mask(a):
    import numpy as np

    try:
        if a.dtype.kind in "fc":
            return np.isnan(a)
        if a.dtype.kind == "V" or a.dtype.type.__module__.startswith("ml_dtypes"):
            return np.isnan(a.astype(np.float32))
    except (TypeError, ValueError):
        pass
    return np.zeros(a.shape, dtype=bool)


def compare_identical(ref, out, where: str) -> str | None:
    """Bitwise equality, except that any NaN equals any NaN."""
    import numpy as np

    if ref is None or out is None:
        if ref is None and out is None:
            return None
        return f"{where}: one side has no value"
    if isinstance(ref, (list, tuple)) or isinstance(out, (list, tuple)):
        if not (isinstance(ref, (list, tuple)) and isinstance(out, (list, tuple))):
            return f"{where}: {type(out).__name__} vs {type(ref).__name__}"
        if len(ref) != len(out):
            return f"{where}: sequence length {len(out)} vs {len(ref)}"
        for j, (r, o) in enumerate(zip(ref, out)):
            msg = compare_identical(r, o, f"{where}[{j}]")
            if msg:
                return msg
        return None
    if isinstance(ref, dict) or isinstance(out, dict):
        if not (isinstance(ref, dict) and isinstance(out, dict)) or sorted(ref) != sorted(out):
            return f"{where}: map keys differ"
        for key in sorted(ref):
            msg = compare_identical(ref[key], out[key], f"{where}[{key!r}]")
            if msg:
                return msg
        return None
    ref = np.asarray(ref)
    out = np.asarray(out)
    if ref.dtype != out.dtype:
        return f"{where}: dtype {out.dtype} vs {ref.dtype}"
    if ref.shape != out.shape:
        return f"{where}: shape {out.shape} vs {ref.shape}"
    if ref.dtype == object:
        if ref.ravel().tolist() != out.ravel().tolist():
            return f"{where}: string values differ"
        return None
    if ref.tobytes() == out.tobytes():
        return None
    size = ref.dtype.itemsize
    rb = np.ascontiguousarray(ref).reshape(-1).view(np.uint8).reshape(-1, size)
    ob = np.ascontiguousarray(out).reshape(-1).view(np.uint8).reshape(-1, size)
    differ = np.any(rb != ob, axis=1)
    both_nan = (_nan_mask(ref) & _nan_mask(out)).reshape(-1)
    bad = differ & ~both_nan
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return None
    first = int(np.argmax(bad))
    return (
        f"{where}: {n_bad} of {ref.size} elements differ bitwise "
        f"(first at flat index {first}: {ref.reshape(-1)[first]} vs {out.reshape(-1)[first]})"
    )


# Element types that numpy has no native dtype for (onnx maps them to ml_dtypes).
EXOTIC_NAMES = (
    "BFLOAT16",
    "FLOAT8E4M3FN",
    "FLOAT8E4M3FNUZ",
    "FLOAT8E5M2",
    "FLOAT8E5M2FNUZ",
    "FLOAT8E8M0",
    "UINT4",
    "INT4",
    "FLOAT4E2M1",
    "UINT2",
    "INT2",
)


def exotic_types() -> set:
    import onnx

    return {getattr(onnx.TensorProto, n) for n in EXOTIC_NAMES if hasattr(onnx.TensorProto, n)}


def is_exotic_array(value) -> bool:
    import numpy as np

    return isinstance(value, np.ndarray) and value.dtype.type.__module__.startswith("ml_dtypes")


def exotic_to_ortvalue(value):
    """An OrtValue holding an ml_dtypes array in ONNX's own (packed) layout."""
    import ctypes

    import onnxruntime as ort
    from onnx import numpy_helper

    proto = numpy_helper.from_array(value)
    raw = proto.raw_data
    ov = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), proto.data_type)
    if ov.tensor_size_in_bytes() != len(raw):
        raise ValueError(
            f"{value.dtype} tensor of shape {value.shape}: ORT wants "
            f"{ov.tensor_size_in_bytes()} bytes, ONNX packs {len(raw)}"
        )
    if raw:
        ctypes.memmove(ov.data_ptr(), raw, len(raw))
    return ov


def exotic_from_ortvalue(ov):
    """Read an OrtValue of an exotic element type back through ONNX's unpacking."""
    import ctypes

    import onnx
    from onnx import numpy_helper

    size = ov.tensor_size_in_bytes()
    proto = onnx.TensorProto()
    proto.data_type = ov.element_type()
    proto.dims.extend(ov.shape())
    proto.raw_data = ctypes.string_at(ov.data_ptr(), size) if size else b""
    return numpy_helper.to_array(proto)


def run_ort(sess, feeds, graph):
    """Run a session. Tensors of exotic element types (bfloat16, float8, int4...)
    go in and out through OrtValues, since ORT's numpy binding cannot carry them."""
    exotic = exotic_types()
    out_types = []
    all_tensors = True
    for vi in graph.output:
        if vi.type.HasField("tensor_type"):
            out_types.append(vi.type.tensor_type.elem_type)
        else:
            all_tensors = False
            out_types.append(None)
    wants_ov = any(is_exotic_array(v) for v in feeds.values()) or any(
        t in exotic for t in out_types
    )
    if not wants_ov:
        return sess.run(None, feeds)
    import numpy as np
    import onnxruntime as ort

    if not all_tensors or not all(isinstance(v, np.ndarray) for v in feeds.values()):
        return sess.run(None, feeds)
    ov_feeds = {
        name: exotic_to_ortvalue(v) if is_exotic_array(v) else ort.OrtValue.ortvalue_from_numpy(v)
        for name, v in feeds.items()
    }
    names = [o.name for o in sess.get_outputs()]
    results = sess.run_with_ort_values(names, ov_feeds)
    outs = []
    for ov in results:
        if ov.element_type() in exotic:
            outs.append(exotic_from_ortvalue(ov))
        else:
            outs.append(ov.numpy())
    return outs


def convert(qrange: str, src: str, dst: str) -> str | None:
    try:
        proc = subprocess.run(
            [qrange, "convert", src, dst],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=CONVERT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {CONVERT_TIMEOUT_S} s"
    except OSError as e:
        return f"cannot start {qrange}: {e}"
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace") or proc.stdout.decode("utf-8", "replace")
        return f"exit {proc.returncode}: {one_line(msg)}"
    if not os.path.isfile(dst):
        return "exit 0 but no output file"
    return None


def process(task: dict, qrange: str, workdir: str, stage) -> dict:
    import onnx

    res = {
        "label": task["label"],
        "source": task["source"],
        "ort_runnable": False,
        "ort_mode": None,  # "data" (outputs compared) or "load" (no data)
        "skip": None,  # [category, detail] when not runnable by ORT as given
        "convert": None,
        "byte_stable": None,
        "ort_identical": None,
        "checker_original": None,
        "checker_converted": None,
        "failures": [],
    }
    model_path = task["model"]
    mdir = os.path.dirname(model_path)

    def scrub(msg: str) -> str:
        return one_line(str(msg).replace(workdir + os.sep, "").replace(mdir + os.sep, ""))

    # (d) first half: does the original pass the full checker?
    stage("checker_original")
    try:
        onnx.checker.check_model(model_path, full_check=True)
        res["checker_original"] = True
    except Exception as e:  # noqa: BLE001 - any checker error counts
        res["checker_original"] = False
        res["checker_original_error"] = scrub(e)

    # (a) ORT on the original.
    stage("ort_original")
    graph = onnx.load(model_path, load_external_data=False).graph
    data = []  # list of (feeds, expected or None)
    orig_outputs = []
    try:
        try:
            sess = ort_session(model_path)
        except Exception as e:  # noqa: BLE001
            raise Skip(SKIP_LOAD, scrub(e)) from e
        try:
            for ds in task["data_sets"]:
                data.append(load_data_set(graph, ds))
            if not data and task["npz"]:
                feeds = load_npz(graph, task["npz"])
                if feeds is not None:
                    data.append((feeds, None))
        except Skip:
            raise
        except Exception as e:  # noqa: BLE001
            raise Skip(SKIP_DATA, scrub(e)) from e
        for i, (feeds, expected) in enumerate(data):
            try:
                first = run_ort(sess, feeds, graph)
                second = run_ort(sess, feeds, graph)
            except Exception as e:  # noqa: BLE001
                raise Skip(SKIP_RUN, scrub(e)) from e
            for k, (a, b) in enumerate(zip(first, second)):
                msg = compare_identical(a, b, f"data set {i} output {k}")
                if msg:
                    raise Skip(SKIP_NONDET, msg)
            if expected is not None:
                if len(first) != len(expected):
                    raise Skip(SKIP_WRONG, f"{len(first)} outputs, expected {len(expected)}")
                for k, (ref, out) in enumerate(zip(expected, first)):
                    msg = compare_close(ref, out, task["rtol"], task["atol"], f"data set {i} output {k}")
                    if msg:
                        raise Skip(SKIP_WRONG, msg)
            orig_outputs.append(first)
        orig_names = [o.name for o in sess.get_outputs()]
        del sess
        res["ort_runnable"] = True
        res["ort_mode"] = "data" if data else "load"
    except Skip as s:
        res["skip"] = [s.category, s.detail]

    def fail(check: str, reason: str) -> None:
        res["failures"].append(f"{check}: {reason}")

    # (b) convert twice, byte-stable.
    # Same file name in two folders: a model with external data names its side file
    # after itself, so out1 and out2 can be compared byte for byte (side files too).
    out1 = os.path.join(workdir, "pass1", "model.onnx")
    out2 = os.path.join(workdir, "pass2", "model.onnx")
    stage("convert")
    for stale in (out1, out2):
        os.makedirs(os.path.dirname(stale), exist_ok=True)
        for leftover in (stale, stale + ".data"):
            if os.path.exists(leftover):
                os.remove(leftover)
    err = convert(qrange, model_path, out1)
    out1_ok = err is None
    if err:
        res["convert"] = False
        fail("convert", scrub(err))
    else:
        err = convert(qrange, out1, out2)
        if err:
            res["convert"] = False
            fail("convert (second pass)", scrub(err))
        else:
            res["convert"] = True
            with open(out1, "rb") as f1, open(out2, "rb") as f2:
                b1, b2 = f1.read(), f2.read()
            side1, side2 = out1 + ".data", out2 + ".data"
            if os.path.exists(side1) or os.path.exists(side2):
                s1 = open(side1, "rb").read() if os.path.exists(side1) else None
                s2 = open(side2, "rb").read() if os.path.exists(side2) else None
                if s1 != s2:
                    fail("byte-stable", "external data files of out1 and out2 differ")
            res["byte_stable"] = b1 == b2
            if b1 != b2:
                diff_at = next(
                    (i for i, (x, y) in enumerate(zip(b1, b2)) if x != y), min(len(b1), len(b2))
                )
                fail(
                    "byte-stable",
                    f"out1 ({len(b1)} B) and out2 ({len(b2)} B) differ from byte {diff_at}",
                )

    # (c) ORT on out1: identical outputs.
    if res["ort_runnable"]:
        if not out1_ok:
            res["ort_identical"] = False
        else:
            stage("ort_converted")
            res["ort_identical"] = False
            try:
                sess = ort_session(out1)
            except Exception as e:  # noqa: BLE001
                sess = None
                fail("ORT-identical", "ORT cannot load out1: " + scrub(e))
            if sess is not None:
                names = [o.name for o in sess.get_outputs()]
                if names != orig_names:
                    fail("ORT-identical", f"output names {names} differ from {orig_names}")
                else:
                    reason = None
                    for i, ((feeds, _), ref) in enumerate(zip(data, orig_outputs)):
                        try:
                            got = run_ort(sess, feeds, graph)
                        except Exception as e:  # noqa: BLE001
                            reason = f"ORT cannot run out1 on data set {i}: " + scrub(e)
                            break
                        for k, (a, b) in enumerate(zip(ref, got)):
                            reason = compare_identical(a, b, f"data set {i} output {k}")
                            if reason:
                                break
                        if reason:
                            break
                    if reason:
                        fail("ORT-identical", reason)
                    else:
                        res["ort_identical"] = True
            del sess

    # (d) second half: checker on out1.
    if res["checker_original"] and out1_ok:
        stage("checker_converted")
        try:
            onnx.checker.check_model(out1, full_check=True)
            res["checker_converted"] = True
        except Exception as e:  # noqa: BLE001
            res["checker_converted"] = False
            fail("checker", scrub(e))
    elif res["checker_original"]:
        res["checker_converted"] = False
    return res


def worker_main(qrange: str) -> int:
    # The protocol owns the real stdout; anything a library prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(obj: dict) -> None:
        proto.write(json.dumps(obj, sort_keys=True) + "\n")
        proto.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        task, workdir = msg["task"], msg["workdir"]
        os.makedirs(workdir, exist_ok=True)
        try:
            result = process(task, qrange, workdir, lambda s: emit({"stage": s}))
        except Exception as e:  # noqa: BLE001 - a harness bug, reported per model
            result = {
                "label": task["label"],
                "source": task["source"],
                "ort_runnable": True,
                "failures": [f"harness error: {type(e).__name__}: {one_line(e)}"],
            }
        emit({"result": result})
    return 0


# --------------------------------------------------------------------------
# Manager: worker processes, summary, report
# --------------------------------------------------------------------------


class Slot(threading.Thread):
    def __init__(self, slot_id, tasks, results, args, scratch, progress):
        super().__init__(daemon=True)
        self.slot_id = slot_id
        self.tasks = tasks
        self.results = results
        self.args = args
        self.scratch = scratch
        self.progress = progress
        self.proc = None
        self.stderr_path = os.path.join(scratch, f"worker{slot_id}.stderr")

    def spawn(self):
        self.stderr_file = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--qrange", self.args.qrange],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )

    def stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            return one_line(lines[-1]) if lines else ""
        except OSError:
            return ""

    def run(self):
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                break
            self.results[task.index] = self.handle(task)
            self.progress()
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()
            self.stderr_file.close()

    def handle(self, task: Task) -> dict:
        if self.proc is None:
            self.spawn()
        workdir = os.path.join(self.args.workdir_root, safe_name(task.label))
        os.makedirs(workdir, exist_ok=True)
        stage = "start"
        timed_out = threading.Event()

        def on_timeout():
            timed_out.set()
            self.proc.kill()

        timer = threading.Timer(TASK_TIMEOUT_S, on_timeout)
        timer.start()
        try:
            self.proc.stdin.write(json.dumps({"task": task.to_json(), "workdir": workdir}) + "\n")
            self.proc.stdin.flush()
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "stage" in msg:
                    stage = msg["stage"]
                elif "result" in msg:
                    if not self.args.keep_work:
                        shutil.rmtree(workdir, ignore_errors=True)
                    return msg["result"]
        except (BrokenPipeError, OSError):
            pass
        finally:
            timer.cancel()
        # The worker died while holding this model.
        rc = self.proc.wait()
        self.stderr_file.close()
        self.proc = None
        if timed_out.is_set():
            how = f"timed out after {TASK_TIMEOUT_S} s"
        elif rc < 0:
            how = f"killed by {signal.Signals(-rc).name}"
        else:
            how = f"exited with {rc}"
        tail = self.stderr_tail()
        detail = f"worker {how} during {stage}" + (f" ({tail})" if tail else "")
        res = {"label": task.label, "source": task.source, "ort_runnable": True, "failures": []}
        if stage == "ort_original":
            res["ort_runnable"] = False
            res["skip"] = [SKIP_CRASH, detail]
        else:
            res["failures"] = [f"{stage}: {detail}"]
        return res


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def ratio(n: int, d: int) -> str:
    return f"{n}/{d}"


def summarize(results: list[dict]) -> tuple[list[str], dict]:
    sources = []
    for r in results:
        if r["source"] not in sources:
            sources.append(r["source"])
    cols = ["models", "ORT-runnable", "convert ok", "byte-stable", "ORT-identical", "checker-ok"]

    def row(rs):
        n = len(rs)
        runnable = [r for r in rs if r.get("ort_runnable")]
        conv = sum(1 for r in rs if r.get("convert"))
        stable = sum(1 for r in rs if r.get("byte_stable"))
        ident = sum(1 for r in runnable if r.get("ort_identical"))
        chk_app = [r for r in rs if r.get("checker_original")]
        chk = sum(1 for r in chk_app if r.get("checker_converted"))
        return [
            str(n),
            str(len(runnable)),
            ratio(conv, n),
            ratio(stable, n),
            ratio(ident, len(runnable)),
            ratio(chk, len(chk_app)),
        ]

    table = [["source"] + cols]
    for s in sorted(sources):
        table.append([s] + row([r for r in results if r["source"] == s]))
    table.append(["total"] + row(results))
    widths = [max(len(t[i]) for t in table) for i in range(len(cols) + 1)]
    lines = []
    for j, t in enumerate(table):
        cells = [t[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(t[1:], widths[1:])]
        lines.append("  ".join(cells))
        if j == 0 or j == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    counts = dict(zip(["models"] + cols[1:], row(results)))
    return lines, counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Round-trip conformance of `qrange convert` against ONNX Runtime."
    )
    parser.add_argument("--qrange", required=True, help="path to the qrange executable")
    parser.add_argument("--corpus", help="corpus directory written by gen_corpus.py")
    parser.add_argument("--fixtures", help="directory of fixture models (*.onnx, searched recursively)")
    parser.add_argument("--report", help="write a JSON report here")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--filter", help="only models whose label matches this regex")
    parser.add_argument("--workdir", help="keep converted models here (default: a temp dir, removed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return worker_main(args.qrange)

    start = time.monotonic()
    qrange = shutil.which(args.qrange) if os.sep not in args.qrange else args.qrange
    if not qrange or not os.path.isfile(qrange) or not os.access(qrange, os.X_OK):
        print(f"error: qrange executable not found: {args.qrange}", file=sys.stderr)
        return 2
    args.qrange = os.path.abspath(qrange)
    if not args.corpus and not args.fixtures:
        print("error: give --corpus and/or --fixtures", file=sys.stderr)
        return 2

    tasks: list[Task] = []
    for root, prefix, src in ((args.corpus, "", "corpus"), (args.fixtures, "fixtures/", "fixtures")):
        if root is None:
            continue
        if not os.path.isdir(root):
            print(f"error: not a directory: {root}", file=sys.stderr)
            return 2
        found = discover(root, prefix, src)
        if not found:
            print(f"error: no *.onnx models under {root}", file=sys.stderr)
            return 2
        tasks.extend(found)
    if args.filter:
        pat = re.compile(args.filter)
        tasks = [t for t in tasks if pat.search(t.label)]
        if not tasks:
            print(f"error: no model matches --filter {args.filter!r}", file=sys.stderr)
            return 2
    labels = [t.label for t in tasks]
    if len(set(labels)) != len(labels):
        print("error: duplicate model labels", file=sys.stderr)
        return 2
    for i, t in enumerate(tasks):
        t.index = i

    scratch = tempfile.mkdtemp(prefix="qrange-roundtrip-")
    args.keep_work = bool(args.workdir)
    args.workdir_root = os.path.abspath(args.workdir) if args.workdir else os.path.join(scratch, "work")
    os.makedirs(args.workdir_root, exist_ok=True)

    print(f"round-trip: {len(tasks)} models, {args.jobs} workers, qrange = {args.qrange}", flush=True)
    q: queue.Queue = queue.Queue()
    for t in tasks:
        q.put(t)
    results: list = [None] * len(tasks)
    done = [0]
    lock = threading.Lock()
    step = max(1, len(tasks) // 10)

    def progress():
        with lock:
            done[0] += 1
            if done[0] % step == 0 or done[0] == len(tasks):
                print(
                    f"  [{done[0]:>5}/{len(tasks)}] {time.monotonic() - start:7.1f} s",
                    flush=True,
                )

    slots = [Slot(i, q, results, args, scratch, progress) for i in range(max(1, args.jobs))]
    for s in slots:
        s.start()
    for s in slots:
        s.join()
    shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - start

    # Everything below is in task order, which is sorted by label.
    skipped: dict[str, list] = {}
    gating, non_gating = [], []
    for r in results:
        if r.get("skip"):
            skipped.setdefault(r["skip"][0], []).append((r["label"], r["skip"][1]))
        for f in r.get("failures", []):
            (gating if r.get("ort_runnable") else non_gating).append((r["label"], f))

    out = []
    if skipped:
        n_skip = sum(len(v) for v in skipped.values())
        out.append(f"not runnable by ORT as given: {n_skip} (left out of the comparison)")
        for cat in sorted(skipped):
            out.append(f"  {cat}: {len(skipped[cat])}")
            for label, detail in skipped[cat]:
                out.append(f"    {label}: {detail}")
        out.append("")
    if non_gating:
        out.append(f"failures on models ORT does not run as given (not gating): {len(non_gating)}")
        out.extend(f"  {label}: {f}" for label, f in non_gating)
        out.append("")
    out.append(f"FAILURES: {len(gating)}" if gating else "failures: 0")
    out.extend(f"  {label}: {f}" for label, f in gating)
    out.append("")
    table, counts = summarize(results)
    out.extend(table)
    print("\n".join(out))
    print(f"time: {elapsed:.1f} s")

    if args.report:
        report = {
            "qrange": os.path.basename(args.qrange),
            "counts": counts,
            "skipped": {k: [list(x) for x in v] for k, v in sorted(skipped.items())},
            "failures": [list(x) for x in gating],
            "failures_not_gating": [list(x) for x in non_gating],
            "models": results,
        }
        tmp = args.report + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, sort_keys=True, indent=1)
            f.write("\n")
        os.replace(tmp, args.report)

    failed = len({label for label, _ in gating})
    passed = sum(1 for r in results if r.get("ort_runnable")) - failed
    # A closing line CI log readers understand: runnable models passed/failed.
    print(f"roundtrip: {passed} passed, {failed} failed")
    return 1 if gating else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
