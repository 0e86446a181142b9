#!/usr/bin/env python3
"""Weight-only quantized models in ONNX Runtime.

For each configuration below, ``qrange quantize --mode weight-only`` the fixture, then check
that the output

1. passes ``onnx.checker.check_model(full_check=True)``;
2. holds what the target asks for: com.microsoft MatMulNBits for blocked MatMul weights and
   com.microsoft GatherBlockQuantized for 4-bit blocked embedding tables on ``ort-cpu``,
   blocked or per-axis DequantizeLinear otherwise (opset 21), no QuantizeLinear (activations
   stay float), no Gather left on a float table unless ``--embedding-bits float`` asks
   for it, and each table's ``block_size`` what the flags ask (``--embedding-block``, else
   the weights' block, at most 16 for 4-bit tables; tables that follow 4-bit weights keep
   lookups at fixed indices int8 per row). ``lookup`` is a generated embedding (a 50 x 40 table, so blocks of 32 leave a
   partial last block, then a MatMul);
3. loads and runs in ONNX Runtime (CPU EP, 1 thread) without graph optimizations and with
   all of them. With all of them ONNX Runtime rewrites DequantizeLinear → MatMul into
   MatMulNBits with ``accuracy_level`` 4 by default (session option
   ``session.qdq_matmulnbits_accuracy_level``): the activations are then quantized to int8
   per block inside the kernel, which is not the model's arithmetic. The exact gate runs that
   rewrite with accuracy level 0; the default is reported and gated at ``--rel-fused``
   (1e-2; measured 3.5e-3 on the zero-point forms);
4. agrees with tract's execution of the same model (``qrange run``): both engines
   dequantize the same integers exactly, so only float summation order differs. Measured
   against one step of the weight grid's effect on the output would be meaningless (the
   output is float); the gate is relative to the output's range: max |difference| <=
   ``--rel-max`` (1e-4) of the largest |output|, which is far below what one weight step of
   any layer moves the output (the 4-bit weights' own error is about 1e-1 of it).

Exit status 0 when every configuration passes, 1 otherwise.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qcheck import checker_error, load_samples, ort_outputs, tract_outputs  # noqa: E402

# label, model, calib (or None), eval, flags, ops expected in the written model
CONFIGS = [
    ("minilm_l3 int4 b32 MatMulNBits", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--weight-bits", "4", "--block-size", "32"], ["MatMulNBits", "GatherBlockQuantized"]),
    ("minilm_l3 int4 b32 DequantizeLinear", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--weight-bits", "4", "--block-size", "32", "--target", "generic"], ["DequantizeLinear"]),
    ("minilm_l3 int4 sym b128 MatMulNBits", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--weight-bits", "4", "--block-size", "128", "--weight-symmetric"],
     ["MatMulNBits", "GatherBlockQuantized"]),
    ("minilm_l3 int8 b64 MatMulNBits", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--weight-bits", "8", "--block-size", "64"], ["MatMulNBits", "DequantizeLinear"]),
    ("minilm_l3 int8 per channel", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--weight-bits", "8", "--block-size", "channel"], ["DequantizeLinear"]),
    ("minilm_l3 int4 per channel", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--weight-bits", "4", "--block-size", "channel"], ["DequantizeLinear"]),
    ("minilm_l3 int4 GPTQ b32", "minilm_l3/model.onnx", "minilm_l3/calib.npz", "minilm_l3/eval.npz",
     ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "gptq"],
     ["MatMulNBits", "GatherBlockQuantized"]),
    ("minilm_l3 int4 sym tensorrt", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--weight-bits", "4", "--block-size", "32", "--weight-symmetric", "--target", "tensorrt"],
     ["DequantizeLinear"]),
    ("minilm_l3 int4 b32, float tables", "minilm_l3/model.onnx", None, "minilm_l3/eval.npz",
     ["--embedding-bits", "float"], ["MatMulNBits", "Gather"]),
    ("lookup int4 b32 GatherBlockQuantized", "gen:lookup", None, "gen:lookup",
     ["--block-size", "32"], ["GatherBlockQuantized", "MatMulNBits"]),
    ("lookup int4 sym b16 GatherBlockQuantized", "gen:lookup", None, "gen:lookup",
     ["--block-size", "16", "--weight-symmetric"], ["GatherBlockQuantized", "MatMulNBits"]),
    ("lookup int4 b32 DequantizeLinear", "gen:lookup", None, "gen:lookup",
     ["--block-size", "32", "--target", "generic"], ["DequantizeLinear", "Gather"]),
    # The tables' block apart from the weights' (--embedding-block): both forms.
    ("minilm_l3 int4 b32, tables b16 MatMulNBits", "minilm_l3/model.onnx", None,
     "minilm_l3/eval.npz", ["--weight-bits", "4", "--block-size", "32", "--embedding-block", "16"],
     ["MatMulNBits", "GatherBlockQuantized"]),
    ("minilm_l3 int4 b32, tables b16 DequantizeLinear", "minilm_l3/model.onnx", None,
     "minilm_l3/eval.npz", ["--weight-bits", "4", "--block-size", "32", "--embedding-block", "16",
                            "--target", "generic"], ["DequantizeLinear"]),
    ("minilm_l3 int4 GPTQ b32, tables b16 clip", "minilm_l3/model.onnx", "minilm_l3/calib.npz",
     "minilm_l3/eval.npz", ["--weight-bits", "4", "--block-size", "32", "--weight-algo", "gptq",
                            "--embedding-block", "16"], ["MatMulNBits", "GatherBlockQuantized"]),
    ("lookup int4 b16, tables b32 GatherBlockQuantized", "gen:lookup", None, "gen:lookup",
     ["--block-size", "16", "--embedding-block", "32"], ["GatherBlockQuantized", "MatMulNBits"]),
    ("lookup int4 b32, tables b16 DequantizeLinear", "gen:lookup", None, "gen:lookup",
     ["--block-size", "32", "--embedding-block", "16", "--target", "generic"],
     ["DequantizeLinear", "Gather"]),
]


def table_blocks(m: onnx.ModelProto) -> list:
    """``block_size`` of each stored table's op: GatherBlockQuantized, or the DequantizeLinear
    a Gather reads its table from (``None``: per row)."""
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    out = []
    for n in m.graph.node:
        op = n if n.op_type == "GatherBlockQuantized" else (
            dq.get(n.input[0]) if n.op_type == "Gather" else None)
        if op is None:
            continue
        block = [a.i for a in op.attribute if a.name == "block_size"]
        out.append(block[0] if block else None)
    return out


def flag_of(flags: list, name: str):
    return flags[flags.index(name) + 1] if name in flags else None


def expected_table_block(flags: list):
    """The tables' block the flags ask for: ``--embedding-block``, else the weights' block
    (default 32), at most 16 for 4-bit tables; ``None`` (per row) with per-channel weights."""
    def flag(name, default):
        return flags[flags.index(name) + 1] if name in flags else default
    if "--embedding-block" in flags:
        return int(flag("--embedding-block", None))
    block = flag("--block-size", "32")
    if block == "channel":
        return None
    bits = flag("--embedding-bits", flag("--weight-bits", "4"))
    return min(int(block), 16) if bits == "4" else int(block)


def write_lookup(tmp: str) -> tuple[str, str]:
    """A generated embedding: ``y = Gather(table, ids) @ w`` with a 50 x 40 table whose rows
    differ in range, and 8 samples of 5 ids (one of them negative, counting from the end)."""
    rng = np.random.default_rng(7)
    table = (rng.standard_normal((50, 40)) * (1 + np.arange(50)[:, None] / 10)).astype(np.float32)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["table", "ids"], ["e"], name="lookup"),
         onnx.helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")],
        "lookup",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 5])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5, 24])],
        [onnx.numpy_helper.from_array(table, "table"), onnx.numpy_helper.from_array(w, "w")])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = os.path.join(tmp, "lookup.onnx")
    onnx.save(m, path)
    ids = rng.integers(0, 50, (8, 1, 5)).astype(np.int64)
    ids[3, 0, 2] = -1
    data = os.path.join(tmp, "lookup.npz")
    np.savez(data, ids=ids)
    return path, data


def float_tables(m: onnx.ModelProto) -> list[str]:
    """Gather tables still float32 constants of rank 2."""
    inits = {i.name: i for i in m.graph.initializer}
    return [n.input[0] for n in m.graph.node if n.op_type == "Gather" and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT
            and len(inits[n.input[0]].dims) == 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qrange", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--rel-max", type=float, default=1e-4)
    ap.add_argument("--rel-fused", type=float, default=1e-2)
    args = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        generated = {"gen:lookup": write_lookup(tmp)}
        for i, (label, model, calib, evalf, flags, want) in enumerate(CONFIGS):
            q = os.path.join(tmp, f"wo{i}.onnx")
            model = generated[model][0] if model in generated else os.path.join(args.fixtures, model)
            evalf = generated[evalf][1] if evalf in generated else os.path.join(args.fixtures, evalf)
            cmd = [args.qrange, "quantize", model, "--mode",
                   "weight-only", *flags, "--no-validate", "-o", q]
            if calib:
                cmd += ["--calib", os.path.join(args.fixtures, calib)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"{label}: quantize failed: {r.stderr.strip()}")
                continue
            err = checker_error(q)
            if err:
                failures.append(f"{label}: onnx.checker: {err}")
                continue
            qm = onnx.load(q)
            ops = [n.op_type for n in qm.graph.node]
            if any(op not in ops for op in want) or "QuantizeLinear" in ops:
                failures.append(f"{label}: expected {want} and no QuantizeLinear, got {sorted(set(ops))}")
                continue
            floats = float_tables(qm)
            if bool(floats) != ("--embedding-bits" in flags and "float" in flags):
                failures.append(f"{label}: float Gather tables {floats}")
                continue
            blocks = table_blocks(qm)
            want_block = expected_table_block(flags)
            # 4-bit tables that follow the weights leave fixed-index lookups (positions, token
            # types) int8 per row.
            rows_ok = (flag_of(flags, "--embedding-bits") is None
                       and flag_of(flags, "--weight-bits") in (None, "4"))
            if not floats and (want_block not in blocks or any(
                    b != want_block and not (rows_ok and b is None) for b in blocks)):
                failures.append(f"{label}: table block_size {blocks}, expected {want_block}")
                continue
            op = "+".join(want)
            samples, stacked = load_samples(evalf)
            tract = tract_outputs(args.qrange, q, stacked, tmp, f"wo{i}")
            if isinstance(tract, str):
                failures.append(f"{label}: qrange run failed: {tract}")
                continue
            worst, fused = 0.0, 0.0
            for level, acc, gate in (
                    (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, None, args.rel_max),
                    (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "0", args.rel_max),
                    (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, None, args.rel_fused)):
                try:
                    got = ort_outputs(q, samples, level, acc)
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{label}: ONNX Runtime: {str(e).splitlines()[0]}")
                    break
                for name, o in got.items():
                    if o.dtype.kind != "f":
                        continue
                    t = tract[name].reshape(o.shape)
                    rel = float(np.abs(o - t).max() / max(np.abs(o).max(), 1e-30))
                    if gate == args.rel_max:
                        worst = max(worst, rel)
                    else:
                        fused = max(fused, rel)
                    if rel > gate:
                        failures.append(f"{label}: output '{name}' (level {level}, accuracy level {acc}): max |ORT - tract| is {rel:.2e} of its range, gate {gate:.0e}")
            print(f"{label}: {op}, max |ORT - tract| / max |output|: exact {worst:.2e}, "
                  f"default fusion {fused:.2e}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
