"""Comparison metrics against hand-written numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inspector.compare.metrics import CHUNK_ELEMENTS, compare_arrays
from inspector.compare.tolerance import PRESETS, preset
from inspector.compare.verdict import DIVERGED, IDENTICAL, WITHIN, judge
from inspector.dump.format import digest_of


def test_identical_arrays():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    metrics = compare_arrays(a, a.copy())
    assert metrics.identical and metrics.max_abs_diff == 0 and metrics.nmse == 0 and metrics.cosine == 1
    assert digest_of(a) == digest_of(a.copy())
    changed = a.copy()
    changed[1, 2] = np.nextafter(changed[1, 2], np.float32(100))
    assert digest_of(changed) != digest_of(a)


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = a + rng.standard_normal((5, 7)).astype(np.float32) * 1e-3
    metrics = compare_arrays(a, b)
    d = a.astype(np.float64) - b
    assert metrics.nmse == pytest.approx(np.sum(d**2) / np.sum(a.astype(np.float64) ** 2))
    assert metrics.rmse == pytest.approx(math.sqrt(np.mean(d**2)))
    assert metrics.mean_abs_diff == pytest.approx(np.mean(np.abs(d)))
    cosine = np.dot(a.ravel().astype(np.float64), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))
    assert metrics.cosine == pytest.approx(cosine)
    row, col = np.unravel_index(np.argmax(np.abs(d)), d.shape)
    assert metrics.max_abs_index == (col, row)  # ggml ne order: fastest dimension first
    assert metrics.max_abs_diff == pytest.approx(np.abs(d).max())
    assert not metrics.identical


def test_nan_in_one_run_is_a_nonfinite_mismatch():
    a = np.ones(4, np.float32)
    b = a.copy()
    b[2] = np.nan
    metrics = compare_arrays(a, b)
    assert metrics.nonfinite_mismatch and metrics.nan_b == 1 and metrics.nan_a == 0
    assert judge(metrics, preset("quant")) == DIVERGED
    same_nan = compare_arrays(b, b.copy())
    assert not same_nan.nonfinite_mismatch and same_nan.identical


def test_presets_judge_by_nmse():
    a = np.linspace(1, 2, 100).astype(np.float32)
    small = compare_arrays(a, a * np.float32(1 + 1e-5))
    assert small.nmse < 1e-7
    assert judge(small, PRESETS["f32"]) == WITHIN
    assert judge(small, PRESETS["exact"]) == DIVERGED
    large = compare_arrays(a, a * np.float32(1.05))  # NMSE 2.5e-3
    assert judge(large, PRESETS["f16"]) == DIVERGED
    assert judge(large, PRESETS["quant"]) == WITHIN
    assert judge(compare_arrays(a, a.copy()), PRESETS["exact"]) == IDENTICAL


def test_atol_rtol_override():
    a = np.zeros(3, np.float32)
    b = np.array([0, 0, 0.5], np.float32)
    tolerance = preset("f32").with_overrides(nmse=math.inf, atol=0.1, rtol=None)
    assert judge(compare_arrays(a, b, tolerance.atol, tolerance.rtol), tolerance) == DIVERGED
    loose = preset("f32").with_overrides(nmse=math.inf, atol=1.0, rtol=None)
    assert judge(compare_arrays(a, b, loose.atol, loose.rtol), loose) == WITHIN


def test_shapes_must_agree():
    with pytest.raises(ValueError):
        compare_arrays(np.zeros(3), np.zeros(4))


def test_a_nan_the_statistics_did_not_announce_is_still_found():
    """all_finite is a promise from the index; data that breaks it is measured with masks."""
    a = np.ones(1000, np.float32)
    b = a.copy()
    b[7] = np.nan
    metrics = compare_arrays(a, b, all_finite=True)
    assert metrics.nonfinite_mismatch and metrics.nan_b == 1 and metrics.nan_a == 0


def test_a_difference_beyond_float32_is_measured_in_float64():
    a = np.array([3e38, 1.0], np.float32)
    b = np.array([-3e38, 1.0], np.float32)
    metrics = compare_arrays(a, b, all_finite=True)
    assert np.isfinite(metrics.max_abs_diff) and metrics.max_abs_diff == pytest.approx(6e38, rel=1e-6)


def _reference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The metrics in plain float64 numpy over the positions finite in both runs: what compare_arrays must give."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    d = x - y
    return {"max_abs_diff": float(np.abs(d).max()), "mean_abs_diff": float(np.mean(np.abs(d))),
            "rmse": math.sqrt(np.mean(d * d)), "nmse": float(np.sum(d * d) / np.sum(x * x)),
            "cosine": float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))}


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_large_offsets_keep_float64_accuracy(dtype):
    """Values near 1000 that differ by ~1e-3 of that: 1 - cosine is ~1e-7, which float32 sums cannot resolve.

    Over 200,000 elements float32 accumulation errs by ~1e-7 relative or more, so a cosine, NMSE or
    mean taken from float32 sums misses these bounds; float64 sums (relative error ~n * 1e-16) meet them.
    """
    rng = np.random.default_rng(1)
    a = (1000 + rng.standard_normal(200_003)).astype(dtype)
    b = (a.astype(np.float64) + rng.standard_normal(a.size)).astype(dtype)
    metrics, expected = compare_arrays(a, b, all_finite=True), _reference(a, b)
    assert metrics.cosine == pytest.approx(expected["cosine"], abs=1e-12)
    assert 1e-8 < 1 - expected["cosine"] < 1e-5  # the regime the bound is about
    for key in ("nmse", "rmse", "mean_abs_diff"):
        assert getattr(metrics, key) == pytest.approx(expected[key], rel=1e-11), key
    assert metrics.max_abs_diff == expected["max_abs_diff"]  # exact in float64 at these magnitudes


@pytest.mark.parametrize("all_finite", [False, True])
def test_steps_and_non_finite_values_across_step_boundaries(all_finite):
    """NaN, Inf and the largest difference placed around the boundaries of the accumulator's steps."""
    n = 3 * CHUNK_ELEMENTS + 5
    rng = np.random.default_rng(2)
    a = rng.standard_normal(n).astype(np.float32)
    b = a + rng.standard_normal(n).astype(np.float32) * np.float32(1e-3)
    b[CHUNK_ELEMENTS] = a[CHUNK_ELEMENTS] + 50  # the first value of the second step
    a[CHUNK_ELEMENTS - 1] = b[CHUNK_ELEMENTS - 1] = np.inf  # the same Inf in both: agreement
    a[2 * CHUNK_ELEMENTS] = b[2 * CHUNK_ELEMENTS] = np.nan
    b[n - 1] = np.nan  # in B only, in the last, partial step
    metrics, expected = compare_arrays(a, b, all_finite=all_finite), _reference(a, b)
    for key, value in expected.items():
        assert getattr(metrics, key) == pytest.approx(value, rel=1e-12), key
    assert metrics.max_abs_index == (CHUNK_ELEMENTS,)
    assert (metrics.nan_a, metrics.nan_b, metrics.inf_a, metrics.inf_b) == (1, 2, 1, 1)
    assert metrics.nonfinite_mismatch and not metrics.identical


def test_identity_is_decided_by_bytes_in_every_step():
    """Equal values are not enough: a signed zero or a NaN payload in a late step makes the pair not identical."""
    n = 2 * CHUNK_ELEMENTS + 3
    a = np.linspace(-1, 1, n).astype(np.float32)
    a[7] = 0.0
    assert compare_arrays(a, a.copy()).identical
    signed = a.copy()
    signed[7] = -0.0
    metrics = compare_arrays(a, signed)
    assert not metrics.identical and metrics.max_abs_diff == 0
    a[n - 1] = np.nan
    payload = a.copy()
    payload.view(np.uint32)[n - 1] ^= 1  # another NaN
    assert np.isnan(payload[n - 1]) and not compare_arrays(a, payload).identical
    assert compare_arrays(a, a.copy()).identical
    assert not compare_arrays(a.astype(np.float16), a.astype(np.float32)).identical
