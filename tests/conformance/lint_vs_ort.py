#!/usr/bin/env python3
"""`qrange lint` against ONNX Runtime's own graph optimizer.

For every model below, run ``qrange lint --json`` (target ort-cpu) and let ONNX Runtime
(CPU EP) optimize the same model with ``ORT_ENABLE_EXTENDED``, writing the result with
``optimized_model_filepath``. Then compare, node unit by node unit:

- lint says *fused* to kernel K: ONNX Runtime's graph has a node with the unit's name
  and op type K (ONNX Runtime keeps the target node's name on QLinear*/QGemm/…);
- lint says *dropped*: the node is still there with its op type, its input 0 is not
  produced by a DequantizeLinear and no output feeds a QuantizeLinear;
- lint says *removed*: no node of that name is left;
- lint says *float*: the node is there and is neither of the above, or it was merged
  into a float fusion (FusedConv, SkipLayerNormalization, an inlined function, …): its
  name is gone, but a second optimization with the float fusions disabled still has it in
  float, or its output is still computed by a node that is no integer kernel and no Q/DQ.
  A node ONNX Runtime removed outright does not agree with *float*.

And the other way round: every integer kernel in ONNX Runtime's graph must be a unit
lint calls fused. Nodes without a unique name are named first (in a copy that both
tools read), so matching by name is exact. Two float fusions that run after the QDQ ones
and merge nodes under new names (GatherSliceToSplitFusion, GatherToSliceFusion) are
disabled; they do not change what runs on integers. The platform passed to lint is the
machine's (x86-64 or arm64), since ONNX Runtime's int8 rules depend on it.

Models: the fixtures quantized with ``qrange quantize`` (as quantized_ort.py does),
the QDQ exactness fixtures, models quantized by ``onnxruntime.quantization.quantize_static``
(somebody else's QDQ placement), and small hand-built graphs, one per rule of the lint
(shared int8 DQ, graph outputs, 16-bit types, Relu before Q, Gemm alpha/beta, scales that
differ around Reshape, missing zero points, Q/DQ propagation, …).

Prints one line per model and ``lint-vs-ort: N models, N units agree, N disagree``;
exits 1 on any disagreement (each one printed with both sides).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

# Op types ONNX Runtime can run on integers by dropping their Q/DQ pair (or DQ).
DROPPABLE = {
    "ArgMax", "DepthToSpace", "Expand", "Flatten", "Gather", "GatherElements", "MaxPool",
    "ReduceMax", "ReduceMin", "Reshape", "Resize", "Slice", "Split", "Squeeze", "Tile",
    "Transpose", "Unsqueeze",
}

# Float fusions that run after the QDQ selectors and merge nodes under new names; they
# do not change which units run on integers, and disabling them keeps names matchable.
DISABLED = ["GatherSliceToSplitFusion", "GatherToSliceFusion"]

# ONNX Runtime's float fusions (CPU, extended level): a node they merge into a fused float
# node (FusedConv, SkipLayerNormalization, …) disappears under its name. A second
# optimization with these disabled tells such a node (still there, in float) from one
# ONNX Runtime removed. MatMulAddFusion is not among them: it runs before the QDQ fusions
# and lint reports the Gemm it makes as the unit, so that Gemm must exist under its name
# in both optimizations (GemmActivationFusion may then merge it into a float FusedGemm).
FLOAT_FUSIONS = [
    "ConvActivationFusion", "GemmActivationFusion", "EmbedLayerNormFusion", "LayerNormFusion",
    "SimplifiedLayerNormFusion", "SkipLayerNormFusion", "GeluFusion", "BiasGeluFusion",
    "FastGeluFusion", "QuickGeluFusion", "AttentionFusion",
    "BiasSoftmaxFusion", "BiasDropoutFusion", "MatMulScaleFusion", "MatmulTransposeFusion",
    "ConvAddActivationFusion", "GemmSumFusion", "GemmTransposeFusion",
]

INTEGER_KERNELS = {
    "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearAdd",
    "QLinearMul", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere", "MatMulNBits",
}

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}

QRANGE_FIXTURES = [
    # (label, model, calib, extra qrange args)
    ("ppocr_cls", "ppocr_cls/model.onnx", "ppocr_cls/calib.npz", []),
    ("ppocr_det", "ppocr_det/model.onnx", "ppocr_det/calib.npz", []),
    ("magika", "magika/model.onnx", "magika/calib.npz", []),
    ("silero_vad", "silero_vad/model.onnx", "silero_vad/calib.npz", ["--pin", "sr=16000"]),
    ("silero_vad_ifless", "silero_vad_ifless/model.onnx", "silero_vad/calib.npz",
     ["--pin", "sr=16000"]),
    ("tiny_cnn", "tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz", []),
    ("tiny_mlp", "tiny/tiny_mlp.onnx", "tiny/tiny_mlp.npz", []),
    ("tiny_bn", "tiny/tiny_bn.onnx", "tiny/tiny_bn.npz", []),
    ("tiny_outlier", "tiny/tiny_outlier.onnx", "tiny/tiny_outlier.npz", []),
    ("tiny_external", "tiny/tiny_external/model.onnx", "tiny/tiny_external.npz", []),
    ("tiny_shape_if", "tiny/tiny_shape_if.onnx", "tiny/tiny_shape_if.npz", []),
    ("tiny_crnn", "tiny/tiny_crnn.onnx", "tiny/tiny_crnn.npz", []),
    ("minilm_l3", "minilm_l3/model.onnx", "minilm_l3/calib.npz", []),
    ("tiny_cnn tensorrt (i8)", "tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz", ["--target", "tensorrt"]),
    ("tiny_mlp i8", "tiny/tiny_mlp.onnx", "tiny/tiny_mlp.npz", ["--activation-type", "i8"]),
    ("ppocr_cls u16", "ppocr_cls/model.onnx", "ppocr_cls/calib.npz", ["--activation-type", "u16"]),
    ("ppocr_cls per-tensor", "ppocr_cls/model.onnx", "ppocr_cls/calib.npz", ["--per-tensor"]),
    ("ppocr_cls per-tensor equalized, bias-corrected", "ppocr_cls/model.onnx",
     "ppocr_cls/calib.npz", ["--per-tensor", "--equalize", "on", "--bias-correction"]),
]

# quantize_static cases: (label, model, calib, options)
ORT_QUANTIZED = [
    ("tiny_cnn ort-quantizer s8", "tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz", {}),
    ("tiny_mlp ort-quantizer u8 per-channel", "tiny/tiny_mlp.onnx", "tiny/tiny_mlp.npz",
     {"activation_type": "QUInt8", "per_channel": True}),
    ("ppocr_cls ort-quantizer u8", "ppocr_cls/model.onnx", "ppocr_cls/calib.npz",
     {"activation_type": "QUInt8", "per_channel": True}),
    ("ppocr_cls ort-quantizer s8", "ppocr_cls/model.onnx", "ppocr_cls/calib.npz",
     {"per_channel": True}),
    ("magika ort-quantizer s8", "magika/model.onnx", "magika/calib.npz", {}),
]


# ----- hand-built cases -----

def _init(name, arr):
    return nh.from_array(np.asarray(arr), name)


class G:
    """A tiny graph builder: nodes, initializers, one float input."""

    def __init__(self, shape, opset=17):
        self.nodes, self.inits, self.outs, self.opset, self.shape = [], [], [], opset, shape
        self.extra_inputs = []

    def qdq(self, x, scale, zp, pre, dtype=np.uint8, zp_input=True):
        self.inits += [_init(pre + "_s", np.float32(scale))]
        ins = [x, pre + "_s"]
        if zp_input:
            self.inits.append(_init(pre + "_z", dtype(zp)))
            ins.append(pre + "_z")
        self.nodes += [h.make_node("QuantizeLinear", ins, [pre + "_q"], name=pre + "_Q"),
                       h.make_node("DequantizeLinear", [pre + "_q", *ins[1:]], [pre + "_dq"],
                                   name=pre + "_DQ")]
        return pre + "_dq"

    def weight(self, name, arr, scale=0.01, zp=0, axis=None):
        kw = {} if axis is None else {"axis": axis}
        zdt = arr.dtype.type
        s = np.float32(scale) if np.isscalar(scale) else np.asarray(scale, np.float32)
        z = zdt(zp) if np.isscalar(zp) else np.asarray(zp, zdt)
        self.inits += [_init(name, arr), _init(name + "_s", s), _init(name + "_z", z)]
        self.nodes.append(h.make_node("DequantizeLinear", [name, name + "_s", name + "_z"],
                                      [name + "_dq"], name=name + "_DQ", **kw))
        return name + "_dq"

    def node(self, op, ins, outs, name, **attrs):
        self.nodes.append(h.make_node(op, ins, outs, name=name, **attrs))
        return outs[0]

    def out(self, name, elem=T.FLOAT):
        self.outs.append(h.make_tensor_value_info(name, elem, None))

    def sink(self, x, name):
        """A float consumer so that `x` is not a graph output."""
        self.out(self.node("Sigmoid", [x], [name + "_out"], name + "_sink"))

    def model(self):
        g = h.make_graph(self.nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, self.shape),
                                            *self.extra_inputs], self.outs, self.inits)
        return h.make_model(g, opset_imports=[h.make_opsetid("", self.opset)],
                            ir_version=8 if self.opset < 21 else 10)


def synthetic_cases():
    rs = np.random.RandomState(7)
    w_conv = rs.randint(-60, 60, (4, 4, 3, 3)).astype(np.int8)
    cases = []

    def conv(tag, act=np.uint8, azp=128, wdt=np.int8, bias="int32", shared=False, relu_zp=None,
             graph_out=False, op="Conv", opset=17):
        g = G([1, 4, 6, 6], opset)
        x = g.qdq("x", 0.1, azp, "a", act)
        ins = [x, g.weight("w", w_conv.astype(wdt))]
        if bias == "int32":
            ins.append(g.weight("b", np.arange(4, dtype=np.int32), scale=0.001))
        elif bias == "float":
            g.inits.append(_init("b", np.zeros(4, np.float32)))
            ins.append("b")
        y = g.node(op, ins, ["y"], "target", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        if relu_zp is not None:
            y = g.node("Relu", [y], ["yr"], "relu")
        g.sink(g.qdq(y, 0.1, relu_zp if relu_zp is not None else azp, "o", act), "o")
        if shared:
            g.sink(x, "shared")
        if graph_out:
            g.out("y")
        cases.append((tag, g.model()))

    conv("conv u8")
    conv("conv s8 single Q/DQ", np.int8, 0)
    conv("conv s8 shared DQ", np.int8, 0, shared=True)
    conv("conv u8 shared DQ", shared=True)
    conv("conv float bias", bias="float")
    conv("conv no bias", bias="none")
    conv("conv graph output", graph_out=True)
    conv("conv u16", np.uint16, 30000, opset=21)
    conv("conv relu zp 0", relu_zp=0)
    conv("conv relu zp 10", relu_zp=10)
    conv("conv u8 weights", wdt=np.uint8)
    conv("convtranspose", op="ConvTranspose")

    def mm(tag, q=True, extra_reader=False, graph_out=False, act=np.uint8, azp=128, relu=None,
           op="MatMul", attrs=None, bias=True):
        g = G([2, 8])
        x = g.qdq("x", 0.1, azp, "a", act)
        if op == "MatMul":
            ins = [x, g.weight("w", rs.randint(-60, 60, (8, 4)).astype(np.int8))]
        else:
            ins = [x, g.weight("w", rs.randint(-60, 60, (4, 8)).astype(np.int8))]
            if bias:
                ins.append(g.weight("b", np.arange(4, dtype=np.int32), scale=0.001))
            attrs = {"transB": 1, **(attrs or {})}
        y = g.node(op, ins, ["y"], "target", **(attrs or {}))
        if relu is not None:
            y = g.node("Relu", [y], ["yr"], "relu")
        if q:
            g.sink(g.qdq(y, 0.1, relu if relu is not None else azp, "o", act), "o")
        if extra_reader:
            g.sink(y, "float_reader")
        if graph_out or not (q or extra_reader):
            g.out(y)
        cases.append((tag, g.model()))

    mm("matmul u8")
    mm("matmul no Q graph output", q=False)
    mm("matmul Q and float reader", extra_reader=True)
    mm("matmul s8 no Q", q=False, act=np.int8, azp=0)
    mm("matmul relu zp 128", relu=128)
    mm("gemm", op="Gemm")
    mm("gemm no Q", op="Gemm", q=False, extra_reader=True)
    mm("gemm alpha", op="Gemm", attrs={"alpha": 0.5})
    mm("gemm beta", op="Gemm", attrs={"beta": 0.5})
    mm("gemm alpha no bias", op="Gemm", attrs={"alpha": 0.5}, bias=False)
    mm("gemm relu zp 128", op="Gemm", relu=128)

    g = G([2, 32])
    g.node("MatMul", ["x", g.weight("w", rs.randint(-60, 60, (32, 16)).astype(np.int8))],
           ["y"], "target")
    g.out("y")
    cases.append(("matmul weight-only int8", g.model()))

    # MatMul + bias Add with no Q after: ONNX Runtime makes one Gemm of them first; with
    # 8-bit activations the Gemm stays float (its float bias is not quantized without a Q
    # after), with 16-bit or float activations its weight makes it MatMulNBits.
    for act, zp in [(np.uint8, 128), (np.uint16, 300), (None, 0)]:
        g = G([2, 8], 21)
        x = "x" if act is None else g.qdq("x", 0.1, zp, "a", act)
        w = g.weight("w", rs.randint(-60, 60, (8, 4)).astype(np.int8),
                     scale=np.full(4, 0.01, np.float32), zp=np.zeros(4, np.int8), axis=1)
        g.inits.append(_init("b", np.arange(4, dtype=np.float32)))
        m = g.node("MatMul", [x, w], ["m"], "target")
        g.sink(g.node("Add", [m, "b"], ["y"], "bias_add"), "o")
        name = "float" if act is None else np.dtype(act).name
        cases.append((f"matmul + bias add, {name} activations", g.model()))

    def binary(tag, op, a, b, o, opset=17, const_b=None):
        g = G([2, 8], opset)
        xa = g.qdq("x", 0.1, a[1], "a", a[0])
        xb = g.weight("c", const_b) if const_b is not None else g.qdq("x", 0.2, b[1], "b", b[0])
        y = g.node(op, [xa, xb], ["y"], "target")
        g.sink(g.qdq(y, 0.1, o[1], "o", o[0]), "o")
        cases.append((tag, g.model()))

    u8, s8, u16 = (np.uint8, 128), (np.int8, 0), (np.uint16, 300)
    binary("add u8", "Add", u8, (np.uint8, 100), u8)
    binary("add u8 + s8 pair", "Add", u8, s8, u8)
    binary("add s8", "Add", s8, s8, s8)
    binary("add u8 + s8 constant", "Add", u8, None, u8,
           const_b=rs.randint(-120, 120, (2, 8)).astype(np.int8))
    binary("mul u16", "Mul", u16, u16, u16, opset=21)
    binary("sub", "Sub", u8, u8, u8)

    def unary(tag, op, dtype=np.uint8, zp=128, opset=17, **attrs):
        g = G([1, 2, 4, 4], opset)
        y = g.node(op, [g.qdq("x", 0.1, zp, "a", dtype)], ["y"], "target", **attrs)
        g.sink(g.qdq(y, 0.1, zp, "o", dtype), "o")
        cases.append((tag, g.model()))

    for op, attrs in [("Sigmoid", {}), ("Softmax", {}), ("LeakyRelu", {}),
                      ("AveragePool", {"kernel_shape": [2, 2]}), ("GlobalAveragePool", {}),
                      ("Tanh", {}), ("HardSwish", {}), ("Relu", {})]:
        unary(op.lower(), op, **attrs)
    unary("sigmoid u16", "Sigmoid", np.uint16, 300, opset=21)
    unary("sigmoid s8", "Sigmoid", np.int8, 0)

    g = G([2, 8])
    y = g.node("Concat", [g.qdq("x", 0.1, 128, "a"), g.qdq("x", 0.2, 128, "b")], ["y"], "target",
               axis=1)
    g.sink(g.qdq(y, 0.1, 128, "o"), "o")
    cases.append(("concat", g.model()))

    g = G([2, 8])
    g.inits.append(_init("cond", np.array([True, False] * 4)))
    y = g.node("Where", ["cond", g.qdq("x", 0.1, 128, "a"), g.qdq("x", 0.2, 128, "b")], ["y"],
               "target")
    g.sink(g.qdq(y, 0.1, 128, "o"), "o")
    cases.append(("where", g.model()))

    def dm(tag, op, extra_inits=(), extra_in=(), s=(0.1, 0.1), z=(128, 128), dtype=np.uint8,
           zp_input=True, opset=17, nout=1, **attrs):
        g = G([1, 4, 4, 4], opset)
        x = g.qdq("x", s[0], z[0], "a", dtype, zp_input)
        g.inits += [_init(k, v) for k, v in extra_inits]
        outs = ["y"] if nout == 1 else [f"y{k}" for k in range(nout)]
        g.node(op, [x, *extra_in], outs, "target", **attrs)
        for k, o in enumerate(outs):
            g.sink(g.qdq(o, s[1], z[1], f"o{k}", dtype, zp_input), f"o{k}")
        cases.append((tag, g.model()))

    shp = [("shp", np.array([1, 64], np.int64))]
    dm("reshape", "Reshape", shp, ["shp"])
    dm("reshape without zero points", "Reshape", shp, ["shp"], zp_input=False)
    dm("reshape scales differ", "Reshape", shp, ["shp"], s=(0.1, 0.2))
    dm("reshape zero points differ", "Reshape", shp, ["shp"], z=(128, 127))
    dm("maxpool", "MaxPool", kernel_shape=[2, 2])
    dm("maxpool negative scale", "MaxPool", s=(-0.1, -0.1), kernel_shape=[2, 2])
    dm("maxpool opset 10", "MaxPool", opset=10, kernel_shape=[2, 2])
    dm("transpose negative scale", "Transpose", s=(-0.1, -0.1), perm=[0, 2, 3, 1])
    dm("transpose u16", "Transpose", dtype=np.uint16, z=(3, 3), opset=21, perm=[0, 2, 3, 1])
    dm("resize u16", "Resize", [("sc", np.array([1, 1, 2, 2], np.float32))], ["", "sc"],
       dtype=np.uint16, z=(3, 3), opset=21)
    dm("resize", "Resize", [("sc", np.array([1, 1, 2, 2], np.float32))], ["", "sc"])
    dm("split", "Split", nout=2, axis=1)
    dm("gather", "Gather", [("idx", np.array([0, 2], np.int64))], ["idx"], axis=1)
    dm("depth_to_space", "DepthToSpace", blocksize=2)
    dm("space_to_depth", "SpaceToDepth", blocksize=2)
    dm("pad", "Pad", [("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], ["pads"])
    dm("reducemax", "ReduceMax", [("axes", np.array([1], np.int64))], ["axes"], opset=18)
    dm("identity", "Identity")
    dm("slice of everything", "Slice", [("st", np.array([0], np.int64)),
                                        ("en", np.array([2**63 - 1], np.int64)),
                                        ("ax", np.array([1], np.int64))], ["st", "en", "ax"])
    dm("slice", "Slice", [("st", np.array([1], np.int64)), ("en", np.array([3], np.int64)),
                          ("ax", np.array([1], np.int64))], ["st", "en", "ax"])
    dm("cast to float", "Cast", to=1)
    dm("clip 0..6", "Clip", [("lo", np.float32(0)), ("hi", np.float32(6))], ["lo", "hi"],
       z=(128, 0))
    dm("clip 0..6 within Q range", "Clip", [("lo", np.float32(0)), ("hi", np.float32(6))],
       ["lo", "hi"], s=(0.1, 6 / 255), z=(128, 0))
    dm("relu zp 0", "Relu", z=(128, 0))

    g = G([1, 4, 4, 4])
    g.node("ArgMax", [g.qdq("x", 0.1, 128, "a")], ["y"], "target", axis=1)
    g.out("y", T.INT64)
    cases.append(("argmax", g.model()))

    # Q copied backwards through Reshape; DQ copied forwards through Transpose → Reshape.
    g = G([1, 4, 4, 4])
    g.inits.append(_init("shp", np.array([1, -1], np.int64)))
    c = g.node("Conv", [g.qdq("x", 0.1, 128, "a"), g.weight("w", w_conv)], ["c"], "conv",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    r = g.node("Reshape", [c, "shp"], ["r"], "reshape")
    g.sink(g.qdq(r, 0.1, 128, "o"), "o")
    cases.append(("Q propagated backwards", g.model()))

    g = G([1, 4, 4, 4])
    g.inits.append(_init("shp", np.array([1, -1], np.int64)))
    t = g.node("Transpose", [g.qdq("x", 0.1, 128, "a")], ["t"], "transpose", perm=[0, 2, 3, 1])
    r = g.node("Reshape", [t, "shp"], ["r"], "reshape")
    g.sink(r, "s1")
    g.out(g.node("Tanh", [r], ["o2"], "tanh"))
    cases.append(("DQ propagated forwards", g.model()))

    g = G([1, 4, 4, 4])
    x = g.qdq("x", 0.1, 128, "a")
    g.sink(g.node("Transpose", [x], ["t"], "transpose", perm=[0, 2, 3, 1]), "s1")
    g.out(g.node("Tanh", [x], ["o2"], "tanh"))
    cases.append(("shared DQ then propagation", g.model()))

    # An Identity writing a graph output: ONNX Runtime removes it when its input has no
    # other reader (the producer then writes the output); a DequantizeLinear read twice is
    # first made unique per reader, so it goes in both cases.
    for other_reader in (False, True):
        g = G([1, 4, 4, 4])
        x = g.qdq("x", 0.1, 128, "a")
        g.out(g.node("Identity", [x], ["y"], "target"))
        if other_reader:
            g.sink(x, "s1")
        cases.append((f"identity into graph output{', input read twice' if other_reader else ''}",
                      g.model()))
    return cases


# ----- running the tools -----

def name_nodes(m: onnx.ModelProto) -> onnx.ModelProto:
    """Gives every unnamed or duplicate-named main-graph node a unique name."""
    seen: dict[str, int] = {}
    for n in m.graph.node:
        seen[n.name] = seen.get(n.name, 0) + 1
    taken = {n.name for n in m.graph.node}
    for i, n in enumerate(m.graph.node):
        if not n.name or seen[n.name] > 1:
            base = f"{n.name or n.op_type}__n{i}"
            while base in taken:
                base += "_"
            n.name = base
            taken.add(base)
    return m


def ort_optimized(path: str, out: str, disabled: list[str] = DISABLED) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = out
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=disabled)
    return onnx.load(out, load_external_data=False)


def ort_side(unit: dict, opt: onnx.ModelProto, unfused: onnx.ModelProto) -> tuple[str, str]:
    """What ONNX Runtime did with a unit: (fused|dropped|float|merged|gone, op type).

    `unfused` is the same model optimized without the float fusions. merged: the node is
    gone, but it is there in float without the float fusions (one of them took it over), or
    one of its outputs is still computed by a float node (a function ONNX Runtime inlined);
    gone: ONNX Runtime removed it."""
    by_name = {n.name: n for n in opt.graph.node}
    producer = {o: n for n in opt.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in opt.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    n = by_name.get(unit["name"])
    if n is None:
        u = {m.name: m for m in unfused.graph.node}.get(unit["name"])
        takers = [u] + [producer.get(o) for o in unit.get("outputs", [])]
        for t in takers:
            if t is not None and t.op_type not in INTEGER_KERNELS and t.op_type not in QDQ_OPS:
                return "merged", t.op_type
        return "gone", ""
    if n.op_type in INTEGER_KERNELS:
        return "fused", n.op_type
    if n.op_type == unit["op_type"] and n.op_type in DROPPABLE and n.input:
        p = producer.get(n.input[0])
        from_dq = p is not None and p.op_type == "DequantizeLinear"
        to_q = any(r.op_type == "QuantizeLinear" for o in n.output for r in readers.get(o, []))
        if not from_dq and not to_q:
            return "dropped", n.op_type
    return "float", n.op_type


def agree(unit: dict, side: tuple[str, str]) -> bool:
    v, kind = unit["verdict"], side[0]
    if v == "fused":
        return kind == "fused" and side[1] == unit["kernel"]
    if v == "dropped":
        return kind == "dropped"
    if v == "removed":
        return kind == "gone"
    return kind in ("float", "merged")


SEEN: set[str] = set()


def check_model(label: str, path: str, qrange: str, work: str, plat: str):
    """Returns (n units, list of disagreements, counts)."""
    named = os.path.join(work, "named.onnx")
    onnx.save(name_nodes(onnx.load(path)), named)
    r = subprocess.run([qrange, "lint", named, "--json", "--platform", plat],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return 0, [f"{label}: qrange lint failed: {r.stderr.strip()}"], {}
    lint = json.loads(r.stdout)
    opt = ort_optimized(named, os.path.join(work, "opt.onnx"))
    unfused = ort_optimized(named, os.path.join(work, "unfused.onnx"), DISABLED + FLOAT_FUSIONS)
    problems, counts = [], {}
    for u in lint["units"]:
        side = ort_side(u, opt, unfused)
        counts[u["verdict"]] = counts.get(u["verdict"], 0) + 1
        SEEN.add(u.get("kernel") or u.get("reason_code") or u["verdict"])
        if not agree(u, side):
            said = u["verdict"] + (" " + u.get("kernel", "") if u["verdict"] == "fused" else "")
            why = u.get("reason") or u.get("why") or ""
            problems.append(f"{label}: unit '{u['node']}' ({u['op_type']}): qrange lint says {said}"
                            f"{' (' + why + ')' if why else ''}; ONNX Runtime: {side[0]} {side[1]}")
    fused_names = {u["name"] for u in lint["units"] if u["verdict"] == "fused"}
    for n in opt.graph.node:
        if n.op_type in INTEGER_KERNELS and n.name not in fused_names:
            problems.append(f"{label}: ONNX Runtime made {n.op_type} '{n.name}', which qrange lint "
                            "does not report as fused")
    return len(lint["units"]), problems, counts


class Reader:
    """CalibrationDataReader over an .npz (axis 0 = sample)."""

    def __init__(self, path, names):
        d = np.load(path)
        n = len(d[names[0]])
        self.items = iter([{k: d[k][i] for k in names} for i in range(n)])

    def get_next(self):
        return next(self.items, None)


def ort_quantize(src: str, calib: str, dst: str, opts: dict) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    names = [i.name for i in onnx.load(src).graph.input]
    kw = dict(opts)
    if "activation_type" in kw:
        kw["activation_type"] = getattr(QuantType, kw["activation_type"])
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns per bias it skips
    quantize_static(src, dst, Reader(calib, names), quant_format=QuantFormat.QDQ, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qrange", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--only", help="run only models whose label contains this text")
    args = ap.parse_args()
    plat = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86-64"
    failures, rows, total = [], [], 0
    with tempfile.TemporaryDirectory() as work:
        models = []
        for label, model, calib, extra in QRANGE_FIXTURES:
            models.append((label, "qrange", (model, calib, extra)))
        for label, model, calib, opts in ORT_QUANTIZED:
            models.append((label, "ort", (model, calib, opts)))
        qdq = os.path.join(args.fixtures, "qdq")
        for case in sorted(os.listdir(qdq)) if os.path.isdir(qdq) else []:
            p = os.path.join(qdq, case, "model.onnx")
            if os.path.exists(p):
                models.append((f"qdq/{case}", "file", p))
        for label, m in synthetic_cases():
            models.append((f"case: {label}", "proto", m))
        for label, kind, spec in models:
            if args.only and args.only not in label:
                continue
            path = os.path.join(work, "model.onnx")
            if kind == "qrange":
                model, calib, extra = spec
                r = subprocess.run(
                    [args.qrange, "quantize", os.path.join(args.fixtures, model), "--calib",
                     os.path.join(args.fixtures, calib), "--no-validate", "-o", path, *extra],
                    capture_output=True, text=True)
                if r.returncode != 0:
                    failures.append(f"{label}: qrange quantize failed: {r.stderr.strip()}")
                    continue
            elif kind == "ort":
                model, calib, opts = spec
                ort_quantize(os.path.join(args.fixtures, model),
                             os.path.join(args.fixtures, calib), path, opts)
            elif kind == "proto":
                onnx.save(spec, path)
            else:
                path = spec
            try:
                n, problems, counts = check_model(label, path, args.qrange, work, plat)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            total += n
            failures += problems
            rows.append((label, n, counts, len(problems)))
            for f in os.listdir(work):
                p = os.path.join(work, f)
                if os.path.isfile(p):
                    os.remove(p)
    print(f"qrange lint vs ONNX Runtime {ort.__version__} (ORT_ENABLE_EXTENDED, CPU, {plat})")
    print(f"{'model':44} {'units':>5} {'fused':>5} {'drop':>5} {'rm':>4} {'float':>5}  result")
    for label, n, c, bad in rows:
        print(f"{label[:44]:44} {n:>5} {c.get('fused', 0):>5} {c.get('dropped', 0):>5} "
              f"{c.get('removed', 0):>4} {c.get('float', 0):>5}  {'ok' if not bad else 'DIFF'}")
    print("kernels and reasons met: " + ", ".join(sorted(SEEN)))
    # A run that compares nothing proves nothing: every kind of verdict must have occurred.
    if not args.only:
        for want in ["QLinearConv", "QGemm", "MatMulIntegerToFloat", "dropped", "removed",
                     "graph_output", "int8_activation", "qparams_differ", "sixteen_bit"]:
            if want not in SEEN:
                failures.append(f"no unit of the run was '{want}': the comparison lost coverage")
    for f in failures:
        print("FAIL", f)
    print(f"lint-vs-ort: {len(rows)} models, {total} units, "
          f"{total - sum(r[3] for r in rows)} agree, {len(failures)} disagreements")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
