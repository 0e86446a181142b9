#!/usr/bin/env python3
"""Write the ONNX operator test corpus to a directory.

Usage: gen_corpus.py OUTDIR

For every node test case of ``onnx.backend.test.case.node.collect_testcases()``
this writes::

    OUTDIR/<case>/model.onnx
    OUTDIR/<case>/test_data_set_<i>/input_<k>.pb
    OUTDIR/<case>/test_data_set_<i>/output_<k>.pb
    OUTDIR/<case>/meta.json          {"kind", "source", "rtol", "atol"}

which is the layout of ONNX's own backend test data. The model test cases that
the onnx package ships as files (``onnx/backend/test/data/{simple,
pytorch-converted,pytorch-operator}``) are copied next to them, each with a
``meta.json`` carrying ONNX's default tolerances. Case names are unique across
these sources; a collision is an error.

The output is deterministic: the same onnx version writes the same bytes.
OUTDIR must not exist yet or be empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings

# ONNX's backend test data layout and the default tolerances of its runner.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-7
SHIPPED_KINDS = ("simple", "pytorch-converted", "pytorch-operator")


def value_to_proto(value, type_proto, name: str):
    """Serialize one input/output value according to the graph's declared type."""
    from onnx import TensorProto, numpy_helper

    if type_proto.HasField("map_type"):
        return numpy_helper.from_dict(value, name)
    if type_proto.HasField("sequence_type"):
        return numpy_helper.from_list(value, name)
    if type_proto.HasField("optional_type"):
        return numpy_helper.from_optional(value, name)
    if isinstance(value, TensorProto):
        return value
    return numpy_helper.from_array(value, name)


def write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_meta(case_dir: str, kind: str, source: str, rtol: float, atol: float) -> None:
    meta = {"kind": kind, "source": source, "rtol": rtol, "atol": atol}
    with open(os.path.join(case_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, sort_keys=True, indent=1)
        f.write("\n")


def write_node_cases(outdir: str, seen: set[str]) -> int:
    # Building the cases evaluates numpy reference code that deliberately
    # divides by zero, takes log(0) and so on; those warnings are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import onnx.backend.test.case.node as node_cases

        cases = node_cases.collect_testcases()

    cases = sorted(cases, key=lambda c: c.name)
    for case in cases:
        if case.name in seen:
            raise SystemExit(f"error: duplicate test case name {case.name!r}")
        seen.add(case.name)
        if case.model is None or not case.data_sets:
            raise SystemExit(f"error: node test case {case.name!r} has no model or data")
        case_dir = os.path.join(outdir, case.name)
        os.makedirs(case_dir)
        graph = case.model.graph
        write_bytes(
            os.path.join(case_dir, "model.onnx"),
            case.model.SerializeToString(deterministic=True),
        )
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds_dir = os.path.join(case_dir, f"test_data_set_{i}")
            os.makedirs(ds_dir)
            for k, value in enumerate(inputs):
                vi = graph.input[k]
                proto = value_to_proto(value, vi.type, vi.name)
                write_bytes(
                    os.path.join(ds_dir, f"input_{k}.pb"),
                    proto.SerializeToString(deterministic=True),
                )
            for k, value in enumerate(outputs):
                vi = graph.output[k]
                proto = value_to_proto(value, vi.type, vi.name)
                write_bytes(
                    os.path.join(ds_dir, f"output_{k}.pb"),
                    proto.SerializeToString(deterministic=True),
                )
        write_meta(case_dir, "node", "onnx.backend.test.case.node", case.rtol, case.atol)
    return len(cases)


def copy_shipped_cases(outdir: str, seen: set[str]) -> dict[str, int]:
    import onnx

    data_root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    counts: dict[str, int] = {}
    for kind in SHIPPED_KINDS:
        src_kind = os.path.join(data_root, kind)
        if not os.path.isdir(src_kind):
            raise SystemExit(f"error: the onnx package has no {src_kind}")
        n = 0
        for name in sorted(os.listdir(src_kind)):
            src = os.path.join(src_kind, name)
            if not os.path.isfile(os.path.join(src, "model.onnx")):
                continue
            if name in seen:
                raise SystemExit(f"error: duplicate test case name {name!r} (from {kind})")
            seen.add(name)
            dst = os.path.join(outdir, name)
            shutil.copytree(src, dst)
            write_meta(dst, kind, f"onnx/backend/test/data/{kind}", DEFAULT_RTOL, DEFAULT_ATOL)
            n += 1
        counts[kind] = n
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="directory to write (must not exist or be empty)")
    args = parser.parse_args(argv)

    import onnx

    start = time.monotonic()
    outdir = args.outdir
    if os.path.exists(outdir) and os.listdir(outdir):
        print(f"error: {outdir} exists and is not empty", file=sys.stderr)
        return 2
    os.makedirs(outdir, exist_ok=True)

    seen: set[str] = set()
    n_node = write_node_cases(outdir, seen)
    shipped = copy_shipped_cases(outdir, seen)
    elapsed = time.monotonic() - start

    rows = [("node", n_node)] + [(k, shipped[k]) for k in SHIPPED_KINDS]
    print(f"corpus written to {outdir} (onnx {onnx.__version__})")
    print(f"{'source':<20} {'cases':>6}")
    for kind, n in rows:
        print(f"{kind:<20} {n:>6}")
    print(f"{'total':<20} {sum(n for _, n in rows):>6}")
    print(f"time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
