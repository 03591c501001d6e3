"""Runs that split the same tokens into other batches compare per token.

A prompt decoded in one ubatch (``-ub 512``) and in ubatches of 3 computes
the same rows: alignment pairs them row by row and compare slices every
tensor by position.  The expectations come from outside the code under
test: the model's tokenizer (how many rows, which position differs), the
ubatch arithmetic (which of B's evaluations holds a position), and a value
planted in one run at a known row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import rewrite_tensor
from test_cli import cli
from test_evaluation_inputs import tokenizer_ids

PROMPT = "Hi, ggml! How are you today?"
RUN = ("-t", "1", "-c", "64", "-ngl", "0", "-n", "2")


def capture(model: Path, out: Path, ubatch: int, *extra: str, prompt: str = PROMPT) -> Path:
    result = cli("capture", model, "-p", prompt, *RUN, "-ub", str(ubatch), "-b", str(ubatch), *extra, "-o", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def split_runs(tiny_f32, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("splits")
    return capture(tiny_f32, folder / "ub512.h5", 512), capture(tiny_f32, folder / "ub3.h5", 3)


def compare_json(a: Path, b: Path, *extra: str) -> tuple[int, dict]:
    result = cli("compare", a, b, "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_one_ubatch_against_ubatches_of_3_compares_every_token_row_and_passes(tiny_f32, split_runs):
    one, three = split_runs
    n_prompt = len(tokenizer_ids(tiny_f32, PROMPT))
    code, document = compare_json(one, three)
    assert code == 0 and document["passed"], [t for t in document["tensors"] if t["status"] not in
                                              ("identical", "within", "incomparable")]
    alignment = document["alignment"]
    # B's prompt evaluations: ceil(n_prompt / 3) of them, all in one group with A's single prompt evaluation.
    assert alignment["splits"] == [{"evals_a": [0], "evals_b": list(range(-(-n_prompt // 3))), "rows": n_prompt,
                                    "kind": "batches",
                                    "positions": [0, n_prompt - 1]}]
    assert alignment["pairs"] == [{"a": 1, "b": -(-n_prompt // 3), "rule": "content"}]
    by_name = {(t["eval"], t["name"], t["occurrence"]): t for t in document["tensors"]}
    assert by_name[(0, "l_out-0", 0)]["note"] == f"compared per token: {n_prompt} token rows"
    assert by_name[(0, "l_out-0", 0)]["shape_a"] == [n_prompt, 1, 1, 64]
    # The last layer keeps only the output rows (llama.cpp's out_ids): the prompt's last token.
    assert by_name[(0, "result_output", 0)]["note"] == "compared per token: 1 output rows"
    assert by_name[(0, "cache_k_l0 (view)", 0)]["note"] == f"compared per token: {n_prompt} cache rows written"
    for name, reason in (("attn_inp_kq_mask", "attention scores over the KV-cache window"),
                         ("out_ids", "row numbers within the batch"),
                         ("cache_k_l0 (view)", "no token rows")):
        incomparable = [t for t in document["tensors"] if t["name"] == name and t["status"] == "incomparable"]
        assert incomparable and reason in incomparable[0]["note"], name
    text = cli("compare", one, three).stdout
    assert f"{n_prompt} rows compared per token (1 group: {n_prompt} rows of A's evaluation 0 as B's 0-" in text
    assert "tensors not comparable across different batches: it has no token rows" in text
    assert text.splitlines()[-1].startswith("PASS: ")
    report = one.parent / "report.html"
    assert cli("report", one, three, "-o", report).returncode == 0
    assert f"{n_prompt} rows compared per token" in report.read_text()


def plant(path: Path, name: str, eval_index: int, row: int) -> None:
    """Add 1 to row ``row`` (numpy axis 0) of tensor ``name`` in evaluation ``eval_index``, digest and stats too."""
    def change(values: np.ndarray) -> np.ndarray:
        values[row] += 1.0
        return values

    rewrite_tensor(path, name, change, eval_index=eval_index)


def test_a_row_changed_in_one_ubatch_is_found_at_its_position(split_runs, tmp_path):
    one, three = split_runs
    changed = tmp_path / "changed.h5"
    changed.write_bytes(three.read_bytes())
    # B's evaluation 1 holds positions 3, 4, 5 (ubatches of 3): its row 1 is position 4.
    plant(changed, "l_out-0", 1, 1)
    code, document = compare_json(one, changed)
    assert code == 1
    first = document["first_divergence"]
    assert (first["name"], first["status"]) == ("l_out-0", "diverged")
    assert first["note"].endswith("largest difference at position 4")
    assert document["origins"][0]["name"] == "l_out-0"


def test_flash_attention_off_reports_the_score_matrices_and_the_transposed_v_cache(tiny_f32, tmp_path):
    one = capture(tiny_f32, tmp_path / "one.h5", 512, "-fa", "off")
    three = capture(tiny_f32, tmp_path / "three.h5", 3, "-fa", "off")
    code, document = compare_json(one, three)
    assert code == 0
    notes = {t["name"]: t["note"] for t in document["tensors"] if t["status"] == "incomparable"}
    assert "attention scores" in notes["kq-0"] and "attention scores" in notes["kq_soft_max-0"]
    v_writes = [note for name, note in notes.items() if name.startswith("cache_v_l0") and "KV-cache write" in note]
    assert v_writes and "transposed V cache" in v_writes[0]
    compared = {t["name"]: t for t in document["tensors"] if t["status"] in ("identical", "within") and t["eval"] == 0}
    assert compared["kqv_out-0"]["note"].startswith("compared per token")


def test_one_token_differing_in_other_splits_names_the_position_and_compares_the_rows_before(tiny_f32, tmp_path):
    other = PROMPT.replace("How", "Who")
    ids_a, ids_b = tokenizer_ids(tiny_f32, PROMPT), tokenizer_ids(tiny_f32, other)
    position = next(n for n, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x != y)
    one = capture(tiny_f32, tmp_path / "one.h5", 512)
    three = capture(tiny_f32, tmp_path / "three.h5", 3, prompt=other)
    result = cli("compare", one, three)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (f"inputs differ at evaluation 0 of A, {position // 3} of B position "
                                             f"{position}: A token {ids_a[position]}, B token {ids_b[position]}")
    _, document = compare_json(one, three)
    row = next(t for t in document["tensors"] if t["name"] == "l_out-0")
    assert row["status"] == "identical" and row["note"] == f"compared per token: {position} token rows"


def test_past_a_differing_input_nothing_is_compared_unless_asked(tiny_f32, tmp_path):
    """The same batches, one token changed: the rows before it agree; --past-inputs compares what follows."""
    other = PROMPT.replace("How", "Who")
    ids_a, ids_b = tokenizer_ids(tiny_f32, PROMPT), tokenizer_ids(tiny_f32, other)
    position = next(n for n, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x != y)
    one = capture(tiny_f32, tmp_path / "one.h5", 512)
    changed = capture(tiny_f32, tmp_path / "changed.h5", 512, prompt=other)
    code, document = compare_json(one, changed)
    assert code == 1 and document["alignment"]["inputs_differ"]["position"] == position
    assert document["counts"]["diverged"] == 0 and document["first_divergence"] is None
    row = next(t for t in document["tensors"] if t["name"] == "l_out-0")
    assert row["status"] == "identical" and row["note"] == f"compared per token: {position} token rows"
    # Both generated tokens came after the differing input: not compared.
    assert [(p["a"], p["b"]) for p in document["alignment"]["beyond"]] == [(1, 1)]
    assert "1 evaluation of A after the first differing input not compared" in cli("compare", one, changed).stdout
    report = tmp_path / "report.html"
    assert cli("report", one, changed, "-o", report).returncode == 0
    assert document["alignment"]["inputs_differ"]["text"] in report.read_text()
    code, document = compare_json(one, changed, "--past-inputs")
    assert code == 1 and document["alignment"]["beyond"] == []
    row = next(t for t in document["tensors"] if t["name"] == "l_out-0" and t["eval"] == 0)
    assert row["status"] == "diverged" and row["note"] == ""
