"""Start-up time of the command line: ``--help`` and ``ls`` against a bare interpreter.

Run: ``python benchmarks/bench_cli_startup.py [--repeats N]``.  Each command
runs in a fresh process; the median wall time is reported with its ratio to
``python -c pass`` and to ``python -c "import h5py"`` (the floor for any
command that opens a dump), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from timing import wall

from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter


def small_dump(path: Path) -> Path:
    with DumpWriter(path, {}, {}, overwrite=True) as writer:
        writer.begin_evaluation("prompt", {})
        for index in range(20):
            record = TensorRecord(f"t-{index}", 0, index, 0, "ADD", "f32", (64, 1, 1, 1), (4, 256, 256, 256),
                                  "CPU", "native")
            writer.write(record, np.full(64, index, dtype=np.float32))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dump = small_dump(Path(folder) / "small.h5")
        python = sys.executable
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "python -c 'import h5py'": [python, "-c", "import h5py"],
            "ggml-inspector --help": [python, "-m", "inspector", "--help"],
            "ggml-inspector capture --help": [python, "-m", "inspector", "capture", "--help"],
            "ggml-inspector ls DUMP": [python, "-m", "inspector", "ls", str(dump)],
        }
        seconds = {label: wall(command, args.repeats) for label, command in commands.items()}
    bare, h5py_floor = seconds["python -c pass"], seconds["python -c 'import h5py'"]
    print(json.dumps({label: {"seconds": round(value, 3), "vs_bare_python": round(value / bare, 2),
                              "vs_import_h5py": round(value / h5py_floor, 2)}
                      for label, value in seconds.items()}, indent=1))


if __name__ == "__main__":
    main()
