#!/usr/bin/env python3
"""Tests of run_vs_ort.py itself: does it pass a faithful `qrange run` and catch broken ones?

Usage: selftest_run.py

Builds a small fixtures tree of generated models laid out like the real ones
(a model.onnx with calib.npz and eval.npz, an integer-input model with
eval.npz only, a silero_vad look-alike with an If on a pinned int64 `sr`, a
silero_vad_ifless without data of its own, tiny/*.onnx with and without an
npz, a model without data), runs run_vs_ort.py on it with standin_run.py in
each of its modes, and checks the exit code, the JSON report and the
arguments the stand-in received. Also checks the comparison helper on
hand-made arrays. Prints one line per check and a closing "N passed, N failed"
line; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_VS_ORT = os.path.join(HERE, "run_vs_ort.py")
STANDIN = os.path.join(HERE, "standin_run.py")

RUNNABLE = [
    "fixtures/bytes",
    "fixtures/cls",
    "fixtures/ppocr_det",
    "fixtures/silero_vad",
    "fixtures/silero_vad_ifless",
    "fixtures/tiny/add.onnx",
]
NOT_RUN = ["fixtures/plain", "fixtures/tiny/nodata.onnx"]
# Two models cover the broken modes: one output with a '/' in its name, and two outputs with a pin.
FEW = r"^fixtures/(cls|silero_vad)$"

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))


# --------------------------------------------------------------------------
# The fixtures tree
# --------------------------------------------------------------------------


def save(model, path: str) -> None:
    import onnx

    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def make_model(graph):
    from onnx import helper

    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def cls_model():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Softmax", ["f"], ["out/prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out/prob", TensorProto.FLOAT, [1, 2])],
        [w],
    )
    return make_model(graph)


def bytes_model():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3) / 100, "w")
    nodes = [
        helper.make_node("Cast", ["bytes"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["xf", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bytes",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    return make_model(graph)


def vad_model():
    """input f32[1,4], state f32[2,1,3], sr i64 scalar; output = If(sr == 16000)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, factor: float):
        k = numpy_helper.from_array(np.array(factor, np.float32), f"{name}_k")
        return helper.make_graph(
            [
                helper.make_node("Mul", ["input", f"{name}_k"], [f"{name}_m"]),
                helper.make_node("ReduceSum", [f"{name}_m", "axes1"], [f"{name}_out"], keepdims=1),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 1])],
            [k],
        )

    inits = [
        numpy_helper.from_array(np.array(16000, np.int64), "sr16k"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
        helper.make_node(
            "If", ["is16k"], ["output"], then_branch=branch("then", 2.0), else_branch=branch("else", -3.0)
        ),
        helper.make_node("Mul", ["state", "half"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 3]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, 3]),
        ],
        inits,
    )
    return make_model(graph)


def add_model(name: str):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])],
        name,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3])],
    )
    return make_model(graph)


def build_tree(fx: str, sr_values=None, add_has_b: bool = True) -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    save(cls_model(), os.path.join(fx, "cls", "model.onnx"))
    np.savez(
        os.path.join(fx, "cls", "calib.npz"),
        x=rng.uniform(-1, 1, (5, 1, 3, 4, 4)).astype(np.float32),
        label=np.arange(5, dtype=np.int64) % 2,
        meta_path=np.array([f"sample-{i}.png" for i in range(5)]),
    )
    np.savez(os.path.join(fx, "cls", "eval.npz"), x=rng.uniform(-1, 1, (7, 1, 3, 4, 4)).astype(np.float32))

    # Named like the fixture whose samples are capped at 2.
    save(cls_model(), os.path.join(fx, "ppocr_det", "model.onnx"))
    np.savez(os.path.join(fx, "ppocr_det", "calib.npz"), x=rng.uniform(-1, 1, (3, 1, 3, 4, 4)).astype(np.float32))

    save(bytes_model(), os.path.join(fx, "bytes", "model.onnx"))
    np.savez(
        os.path.join(fx, "bytes", "eval.npz"),
        bytes=rng.integers(0, 257, (6, 1, 8)).astype(np.int32),
        label=np.zeros(6, np.int64),
    )

    save(vad_model(), os.path.join(fx, "silero_vad", "model.onnx"))
    save(vad_model(), os.path.join(fx, "silero_vad_ifless", "model.onnx"))
    sr = np.array(sr_values if sr_values is not None else [16000] * 4, np.int64)
    np.savez(
        os.path.join(fx, "silero_vad", "calib.npz"),
        input=rng.standard_normal((len(sr), 1, 4)).astype(np.float32),
        state=rng.standard_normal((len(sr), 2, 1, 3)).astype(np.float32),
        sr=sr,
        label=np.ones(len(sr), np.int64),
    )

    save(add_model("add"), os.path.join(fx, "tiny", "add.onnx"))
    feeds = {"a": rng.standard_normal((3, 2, 3)).astype(np.float32)}
    if add_has_b:
        feeds["b"] = rng.standard_normal((3, 2, 3)).astype(np.float32)
    np.savez(os.path.join(fx, "tiny", "add.npz"), **feeds)
    save(add_model("nodata"), os.path.join(fx, "tiny", "nodata.onnx"))
    save(add_model("plain"), os.path.join(fx, "plain", "model.onnx"))
    os.makedirs(os.path.join(fx, "gen"))
    with open(os.path.join(fx, "gen", "make.py"), "w", encoding="utf-8") as f:
        f.write("# a generator script, not a model\n")


