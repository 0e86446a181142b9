#!/usr/bin/env python3
"""Stand-in for `qrange convert IN OUT`, used to test roundtrip.py itself.

The behaviour is chosen with the environment variable STANDIN_MODE:

  copy     copy IN to OUT unchanged (every check passes)
  fail     print an error and exit 2 (convert fails)
  corrupt  write IN with its last 16 bytes cut off (ORT and the checker reject it)
  unstable copy IN and append a fresh random field to OUT, so that converting
           twice never gives the same bytes (byte-stability fails)
  perturb  decode with onnx, double every float32 initializer and mark the
           model so that a second conversion changes nothing (byte-stable,
           ORT outputs change on models with float weights)
  crash    kill the calling worker process with SIGKILL (the harness must
           restart the worker and report the model)
"""

import os
import shutil
import signal
import sys


def main(argv):
    if len(argv) != 3 or argv[0] != "convert":
        print("usage: standin_convert.py convert IN OUT", file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    mode = os.environ.get("STANDIN_MODE", "copy")
    if mode == "copy":
        shutil.copyfile(src, dst)
    elif mode == "fail":
        print(f"error: cannot convert {src}: stand-in told to fail", file=sys.stderr)
        return 2
    elif mode == "corrupt":
        with open(src, "rb") as f:
            data = f.read()
        with open(dst, "wb") as f:
            f.write(data[:-16])
    elif mode == "unstable":
        with open(src, "rb") as f:
            data = f.read()
        # A second ModelProto.doc_string (field 6, length-delimited): the
        # last one wins when decoding, so the model stays valid.
        payload = os.urandom(8).hex().encode()
        with open(dst, "wb") as f:
            f.write(data + bytes([0x32, len(payload)]) + payload)
    elif mode == "perturb":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(src)
        if model.doc_string != "perturbed":
            model.doc_string = "perturbed"
            for init in model.graph.initializer:
                if init.data_type == onnx.TensorProto.FLOAT:
                    arr = numpy_helper.to_array(init) * 2
                    init.CopyFrom(numpy_helper.from_array(arr, init.name))
        with open(dst, "wb") as f:
            f.write(model.SerializeToString(deterministic=True))
    elif mode == "crash":
        os.kill(os.getppid(), signal.SIGKILL)
        return 1
    else:
        print(f"error: unknown STANDIN_MODE {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
