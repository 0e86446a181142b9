#!/usr/bin/env python3
"""CI check: peak RSS of `qrange run` and `qrange quantize --no-validate` on a generated model
stays within a multiple of the model's size.

Usage:
    python3 benches/memory_check.py --qrange PATH --work DIR [--size small|ci] [--max-run X]
                                    [--max-quantize X]

Generates `fixtures/gen/large_model.py --size SIZE` (default `small`: 5 chained MatMul + Relu
layers of 4096 x 4096, float weights in external data, 336 MB; `ci`, 4 layers of 2048 x 2048,
67 MB, was the default before) into DIR, runs each command in a child process and reads its
peak resident set size from the kernel when it is reaped (`wait4`'s `ru_maxrss`, the child's
VmHWM), then fails (exit 1) when a command failed or its peak over the model's size on disk
exceeds its limit. The limits are the issue's goal for large models, 1.5x, about 16% over
what was measured on `small` (debug build: `run` 1.27x in 13 s, `quantize` 1.29x in 186 s,
both under a load average of about 15 on 2 cores; on the `ci` model the engine's fixed cost
weighs more: `run` 2.42x, `quantize` 3.14x, so pass `--max-run 2.8 --max-quantize 3.6` with
`--size ci`).
Deletes what it generated. Needs: numpy, onnx.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "fixtures", "gen", "large_model.py")


def peak_of(cmd: list[str], log: str) -> tuple[int, float, int]:
    """Runs `cmd`; returns its exit code, wall seconds and peak RSS in bytes."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.perf_counter() - t0, usage.ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qrange", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--size", default="small")
    ap.add_argument("--max-run", type=float, default=1.5)
    ap.add_argument("--max-quantize", type=float, default=1.5)
    a = ap.parse_args()
    d = os.path.abspath(a.work)
    os.makedirs(d, exist_ok=True)
    try:
        subprocess.run([sys.executable, GEN, d, "--size", a.size], check=True)
        m = os.path.join(d, "model.onnx")
        total = os.path.getsize(m) + os.path.getsize(m + ".data")
        checks = [
            ("run", [a.qrange, "run", m, "--data", os.path.join(d, "run.npz"), "-o",
                     os.path.join(d, "y.npz")], a.max_run),
            ("quantize", [a.qrange, "quantize", m, "--calib", os.path.join(d, "calib.npz"),
                          "-o", os.path.join(d, "q.onnx"), "--no-validate"], a.max_quantize),
        ]
        failed = False
        for key, cmd, limit in checks:
            log = os.path.join(d, key + ".log")
            rc, wall, peak = peak_of(cmd, log)
            x = peak / total
            ok = rc == 0 and x <= limit
            print(f"{key}: exit {rc}, {wall:.1f} s, peak RSS {peak / 1e6:.0f} MB = {x:.2f}x "
                  f"the model ({total / 1e6:.0f} MB), limit {limit:.2f}x: "
                  f"{'ok' if ok else 'FAILED'}")
            if rc != 0:
                print(open(log, errors="replace").read()[-2000:])
            failed |= not ok
        return 1 if failed else 0
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