# --------------------------------------------------------------------------
# Running the harness
# --------------------------------------------------------------------------


def run(mode: str, tmp: str, fx: str, *extra: str, qrange: str = STANDIN):
    report = os.path.join(tmp, f"report-{mode}.json")
    log = os.path.join(tmp, f"log-{mode}.jsonl")
    for p in (report, log):
        if os.path.exists(p):
            os.remove(p)
    # The stand-in starts through its `python3` shebang: put this interpreter first on PATH.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = dict(os.environ, STANDIN_MODE=mode, STANDIN_LOG=log, PATH=path)
    proc = subprocess.run(
        [sys.executable, RUN_VS_ORT, "--qrange", qrange, "--fixtures", fx, "--report", report, *extra],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    data, calls = {}, []
    if os.path.exists(report):
        with open(report, encoding="utf-8") as f:
            data = json.load(f)
    if os.path.exists(log):
        with open(log, encoding="utf-8") as f:
            calls = [json.loads(line) for line in f]
    return proc.returncode, data, proc.stdout, calls


def models(rep: dict) -> dict:
    return {m["label"]: m for m in rep.get("models", [])}


def call_for(calls: list, fixture: str) -> dict:
    want = os.path.join(fixture, "model.onnx")
    return next((c for c in calls if c["model"].endswith(os.sep + want)), {})


def harness_checks(tmp: str) -> None:
    fx = os.path.join(tmp, "fixtures")
    build_tree(fx)

    rc, rep, out, calls = run("ort", tmp, fx)
    ms = models(rep)
    check("ort: exit 0", rc == 0, f"exit {rc}\n{out[-3000:]}")
    check("ort: models with data run", sorted(ms) == RUNNABLE, f"ran {sorted(ms)}")
    not_run = [x[0] for x in rep.get("not_run", [])]
    check("ort: models without data listed", not_run == NOT_RUN, str(not_run))
    check("ort: closing line", out.rstrip().endswith(f"run-vs-ort: {len(RUNNABLE)} passed, 0 failed"))
    check("ort: calib.npz preferred to eval.npz", ms.get("fixtures/cls", {}).get("samples") == 5)
    det = ms.get("fixtures/ppocr_det", {})
    check("ort: ppocr_det capped at 2 samples", (det.get("samples"), det.get("samples_in_data")) == (2, 3), str(det))
    check("ort: eval.npz used when alone", ms.get("fixtures/bytes", {}).get("data") == "bytes/eval.npz")
    check(
        "ort: silero_vad_ifless uses silero_vad's data",
        ms.get("fixtures/silero_vad_ifless", {}).get("data") == "silero_vad/calib.npz"
        and call_for(calls, "silero_vad_ifless").get("data", "").endswith("silero_vad/calib.npz"),
    )
    pins = {c["model"].split(os.sep)[-2] + "/" + c["model"].split(os.sep)[-1]: c["pins"] for c in calls}
    want_pins = {
        "bytes/model.onnx": {},
        "cls/model.onnx": {},
        "ppocr_det/model.onnx": {},
        "silero_vad/model.onnx": {"sr": "16000"},
        "silero_vad_ifless/model.onnx": {"sr": "16000"},
        "tiny/add.onnx": {},
    }
    check("ort: --pin sr=16000 exactly for the silero fixtures", pins == want_pins, str(pins))
    check(
        "ort: qrange gets the data file itself",
        call_for(calls, "cls").get("data") == os.path.join(fx, "cls", "calib.npz"),
    )
    outs = [o for m in ms.values() for o in m["outputs"]]
    check(
        "ort: every output compared, worst ratio 0",
        len(outs) == 8 and all(o["ok"] and o["worst_ratio"] == 0 for o in outs),
        str(outs),
    )
    cls_outputs = [o["output"] for o in ms.get("fixtures/cls", {}).get("outputs", [])]
    check("ort: output named with '/' compared", cls_outputs == ["out/prob"], str(cls_outputs))
    rc2, rep2, _, _ = run("ort", tmp, fx)
    check("ort: report is deterministic", rep == rep2 and rc2 == rc)

    rc, rep, out, _ = run("jitter", tmp, fx)
    outs = [o for m in models(rep).values() for o in m["outputs"]]
    check("jitter (half the tolerance): exit 0", rc == 0, f"exit {rc}\n{out[-3000:]}")
    check(
        "jitter: worst ratio about 0.5 on every output",
        len(outs) == 8 and all(isinstance(o["worst_ratio"], float) and 0.45 < o["worst_ratio"] < 0.55 for o in outs),
        str([o["worst_ratio"] for o in outs]),
    )

    rc, rep, out, _ = run("off", tmp, fx)
    ms = models(rep)
    check("off (twice the tolerance): exit 1", rc == 1, f"exit {rc}")
    check("off: every model fails", all(not m["passed"] for m in ms.values()) and len(ms) == len(RUNNABLE))
    firsts = [(m["outputs"] or [{}])[0] for m in ms.values()]
    check(
        "off: worst ratio about 2, one bad element, in the last sample",
        len(firsts) == len(RUNNABLE)
        and all(
            isinstance(o.get("worst_ratio"), float)
            and 1.9 < o["worst_ratio"] < 2.1
            and o["n_bad"] == 1
            and o["worst_at"][0] == m["samples"] - 1
            for o, m in zip(firsts, ms.values())
        ),
        str(firsts),
    )
    check("off: closing line", out.rstrip().endswith(f"run-vs-ort: 0 passed, {len(RUNNABLE)} failed"))
    vad = ms.get("fixtures/silero_vad", {}).get("outputs", [])
    check("off: the untouched second output passes", len(vad) == 2 and vad[1]["ok"] and not vad[0]["ok"])

    expectations = {
        "nan": "ratio inf",
        "fail": "qrange run exited with 2: error: cannot run model.onnx: stand-in told to fail",
        "nofile": "exited with 0 but wrote no output file",
        "missing": "missing from qrange's npz",
        "extra": "not model outputs: ['not_an_output']",
        "short": "(samples stacked on axis 0)",
        "dtype": "dtype float64, ORT gives float32",
    }
    for mode, needle in expectations.items():
        rc, rep, out, _ = run(mode, tmp, fx, "--filter", FEW)
        ms = models(rep)
        fails = [f for m in ms.values() for f in m["failures"]]
        check(
            f"{mode}: exit 1, both models fail with the reason",
            rc == 1 and len(ms) == 2 and all(not m["passed"] for m in ms.values())
            and all(any(needle in f for f in m["failures"]) for m in ms.values()),
            f"exit {rc}, failures {fails}",
        )

    keep = os.path.join(tmp, "keep")
    rc, rep, out, calls = run("ort", tmp, fx, "--max-samples", "2", "--workdir", keep)
    ms = models(rep)
    check("max-samples 2: exit 0", rc == 0, f"exit {rc}\n{out[-3000:]}")
    check("max-samples 2: every model ran 2 samples", all(m["samples"] == 2 for m in ms.values()))
    cut = call_for(calls, "cls").get("data", "")
    ok = False
    if cut.startswith(keep) and os.path.isfile(cut):
        import numpy as np

        with np.load(cut, allow_pickle=False) as z:
            ok = (
                z["x"].shape[0] == 2
                and z["label"].shape == (2,)
                and list(z["meta_path"]) == ["sample-0.png", "sample-1.png"]
            )
    check("max-samples 2: qrange gets a cut copy with labels and meta_ kept", ok, cut)

    # Data whose pinned input disagrees with the pin, and data lacking an input.
    fx2 = os.path.join(tmp, "fixtures2")
    build_tree(fx2, sr_values=[16000, 16000, 8000, 16000], add_has_b=False)
    rc, rep, out, calls = run("ort", tmp, fx2)
    ms = models(rep)
    check("bad data: exit 1", rc == 1, f"exit {rc}")
    for label in ("fixtures/silero_vad", "fixtures/silero_vad_ifless"):
        fails = ms.get(label, {}).get("failures", [])
        check(
            f"bad data: {label} fails on sr of sample 2",
            any("'sr' of sample 2 is 8000, not the pinned 16000" in f for f in fails),
            str(fails),
        )
    fails = ms.get("fixtures/tiny/add.onnx", {}).get("failures", [])
    check("bad data: missing input named", any("has no array for input 'b'" in f for f in fails), str(fails))
    check(
        "bad data: qrange not run on bad data",
        sorted(c["model"].split(os.sep)[-2] for c in calls) == ["bytes", "cls", "ppocr_det"],
        str([c["model"] for c in calls]),
    )
    check(
        "bad data: other models still pass",
        all(ms.get(lab, {}).get("passed") for lab in ("fixtures/cls", "fixtures/bytes")),
    )

    rc, _, out, _ = run("ort", tmp, fx, qrange=os.path.join(tmp, "no-such-qrange"))
    check("missing executable: exit 2", rc == 2 and "qrange executable not found" in out, out)
    empty = os.path.join(tmp, "empty")
    os.makedirs(os.path.join(empty, "plain"))
    rc, _, out, _ = run("ort", tmp, empty)
    check("no model with data: exit 2", rc == 2 and "no fixture model with data" in out, out)


def helper_checks() -> None:
    import numpy as np

    sys.path.insert(0, HERE)
    import run_vs_ort as rv

    def cmp(a, b):
        return rv.compare_output("o", np.asarray(a), np.asarray(b), 1e-4, 1e-3)

    b = np.array([[1.0, 100.0]], np.float64)
    edge = b + (1e-4 + 1e-3 * np.abs(b)) * 0.999
    check("compare: just inside the bound passes", cmp(edge, b)["ok"])
    over = b + (1e-4 + 1e-3 * np.abs(b)) * 1.01
    r = cmp(over, b)
    check(
        "compare: just outside fails with ratio ~1.01",
        not r["ok"] and 1.0 < r["worst_ratio"] < 1.02 and r["n_bad"] == 2,
    )
    check("compare: absolute tolerance near zero", cmp([[5e-5]], [[0.0]])["ok"] and not cmp([[2e-4]], [[0.0]])["ok"])
    # |1000 - 999| = 1 is above 1e-4 + 1e-3 * 999 but below 1e-4 + 1e-3 * 1000.
    check(
        "compare: tolerance is relative to ORT's value (b)",
        not cmp([[1000.0]], [[999.0]])["ok"] and cmp([[999.0]], [[1000.0]])["ok"],
    )
    r = cmp([[1.0, 2.0], [3.0, 4.5]], [[1.0, 2.0], [3.0, 4.0]])
    check("compare: worst_at is [sample, index in sample]", r["worst_at"] == [1, [1]], str(r["worst_at"]))
    check("compare: max abs err", abs(r["max_abs_err"] - 0.5) < 1e-12)
    nan, inf = np.nan, np.inf
    check("compare: NaN matches NaN", cmp([[nan, 1.0]], [[nan, 1.0]])["ok"])
    check("compare: NaN vs number fails", cmp([[nan]], [[1.0]])["worst_ratio"] == inf)
    check("compare: number vs NaN fails", not cmp([[1.0]], [[nan]])["ok"])
    check("compare: same infinity passes", cmp([[inf, -inf]], [[inf, -inf]])["ok"])
    check("compare: opposite infinities fail", not cmp([[inf]], [[-inf]])["ok"])
    check("compare: infinity vs number fails", not cmp([[inf]], [[1e30]])["ok"])
    f32 = np.ones((2, 3), np.float32)
    check("compare: dtype must match", cmp(f32.astype(np.float64), f32)["problem"] is not None)
    check("compare: shape must match", cmp(f32[:1], f32)["problem"] is not None)
    check("compare: missing output", rv.compare_output("o", None, f32, 1e-4, 1e-3)["problem"] is not None)
    i = np.array([[1, 2]], np.int64)
    check("compare: integers off by one fail", not cmp(i + 1, i)["ok"] and cmp(i, i)["ok"])
    bo = np.array([[True, False]])
    check("compare: booleans", cmp(bo, bo)["ok"] and not cmp(~bo, bo)["ok"])
    check("compare: empty outputs pass", cmp(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32))["ok"])
    check("one_line: error line preferred", rv.one_line("warning: x\nerror: boom\n") == "error: boom")
    check(
        "one_line: error line with its causes",
        rv.one_line("error: a.onnx: bad\n  caused by: x\n  caused by: y\nnote: z")
        == "error: a.onnx: bad / caused by: x / caused by: y",
    )
    check(
        "one_line: traceback's last line",
        rv.one_line("Traceback (most recent call last):\n  File x\nValueError: bad") == "ValueError: bad",
    )


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(description="Tests of run_vs_ort.py").parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qrange-selftest-run-") as tmp:
        helper_checks()
        harness_checks(tmp)
    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"selftest-run: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
