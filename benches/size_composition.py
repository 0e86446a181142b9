#!/usr/bin/env python3
"""Where the bytes of a written ONNX model go: weight codes, codebook level tables,
scales and zero points, biases, other initializers, and the graph's text (names,
attributes, op types, value_info) with protobuf framing.

Usage (from the repository root, with a python that has onnx):
    python3 benches/size_composition.py MODEL.onnx [MODEL.onnx ...] [--json]

Each initializer (main graph; Constant nodes counted the same way) is put in one class by
how it is read:

- ``weight codes``: the integer payload of a quantized weight: the input of a
  DequantizeLinear feeding a Conv/ConvTranspose/Gemm/MatMul weight slot, or, for a
  codebook weight, the index tensor its Gather chain unpacks;
- ``codebook tables``: the level tables (input 0 of a GatherElements on that chain);
- ``weight scales/zero points``, ``bias scales/zero points``, ``activation scales/zero
  points``: inputs 1 and 2 of DequantizeLinear/QuantizeLinear, by what the DQ dequantizes;
- ``biases``: int32 inputs of DequantizeLinear, and float initializers read by a bias slot;
- ``float weights``: float initializers read by a weight slot directly (left float);
- ``other initializers``: the rest (reshape targets, bit tables, constants of the model).

Payload bytes are the tensor's data bytes (raw_data or typed fields, as serialized);
``names and framing`` is the rest of each initializer's serialized size. The graph part is
split into node names, node input/output strings, op types and domains, attributes, and
value_info; ``other`` is whatever remains of the file (model-level fields, framing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import onnx
from onnx import numpy_helper

LAYERS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
BIAS_SLOT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def data_bytes(t: onnx.TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    return len(t.SerializeToString()) - len(t.name.encode()) - 2 * len(t.dims) - 8


def classify(g: onnx.GraphProto) -> dict[str, str]:
    producer = {}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for o in n.output:
            producer[o] = n
        for i, x in enumerate(n.input):
            consumers.setdefault(x, []).append((n, i))
    inits = {t.name for t in g.initializer}
    inits |= {n.output[0] for n in g.node if n.op_type == "Constant"}

    def role_of_dq(dq: onnx.NodeProto) -> str:
        """weight / bias by the slot its output feeds (or an int32 input: a bias),
        activation when it reads a QuantizeLinear, weight otherwise (a constant chain)."""
        for c, slot in consumers.get(dq.output[0], []):
            if slot == LAYERS.get(c.op_type):
                return "weight"
            if slot == BIAS_SLOT.get(c.op_type):
                return "bias"
        src = dq.input[0]
        if const_dtypes.get(src) == onnx.TensorProto.INT32:
            return "bias"
        p = producer.get(src)
        return "activation" if p is not None and p.op_type == "QuantizeLinear" else "weight"

    const_dtypes = {t.name: t.data_type for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].t:
            const_dtypes[n.output[0]] = n.attribute[0].t.data_type

    cls: dict[str, str] = {}

    def ancestors(v: str, seen: set[str]) -> None:
        if v in seen:
            return
        seen.add(v)
        p = producer.get(v)
        if p is None or p.op_type == "Constant":
            return
        for i, x in enumerate(p.input):
            if not x:
                continue
            if x in inits and x not in cls:
                if p.op_type == "GatherElements" and i == 0:
                    cls[x] = "codebook tables"
                elif const_dtypes.get(x) in (onnx.TensorProto.UINT8, onnx.TensorProto.UINT4,
                                             onnx.TensorProto.INT8, onnx.TensorProto.INT4) and (
                        p.op_type == "Cast" or p.op_type == "DequantizeLinear"):
                    cls[x] = "weight codes"
            ancestors(x, seen)

    for n in g.node:
        if n.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            continue
        role = role_of_dq(n) if n.op_type == "DequantizeLinear" else "activation"
        if n.op_type == "DequantizeLinear":
            x = n.input[0]
            if x in inits:
                cls.setdefault(x, "biases" if role == "bias" else ("weight codes" if role == "weight" else "other initializers"))
            elif role == "weight":
                ancestors(x, set())
        for k in (1, 2):
            if len(n.input) > k and n.input[k] in inits:
                cls.setdefault(n.input[k], f"{role} scales/zero points")
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in inits and x not in cls:
                if i == LAYERS.get(n.op_type):
                    cls[x] = "float weights"
                elif i == BIAS_SLOT.get(n.op_type):
                    cls[x] = "biases"
    return cls


def composition(path: str) -> dict:
    m = onnx.load(path)
    g = m.graph
    cls = classify(g)
    out: dict[str, int] = {}

    def add(k: str, n: int) -> None:
        out[k] = out.get(k, 0) + n

    for t in g.initializer:
        total = len(t.SerializeToString())
        d = data_bytes(t)
        add(cls.get(t.name, "other initializers"), d)
        add("initializer names and framing", total - d + 2)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            t = n.attribute[0].t
            d = data_bytes(t)
            add(cls.get(n.output[0], "other initializers"), d)
            add("initializer names and framing", len(n.SerializeToString()) - d + 3)
            continue
        add("node names", len(n.name.encode()))
        add("node input/output strings", sum(len(x.encode()) for x in [*n.input, *n.output]))
        add("op types and domains", len(n.op_type.encode()) + len(n.domain.encode()))
        add("attributes", sum(len(a.SerializeToString()) for a in n.attribute))
        framing = len(n.SerializeToString()) + 3 - len(n.name.encode()) - len(n.op_type.encode()) - len(n.domain.encode()) \
            - sum(len(x.encode()) for x in [*n.input, *n.output]) - sum(len(a.SerializeToString()) for a in n.attribute)
        add("node framing", framing)
    add("value_info", sum(len(v.SerializeToString()) + 3 for v in g.value_info))
    size = os.path.getsize(path)
    add("other", size - sum(out.values()))
    return {"path": path, "bytes": size, "parts": out,
            "nodes": len(g.node), "initializers": len(g.initializer)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = [composition(p) for p in args.models]
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    for r in res:
        print(f"{r['path']}: {r['bytes']} bytes, {r['nodes']} nodes, {r['initializers']} initializers")
        print("| part | bytes | share |")
        print("|---|---|---|")
        for k, v in sorted(r["parts"].items(), key=lambda kv: -kv[1]):
            print(f"| {k} | {v} | {100 * v / r['bytes']:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
