"""Alignment: evaluations paired by what they computed, before any tensor is measured.

The unit cases hold ``align`` against pairings written out by hand for
hand-written evaluation lists.  The end-to-end cases run real programs: a
capture against an exec of a C client that warms up as llama.cpp's common
code does (BOS and EOS decoded, the memory cleared), whose every evaluation
index is shifted by one; and two captures whose prompts differ in one token,
where the first differing position is the one the tokenizer says.
"""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import pytest
from conftest import PROMPT
from test_cli import cli
from test_evaluation_inputs import RUN, tokenizer_ids
from test_exec import compile_program

from inspector import open_dump
from inspector.compare.align import CONTENT, DIFFERING, INDEX, ORDER, POSITIONS, Pair, align, stop_at_inputs_difference
from inspector.compare.report import render_text, to_json
from inspector.compare.runs import Comparison
from inspector.compare.tolerance import preset


def tokens(index: int, ids: list[int], pos0: int, kind: str = "prompt") -> dict:
    return {"index": index, "kind": kind, "inputs_known": True,
            "inputs": {"tokens": ids, "n_tokens": len(ids), "positions": list(range(pos0, pos0 + len(ids))),
                       "outputs": [len(ids) - 1], "source": "graph"}}


def embeddings(index: int, digest: str, rows: int, pos0: int) -> dict:
    return {"index": index, "kind": "prompt", "inputs_known": True,
            "inputs": {"embd_digest": digest, "n_embd": 8, "n_tokens": rows,
                       "positions": list(range(pos0, pos0 + rows)), "source": "graph"}}


def unknown(index: int, kind: str = "encode") -> dict:
    return {"index": index, "kind": kind, "inputs_known": False}


PROMPT_A = [1, 5, 6, 7]


def run_of(prompt: list[int], generated: list[int], first: int = 0) -> list[dict]:
    return [tokens(first, prompt, 0)] + [tokens(first + 1 + n, [token], len(prompt) + n, "generate")
                                         for n, token in enumerate(generated)]


def test_a_warm_up_in_b_is_one_sided_and_the_rest_pairs_shifted_by_one():
    a = run_of(PROMPT_A, [9, 10])
    b = [tokens(0, [1, 2], 0)] + run_of(PROMPT_A, [9, 10], first=1)
    alignment = align(a, b)
    assert alignment.rule == CONTENT and alignment.inputs_differ is None
    assert alignment.pairs == [Pair(0, 1, CONTENT), Pair(1, 2, CONTENT), Pair(2, 3, CONTENT)]
    assert [(one.side, one.index, one.inputs["tokens"]) for one in alignment.one_sided] == [("b", 0, [1, 2])]
    assert alignment.summary() == ("alignment: 3 evaluations paired by tokens and positions; "
                                   "B's evaluation 0 (tokens 1, 2) is not in A")


def test_a_retried_evaluation_pairs_once_and_its_repeat_is_one_sided():
    a = run_of(PROMPT_A, [9, 10])
    b = run_of(PROMPT_A, [9, 10])
    b = b[:2] + [{**b[1], "index": 2}] + [{**b[2], "index": 3}]
    alignment = align(a, b)
    assert alignment.pairs == [Pair(0, 0, CONTENT), Pair(1, 1, CONTENT), Pair(2, 3, CONTENT)]
    assert [(one.side, one.index) for one in alignment.one_sided] == [("b", 2)]
    assert alignment.inputs_differ is None


def test_one_token_differing_pairs_by_positions_and_names_the_first_difference():
    alignment = align(run_of(PROMPT_A, [9]), run_of([1, 5, 8, 7], [11]))
    assert alignment.pairs == [Pair(0, 0, POSITIONS), Pair(1, 1, POSITIONS)]
    assert alignment.one_sided == []
    assert alignment.inputs_differ.describe() == "inputs differ at evaluation 0 position 2: A token 6, B token 8"
    assert alignment.to_json()["inputs_differ"]["position"] == 2


def test_a_longer_prompt_after_a_warm_up_pairs_with_the_prompt_and_compares_the_rows_before_the_difference():
    # A fed 1 5 6; B warmed up on 1 2, then fed 1 5 6 7: the prompt, not the warm-up, pairs with A's.
    a, b = [tokens(0, [1, 5, 6], 0)], [tokens(0, [1, 2], 0), tokens(1, PROMPT_A, 0)]
    alignment = align(a, b)
    assert alignment.pairs == [Pair(0, 1, DIFFERING)] and alignment.splits == []
    assert [(one.side, one.index) for one in alignment.one_sided] == [("b", 0)]
    # What compare does by default: the rows both fed alike, before the difference, compared per token.
    stop_at_inputs_difference(alignment, a, b)
    assert alignment.pairs == [] and alignment.beyond == []
    assert [(g.evals_a, g.evals_b, [r.position for r in g.rows]) for g in alignment.splits] == [((0,), (1,), [0, 1, 2])]
    assert alignment.inputs_differ.describe() == ("inputs differ at evaluation 0 of A, 1 of B position 3: "
                                                  "A nothing, B token 7")


