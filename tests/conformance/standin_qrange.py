#!/usr/bin/env python3
"""Stand-in for the qrange executable, used to test quantized_ort.py and lint_vs_ort.py.

It runs the real qrange (the path in QRANGE_REAL) with the same arguments, then breaks
the result as STANDIN_MODE says:

  faithful           nothing changed (every check passes)
  rename-outputs     `quantize`: every graph output of the written model gets a new name
  drop-output        `run`: the last output is left out of the written .npz
  bad-shape          `quantize`: the first graph output is declared with one more dim than
                     the graph computes (the full checker refuses it)
  float-for-removed  `lint --json`: every unit whose verdict is "removed" is reported float
"""

import json
import os
import subprocess
import sys


def output_path(argv):
    for flag in ("-o", "--output"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    raise SystemExit("standin_qrange: no -o in the arguments")


def rename_outputs(path):
    import onnx

    m = onnx.load(path)
    renamed = {o.name: o.name + ".renamed" for o in m.graph.output}
    for n in m.graph.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
        n.output[:] = [renamed.get(o, o) for o in n.output]
    for o in m.graph.output:
        o.name = renamed[o.name]
    onnx.save(m, path)


def bad_shape(path):
    import onnx

    m = onnx.load(path)
    shape = m.graph.output[0].type.tensor_type.shape
    shape.dim.add().dim_value = 1
    onnx.save(m, path)


def drop_output(path):
    import numpy as np

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    del arrays[list(arrays)[-1]]
    np.savez(path, **arrays)


def main(argv):
    mode = os.environ.get("STANDIN_MODE", "faithful")
    real = os.environ["QRANGE_REAL"]
    lint_json = argv[:1] == ["lint"] and "--json" in argv
    r = subprocess.run([real, *argv], capture_output=lint_json, text=True)
    if r.returncode != 0 or mode == "faithful":
        if lint_json:
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
        return r.returncode
    cmd = argv[0]
    if cmd == "quantize" and mode == "rename-outputs":
        rename_outputs(output_path(argv))
    elif cmd == "quantize" and mode == "bad-shape":
        bad_shape(output_path(argv))
    elif cmd == "run" and mode == "drop-output":
        drop_output(output_path(argv))
    elif lint_json and mode == "float-for-removed":
        report = json.loads(r.stdout)
        for u in report["units"]:
            if u["verdict"] == "removed":
                u["verdict"] = "float"
                u.pop("why", None)
                u["reason"] = "stand-in: reported float"
        r = subprocess.CompletedProcess(r.args, 0, json.dumps(report), r.stderr)
    if lint_json:
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
