"""Which side is wrong: when runs A and B differ, which of them is closer to a reference run R.

Two ggml runs that disagree (CPU against a GPU, two offload counts, float
against quantized weights) say *where* they part, not which one left the
right path.  A third run that both can be measured against, typically a
float64 transformers capture (``capture-hf``), decides it: every tensor that
differs between A and B (diverged, or within tolerance but not identical)
gets the NMSE of A against R and of B against R, and the closer run.

R is compared with each run exactly as ``compare`` would (``compare_dumps``:
R's evaluations aligned with the run's by what they computed, per token when
they batched otherwise), so R may be batched any way and hold only some of
the tensors.  A row of the A-B comparison may stand for several evaluations
(a split group); its NMSE against R is then the worst of those evaluations'.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspector.compare.rules import Rules
from inspector.compare.runs import Comparison, TensorComparison, compare_dumps
from inspector.compare.tolerance import Tolerance, ToleranceRequest
from inspector.compare.verdict import DIVERGED, WITHIN
from inspector.formatting import number
from inspector.identity import layer_of

A, B, TIE = "A", "B", "tie"
# The statuses whose rows get a verdict: the pairs that differ at all.
DIFFERING = (DIVERGED, WITHIN)


@dataclass(frozen=True)
class Closeness:
    """One tensor's distance to the reference from each run, and the closer run (``tie`` when equal)."""

    nmse_a: float
    nmse_b: float
    closer: str

    def describe(self) -> str:
        """``closer: A (nmse 1e-09 vs 0.0003)``: the closer run's NMSE against R first."""
        if self.closer == TIE:
            return f"closer: tie (nmse {number(self.nmse_a)} both)"
        first, second = (self.nmse_a, self.nmse_b) if self.closer == A else (self.nmse_b, self.nmse_a)
        return f"closer: {self.closer} (nmse {number(first)} vs {number(second)})"

    def to_json(self) -> dict[str, Any]:
        return {"nmse_a": self.nmse_a, "nmse_b": self.nmse_b, "closer": self.closer}


@dataclass
class Finding:
    """What the reference says: per status, how many differing tensors each run is closer for."""

    path: str
    against_a: Comparison
    against_b: Comparison
    # status -> {"A": n, "B": n, "tie": n, "unknown": n}; unknown: R holds no comparable pair.
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        """``reference R.h5: of 12 diverged tensors, A is closer for 12, B for 0``, and the within ones."""
        parts = []
        for status in DIFFERING:
            tally = self.counts.get(status) or {}
            total = sum(tally.values())
            if not total:
                continue
            plural = "s" if total != 1 else ""
            noun = f"diverged tensor{plural}" if status == DIVERGED else \
                f"tensor{plural} within tolerance but not identical"
            text = f"of {total} {noun}, A is closer to R for {tally.get(A, 0)}, B for {tally.get(B, 0)}"
            if tally.get(TIE):
                text += f", {tally[TIE]} tie{'s' if tally[TIE] != 1 else ''}"
            if tally.get("unknown"):
                text += f", {tally['unknown']} not comparable with R"
            parts.append(text)
        return f"reference {self.path}: " + ("; ".join(parts) if parts else "A and B do not differ")

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "counts": self.counts, "summary": self.summary(),
                "passed_a": self.against_a.passed, "passed_b": self.against_b.passed}


def _groups(comparison: Comparison) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
    """Per side, a split group's first evaluation -> every evaluation of the group (what its rows stand for)."""
    splits = comparison.alignment.splits if comparison.alignment is not None else []
    return ({group.evals_a[0]: group.evals_a for group in splits},
            {group.evals_a[0]: group.evals_b for group in splits})


def _nmse_by_evaluation(against: Comparison) -> dict[tuple[int, str, int], float]:
    """(run's evaluation, name, occurrence) -> NMSE against R, for every evaluation a measured row stands for."""
    covered, _ = _groups(against)
    found: dict[tuple[int, str, int], float] = {}
    for row in against.rows:
        if row.metrics is None:
            continue
        for evaluation in covered.get(row.eval_index, (row.eval_index,)):
            found[(evaluation, row.name, row.occurrence)] = row.metrics.nmse
    return found


def _worst(found: dict[tuple[int, str, int], float], evaluations: tuple[int, ...], name: str,
           occurrence: int) -> float | None:
    values = [found[key] for key in ((e, name, occurrence) for e in evaluations) if key in found]
    return max(values) if values else None


def closeness(nmse_a: float, nmse_b: float) -> Closeness:
    return Closeness(nmse_a, nmse_b, TIE if nmse_a == nmse_b else (A if nmse_a < nmse_b else B))


def attach_reference(comparison: Comparison, path_r: str | Path, tolerance: Tolerance | ToleranceRequest,
                     patterns: list[str] | None = None, rules: Rules | None = None) -> Finding:
    """Compare A and B each with R, set ``reference`` on every differing row of ``comparison``, and keep the finding.

    ``tolerance`` and ``rules`` judge the two comparisons with R (their own
    first divergences, for the report); the verdict here needs only NMSE.
    """
    against_a = compare_dumps(comparison.path_a, path_r, tolerance, patterns, rules=rules)
    against_b = compare_dumps(comparison.path_b, path_r, tolerance, patterns, rules=rules)
    from_a, from_b = _nmse_by_evaluation(against_a), _nmse_by_evaluation(against_b)
    groups_a, groups_b = _groups(comparison)
    finding = Finding(str(path_r), against_a, against_b, {status: {} for status in DIFFERING})
    for row in comparison.rows:
        if row.status not in DIFFERING:
            continue
        eval_b = row.eval_index if row.eval_index_b is None else row.eval_index_b
        nmse_a = _worst(from_a, groups_a.get(row.eval_index, (row.eval_index,)), row.name, row.occurrence)
        nmse_b = _worst(from_b, groups_b.get(row.eval_index, (eval_b,)), row.name_b or row.name, row.occurrence)
        row.reference = None if nmse_a is None or nmse_b is None else closeness(nmse_a, nmse_b)
        verdict = row.reference.closer if row.reference is not None else "unknown"
        tally = finding.counts[row.status]
        tally[verdict] = tally.get(verdict, 0) + 1
    comparison.reference = finding
    return finding


@dataclass(frozen=True)
class LayerError:
    """One layer's error in a comparison: the worst NMSE of its layer output over the evaluations, and the limit.

    ``limit`` is the NMSE the tensor's preset or rule allows (None: it sets
    none, such as an exact rule or a cosine-only one).
    """

    layer: int
    name: str
    nmse: float
    limit: float | None
    status: str


def layer_errors(comparison: Comparison, patterns: list[str]) -> list[LayerError]:
    """Error growth layer by layer: per layer output matching ``patterns`` (``l_out-*``), its worst measured row."""
    worst: dict[int, TensorComparison] = {}
    for row in comparison.rows:
        layer = layer_of(row.name)
        if row.metrics is None or layer is None or not any(fnmatch.fnmatchcase(row.name, p) for p in patterns):
            continue
        if layer not in worst or row.metrics.nmse > worst[layer].metrics.nmse:
            worst[layer] = row
    found = []
    for layer, row in sorted(worst.items()):
        limit = row.threshold.nmse if row.threshold is not None else None
        found.append(LayerError(layer, row.name, row.metrics.nmse,
                                limit if limit is not None and math.isfinite(limit) else None, row.status))
    return found
