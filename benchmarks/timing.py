"""Wall time of whole processes, shared by the benchmarks (run as scripts from this folder)."""

from __future__ import annotations

import statistics
import subprocess
import time


def wall(command: list[str], repeats: int) -> float:
    """Median whole-process wall time of ``command`` (after one warm-up run for the page cache)."""
    subprocess.run(command, check=True, capture_output=True)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
