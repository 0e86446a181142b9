#!/usr/bin/env python3
"""Stand-in for `qrange run MODEL --data DATA -o OUT.npz [--pin NAME=VALUE]...`,
used to test run_vs_ort.py itself.

It runs the model in ONNX Runtime on every sample of DATA (pinned inputs take
the pinned value and are never read from DATA; an input that is neither pinned
nor in DATA is an error) and writes one array per model output, stacked on
axis 0. If STANDIN_LOG is set, it appends its arguments there as one JSON line.
STANDIN_MODE then changes the result:

  ort      faithful (every check passes)
  jitter   every element moved by half the tolerance, atol/2 + rtol/2*|b| (passes)
  off      one element of the first output moved by twice the tolerance (fails)
  nan      one element of the first output set to NaN (fails)
  fail     print an error and exit 2
  nofile   exit 0 without writing OUT
  missing  leave out the last output
  extra    add an array that is not an output
  short    leave out the last sample
  dtype    write float64 instead of float32
"""

import json
import os
import sys

ATOL = 1e-4
RTOL = 1e-3


def parse(argv):
    if not argv or argv[0] != "run" or len(argv) < 2:
        raise ValueError("usage: standin_run.py run MODEL --data DATA -o OUT [--pin NAME=VALUE]...")
    model, data, out, pins = argv[1], None, None, {}
    rest = argv[2:]
    while rest:
        flag = rest.pop(0)
        if not rest:
            raise ValueError(f"{flag} needs a value")
        value = rest.pop(0)
        if flag == "--data":
            data = value
        elif flag == "-o":
            out = value
        elif flag == "--pin":
            name, sep, v = value.partition("=")
            if not sep:
                raise ValueError(f"--pin {value}: expected NAME=VALUE")
            pins[name] = v
        else:
            raise ValueError(f"unknown flag {flag}")
    if data is None or out is None:
        raise ValueError("--data and -o are required")
    return model, data, out, pins


def main(argv):
    try:
        model, data, out, pins = parse(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("STANDIN_LOG"):
        with open(os.environ["STANDIN_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"model": model, "data": data, "pins": pins}) + "\n")
    mode = os.environ.get("STANDIN_MODE", "ort")
    if mode == "fail":
        print(f"error: cannot run {model}: stand-in told to fail", file=sys.stderr)
        return 2
    if mode == "nofile":
        return 0

    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    np_types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    with np.load(data, allow_pickle=False) as z:
        fed = {}
        fixed = {}
        for inp in sess.get_inputs():
            if inp.name in pins:
                fixed[inp.name] = np.array(pins[inp.name], dtype=np_types[inp.type])
            elif inp.name in z.files:
                fed[inp.name] = z[inp.name]
            else:
                print(f"error: {data} has no array for input {inp.name!r} and it is not pinned", file=sys.stderr)
                return 2
        unknown = sorted(set(pins) - {i.name for i in sess.get_inputs()})
        if unknown:
            print(f"error: --pin names no input: {unknown}", file=sys.stderr)
            return 2
    n = len(next(iter(fed.values())))
    names = [o.name for o in sess.get_outputs()]
    per = [sess.run(names, dict(fixed, **{k: v[i] for k, v in fed.items()})) for i in range(n)]
    outs = {name: np.stack([p[k] for p in per]) for k, name in enumerate(names)}

    first = names[0]
    if mode == "jitter":
        for name, b in outs.items():
            if b.dtype.kind == "f":
                outs[name] = (b + (ATOL / 2 + RTOL / 2 * np.abs(b))).astype(b.dtype)
    elif mode == "off":
        flat = outs[first].reshape(-1)
        flat[-1] += 2 * (ATOL + RTOL * abs(flat[-1]))
    elif mode == "nan":
        outs[first].reshape(-1)[0] = np.nan
    elif mode == "missing":
        del outs[names[-1]]
    elif mode == "extra":
        outs["not_an_output"] = np.zeros(1, np.float32)
    elif mode == "short":
        outs = {k: v[:-1] for k, v in outs.items()}
    elif mode == "dtype":
        outs = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in outs.items()}
    elif mode != "ort":
        print(f"error: unknown STANDIN_MODE {mode!r}", file=sys.stderr)
        return 2
    with open(out, "wb") as f:
        np.savez(f, **outs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
