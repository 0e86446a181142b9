#!/usr/bin/env python3
"""Checks `qrange convert --opset N` (the upgrade_opset pass) against ONNX Runtime.

Usage:
    upgrade_check.py --qrange PATH [--fixtures DIR] [--targets 13,21] [--workdir DIR]
    upgrade_check.py --write-changes      # regenerate opset_changes.txt from the onnx package

1. Schema list: the (operator, version) pairs at which a default-domain schema changed between
   opsets 8 and 21, computed from ``onnx.defs.get_all_schemas_with_history()``, and the newest
   ``ai.onnx`` opset (the highest a model may import), must equal ``opset_changes.txt`` beside
   this script (the Rust pass's table is tested against that file,
   so a new onnx release that changes history shows up here).
2. Models: the real fixtures (ppocr_cls, magika, silero_vad_ifless, silero_vad), every tiny
   fixture, and small models built here around each operator the pass rewrites (at old
   opsets), are upgraded to each target. The upgraded model must declare the target opset
   (or keep a higher one) and an ir_version allowed for it, pass
   ``onnx.checker.check_model(full_check=True)`` when the original does, and give the same
   outputs as the original in ONNX Runtime (CPU, one thread) on the fixture's data (first
   samples) or on seeded random inputs: within rtol 1e-5 / atol 1e-6.
3. Refusals: models the pass must refuse make ``convert`` exit 2 with an error naming the node.

Ends with ``upgrade_check: N passed, N failed``; exit 1 on any failure, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
CHANGES_FILE = os.path.join(HERE, "opset_changes.txt")
MIN_IR = {7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8,
          18: 8, 19: 9, 20: 9, 21: 10}
SAMPLES = 4
RTOL, ATOL = 1e-5, 1e-6


def schema_changes() -> list[str]:
    by: dict[str, list[int]] = {}
    for s in onnx.defs.get_all_schemas_with_history():
        if s.domain in ("", "ai.onnx"):
            by.setdefault(s.name, []).append(s.since_version)
    out = []
    for name in sorted(by):
        vs = sorted(by[name])
        for v in vs[1:]:
            if 8 <= v <= 21:
                out.append(f"{name} {v}")
    return out


def changes_text() -> str:
    head = ("# (operator, version) pairs at which an ai.onnx schema changed, opsets 8..=21,\n"
            f"# from onnx {onnx.__version__}; regenerate: upgrade_check.py --write-changes\n"
            f"# newest ai.onnx opset: {onnx.defs.onnx_opset_version()}\n")
    return head + "\n".join(schema_changes()) + "\n"


# ----- models built here -----

def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mk(nodes, inputs, outputs, opset, inits=(), ir=None):
    ir = ir or max(MIN_IR[opset], 3)
    if ir < 4:  # initializers must also be graph inputs
        inputs = list(inputs) + [helper.make_tensor_value_info(
            t.name, t.data_type, list(t.dims)) for t in inits]
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=ir)
    # Outputs declared without a shape get the inferred one (the checker wants a shape).
    inferred = onnx.shape_inference.infer_shapes(m)
    for o, io in zip(m.graph.output, inferred.graph.output):
        if not o.type.tensor_type.HasField("shape") and io.type.tensor_type.HasField("shape"):
            o.CopyFrom(io)
    return m


def c(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def synthetic() -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(7)
    m = {}
    x4 = [f32("x", [2, 3, 4, 5])]
    m["softmax_axis1_op11"] = mk([helper.make_node("Softmax", ["x"], ["y"], axis=1)],
                                 x4, [f32("y", [2, 3, 4, 5])], 11)
    m["logsoftmax_default_op9"] = mk([helper.make_node("LogSoftmax", ["x"], ["y"])],
                                     x4, [f32("y", None)], 9)
    m["hardmax_last_op11"] = mk([helper.make_node("Hardmax", ["x"], ["y"], axis=-1)],
                                x4, [f32("y", [2, 3, 4, 5])], 11)
    m["squeeze_unsqueeze_op11"] = mk([
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
        helper.make_node("Squeeze", ["u"], ["y"], axes=[0]),
        helper.make_node("Squeeze", ["z"], ["y2"]),
    ], x4 + [f32("z", [1, 3, 1])], [f32("y", None), f32("y2", None)], 11)
    m["reduce_axes_op11"] = mk([
        helper.make_node("ReduceSum", ["x"], ["s"], axes=[1, 3], keepdims=0),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("ReduceMax", ["x"], ["mx"]),
        helper.make_node("ReduceL2", ["x"], ["l2"], axes=[2]),
    ], x4, [f32(n, None) for n in ("s", "mean", "mx", "l2")], 11)
    m["split_op11"] = mk([
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2]),
        helper.make_node("Split", ["x"], ["p", "q"], axis=2),
    ], x4, [f32(n, None) for n in ("a", "b", "p", "q")], 11)
    m["pad_clip_op10"] = mk([
        helper.make_node("Pad", ["x"], ["p"], pads=[0, 1, 0, 2, 0, 0, 1, 0], value=1.5),
        helper.make_node("Pad", ["x"], ["r"], mode="reflect", pads=[0, 0, 1, 1, 0, 0, 1, 1]),
        helper.make_node("Clip", ["x"], ["cl"], min=-0.3, max=0.4),
        helper.make_node("Clip", ["x"], ["cm"], max=0.1),
    ], x4, [f32(n, None) for n in ("p", "r", "cl", "cm")], 10)
    m["upsample_op7"] = mk([helper.make_node("Upsample", ["x"], ["y"],
                                             scales=[1.0, 1.0, 2.0, 3.0], mode="nearest")],
                           x4, [f32("y", None)], 7)
    m["upsample_linear_op9"] = mk([helper.make_node("Upsample", ["x", "sc"], ["y"], mode="linear")],
                                  x4, [f32("y", None)], 9,
                                  [c("sc", np.array([1, 1, 2, 2], np.float32))])
    m["resize_op10"] = mk([helper.make_node("Resize", ["x", "sc"], ["y"], mode="nearest")],
                          x4, [f32("y", None)], 10,
                          [c("sc", np.array([1, 1, 1.5, 2], np.float32))])
    m["resize_tf_half_pixel_op11"] = mk([
        helper.make_node("Resize", ["x", "roi", "sc"], ["y"], mode="nearest",
                         coordinate_transformation_mode="tf_half_pixel_for_nn"),
        helper.make_node("Resize", ["x", "roi", "sc"], ["y2"], mode="nearest",
                         nearest_mode="floor",
                         coordinate_transformation_mode="tf_half_pixel_for_nn"),
    ], x4, [f32("y", None), f32("y2", None)], 11,
        [c("roi", np.zeros([0], np.float32)), c("sc", np.array([1, 1, 1.75, 0.6], np.float32))])
    m["resize_sizes_op11"] = mk([helper.make_node("Resize", ["x", "roi", "sc", "sz"], ["y"],
                                                  mode="linear")],
                                x4, [f32("y", None)], 11,
                                [c("roi", np.zeros([0], np.float32)),
                                 c("sc", np.zeros([0], np.float32)),
                                 c("sz", np.array([2, 3, 7, 3], np.int64))])
    m["topk_slice_op9"] = mk([
        helper.make_node("TopK", ["x"], ["v", "i"], axis=3, k=2),
        helper.make_node("Slice", ["x"], ["s"], starts=[1, 0], ends=[3, -1], axes=[1, 3]),
        helper.make_node("Slice", ["x"], ["s2"], starts=[0, 1, 1, 1], ends=[9, 3, 3, 9]),
    ], x4, [f32("v", None), helper.make_tensor_value_info("i", TensorProto.INT64, None),
            f32("s", None), f32("s2", None)], 9)
    m["dropout_bn_op7"] = mk([
        helper.make_node("Dropout", ["x"], ["d", "mask"], ratio=0.3),
        helper.make_node("BatchNormalization", ["d", "sc", "b", "mu", "var"], ["y"],
                         epsilon=1e-3, spatial=1),
    ], x4, [f32("y", None)], 7,
        [c("sc", rng.uniform(0.5, 1.5, 3).astype(np.float32)),
         c("b", rng.normal(size=3).astype(np.float32)),
         c("mu", rng.normal(size=3).astype(np.float32)),
         c("var", rng.uniform(0.5, 1.5, 3).astype(np.float32))])
    m["scatter_op9"] = mk([helper.make_node("Scatter", ["x", "idx", "upd"], ["y"], axis=1)],
                          x4, [f32("y", None)], 9,
                          [c("idx", np.array([[[[0] * 5] * 4, [[2] * 5] * 4]] * 2, np.int64)),
                           c("upd", np.ones([2, 2, 4, 5], np.float32))])
    m["groupnorm_op18"] = mk([helper.make_node("GroupNormalization", ["x", "gs", "gb"], ["y"],
                                               num_groups=3, epsilon=1e-4)],
                             [f32("x", [2, 6, 4, 5])], [f32("y", [2, 6, 4, 5])], 18,
                             [c("gs", np.array([0.5, 1.0, 2.0], np.float32)),
                              c("gb", np.array([0.1, -0.2, 0.3], np.float32))])
    m["gridsample_op16"] = mk([helper.make_node("GridSample", ["x", "grid"], ["y"],
                                                mode="bilinear", align_corners=0)],
                              x4, [f32("y", None)], 16,
                              [c("grid", rng.uniform(-1, 1, [2, 3, 3, 2]).astype(np.float32))])
    m["roialign_op10"] = mk([helper.make_node("RoiAlign", ["x", "rois", "bi"], ["y"],
                                              output_height=2, output_width=2, sampling_ratio=2)],
                            x4, [f32("y", None)], 10,
                            [c("rois", np.array([[0, 0, 3, 2], [1, 1, 4, 3.5]], np.float32)),
                             c("bi", np.array([0, 1], np.int64))])
    # Softmax inside an If branch and a Loop body: subgraphs are upgraded too.
    then_g = helper.make_graph([helper.make_node("Softmax", ["x"], ["t"], axis=2)], "then", [],
                               [f32("t", None)])
    else_g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["e0"], axes=[2], keepdims=1),
                                helper.make_node("Sub", ["x", "e0"], ["e"])], "else", [],
                               [f32("e", None)])
    m["if_subgraphs_op11"] = mk([
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ], x4, [f32("y", None)], 11, [c("zero", np.array(0, np.float32))])
    return m


REFUSED = {
    # Scan-8 has a batch axis: not converted.
    "scan8": lambda: mk([helper.make_node(
        "Scan", ["", "s0", "xs"], ["s1"], num_scan_inputs=1,
        body=helper.make_graph([helper.make_node("Add", ["si", "xi"], ["so"])], "body",
                               [f32("si", [2]), f32("xi", [2])], [f32("so", [2])]))],
        [f32("s0", [1, 2]), f32("xs", [1, 3, 2])], [f32("s1", [1, 2])], 8),
    # BatchNormalization with spatial=0 has no equivalent after opset 9.
    "bn_spatial0": lambda: mk([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                                                ["y"], spatial=0)],
                              [f32("x", [1, 2, 3])] + [f32(n, [2, 3]) for n in "sbmv"],
                              [f32("y", None)], 7),
    # Dropout's mask in use (its type changes to bool at opset 10).
    "dropout_mask_used": lambda: mk([helper.make_node("Dropout", ["x"], ["y", "mask"])],
                                    [f32("x", [2])], [f32("y", None), f32("mask", None)], 7),
}


# ----- running -----

def feeds_for(model: onnx.ModelProto, npz: str | None, seed: int) -> list[dict]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if npz:
        with np.load(npz, allow_pickle=False) as z:
            if all(i.name in z.files for i in inputs):
                n = min(SAMPLES, len(z[inputs[0].name]))
                return [{i.name: np.asarray(z[i.name][k]) for i in inputs} for k in range(n)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        f = {}
        for i in inputs:
            t = i.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                     for d in t.shape.dim]
            dt = helper.tensor_dtype_to_np_dtype(t.elem_type)
            f[i.name] = (rng.normal(size=shape) if dt.kind == "f"
                         else rng.integers(0, 3, size=shape)).astype(dt)
        out.append(f)
    return out


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def checker_ok(m: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(m, full_check=True)
        return None
    except Exception as e:  # noqa: BLE001 - any checker failure is a result
        return str(e).splitlines()[0][:300]


def default_opset(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def check_one(qrange: str, label: str, src: str, npz: str | None, target: int, work: str,
              seed: int) -> str | None:
    """Returns None when the upgrade is right, else what is wrong."""
    out = os.path.join(work, f"{label.replace('/', '_')}.op{target}.onnx")
    r = subprocess.run([qrange, "convert", src, out, "--opset", str(target), "--inline"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return f"convert exited {r.returncode}: {r.stderr.strip()[:400]}"
    orig = onnx.load(src)
    new = onnx.load(out)
    want = max(default_opset(orig), target)
    if default_opset(new) != want:
        return f"upgraded model declares opset {default_opset(new)}, expected {want}"
    if new.ir_version < MIN_IR[min(want, 21)]:
        return f"ir_version {new.ir_version} is below {MIN_IR[want]} for opset {want}"
    if checker_ok(orig) is None:
        err = checker_ok(new)
        if err:
            return f"checker: {err}"
    s0, s1 = session(src), session(out)
    names = [o.name for o in orig.graph.output]
    for k, feed in enumerate(feeds_for(orig, npz, seed)):
        a = s0.run(names, feed)
        b = s1.run(names, feed)
        for name, x, y in zip(names, a, b):
            x, y = np.asarray(x), np.asarray(y)
            if x.shape != y.shape or x.dtype != y.dtype:
                return f"sample {k}, output '{name}': {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
            if x.dtype.kind == "f":
                if not np.allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True):
                    d = float(np.nanmax(np.abs(x.astype(np.float64) - y)))
                    return f"sample {k}, output '{name}': max abs difference {d:.3e}"
            elif not np.array_equal(x, y):
                return f"sample {k}, output '{name}': values differ"
    return None


def fixture_models(root: str) -> list[tuple[str, str, str | None]]:
    out = []
    for name, npz in (("ppocr_cls", "ppocr_cls/eval.npz"), ("magika", "magika/eval.npz"),
                      ("silero_vad_ifless", "silero_vad/eval.npz"),
                      ("silero_vad", "silero_vad/eval.npz")):
        p = os.path.join(root, name, "model.onnx")
        if os.path.exists(p):
            out.append((f"fixtures/{name}", p, os.path.join(root, npz)))
    tiny = os.path.join(root, "tiny")
    if os.path.isdir(tiny):
        for f in sorted(os.listdir(tiny)):
            if f.endswith(".onnx"):
                stem = f[:-5]
                npz = os.path.join(tiny, stem + ".npz")
                out.append((f"fixtures/tiny/{stem}", os.path.join(tiny, f),
                            npz if os.path.exists(npz) else None))
        ext = os.path.join(tiny, "tiny_external", "model.onnx")
        if os.path.exists(ext):
            out.append(("fixtures/tiny/tiny_external", ext, os.path.join(tiny, "tiny_external.npz")))
    return out


def main() -> int:
    ort.set_default_logger_severity(3)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qrange")
    ap.add_argument("--fixtures", default="fixtures")
    ap.add_argument("--targets", default="13,21")
    ap.add_argument("--workdir")
    ap.add_argument("--write-changes", action="store_true")
    a = ap.parse_args()
    if a.write_changes:
        with open(CHANGES_FILE, "w") as f:
            f.write(changes_text())
        print(f"wrote {CHANGES_FILE}")
        return 0
    if not a.qrange or not os.path.exists(a.qrange):
        print("error: --qrange must name the qrange executable", file=sys.stderr)
        return 2
    targets = [int(t) for t in a.targets.split(",")]
    passed, failed = 0, []

    committed = open(CHANGES_FILE).read() if os.path.exists(CHANGES_FILE) else ""
    if committed == changes_text():
        passed += 1
        print(f"ok    schema change list ({len(schema_changes())} changes) matches onnx {onnx.__version__}")
    else:
        failed.append("schema change list differs from opset_changes.txt (run --write-changes "
                      "and update the pass's table)")
        print("FAIL  " + failed[-1])

    work = a.workdir or tempfile.mkdtemp(prefix="qrange-upgrade-")
    os.makedirs(work, exist_ok=True)
    cases = fixture_models(a.fixtures)
    for name, model in synthetic().items():
        p = os.path.join(work, f"{name}.onnx")
        onnx.save(model, p)
        err = checker_ok(model)
        if err and "deprecated" not in err:
            print(f"error: built model {name} is invalid: {err}", file=sys.stderr)
            return 2
        cases.append((f"built/{name}", p, None))
    for i, (label, src, npz) in enumerate(cases):
        for t in targets:
            try:
                err = check_one(a.qrange, label, src, npz, t, work, seed=i)
            except Exception as e:  # noqa: BLE001 - report, go on
                err = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            if err:
                failed.append(f"{label} -> {t}: {err}")
                print(f"FAIL  {label} -> opset {t}: {err}")
            else:
                passed += 1
                print(f"ok    {label} -> opset {t}")
    for name, build in REFUSED.items():
        p = os.path.join(work, f"refuse_{name}.onnx")
        onnx.save(build(), p)
        r = subprocess.run([a.qrange, "convert", p, p + ".out", "--opset", "13"],
                           capture_output=True, text=True, timeout=120)
        first = r.stderr.strip().splitlines()[0] if r.stderr.strip() else ""
        if r.returncode == 2 and first.startswith("error: ") and "node '" in first:
            passed += 1
            print(f"ok    refused {name}: {first}")
        else:
            failed.append(f"refuse {name}: exit {r.returncode}, stderr {first!r}")
            print("FAIL  " + failed[-1])
    print()
    for f in failed:
        print(f"failed: {f}")
    print(f"upgrade_check: {passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
