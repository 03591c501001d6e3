"""Numeric comparison of two tensors: pure functions over numpy arrays, no I/O.

Kept apart from alignment (``compare``) and presentation (the CLI), as
Polygraphy keeps its comparator's metrics apart.
"""

from __future__ import annotations

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


def identical_metrics(n_nan: int, n_inf: int) -> PairMetrics:
    """The metrics of two bit-identical tensors, known without reading them (equal digests)."""
    return PairMetrics(identical=True, max_abs_diff=0.0, max_abs_index=(), mean_abs_diff=0.0, rmse=0.0, nmse=0.0,
                       cosine=1.0, allclose=True, nan_a=n_nan, nan_b=n_nan, inf_a=n_inf, inf_b=n_inf,
                       nonfinite_mismatch=False)


# Values measured per step: a step's dozen numpy calls are small against 64K values, and its three
# float64 buffers (1.5 MB) stay in cache; steps of 32K and 128K measured no faster.
CHUNK_ELEMENTS = 1 << 16


def _same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two pieces hold the same bytes (NaN payloads, signed zeros): what equal values leave open."""
    if x.dtype != y.dtype:
        return False
    return bool(np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8)))


class PairAccumulator:
    """The metrics of ``b`` against reference ``a``, fed piece by piece in C order.

    A caller that streams two tensors from their files (``compare``) holds
    one pair of pieces at a time; :func:`compare_arrays` feeds whole arrays.
    Each step of ``CHUNK_ELEMENTS`` is widened into float64 buffers kept
    across steps (every float32 and float16 value and the product of two is
    exact there, a difference is rounded at most once, nothing overflows),
    and the sums are BLAS dot products of those buffers: float64
    throughout, one pass each.  The bytes of a step are compared only when
    its values all agree, so two runs that differ pay nothing for the
    bit-identity check.  With
    ``all_finite`` (both runs' statistics counted no NaN or Inf) the finite
    masks are skipped unless a step's sums come out non-finite, when that
    step is measured again with them.
    """

    def __init__(self, atol: float = 0.0, rtol: float = 0.0, all_finite: bool = False) -> None:
        self.atol, self.rtol, self.all_finite = atol, rtol, all_finite
        self.squared = self.absolute = self.reference = self.other = self.dot = 0.0
        self.count = self.nan_a = self.nan_b = self.inf_a = self.inf_b = 0
        self.max_abs, self.max_index = -1.0, 0
        self.nonfinite_mismatch = False
        self.close = True
        self.identical = True
        self.position = 0
        self._buffers = np.empty((3, 0))

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """The next ``len(a)`` values of both tensors (any shape, equal sizes), in C order."""
        flat_a, flat_b = a.reshape(-1), b.reshape(-1)
        if flat_a.size != flat_b.size:
            raise ValueError(f"pieces differ in size: {flat_a.size} vs {flat_b.size}")
        if a.dtype != b.dtype:
            self.identical = False
        if self._buffers.shape[1] < min(flat_a.size, CHUNK_ELEMENTS):
            self._buffers = np.empty((3, min(flat_a.size, CHUNK_ELEMENTS)))
        for start in range(0, flat_a.size, CHUNK_ELEMENTS):
            x, y = flat_a[start:start + CHUNK_ELEMENTS], flat_b[start:start + CHUNK_ELEMENTS]
            if not self._add(x, y, masked=not self.all_finite):
                self._add(x, y, masked=True)
            self.position += x.size

    def _add(self, raw_x: np.ndarray, raw_y: np.ndarray, masked: bool) -> bool:
        """Accumulate one step; False (nothing kept) when unmasked sums came out non-finite."""
        count = raw_x.size
        x, y, difference = (buffer[:count] for buffer in self._buffers)
        np.copyto(x, raw_x, casting="unsafe")  # int64 beyond 2**53 rounds, as any float64 measure would
        np.copyto(y, raw_y, casting="unsafe")
        nan_a = nan_b = inf_a = inf_b = 0
        mismatch = False
        if masked:
            x_nan, y_nan, x_inf, y_inf = np.isnan(x), np.isnan(y), np.isinf(x), np.isinf(y)
            nan_a, nan_b = int(x_nan.sum()), int(y_nan.sum())
            inf_a, inf_b = int(x_inf.sum()), int(y_inf.sum())
            finite = ~(x_nan | y_nan | x_inf | y_inf)
            if not finite.all():
                # The same non-finite value in the same place counts as agreement (inf == inf, nan vs nan).
                same_nonfinite = (x_nan & y_nan) | (x_inf & y_inf & (x == y))
                mismatch = bool(np.any(~finite & ~same_nonfinite))
                x[~finite] = 0
                y[~finite] = 0
                count = int(finite.sum())
        with np.errstate(invalid="ignore", over="ignore"):  # unmasked non-finite values: detected below
            np.subtract(x, y, out=difference)
            np.abs(difference, out=difference)
            absolute = float(difference.sum())
            squared, reference = float(np.dot(difference, difference)), float(np.dot(x, x))
            other, dot = float(np.dot(y, y)), float(np.dot(x, y))
        if not masked and not all(map(math.isfinite, (squared, reference, other, absolute))):
            return False  # the statistics promised finite values and the data disagrees: measure it properly
        if difference.size:
            local = int(np.argmax(difference))
            largest = float(difference[local])
            if largest > self.max_abs:
                self.max_abs, self.max_index = largest, self.position + local
            if self.identical:
                self.identical = largest == 0 and not mismatch and _same_bytes(raw_x, raw_y)
        self.absolute += absolute
        self.squared += squared
        self.reference += reference
        self.other += other
        self.dot += dot
        self.count += count
        self.nan_a, self.nan_b = self.nan_a + nan_a, self.nan_b + nan_b
        self.inf_a, self.inf_b = self.inf_a + inf_a, self.inf_b + inf_b
        self.nonfinite_mismatch = self.nonfinite_mismatch or mismatch
        if self.atol or self.rtol:
            self.close = self.close and bool(np.all(difference <= self.atol + self.rtol * np.abs(y)))
        return True

    def result(self, shape: tuple[int, ...]) -> PairMetrics:
        """The metrics, ``max_abs_index`` placed in ``shape`` (numpy order) and given in ggml order."""
        if self.count:
            index = tuple(int(i) for i in reversed(np.unravel_index(self.max_index, shape))) if shape else ()
            nmse = (self.squared / self.reference if self.reference > 0
                    else (0.0 if self.squared == 0 else math.inf))
            norms = math.sqrt(self.reference) * math.sqrt(self.other)
            cosine = self.dot / norms if norms > 0 else (1.0 if self.squared == 0 else 0.0)
            max_abs, mean_abs, rmse = self.max_abs, self.absolute / self.count, math.sqrt(self.squared / self.count)
        else:
            max_abs, index, mean_abs, rmse, nmse, cosine = 0.0, (), 0.0, 0.0, 0.0, 1.0
        return PairMetrics(
            identical=self.identical, max_abs_diff=max_abs, max_abs_index=index, mean_abs_diff=mean_abs,
            rmse=rmse, nmse=nmse, cosine=cosine, allclose=self.close and not self.nonfinite_mismatch,
            nan_a=self.nan_a, nan_b=self.nan_b, inf_a=self.inf_a, inf_b=self.inf_b,
            nonfinite_mismatch=self.nonfinite_mismatch,
        )


def compare_arrays(a: np.ndarray, b: np.ndarray, atol: float = 0.0, rtol: float = 0.0,
                   all_finite: bool = False) -> PairMetrics:
    """Metrics of ``b`` against reference ``a`` (same shape required), over pieces of ``CHUNK_ELEMENTS``.

    The memory on top of the two arrays stays a few MB whatever their size
    (:class:`PairAccumulator` says how it is computed).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    accumulator = PairAccumulator(atol, rtol, all_finite)
    accumulator.add(a, b)
    return accumulator.result(a.shape)
