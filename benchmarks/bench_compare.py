"""Peak memory of compare on two large dumps: it must stream, one tensor pair at a time.

Run: ``python benchmarks/bench_compare.py [--tensors N] [--mib M]``.  Reports the
peak RSS of a process that compares two dumps, against a baseline process that
only opens them, as a ratio to one dump's size and to one tensor's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter

# VmHWM (peak RSS of this process image): ru_maxrss would inherit the parent's peak across fork+exec.
MEASURE = """
import sys
from inspector.dump.reader import open_dump
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import preset
a, b, mode = sys.argv[1:4]
if mode == "compare":
    comparison = compare_dumps(a, b, preset("f32"))
    assert len(comparison.rows) > 0
else:
    with open_dump(a) as x, open_dump(b) as y:
        assert len(x) and len(y)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) * 1024)
"""


def write(path: Path, tensors: int, elements: int, noise: float) -> int:
    rng = np.random.default_rng(0)
    with DumpWriter(path, {}, {}, overwrite=True) as writer:
        writer.begin_evaluation("prompt", {})
        for index in range(tensors):
            array = rng.standard_normal(elements).astype(np.float32)
            if noise:
                array += np.float32(noise)
            record = TensorRecord(f"t-{index}", 0, index, 0, "ADD", "f32", (elements, 1, 1, 1),
                                  (4, 4 * elements, 4 * elements, 4 * elements), "CPU", "native")
            writer.write(record, array)
    return path.stat().st_size


def peak_rss(a: Path, b: Path, mode: str) -> int:
    output = subprocess.run([sys.executable, "-c", MEASURE, str(a), str(b), mode], capture_output=True, text=True,
                            check=True)
    return int(output.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tensors", type=int, default=24)
    parser.add_argument("--mib", type=int, default=16, help="size of each tensor")
    args = parser.parse_args()
    elements = args.mib * 1024 * 1024 // 4
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.h5", Path(tmp) / "b.h5"
        size = write(a, args.tensors, elements, 0.0)
        write(b, args.tensors, elements, 1e-6)
        baseline = peak_rss(a, b, "open")
        comparing = peak_rss(a, b, "compare")
    tensor_bytes = elements * 4
    result = {
        "dump_bytes": size, "tensor_bytes": tensor_bytes, "tensors": args.tensors,
        "peak_rss_open_only": baseline, "peak_rss_compare": comparing,
        "extra_rss_over_dump_size": (comparing - baseline) / size,
        "extra_rss_over_one_tensor": (comparing - baseline) / tensor_bytes,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
