"""Numeric comparison of two tensors: pure functions over numpy arrays, no I/O.

Kept apart from alignment (``compare``) and presentation (the CLI), as
Polygraphy keeps its comparator's metrics apart.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairMetrics:
    """How two same-shaped tensors differ.

    ``max_abs_index`` is in ggml ``ne`` order (fastest dimension first), the
    coordinates a ggml developer reads, not numpy's.  ``nmse`` is
    ``sum((a-b)^2) / sum(a^2)`` with ``a`` the reference run, the metric of
    ggml's test-backend-ops.  Non-finite elements are excluded from the
    distances and counted instead; a position that is NaN in one run and not
    in the other makes ``nan_mismatch`` true.
    """

    identical: bool
    max_abs_diff: float
    max_abs_index: tuple[int, ...]
    mean_abs_diff: float
    rmse: float
    nmse: float
    cosine: float
    allclose: bool
    nan_a: int
    nan_b: int
    inf_a: int
    inf_b: int
    nonfinite_mismatch: bool


def byte_digest(array: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order: equal digests mean bit-identical tensors."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype:
        return False
    a_bytes = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    b_bytes = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    return bool(np.array_equal(a_bytes, b_bytes))


def compare_arrays(a: np.ndarray, b: np.ndarray, atol: float = 0.0, rtol: float = 0.0) -> PairMetrics:
    """Metrics of ``b`` against reference ``a`` (same shape required)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    identical = _bit_identical(a, b)
    a64 = a.astype(np.float64, copy=False)
    b64 = b.astype(np.float64, copy=False)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    inf_a, inf_b = np.isinf(a64), np.isinf(b64)
    finite = ~(nan_a | nan_b | inf_a | inf_b)
    # Same non-finite value in the same place counts as agreement (inf == inf, nan vs nan).
    same_nonfinite = (nan_a & nan_b) | (inf_a & inf_b & (a64 == b64))
    nonfinite_mismatch = bool(np.any(~finite & ~same_nonfinite))
    diff = np.subtract(a64, b64, out=np.zeros(a64.shape), where=finite)
    abs_diff = np.abs(diff)
    count = int(finite.sum())
    if count:
        flat_index = int(np.argmax(abs_diff))
        max_abs = float(abs_diff.reshape(-1)[flat_index])
        index = tuple(int(i) for i in reversed(np.unravel_index(flat_index, a.shape))) if a.ndim else ()
        mean_abs = float(abs_diff.sum() / count)
        squared = float(np.square(diff).sum())
        rmse = math.sqrt(squared / count)
        a_finite = np.where(finite, a64, 0.0)
        b_finite = np.where(finite, b64, 0.0)
        reference = float(np.square(a_finite).sum())
        nmse = squared / reference if reference > 0 else (0.0 if squared == 0 else math.inf)
        norms = math.sqrt(reference) * math.sqrt(float(np.square(b_finite).sum()))
        cosine = float(np.dot(a_finite.reshape(-1), b_finite.reshape(-1)) / norms) if norms > 0 else \
            (1.0 if squared == 0 else 0.0)
        close = bool(np.all(abs_diff <= atol + rtol * np.abs(np.where(finite, b64, 0.0))))
    else:
        max_abs, index, mean_abs, rmse, nmse, cosine, close = 0.0, (), 0.0, 0.0, 0.0, 1.0, True
    return PairMetrics(
        identical=bool(identical), max_abs_diff=max_abs, max_abs_index=index, mean_abs_diff=mean_abs,
        rmse=rmse, nmse=nmse, cosine=cosine, allclose=close and not nonfinite_mismatch,
        nan_a=int(nan_a.sum()), nan_b=int(nan_b.sum()), inf_a=int(inf_a.sum()), inf_b=int(inf_b.sum()),
        nonfinite_mismatch=nonfinite_mismatch,
    )
