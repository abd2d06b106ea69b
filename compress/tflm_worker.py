"""Subprocess entry for `compress.tflite`: allocate (and optionally run) a .tflite model in TensorFlow Lite Micro
and print its recording allocator's report. Run as a script (it imports neither torch nor the package), so a
too-small arena that aborts TFLM takes only this process down.

    python compress/tflm_worker.py MODEL.tflite ARENA_BYTES [INPUTS.npy OUTPUTS.npy]
"""
import sys

import numpy as np
from tflite_micro.python.tflite_micro import runtime


def main(args: list[str]) -> None:
    path, arena = args[0], int(args[1])
    inp, out = (args[2], args[3]) if len(args) >= 4 else ("", "")
    ip = runtime.Interpreter.from_file(path, arena_size=arena)
    d = ip.get_input_details(0)
    if inp:
        outs = []
        for x in np.load(inp):
            ip.set_input(x[None].astype(d["dtype"]), 0)
            ip.invoke()
            outs.append(np.array(ip.get_output(0)).reshape(-1))
        np.save(out, np.stack(outs))
    else:
        ip.set_input(np.zeros(d["shape"], dtype=d["dtype"]), 0)
        ip.invoke()
    sys.stdout.flush()
    ip.print_allocations()
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