def test_unknown_evaluations_pair_by_order_of_their_kind_between_content_pairs():
    a = [unknown(0), embeddings(1, "ab12", 3, 0), tokens(2, [9], 3, "generate")]
    b = [tokens(0, [1, 2], 0), unknown(1), unknown(2), embeddings(3, "ab12", 3, 0), tokens(4, [9], 3, "generate")]
    alignment = align(a, b)
    assert alignment.pairs == [Pair(0, 1, ORDER), Pair(1, 3, CONTENT), Pair(2, 4, CONTENT)]
    assert [(one.side, one.index) for one in alignment.one_sided] == [("b", 0), ("b", 2)]
    assert "B's evaluation 2 (encode, inputs unknown) is not in A" in alignment.summary()
    assert alignment.summary().startswith("alignment: 2 evaluations paired by tokens and positions, "
                                          "1 evaluation paired by order among evaluations of unknown inputs")


def test_embeddings_an_encoder_computed_are_no_input_verdict_but_fed_ones_are():
    """Embeddings after an encoder in both runs are its output: the encoder's tensors decide, not the verdict."""
    encoded = align([tokens(0, [1], 0), unknown(1), embeddings(2, "aaaa", 3, 1)],
                    [tokens(0, [1], 0), unknown(1), embeddings(2, "bbbb", 3, 1)])
    assert Pair(2, 2, POSITIONS) in encoded.pairs and encoded.inputs_differ is None
    fed = align([tokens(0, [1], 0), embeddings(1, "aaaa", 3, 1)], [tokens(0, [1], 0), embeddings(1, "bbbb", 3, 1)])
    assert (fed.inputs_differ.eval_a, fed.inputs_differ.position, fed.inputs_differ.a, fed.inputs_differ.b) == \
        (1, 1, "aaaa", "bbbb")


def test_runs_without_inputs_pair_by_index_and_say_why():
    neither = align([unknown(0, "graph"), unknown(1, "graph"), unknown(2, "graph")],
                    [unknown(0, "graph"), unknown(1, "graph")])
    assert neither.rule == INDEX and neither.pairs == [Pair(0, 0, INDEX), Pair(1, 1, INDEX)]
    assert neither.summary() == "alignment: evaluations paired by index (neither run records what its evaluations " \
                                "computed)"
    old = align([{"index": 0, "kind": "prompt"}], run_of(PROMPT_A, []))
    assert old.rule == INDEX and old.reason == "run A does not record what its evaluations computed"


def test_the_same_rows_in_other_batch_splits_are_not_an_input_difference_and_pair_row_by_row():
    alignment = align([tokens(0, PROMPT_A, 0)], [tokens(0, [1, 5], 0), tokens(1, [6, 7], 2)])
    assert alignment.inputs_differ is None and alignment.split_rows == 4 and alignment.pairs == []
    assert [(r.position, r.eval_a, r.row_a, r.eval_b, r.row_b) for r in alignment.splits[0].rows] == \
        [(0, 0, 0, 0, 0), (1, 0, 1, 0, 1), (2, 0, 2, 1, 0), (3, 0, 3, 1, 1)]
    assert alignment.summary().endswith("4 rows compared per token (1 group: 4 rows of A's evaluation 0 as B's 0-1)")


def test_a_warm_up_and_other_batch_splits_together():
    """llama-completion -ub 3 against capture -ub 512: the warm-up is one-sided, the prompt a split group."""
    a = run_of([1, 5, 6, 7, 8, 9], [4])
    b = [tokens(0, [1, 2], 0), tokens(1, [1, 5, 6], 0), tokens(2, [7, 8, 9], 3), tokens(3, [4], 6, "generate")]
    alignment = align(a, b)
    assert alignment.pairs == [Pair(1, 3, CONTENT)] and alignment.inputs_differ is None
    assert [(g.evals_a, g.evals_b, len(g.rows)) for g in alignment.splits] == [((0,), (1, 2), 6)]
    assert [(one.side, one.index) for one in alignment.one_sided] == [("b", 0)]


