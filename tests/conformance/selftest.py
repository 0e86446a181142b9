#!/usr/bin/env python3
"""Tests of roundtrip.py itself: does it pass a faithful converter and catch broken ones?

Usage: selftest.py --corpus DIR   (DIR written by gen_corpus.py)

Runs roundtrip.py on a handful of corpus models (and on a small fixtures
directory it builds) with standin_convert.py in each of its modes, and checks
the exit code and the JSON report of every run. Also checks the output
comparison helpers on hand-made arrays. Prints one line per check and a
closing "N passed, N failed" line; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROUNDTRIP = os.path.join(HERE, "roundtrip.py")
STANDIN = os.path.join(HERE, "standin_convert.py")

# Models that ORT runs as given, covering plain tensors, float weights,
# exotic element types in and out, sequences and optionals.
RUNNABLE = [
    "test_relu",
    "test_conv_with_strides_padding",
    "test_Linear_no_bias",
    "test_Conv2d",
    "test_cast_FLOAT_to_FLOAT8E4M3FN",
    "test_cast_BFLOAT16_to_FLOAT",
    "test_cast_FLOAT_to_INT4",
    "test_sequence_insert_at_back",
    "test_if_opt",
]
# Models whose weights are float initializers (the "perturb" stand-in changes them).
WEIGHTED = {"test_Linear_no_bias", "test_Conv2d"}
# A model ORT cannot load as given (ONNX Runtime has no opset-28 QuantizeLinear).
NOT_RUNNABLE = ["test_quantizelinear_int4"]

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))


def run(mode: str, tmp: str, *extra: str) -> tuple[int, dict, str]:
    report = os.path.join(tmp, f"report-{mode}.json")
    if os.path.exists(report):
        os.remove(report)
    env = dict(os.environ, STANDIN_MODE=mode)
    proc = subprocess.run(
        [sys.executable, ROUNDTRIP, "--qrange", STANDIN, "--report", report, *extra],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    data = {}
    if os.path.exists(report):
        with open(report, encoding="utf-8") as f:
            data = json.load(f)
    return proc.returncode, data, proc.stdout


def by_label(report: dict) -> dict:
    return {m["label"]: m for m in report.get("models", [])}


def failures_of(report: dict, label: str, gating: bool = True) -> list[str]:
    key = "failures" if gating else "failures_not_gating"
    return [f for lab, f in report.get(key, []) if lab == label]


def corpus_checks(corpus: str, tmp: str) -> None:
    pattern = "^(" + "|".join(RUNNABLE + NOT_RUNNABLE) + ")$"
    args = ("--corpus", corpus, "--filter", pattern)

    rc, rep, out = run("copy", tmp, *args)
    models = by_label(rep)
    check("copy: exit 0", rc == 0, f"exit {rc}\n{out[-2000:]}")
    check("copy: every model reported", sorted(models) == sorted(RUNNABLE + NOT_RUNNABLE))
    bad = [lab for lab in RUNNABLE if not models.get(lab, {}).get("ort_identical")]
    check("copy: runnable models ORT-identical", not bad, f"not identical: {bad}")
    bad = [lab for lab in models if not models[lab].get("byte_stable")]
    check("copy: all byte-stable", not bad, f"unstable: {bad}")
    skipped = [lab for lab in NOT_RUNNABLE if models.get(lab, {}).get("skip")]
    check("copy: ORT-unloadable model skipped with a reason", skipped == NOT_RUNNABLE)
    check("copy: closing line", f"{len(RUNNABLE)} passed, 0 failed" in out)

    rc2, rep2, _ = run("copy", tmp, *args)
    check("copy: report is deterministic", rep == rep2 and rc2 == rc)

    rc, rep, out = run("fail", tmp, *args)
    check("fail: exit 1", rc == 1, f"exit {rc}")
    bad = [lab for lab in RUNNABLE if not any("convert: exit 2" in f for f in failures_of(rep, lab))]
    check("fail: every runnable model has a convert failure", not bad, f"missing: {bad}")
    check(
        "fail: ORT-unrunnable model's failure is not gating",
        bool(failures_of(rep, NOT_RUNNABLE[0], gating=False))
        and not failures_of(rep, NOT_RUNNABLE[0]),
    )

    rc, rep, _ = run("corrupt", tmp, *args)
    check("corrupt: exit 1", rc == 1, f"exit {rc}")
    bad = [
        lab
        for lab in RUNNABLE
        if not (
            any(f.startswith("ORT-identical: ORT cannot load out1") for f in failures_of(rep, lab))
            and any(f.startswith("checker:") for f in failures_of(rep, lab))
        )
    ]
    check("corrupt: ORT load and checker failures reported", not bad, f"missing: {bad}")

    rc, rep, _ = run("unstable", tmp, *args)
    check("unstable: exit 1", rc == 1, f"exit {rc}")
    bad = []
    for lab in RUNNABLE:
        fails = failures_of(rep, lab)
        if not fails or not all(f.startswith("byte-stable:") for f in fails):
            bad.append(lab)
    check("unstable: only byte-stability fails", not bad, f"wrong: {bad}")

    rc, rep, _ = run("perturb", tmp, *args)
    check("perturb: exit 1", rc == 1, f"exit {rc}")
    failing = sorted({lab for lab, _ in rep.get("failures", [])})
    check("perturb: exactly the weighted models fail", failing == sorted(WEIGHTED), f"failing: {failing}")
    ok = all(
        all(f.startswith("ORT-identical:") and "differ bitwise" in f for f in failures_of(rep, lab))
        for lab in WEIGHTED
    )
    check("perturb: reason is a bitwise output difference", ok)

    rc, rep, out = run("crash", tmp, *args)
    check("crash: exit 1", rc == 1, f"exit {rc}")
    check("crash: every model reported", len(rep.get("models", [])) == len(RUNNABLE + NOT_RUNNABLE))
    check("crash: worker death named", "killed by SIGKILL during convert" in out)


def fixture_checks(corpus: str, tmp: str) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    fx = os.path.join(tmp, "fixtures")
    # a/model.onnx with a test data set (inputs and expected outputs).
    shutil.copytree(os.path.join(corpus, "test_relu"), os.path.join(fx, "a"))
    os.remove(os.path.join(fx, "a", "meta.json"))
    # b/net.onnx with calib.npz (leading sample axis, plus a meta_ key to skip).
    src = os.path.join(corpus, "test_Linear_no_bias")
    os.makedirs(os.path.join(fx, "b"))
    shutil.copyfile(os.path.join(src, "model.onnx"), os.path.join(fx, "b", "net.onnx"))
    model = onnx.load(os.path.join(src, "model.onnx"))
    x = numpy_helper.to_array(onnx.load_tensor(os.path.join(src, "test_data_set_0", "input_0.pb")))
    np.savez(
        os.path.join(fx, "b", "calib.npz"),
        **{model.graph.input[0].name: np.stack([x, x + 1])},
        meta_note=np.array(["not an input"]),
    )
    # c/only.onnx without data; d/other.onnx with an npz that lacks its input.
    os.makedirs(os.path.join(fx, "c"))
    shutil.copyfile(os.path.join(corpus, "test_Conv2d", "model.onnx"), os.path.join(fx, "c", "only.onnx"))
    os.makedirs(os.path.join(fx, "d"))
    shutil.copyfile(os.path.join(corpus, "test_relu", "model.onnx"), os.path.join(fx, "d", "other.onnx"))
    np.savez(os.path.join(fx, "d", "data.npz"), unrelated=np.zeros((1, 2), np.float32))

    rc, rep, out = run("copy", tmp, "--fixtures", fx)
    models = by_label(rep)
    check("fixtures: exit 0", rc == 0, f"exit {rc}\n{out[-2000:]}")
    modes = {lab: models[lab].get("ort_mode") for lab in models}
    want = {
        "fixtures/a": "data",
        "fixtures/b/net.onnx": "data",
        "fixtures/c/only.onnx": "load",
        "fixtures/d/other.onnx": "load",
    }
    check("fixtures: data found where present", modes == want, f"modes: {modes}")

    rc, rep, _ = run("perturb", tmp, "--fixtures", fx)
    failing = sorted({lab for lab, _ in rep.get("failures", [])})
    check("fixtures: npz data drives the ORT comparison", failing == ["fixtures/b/net.onnx"], f"failing: {failing}")


def helper_checks() -> None:
    import numpy as np

    sys.path.insert(0, HERE)
    import roundtrip as rt

    f = np.array([1.0, np.nan, -0.0], np.float32)
    g = np.array([1.0, -np.nan, -0.0], np.float32)
    check("identical: NaN payloads/signs equal", rt.compare_identical(f, g, "o") is None)
    h = np.array([1.0, np.nan, 0.0], np.float32)
    check("identical: -0.0 vs 0.0 differs", rt.compare_identical(f, h, "o") is not None)
    check("identical: dtype differs", rt.compare_identical(f, f.astype(np.float64), "o") is not None)
    check("identical: shape differs", rt.compare_identical(f, f.reshape(1, 3), "o") is not None)
    check("identical: sequences", rt.compare_identical([f, f], [g, g], "o") is None)
    check("identical: sequence length", rt.compare_identical([f], [f, f], "o") is not None)
    check("identical: optional None", rt.compare_identical(None, None, "o") is None)
    check("identical: None vs value", rt.compare_identical(None, f, "o") is not None)
    s = np.array(["a", "b"], dtype=object)
    check("identical: strings", rt.compare_identical(s, s.copy(), "o") is None)
    near = f * np.float32(1 + 1e-5)
    check("close: within rtol", rt.compare_close(f, near, 1e-3, 1e-7, "o") is None)
    check("close: outside rtol", rt.compare_close(f, f * 2 + 1, 1e-3, 1e-7, "o") is not None)
    check("close: dtype must match", rt.compare_close(f, f.astype(np.float64), 1e-3, 1e-7, "o") is not None)
    i = np.array([1, 2], np.int64)
    check("close: integers exact", rt.compare_close(i, i + 1, 1e-3, 1e-7, "o") is not None)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Tests of roundtrip.py")
    parser.add_argument("--corpus", required=True)
    args = parser.parse_args(argv)
    corpus = os.path.abspath(args.corpus)
    missing = [m for m in RUNNABLE + NOT_RUNNABLE if not os.path.isdir(os.path.join(corpus, m))]
    if missing:
        print(f"error: corpus lacks {missing}", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="qrange-selftest-")
    try:
        helper_checks()
        corpus_checks(corpus, tmp)
        fixture_checks(corpus, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"selftest: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
