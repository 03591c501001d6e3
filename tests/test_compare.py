"""compare on real captures: planted divergences are found where they were planted."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import rewrite_tensor, run_capture
from test_cli import assert_one_line_error, cli

from inspector.compare.runs import DIVERGED, IDENTICAL, INCOMPARABLE, MISMATCHED, MISSING, compare_dumps
from inspector.compare.tolerance import preset
from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

PLANTED_LAYER = 2
BASE = TinyLlamaSpec(n_layer=4, seed=11)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two models identical except one attn_q weight in layer PLANTED_LAYER; every tensor captured."""
    folder = tmp_path_factory.mktemp("planted")
    clean = write_tiny_llama(folder / "clean.gguf", BASE)
    perturbed = write_tiny_llama(folder / "perturbed.gguf",
                                 TinyLlamaSpec(n_layer=4, seed=11, perturb=(PLANTED_LAYER, 5, 0.5)))
    run_capture(clean, folder / "a.h5", all_logits=True)
    run_capture(perturbed, folder / "b.h5", all_logits=True)
    return folder / "a.h5", folder / "b.h5"


def test_same_run_twice_is_identical(tmp_path):
    """Two separate captures of one model and prompt (not one file against itself) agree bit for bit."""
    model = write_tiny_llama(tmp_path / "model.gguf", BASE)
    run_capture(model, tmp_path / "first.h5")
    run_capture(model, tmp_path / "second.h5")
    comparison = compare_dumps(tmp_path / "first.h5", tmp_path / "second.h5", preset("exact"))
    assert comparison.passed and comparison.first_divergence is None
    assert len(comparison.rows) > 50
    assert all(row.status == IDENTICAL for row in comparison.rows)


def test_planted_weight_change_is_the_first_divergence(planted):
    a, b = planted
    comparison = compare_dumps(a, b, preset("f32"))
    index = comparison.first_divergence
    first = comparison.rows[index]
    assert (first.name, first.occurrence, first.op_a) == (f"Qcur-{PLANTED_LAYER}", 0, "MUL_MAT")
    assert first.status == DIVERGED
    earlier = comparison.rows[:index]
    assert len(earlier) > 50
    assert all(row.status == IDENTICAL for row in earlier)
    assert not comparison.passed
    # The weight changed row 0, column 5 of W_q: only output channel 0 moves, in ggml ne[0] = 0.
    assert first.metrics.max_abs_index[0] == 0


def test_cli_prints_the_origin_and_the_first_divergence_first_and_exits_1(planted):
    a, b = planted
    result = cli("compare", a, b)
    assert result.returncode == 1
    # The planted weight is read first by Qcur: its origin, and there it already crosses the tolerance.
    assert result.stdout.splitlines()[0].startswith(f"first origin: Qcur-{PLANTED_LAYER} ")
    assert result.stdout.splitlines()[1].startswith(f"first divergence: Qcur-{PLANTED_LAYER} ")
    assert "preceded by" in result.stdout and result.stdout.rstrip().splitlines()[-1].startswith("FAIL")
    document = json.loads(cli("compare", a, b, "--json").stdout)
    assert document["first_divergence"]["name"] == f"Qcur-{PLANTED_LAYER}"
    assert all(p["status"] == "identical" for p in document["first_divergence"]["preceding"])
    assert document["counts"]["diverged"] > 0 and document["passed"] is False
    assert {"nmse", "cosine", "max_abs_index", "rmse", "mean_abs_diff"} <= set(document["tensors"][-1]["metrics"])
    rows = list(csv.DictReader(io.StringIO(cli("compare", a, b, "--csv").stdout)))
    assert len(rows) == len(document["tensors"]) and rows[0]["status"] == "identical"