def test_one_token_differing_in_other_batch_splits_names_its_position_and_keeps_the_rows_before():
    a, b = [tokens(0, [1, 5, 6, 7, 8, 9], 0)], [tokens(0, [1, 5, 6], 0), tokens(1, [4, 8, 9], 3)]
    alignment = align(a, b)
    assert alignment.inputs_differ.describe() == ("inputs differ at evaluation 0 of A, 1 of B position 3: "
                                                  "A token 7, B token 4")
    # Rows 4 and 5 were fed alike too, but after the difference: compare leaves them unless --past-inputs.
    assert [r.position for r in alignment.splits[0].rows] == [0, 1, 2, 4, 5]
    stop_at_inputs_difference(alignment, a, b)
    assert [r.position for r in alignment.splits[0].rows] == [0, 1, 2]


def test_the_alignment_text_is_escaped_and_its_verdict_fails_the_comparison():
    hostile = "\x1b]0;owned\x07"
    alignment = align(run_of(PROMPT_A, []), [unknown(0, hostile), *run_of([1, 5, 8, 7], [], first=1)])
    comparison = Comparison("a.h5", "b.h5", preset("f32"), rows=[], alignment=alignment)
    text = render_text(comparison, show_all=False, colour=False)
    assert "\x1b" not in text and "(\\x1b]0;owned\\x07, inputs unknown)" in text
    assert text.splitlines()[0] == "inputs differ at evaluation 0 of A, 1 of B position 2: A token 6, B token 8"
    assert comparison.passed is False and to_json(comparison)["alignment"]["inputs_differ"]["eval_b"] == 1


@pytest.fixture(scope="module")
def warmup_client(tmp_path_factory) -> Path:
    return compile_program("warmup_client.c", tmp_path_factory.mktemp("programs"), "llama", "ggml", "ggml-base")


def test_capture_and_a_warming_up_client_agree_after_the_warm_up(warmup_client, tiny_f32, tmp_path):
    captured, executed = tmp_path / "capture.h5", tmp_path / "exec.h5"
    # The client's settings: llama.cpp's defaults, but 1 thread, a 64-token context and no GPU layers.
    result = cli("capture", tiny_f32, "-p", PROMPT, "-t", "1", "-c", "64", "-ngl", "0", "-n", "3", "-T", "l_out-*",
                 "-T", "result_output", "-o", captured)
    assert result.returncode == 0, result.stderr
    result = cli("exec", "-T", "l_out-*", "-T", "result_output", "-o", executed, "--", warmup_client, tiny_f32,
                 PROMPT, "3")
    assert result.returncode == 0, result.stderr
    with open_dump(captured) as dump:
        n_captured = len(dump.entries())
    vocab = llama_cpp.Llama(model_path=str(tiny_f32), vocab_only=True, verbose=False)
    bos_eos = [vocab.token_bos(), vocab.token_eos()]
    compared = cli("compare", captured, executed)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    lines = compared.stdout.splitlines()
    assert (f"alignment: 3 evaluations paired by tokens and positions; B's evaluation 0 "
            f"(tokens {bos_eos[0]}, {bos_eos[1]}) is not in A") in lines
    assert lines[-1].startswith(f"PASS: {n_captured} tensors: {n_captured} identical")
    document = json.loads(cli("compare", captured, executed, "--json").stdout)
    assert document["alignment"]["pairs"] == [{"a": n, "b": n + 1, "rule": "content"} for n in range(3)]
    assert [(o["run"], o["eval"], o["inputs"]["tokens"]) for o in document["alignment"]["one_sided"]] == \
        [("b", 0, bos_eos)]
    assert {(t["eval"], t["eval_b"]) for t in document["tensors"]} == {(0, 1), (1, 2), (2, 3)}


def test_prompts_differing_in_one_token_give_the_inputs_verdict_first(tiny_f32, tmp_path):
    other = PROMPT.replace("Hi", "Ho")
    ids_a, ids_b = tokenizer_ids(tiny_f32, PROMPT), tokenizer_ids(tiny_f32, other)
    assert len(ids_a) == len(ids_b)
    (row,) = [n for n, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x != y]
    paths = []
    for prompt, name in ((PROMPT, "a.h5"), (other, "b.h5")):
        result = cli("capture", tiny_f32, "-p", prompt, *RUN, "-n", "1", "-T", "l_out-0", "-o", tmp_path / name)
        assert result.returncode == 0, result.stderr
        paths.append(tmp_path / name)
    compared = cli("compare", *paths)
    assert compared.returncode == 1
    assert compared.stdout.splitlines()[0] == (f"inputs differ at evaluation 0 position {row}: "
                                               f"A token {ids_a[row]}, B token {ids_b[row]}")
