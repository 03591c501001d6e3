"""Captured values of a real llama.cpp graph against independent numpy computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPT, run_capture, weights
from reference import rms_norm, rope_norm

from inspector import open_dump
from inspector.tiny_models import TinyLlamaSpec, byte_token_ids, write_tiny_llama

SPEC_F32 = TinyLlamaSpec(dtype="f32", seed=1)


@pytest.fixture(scope="module")
def f32_dump(tiny_f32: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cap") / "f32.h5"
    summary = run_capture(tiny_f32, out, ("inp_tokens", "inp_pos", "embd", "attn_norm-0", "Qcur-0*", "Kcur-0",
                                          "cache_k_l0*", "result_output"), all_logits=True)
    with open_dump(out) as dump:
        yield dump, summary


def test_token_ids_are_the_byte_vocabulary(f32_dump):
    dump, summary = f32_dump
    expected = byte_token_ids(PROMPT)
    assert summary.result.token_ids == expected
    assert dump.result["token_ids"] == expected


def test_leaf_inp_tokens_equals_token_ids(f32_dump):
    dump, _ = f32_dump
    entry = dump.find("inp_tokens")
    assert entry.is_leaf and entry.ggml_type == "i32"
    np.testing.assert_array_equal(dump.read(entry), np.array(byte_token_ids(PROMPT), dtype=np.int32))
    np.testing.assert_array_equal(dump.read("inp_pos"), np.arange(len(byte_token_ids(PROMPT)), dtype=np.int32))


def test_embedding_rows_are_the_prompt_tokens_rows(f32_dump, tiny_f32):
    dump, _ = f32_dump
    table = weights(tiny_f32)["token_embd.weight"]
    np.testing.assert_array_equal(dump.read("embd"), table[byte_token_ids(PROMPT)])


def test_attn_norm_is_rms_norm_times_weight(f32_dump, tiny_f32):
    dump, _ = f32_dump
    w = weights(tiny_f32)
    x = w["token_embd.weight"][byte_token_ids(PROMPT)]
    expected = rms_norm(x, w["blk.0.attn_norm.weight"], SPEC_F32.rms_eps)
    np.testing.assert_allclose(dump.read("attn_norm-0"), expected, rtol=1e-5, atol=1e-6)


def test_repeated_names_are_told_apart_by_occurrence(f32_dump, tiny_f32):
    dump, _ = f32_dump
    w = weights(tiny_f32)
    n = len(byte_token_ids(PROMPT))
    q_matmul = dump.read("Qcur-0", occurrence=0)
    expected = dump.read("attn_norm-0").astype(np.float64) @ w["blk.0.attn_q.weight"].T
    np.testing.assert_allclose(q_matmul, expected, rtol=1e-4, atol=1e-5)
    q_reshaped = dump.read("Qcur-0", occurrence=1)
    assert q_reshaped.shape == (n, SPEC_F32.n_head, SPEC_F32.head_dim)
    np.testing.assert_array_equal(q_reshaped, q_matmul.reshape(q_reshaped.shape))
    q_roped = dump.read("Qcur-0", occurrence=2)
    np.testing.assert_allclose(q_roped, rope_norm(q_reshaped, np.arange(n), SPEC_F32.rope_base),
                               rtol=1e-4, atol=1e-5)
    ops = [dump.find("Qcur-0", occurrence=k).op for k in range(3)]
    assert ops == ["MUL_MAT", "RESHAPE", "ROPE"]


def test_permuted_view_matches_numpy_transpose(f32_dump):
    dump, _ = f32_dump
    source = dump.read("Qcur-0 (view)")
    permuted_entry = dump.find("Qcur-0 (view) (permuted)")
    permuted = dump.read(permuted_entry)
    assert dump.metadata(permuted_entry)["view_source"] != ""
    # ggml_permute(q, 0, 2, 1, 3) swaps ne1 and ne2: numpy axes 0 and 1 of (tokens, heads, dim).
    np.testing.assert_array_equal(permuted, np.transpose(source, (1, 0, 2)))
    nb = dump.metadata(permuted_entry)["nb"]
    assert not (nb[0] <= nb[1] <= nb[2]), "the permuted tensor must really be non-contiguous"


def test_f16_kv_cache_view_holds_roped_k(f32_dump, tiny_f32):
    dump, _ = f32_dump
    w = weights(tiny_f32)
    n = len(byte_token_ids(PROMPT))
    k = dump.read("attn_norm-0").astype(np.float64) @ w["blk.0.attn_k.weight"].T
    k = rope_norm(k.reshape(n, SPEC_F32.n_head_kv, SPEC_F32.head_dim), np.arange(n), SPEC_F32.rope_base)
    cache_entry = dump.find("cache_k_l0 (view)", occurrence=0)
    assert cache_entry.ggml_type == "f16" and cache_entry.op == "SET_ROWS"
    cache = dump.read(cache_entry)
    assert cache.dtype == np.float16
    np.testing.assert_allclose(cache[:n].astype(np.float64), k.reshape(n, -1), rtol=2e-3, atol=2e-3)
    heads_view = dump.read("cache_k_l0 (view) (permuted)")
    assert heads_view.dtype == np.float16
    np.testing.assert_allclose(heads_view[:, :n, :].astype(np.float64), np.transpose(k, (1, 0, 2)),
                               rtol=2e-3, atol=2e-3)


def test_result_output_equals_llama_cpp_logits(f32_dump, tiny_f32, tmp_path):
    dump, summary = f32_dump
    logits = summary.result.prompt_logits
    assert logits.shape == (len(byte_token_ids(PROMPT)), 259)  # --all-logits: one row per prompt token
    np.testing.assert_array_equal(dump.read("result_output"), logits)
    # By default, as llama.cpp, only the last prompt token gets logits: the same row (a one-row matmul
    # sums in another order than a nine-row one, hence float32 rounding, not bits).
    last = run_capture(tiny_f32, tmp_path / "last.h5", ("result_output",))
    assert last.result.prompt_logits.shape == (1, 259)
    np.testing.assert_allclose(last.result.prompt_logits[0], logits[-1], rtol=1e-5, atol=1e-6)
    with open_dump(tmp_path / "last.h5") as only_last:
        np.testing.assert_array_equal(only_last.read("result_output"), last.result.prompt_logits[0])


def test_f16_model_embeddings_are_exact(tiny_f16, tmp_path):
    run_capture(tiny_f16, tmp_path / "f16.h5", ("embd",))
    with open_dump(tmp_path / "f16.h5") as dump:
        embd = dump.read("embd")
    table = weights(tiny_f16)["token_embd.weight"]
    np.testing.assert_array_equal(embd, table[byte_token_ids(PROMPT)])


def test_q8_0_kv_cache_is_dequantized(tmp_path):
    # q8_0 blocks are 32 wide, so the head dimension must be a multiple of 32.
    spec = TinyLlamaSpec(n_embd=128, n_head=4, n_head_kv=2, seed=3)
    model = write_tiny_llama(tmp_path / "wide.gguf", spec)
    out = tmp_path / "q8.h5"
    run_capture(model, out, ("attn_norm-0", "cache_k_l0 (view)"), type_k="q8_0", flash_attn="on")
    w = weights(model)
    n = len(byte_token_ids(PROMPT))
    with open_dump(out) as dump:
        entry = dump.find("cache_k_l0 (view)")
        assert entry.ggml_type == "q8_0" and entry.storage == "dequantized"
        cache = dump.read(entry)
        k = dump.read("attn_norm-0").astype(np.float64) @ w["blk.0.attn_k.weight"].T
    k = rope_norm(k.reshape(n, spec.n_head_kv, spec.head_dim), np.arange(n), spec.rope_base)
    assert cache.dtype == np.float32
    # q8_0: one f16 scale per 32 values, so the error is at most half a step of max|block|/127.
    np.testing.assert_allclose(cache[:n], k.reshape(n, -1), atol=np.abs(k).max() / 127)


def test_ubatches_and_generation_are_separate_evaluations(tiny_f32, tmp_path):
    out = tmp_path / "gen.h5"
    n = len(byte_token_ids(PROMPT))
    summary = run_capture(tiny_f32, out, ("inp_tokens", "l_out-1"), n_ubatch=4, n_batch=4, n_predict=3)
    with open_dump(out) as dump:
        evaluations = dump.evaluations
        prompt_chunks = [e for e in evaluations if e["kind"] == "prompt"]
        assert [e["n_tokens"] for e in prompt_chunks] == [4, 4, n - 8]
        assert [e["kind"] for e in evaluations[len(prompt_chunks):]] == ["generate", "generate"]
        tokens = np.concatenate([dump.read("inp_tokens", eval_index=e["index"]) for e in prompt_chunks])
        np.testing.assert_array_equal(tokens, byte_token_ids(PROMPT))
        generated_inputs = [int(dump.read("inp_tokens", eval_index=e["index"])[0]) for e in evaluations[3:]]
    assert generated_inputs == summary.result.generated_ids[:2]
    assert len(summary.result.generated_ids) == 3
