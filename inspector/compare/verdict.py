"""The pass/fail policy: one verdict for compare, sweep, plots and the report.

A tensor pair gets a status; a comparison passes when no pair diverged, none
is mismatched and nothing is missing from either run.  A pair that cannot be
compared (its contents depend on how the runs batched their tokens) is
*incomparable*, with the reason: it neither passes nor fails.  The *first divergence*
is the first pair, in execution order, whose values (or layout) differ
beyond the tolerance; a tensor missing from one run fails the comparison but
is not a divergence, because it says nothing about the values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from inspector.compare.metrics import PairMetrics
from inspector.compare.tolerance import Tolerance

IDENTICAL = "identical"
WITHIN = "within"
DIVERGED = "diverged"
MISSING = "missing"
MISMATCHED = "mismatched"
INCOMPARABLE = "incomparable"
STATUSES = (IDENTICAL, WITHIN, DIVERGED, MISSING, MISMATCHED, INCOMPARABLE)
# Statuses that mark a divergence of values or layout.
DIVERGING = (DIVERGED, MISMATCHED)
# Statuses that fail a comparison.
FAILING = (DIVERGED, MISMATCHED, MISSING)


class HasStatus(Protocol):
    status: str


def judge(metrics: PairMetrics, tolerance: Tolerance) -> str:
    """The status of a pair with the same shape and op, from its metrics."""
    if metrics.identical:
        return IDENTICAL
    if tolerance.exact or metrics.nonfinite_mismatch:
        return DIVERGED
    if tolerance.nmse is not None and metrics.nmse > tolerance.nmse:
        return DIVERGED
    if (tolerance.atol or tolerance.rtol) and not metrics.allclose:
        return DIVERGED
    if tolerance.max_abs is not None and metrics.max_abs_diff > tolerance.max_abs:
        return DIVERGED
    # A NaN cosine (never produced for finite data) fails rather than passes.
    if tolerance.min_cosine is not None and not metrics.cosine >= tolerance.min_cosine:
        return DIVERGED
    return WITHIN


def first_divergence(rows: Sequence[HasStatus]) -> int | None:
    """Index of the first diverged or mismatched row (rows are in execution order)."""
    return next((i for i, row in enumerate(rows) if row.status in DIVERGING), None)


def count(rows: Iterable[HasStatus]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row.status] += 1
    return counts


def passed(rows: Iterable[HasStatus]) -> bool:
    """True when nothing diverged, nothing is mismatched and nothing is missing."""
    return not any(row.status in FAILING for row in rows)
