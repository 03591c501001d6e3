"""Comparison metrics against hand-written numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inspector.compare.metrics import compare_arrays
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
