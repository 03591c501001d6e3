"""The dump writer's statistics in C (inspector/native/tensor_stats.c) against float64 numpy, value for value."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from inspector.native.build import library_path
from inspector.native.tensor_stats import NativeStats


@pytest.fixture(scope="module")
def native() -> NativeStats:
    return NativeStats(ctypes.CDLL(str(library_path())))


def expected(values: np.ndarray) -> tuple[tuple[float, float, float, float], int, int]:
    wide = values.astype(np.float64).reshape(-1)
    finite = wide[np.isfinite(wide)]
    moments = (finite.min(), finite.max(), finite.mean(), finite.std()) if finite.size else (np.nan,) * 4
    return moments, int(np.isnan(wide).sum()), int(np.isinf(wide).sum())


def check(native: NativeStats, values: np.ndarray) -> None:
    stats = native(values)
    moments, n_nan, n_inf = expected(values)
    assert (stats.n_nan, stats.n_inf) == (n_nan, n_inf)
    if np.isnan(moments[0]):
        assert all(np.isnan([stats.min, stats.max, stats.mean, stats.std]))
        return
    assert (stats.min, stats.max) == moments[:2]  # exact: the extremes are values
    scale = max(abs(moments[0]), abs(moments[1]))
    assert stats.mean == pytest.approx(moments[2], rel=1e-13, abs=1e-13 * scale)
    assert stats.std == pytest.approx(moments[3], rel=1e-9, abs=1e-13 * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32])
@pytest.mark.parametrize("size", [1, 3, 511, 512, 513, 768, 4099, 100_003])
def test_statistics_match_float64_numpy(native, dtype, size):
    """Every chunking edge (the C side widens 512 values at a time, in runs of 4), with an offset that cancels in a
    naive sum of squares."""
    rng = np.random.default_rng(size)
    if dtype == np.int32:
        values = rng.integers(-(2**31), 2**31 - 1, size, dtype=np.int32)
    else:
        values = (1000.0 + rng.standard_normal(size)).astype(dtype)
    check(native, values)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("where", [0, 1, 511, 512, 4098])
def test_nan_and_infinities_are_counted_and_left_out(native, dtype, where):
    values = np.random.default_rng(where).standard_normal(4099).astype(dtype)
    values[where] = np.nan
    values[(where + 7) % values.size] = np.inf
    values[(where + 600) % values.size] = -np.inf
    check(native, values)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_no_finite_value(native, dtype):
    check(native, np.array([np.nan, np.inf, -np.inf, np.nan], dtype=dtype))


def test_every_float16_bit_pattern(native):
    """The C side decodes half precision itself: subnormals, signed zeros, infinities and NaN payloads included."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    check(native, every)
    for value in every[::257]:
        check(native, np.array([value, value], dtype=np.float16))


def test_every_float16_bit_pattern_through_the_bit_moving_decoder(native):
    """Where the CPU has F16C, runs of four values are converted by it: three values at a time never are, so each
    pattern also goes through the decoder that machines without it use (its min, max and mean in its triple)."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    triples = np.append(every, every[:2]).reshape(-1, 3)
    wide = triples.astype(np.float64)
    finite = np.isfinite(wide)
    counts = finite.sum(axis=1)
    low = np.where(finite, wide, np.inf).min(axis=1)
    high = np.where(finite, wide, -np.inf).max(axis=1)
    mean = np.where(finite, wide, 0).sum(axis=1) / np.maximum(counts, 1)
    n_nan, n_inf = np.isnan(wide).sum(axis=1), np.isinf(wide).sum(axis=1)
    for index, triple in enumerate(triples):
        stats = native(triple)
        assert (stats.n_nan, stats.n_inf) == (n_nan[index], n_inf[index]), triple.view(np.uint16)
        if counts[index]:
            assert (stats.min, stats.max) == (low[index], high[index]), triple.view(np.uint16)
            assert stats.mean == pytest.approx(mean[index], rel=1e-15, abs=1e-300), triple.view(np.uint16)


def test_other_layouts_and_types_fall_back_to_numpy(native):
    """A strided view or a type the C side does not take gives the same statistics through numpy."""
    values = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    check(native, values.T)
    check(native, values.astype(np.float64))
    check(native, values.astype(np.int64))
