"""Wall time of whole processes and the results' output, shared by the benchmarks (run as scripts from this folder)."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path


def wall(command: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    """Median whole-process wall time of ``command`` (after one warm-up run for the page cache)."""
    subprocess.run(command, check=True, capture_output=True, env=env)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def paired_ratio(command: list[str], baseline: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    """Median over ``repeats`` pairs of (``command``'s wall time / ``baseline``'s), the two run in turn.

    Why pairs: this machine's speed drifts by tens of percent within minutes, and a ratio of two medians
    taken minutes apart moved with it; a pair is taken seconds apart.  One warm-up run of each first.
    """
    subprocess.run(baseline, check=True, capture_output=True)
    subprocess.run(command, check=True, capture_output=True, env=env)
    ratios = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(baseline, check=True, capture_output=True)
        base = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        ratios.append((time.perf_counter() - started) / base)
    return statistics.median(ratios)


def emit(results: dict, path: Path | None) -> None:
    """Print the results as one JSON object, and write them to ``path`` too when given."""
    print(json.dumps(results, indent=1))
    if path:
        path.write_text(json.dumps(results, indent=1))
