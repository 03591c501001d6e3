"""Offload bisection: the smallest offload count whose logits leave the CPU run's, then why.

The original notes' "30 layers fine, 36 layers wrong" is a search over
``-ngl``.  Capturing every count fully is slow on a real model; this captures
only ``result_output`` while it searches (a logit-only capture costs about a
plain run), then captures the two counts on either side of the boundary
fully and compares them, so the origins name the op that the extra offloaded
layer changed.

With counts 0..N there are N + 1 possible answers (a boundary at 1..N, or
none), so a binary search needs ceil(log2(N + 1)) probes plus the reference:
that is all it captures before the boundary pair.  It assumes, as any
bisection does, that once a count diverges every larger count does too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from inspector.capture.selection import Selection
from inspector.compare.runs import Comparison, compare_dumps
from inspector.compare.tolerance import Tolerance
from inspector.errors import InspectorError
from inspector.files.outputs import recorded_inputs, refuse_inputs, write_text
from inspector.gguf.header import read_header
from inspector.llamacpp.capture import capture_llama
from inspector.llamacpp.config import LlamaRunConfig
from inspector.sweep.run import offload_endpoints

LOGITS = Selection(globs=("result_output",))
SUMMARY_NAME = "bisect.json"


@dataclass
class Probe:
    n_gpu_layers: int
    diverged: bool
    nmse: float | None
    dump: Path


@dataclass
class BisectResult:
    low: int
    high: int
    boundary: int | None
    probes: list[Probe]
    logit_captures: int
    summary_path: Path
    comparison: Comparison | None = None
    pair: tuple[Path, Path] | None = None
    rpc: list[str] = field(default_factory=list)


def parse_range(text: str, n_layer: int) -> tuple[int, int]:
    """``0..36`` (or ``0..all``) to (0, 36); counts beyond the model's layers are clamped to ``all``."""
    low, sep, high = text.partition("..")
    if not sep:
        raise InspectorError(f"--bisect takes -ngl LOW..HIGH (e.g. 0..{n_layer}), not {text!r}")
    try:
        low_count = int(low)
        high_count = n_layer + 1 if high.strip().lower() == "all" else int(high)
    except ValueError:
        raise InspectorError(f"-ngl {text}: LOW and HIGH must be numbers (HIGH may be 'all')") from None
    high_count = min(high_count, n_layer + 1)  # llama.cpp offloads n_layer + 1 "layers": the output too
    if not 0 <= low_count < high_count:
        raise InspectorError(f"-ngl {text}: need 0 <= LOW < HIGH")
    return low_count, high_count


def _block_count(model: str) -> int:
    header = read_header(model)
    architecture = header.metadata.get("general.architecture")
    count = header.metadata.get(f"{architecture}.block_count")
    if not isinstance(count, int):
        raise InspectorError(f"{model} has no {architecture}.block_count: cannot bisect its offload count")
    return count


def run_bisect(base: LlamaRunConfig, layers: str, selection: Selection, out_dir: Path, tolerance: Tolerance, *,
               auto_loopback: bool = True, overwrite: bool = False,
               progress: Callable[[str], None] = lambda _m: None) -> BisectResult:
    """Binary-search the first count in LOW+1..HIGH whose logits diverge from LOW's; then compare that pair fully."""
    low, high = parse_range(layers, _block_count(base.model))
    base.validate()
    inputs = recorded_inputs(asdict(base))
    refuse_inputs(out_dir / SUMMARY_NAME, inputs)  # each dump is checked as it is opened
    out_dir.mkdir(parents=True, exist_ok=True)
    with offload_endpoints(base, True, auto_loopback, progress) as endpoints:
        def capture(count: int, chosen: Selection, stem: str) -> Path:
            dump = out_dir / f"{stem}-ngl{count}.h5"
            capture_llama(replace(base, n_gpu_layers=count, rpc=endpoints if count else []), chosen, dump,
                          overwrite=overwrite)
            return dump

        progress(f"reference: -ngl {low}, logits only")
        reference = capture(low, LOGITS, "logits")
        probes: list[Probe] = []
        good, bad = low, high + 1  # bad = high + 1: no count diverged (yet)
        while bad - good > 1:
            middle = (good + bad) // 2
            dump = capture(middle, LOGITS, "logits")
            comparison = compare_dumps(reference, dump, tolerance)
            if not comparison.rows:
                raise InspectorError("the logit-only captures hold no result_output: bisection compares the "
                                     "logits a llama.cpp model names result_output")
            diverged = not comparison.passed
            finite = [row.metrics.nmse for row in comparison.rows
                      if row.metrics is not None and math.isfinite(row.metrics.nmse)]
            worst = max(finite, default=None)
            probes.append(Probe(middle, diverged, worst, dump))
            progress(f"-ngl {middle}: {'diverged' if diverged else 'within tolerance'}")
            good, bad = (good, middle) if diverged else (middle, bad)
        boundary = bad if bad <= high else None
        result = BisectResult(low, high, boundary, probes, 1 + len(probes), out_dir / SUMMARY_NAME, rpc=endpoints)
        if boundary is not None:
            progress(f"boundary at -ngl {boundary}: capturing -ngl {boundary - 1} and {boundary} fully")
            pair = (capture(boundary - 1, selection, "full"), capture(boundary, selection, "full"))
            result.pair = pair
            result.comparison = compare_dumps(pair[0], pair[1], tolerance)
    write_text(result.summary_path, json.dumps(summary(result), indent=1), inputs=inputs)
    return result


def summary(result: BisectResult) -> dict[str, Any]:
    from inspector.compare.report import origin_json

    comparison = result.comparison
    first = comparison.first_divergence if comparison is not None else None
    return {
        "range": [result.low, result.high], "boundary": result.boundary, "logit_captures": result.logit_captures,
        "probes": [{"n_gpu_layers": p.n_gpu_layers, "diverged": p.diverged, "nmse": p.nmse, "dump": str(p.dump)}
                   for p in result.probes],
        "pair": [str(path) for path in result.pair] if result.pair else None,
        "origins": [origin_json(o) for o in comparison.origins] if comparison is not None else [],
        "first_divergence": comparison.rows[first].name if first is not None else None,
        "rpc": result.rpc,
    }
