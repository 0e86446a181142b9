#!/usr/bin/env python3
"""Tests of quantized_ort.py and lint_vs_ort.py themselves: do they pass the real qrange
and catch a broken one?

Usage: selftest_quantized.py --qrange PATH --fixtures DIR

Runs both scripts on a few models with standin_qrange.py in place of qrange (it runs
the real one, then breaks the result as its STANDIN_MODE says) and checks the exit code
and the failure each must report:

- quantized_ort.py on tiny_cnn: faithful passes; outputs renamed in the written model,
  an output missing from tract's run, and a declared output shape the graph contradicts
  (the full checker refuses it) each fail, naming what is wrong;
- lint_vs_ort.py on the Identity cases: faithful passes; a lint that reports float for
  the units ONNX Runtime removes fails.

Prints one line per check and a closing "N passed, N failed" line; exits 1 if any check
failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "standin_qrange.py")

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))


def run(script: str, mode: str, qrange: str, fixtures: str, only: str) -> tuple[int, str]:
    env = dict(os.environ, STANDIN_MODE=mode, QRANGE_REAL=os.path.abspath(qrange))
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, script), "--qrange", STANDIN, "--fixtures", fixtures,
         "--only", only],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    return proc.returncode, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qrange", required=True)
    ap.add_argument("--fixtures", required=True)
    args = ap.parse_args()

    q = ("quantized_ort.py", args.qrange, args.fixtures, "tiny_cnn")
    rc, out = run(q[0], "faithful", *q[1:])
    check("quantized_ort faithful: exit 0", rc == 0, out[-2000:])
    check("quantized_ort faithful: one model passed", "quantized-ort: 1 passed, 0 failed" in out,
          out[-2000:])
    for mode, want in [
        ("rename-outputs", "tiny_cnn: the quantized model's outputs are ['y.renamed'], the float "
                           "model's ['y']"),
        ("drop-output", "tract returned []"),
        ("bad-shape", "tiny_cnn: onnx.checker:"),
    ]:
        rc, out = run(q[0], mode, *q[1:])
        check(f"quantized_ort {mode}: exit 1", rc == 1, out[-2000:])
        check(f"quantized_ort {mode}: reported", want in out, out[-2000:])
        check(f"quantized_ort {mode}: counted failed", "quantized-ort: 0 passed, 1 failed" in out,
              out[-2000:])

    lint = ("lint_vs_ort.py", args.qrange, args.fixtures, "identity")
    rc, out = run(lint[0], "faithful", *lint[1:])
    check("lint_vs_ort faithful: exit 0", rc == 0, out[-2000:])
    check("lint_vs_ort faithful: no disagreement", " 0 disagreements" in out, out[-2000:])
    rc, out = run(lint[0], "float-for-removed", *lint[1:])
    check("lint_vs_ort float-for-removed: exit 1", rc == 1, out[-2000:])
    check("lint_vs_ort float-for-removed: the removed Identity is named",
          "unit 'target' (Identity): qrange lint says float" in out and "ONNX Runtime: gone" in out,
          out[-2000:])

    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"selftest-quantized: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
