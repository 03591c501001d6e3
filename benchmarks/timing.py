"""Wall time of whole processes, shared by the benchmarks (run as scripts from this folder)."""

from __future__ import annotations

import statistics
import subprocess
import time


def wall(command: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    """Median whole-process wall time of ``command`` (after one warm-up run for the page cache)."""
    subprocess.run(command, check=True, capture_output=True, env=env)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