def test_nan_poisoned_tensor_is_found(planted, tmp_path):
    a, _ = planted
    poisoned = tmp_path / "poisoned.h5"
    shutil.copy(a, poisoned)

    def poison(values):
        values[1, 3] = np.nan
        return values

    rewrite_tensor(poisoned, "ffn_out-1", poison)
    comparison = compare_dumps(a, poisoned, preset("quant"))
    first = comparison.rows[comparison.first_divergence]
    assert first.name == "ffn_out-1" and first.status == DIVERGED
    assert first.metrics.nan_b == 1 and first.metrics.nan_a == 0


def test_different_prompts_give_a_report_not_a_traceback(tiny_f32, tmp_path):
    run_capture(tiny_f32, tmp_path / "short.h5", ("l_out-*",), prompt="short")
    run_capture(tiny_f32, tmp_path / "long.h5", ("l_out-*",), prompt="a much longer prompt")
    # Only BOS was fed alike: that row is compared, and agrees; nothing past the difference is compared.
    stopped = compare_dumps(tmp_path / "short.h5", tmp_path / "long.h5", preset("f32"))
    assert stopped.alignment.inputs_differ.position == 1 and not stopped.passed
    # The last layer keeps the output rows only, and the row each run output is past the difference.
    assert {row.status for row in stopped.rows} == {IDENTICAL, INCOMPARABLE}
    assert {(row.status, row.note) for row in stopped.rows if row.name == "l_out-0"} == \
        {(IDENTICAL, "compared per token: 1 token rows")}
    comparison = compare_dumps(tmp_path / "short.h5", tmp_path / "long.h5", preset("f32"), past_inputs=True)
    # Per-token tensors differ in shape; the last layer keeps only the last token's row, so it compares.
    assert {row.status for row in comparison.rows} == {MISMATCHED, DIVERGED}
    assert all("shape" in row.note for row in comparison.rows if row.status == MISMATCHED)
    assert comparison.rows[0].status == MISMATCHED
    result = cli("compare", tmp_path / "short.h5", tmp_path / "long.h5")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "runs differ in: prompt" in result.stdout


def test_tensors_in_one_run_only_are_missing_and_map_pairs_names(tmp_path):
    def write(path: Path, names: list[str]) -> None:
        with DumpWriter(path, {}, {}) as writer:
            writer.begin_evaluation("prompt", {})
            for node, name in enumerate(names):
                writer.write(TensorRecord(name, 0, node, 0, "ADD", "f32", (3, 1, 1, 1), (4, 12, 12, 12), "CPU",
                                          "native"), np.arange(3, dtype=np.float32))

    write(tmp_path / "a.h5", ["x", "inp_raw"])
    # B read x through the scheduler's copy on another backend: the same tensor.
    write(tmp_path / "b.h5", ["RPC0#x#0", "inp_raw_from_file"])
    comparison = compare_dumps(tmp_path / "a.h5", tmp_path / "b.h5", preset("f32"))
    statuses = {row.name: (row.status, row.present_in) for row in comparison.rows}
    assert statuses == {"x": (IDENTICAL, "both"), "inp_raw": (MISSING, "a"), "inp_raw_from_file": (MISSING, "b")}
    mapped = compare_dumps(tmp_path / "a.h5", tmp_path / "b.h5", preset("f32"),
                           name_map={"inp_raw": "inp_raw_from_file"})
    row = next(r for r in mapped.rows if r.name == "inp_raw")
    assert row.status == IDENTICAL and row.name_b == "inp_raw_from_file"
    result = cli("compare", tmp_path / "a.h5", tmp_path / "b.h5", "--map", "inp_raw=inp_raw_from_file", "--all")
    assert result.returncode == 0, result.stdout  # every tensor paired, the copy with its original
    assert "inp_raw = inp_raw_from_file" in result.stdout


def test_compare_bad_inputs(planted, tiny_f32, tmp_path):
    a, _ = planted
    for args, fragment in (((a, tiny_f32), "not a ggml-inspector dump"),
                           ((a, tmp_path / "missing.h5"), "no such file"),
                           ((a, a, "--map", "nonsense"), "--map takes NAME_A=NAME_B")):
        result = cli("compare", *args)
        assert result.returncode == 2
        assert_one_line_error(result, fragment)
