"""Storage options of a capture: --stats-only, --compression, digests, and kill -9 at any moment."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import PROMPT, run_capture
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.compare.runs import DIVERGED, IDENTICAL, compare_dumps
from inspector.compare.tolerance import preset
from inspector.dump.format import Compression, digest_of
from inspector.errors import InspectorError
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama


@pytest.fixture(scope="module")
def full_and_stats(tiny_f32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("storage")
    full = run_capture(tiny_f32, folder / "full.h5", n_predict=2)
    stats = folder / "stats.h5"
    result = cli("capture", tiny_f32, "-p", PROMPT, "--threads", "1", "--ctx", "64", "--flash-attn", "off",
                 "--n-predict", "2", "--stats-only", "-o", stats)
    assert result.returncode == 0, result.stderr
    return full.path, stats


def test_stats_only_keeps_statistics_digests_and_first_values(full_and_stats):
    full, stats = full_and_stats
    with open_dump(full) as a, open_dump(stats) as b:
        assert [(e.key, e.shape) for e in a] == [(e.key, e.shape) for e in b]
        for entry_a, entry_b in zip(a, b, strict=True):
            values = a.read(entry_a)
            assert entry_b.stored == "stats" and entry_b.digest == digest_of(values)
            np.testing.assert_array_equal(b.sample(entry_b), values.reshape(-1)[:16])
            # The command line's statistics are computed in C, the Python API's by numpy: both are float64
            # passes over the same values, so they agree to rounding, and with numpy's own reductions.
            wide = values.astype(np.float64).reshape(-1)
            finite = wide[np.isfinite(wide)]
            expected = (finite.min(), finite.max(), finite.mean(), finite.std()) if finite.size else (np.nan,) * 4
            for stats in (entry_a.stats, entry_b.stats):
                got = (stats.min, stats.max, stats.mean, stats.std)
                scale = float(np.abs(finite).max()) if finite.size else 0.0  # a mean near 0 is exact only to this
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * scale)
                assert (stats.n_nan, stats.n_inf) == (int(np.isnan(wide).sum()), int(np.isinf(wide).sum()))
        with pytest.raises(InspectorError, match="statistics only"):
            b.read(b.entries()[0])
        assert sum(e.nbytes for e in b) < sum(e.nbytes for e in a) / 20


def test_stats_only_dumps_compare_by_digest_and_name_the_first_difference(full_and_stats, tmp_path):
    _, stats = full_and_stats
    model = write_tiny_llama(tmp_path / "planted.gguf", TinyLlamaSpec(dtype="f32", seed=1, perturb=(1, 5, 0.5)))
    planted = tmp_path / "planted.h5"
    result = cli("capture", model, "-p", PROMPT, "--threads", "1", "--ctx", "64", "--flash-attn", "off",
                 "--n-predict", "2", "--stats-only", "-o", planted)
    assert result.returncode == 0, result.stderr
    comparison = compare_dumps(stats, planted, preset("f32"))
    first = comparison.rows[comparison.first_divergence]
    assert first.name == "Qcur-1" and first.status == DIVERGED and "digests differ" in first.note
    assert all(row.status == IDENTICAL for row in comparison.rows[:comparison.first_divergence])
    same = compare_dumps(stats, stats, preset("exact"))
    assert same.passed


def test_identical_tensors_are_decided_by_digest_without_reading_data(full_and_stats, tmp_path):
    """Zero B's data behind its digests' back: compare still says identical, so it never read it."""
    import h5py

    full, _ = full_and_stats
    blanked = tmp_path / "blanked.h5"
    blanked.write_bytes(full.read_bytes())
    with h5py.File(blanked, "r+") as handle:
        handle["tensors"][...] = 0
    with open_dump(blanked) as dump:
        assert not dump.read("l_out-0").any()
    comparison = compare_dumps(full, blanked, preset("exact"))
    assert comparison.passed and comparison.counts()["identical"] == len(comparison.rows)


@pytest.mark.parametrize("compression", ["lzf", "gzip", "gzip:9"])
def test_compressed_dumps_hold_the_same_tensors(full_and_stats, tiny_f32, tmp_path, compression):
    full, _ = full_and_stats
    out = tmp_path / f"{compression.replace(':', '-')}.h5"
    result = cli("capture", tiny_f32, "-p", PROMPT, "--threads", "1", "--ctx", "64", "--flash-attn", "off",
                 "--n-predict", "2", "--compression", compression, "-o", out)
    assert result.returncode == 0, result.stderr
    with open_dump(full) as a, open_dump(out) as b:
        assert b.config["storage"]["compression"]["name"] == compression.split(":")[0]
        for entry_a, entry_b in zip(a, b, strict=True):
            np.testing.assert_array_equal(a.read(entry_a), b.read(entry_b))


def test_bad_compression_is_one_line(tiny_f32, tmp_path):
    assert_one_line_error(cli("capture", tiny_f32, "-p", "x", "--compression", "zstd", "-o", tmp_path / "x.h5"),
                          "--compression takes none, lzf or gzip")
    with pytest.raises(InspectorError):
        Compression.parse("gzip:12")


def test_kill_9_at_random_moments_leaves_dumps_that_open(tmp_path):
    """SIGKILL at random points of a capture-all: every file opens and every listed tensor is whole."""
    model = write_tiny_llama(tmp_path / "wide.gguf", TinyLlamaSpec(n_embd=256, n_ff=512, n_layer=4, seed=3))
    rng = random.Random(1234)
    kept = []
    for attempt in range(8):
        out = tmp_path / f"killed-{attempt}.h5"
        # 200 prompt tokens in ubatches of 8, then 100 generated: several seconds of capture-all.
        process = subprocess.Popen(
            [sys.executable, "-m", "inspector", "capture", str(model), "-p", "x" * 200, "--ubatch", "8",
             "--n-predict", "100", "--ctx", "512", "--threads", "1", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        assert process.poll() is None, f"attempt {attempt}: the capture ended before the kill: {process.stderr.read()}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        with open_dump(out) as dump:
            assert not dump.complete
            for entry in dump:
                assert digest_of(dump.read(entry)) == entry.digest
            kept.append(len(dump))
    assert len(kept) == 8 and max(kept) > 100  # killed mid-capture, not only before the first tensor
