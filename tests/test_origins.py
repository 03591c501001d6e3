"""compare's origins: the op that introduced a difference, found for causes planted on purpose.

Each pair of runs differs in exactly one known way; the first origin must be
the first op that way touches, with the right explanation.  Whether inputs
were identical is decided from the two captures, never from the planted
cause.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PROMPT
from test_cli import cli

from inspector import open_dump
from inspector.compare.origins import find_origins
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import ToleranceRequest
from inspector.compare.verdict import IDENTICAL, INCOMPARABLE
from inspector.ggml.rpc import LoopbackServer
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama


def capture(model: Path, out: Path, *extra: object) -> None:
    result = cli("capture", "-m", model, "-p", PROMPT, "-t", "1", "-c", "64", "-o", out, *extra)
    assert result.returncode == 0, result.stderr


def origins(a: Path, b: Path, *extra: object) -> tuple[list[dict], str]:
    as_json = cli("compare", a, b, "--json", *extra)
    text = cli("compare", a, b, *extra)
    return json.loads(as_json.stdout)["origins"], text.stdout


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("origins")
    write_tiny_llama(folder / "base.gguf", TinyLlamaSpec(seed=1))
    write_tiny_llama(folder / "changed.gguf", TinyLlamaSpec(seed=1, perturb=(1, 5, 0.5)))
    # head size 32, so a q8_0 K cache (blocks of 32) is allowed
    write_tiny_llama(folder / "wide.gguf", TinyLlamaSpec(seed=1, n_embd=128))
    write_tiny_llama(folder / "quant.gguf", TinyLlamaSpec(seed=3, dtype="quant", n_embd=256, n_ff=512))
    return folder


def test_a_changed_weight_is_found_at_the_first_op_that_reads_it(models, tmp_path):
    capture(models / "base.gguf", tmp_path / "a.h5")
    capture(models / "changed.gguf", tmp_path / "b.h5")
    found, text = origins(tmp_path / "a.h5", tmp_path / "b.h5")
    first = found[0]
    assert (first["name"], first["op"], first["verdict"]) == ("Qcur-1", "MUL_MAT", "weight")
    assert "blk.1.attn_q.weight" in first["explanation"]
    states = {source["name"]: source["state"] for source in first["source_details"]}
    assert states == {"blk.1.attn_q.weight": "weight differs", "attn_norm-1": "identical"}
    assert text.splitlines()[0].startswith("first origin: Qcur-1 (eval 0 prompt")
    assert len(found) == 1  # everything after it was handed a different input
    # B's records are parsed only for nodes whose inputs did not differ in A's: not for the consequences.
    comparison = compare_dumps(tmp_path / "a.h5", tmp_path / "b.h5", ToleranceRequest())
    with open_dump(tmp_path / "a.h5") as dump_a, open_dump(tmp_path / "b.h5") as dump_b:
        asked: list[str] = []
        parse = dump_b.metadata_of
        dump_b.metadata_of = lambda entries: asked.extend(e.name for e in entries) or parse(entries)
        assert [o.name for o in find_origins(comparison.rows, dump_a, dump_b)] == ["Qcur-1"]
    differing = [row for row in comparison.rows if row.status not in (IDENTICAL, INCOMPARABLE)]
    assert "Qcur-1" in asked and len(differing) > 10 * len(asked)


def test_a_repacked_matmul_differs_from_the_same_op_on_rpc(models, tmp_path):
    with LoopbackServer() as server:
        capture(models / "quant.gguf", tmp_path / "cpu.h5", "-ngl", "0")
        capture(models / "quant.gguf", tmp_path / "rpc.h5", "-ngl", "all", "--rpc", server.endpoint)
    found, text = origins(tmp_path / "cpu.h5", tmp_path / "rpc.h5")
    first = found[0]
    assert (first["name"], first["op"], first["verdict"]) == ("Qcur-0", "MUL_MAT", "op")
    weight = next(s for s in first["source_details"] if s["name"] == "blk.0.attn_q.weight")
    assert weight["state"] == "same weight"
    assert weight["buffer_type_a"] == "CPU_REPACK" and weight["buffer_type_b"].startswith("RPC0")
    assert all(s["state"] in ("identical", "same weight") for s in first["source_details"])
    assert "CPU_REPACK" in text.splitlines()[0]
    # The first divergence beyond tolerance comes much later: the origin is the answer, not the divergence.
    divergence = json.loads(cli("compare", tmp_path / "cpu.h5", tmp_path / "rpc.h5", "--json").stdout)
    assert divergence["first_divergence"] is None or divergence["first_divergence"]["node_a"] > first["node"]


def test_a_quantized_kv_cache_is_found_at_the_cache_write(models, tmp_path):
    capture(models / "wide.gguf", tmp_path / "f16.h5", "-ctk", "f16")
    capture(models / "wide.gguf", tmp_path / "q8.h5", "-ctk", "q8_0")
    found, _text = origins(tmp_path / "f16.h5", tmp_path / "q8.h5")
    first = found[0]
    assert (first["name"], first["op"], first["verdict"]) == ("cache_k_l0 (view)", "SET_ROWS", "op")
    assert first["types"] == {"a": "f16", "b": "q8_0"}
    assert "writes f16 in A and q8_0 in B" in first["explanation"]
    assert len(found) == 1  # the cache's readers are consequences: the write before them differed


def test_a_partial_capture_says_what_it_cannot_decide(models, tmp_path):
    capture(models / "base.gguf", tmp_path / "a.h5", "-T", "l_out-*")
    capture(models / "changed.gguf", tmp_path / "b.h5", "-T", "l_out-*")
    found, text = origins(tmp_path / "a.h5", tmp_path / "b.h5")
    first = found[0]
    assert (first["name"], first["verdict"]) == ("l_out-1", "open")
    assert set(first["not_captured"]) == {"ffn_out-1", "ffn_inp-1"}
    assert "not captured" in text.splitlines()[0]


def test_identical_runs_have_no_origin(models, tmp_path):
    capture(models / "base.gguf", tmp_path / "a.h5")
    capture(models / "base.gguf", tmp_path / "b.h5")
    found, text = origins(tmp_path / "a.h5", tmp_path / "b.h5")
    assert found == [] and "origin" not in text


def test_a_weight_changed_past_the_fingerprinted_ends_is_still_found(tmp_path):
    """The fingerprint hashes a file's first 16 MiB and last 64 KiB: a change between them must not pass as
    'the same file'; the weight's own bytes decide."""
    spec = TinyLlamaSpec(seed=1, n_embd=512, n_ff=2048, n_layer=4)
    a_model = write_tiny_llama(tmp_path / "a.gguf", spec)
    b_model = write_tiny_llama(tmp_path / "b.gguf", TinyLlamaSpec(**{**spec.__dict__, "perturb": (2, 5, 0.5)}))
    capture(a_model, tmp_path / "a.h5")
    capture(b_model, tmp_path / "b.h5")
    with open_dump(tmp_path / "a.h5") as a, open_dump(tmp_path / "b.h5") as b:
        assert a.config["model_facts"]["fingerprint"] == b.config["model_facts"]["fingerprint"]
    first = origins(tmp_path / "a.h5", tmp_path / "b.h5")[0][0]
    assert (first["name"], first["verdict"]) == ("Qcur-2", "weight")
    assert "blk.2.attn_q.weight" in first["explanation"]


def test_a_quantized_cache_that_llama_cpp_rotates_is_a_different_graph_at_the_cache_write(tmp_path):
    """With a 64-wide head llama.cpp rotates Q and K (a Hadamard matmul) before a quantized K cache: the
    cache write reads another tensor in that run, which the origin must say rather than blame a kernel."""
    model = write_tiny_llama(tmp_path / "h64.gguf", TinyLlamaSpec(seed=1, n_embd=256, n_head=4, n_head_kv=2))
    capture(model, tmp_path / "f16.h5", "-ctk", "f16")
    capture(model, tmp_path / "q8.h5", "-ctk", "q8_0")
    with open_dump(tmp_path / "q8.h5") as rotated:
        assert rotated.entries(["attn_inp_k_rot"])  # llama.cpp's rotation input, absent from the f16 run
    first = origins(tmp_path / "f16.h5", tmp_path / "q8.h5")[0][0]
    assert (first["name"], first["op"], first["verdict"]) == ("cache_k_l0 (view)", "SET_ROWS", "graph")
    assert {s["name"]: s["state"] for s in first["source_details"]}["Kcur-0 (view)"] == "only in A"


def test_weights_of_one_file_named_by_both_runs_are_not_read(models, tmp_path, monkeypatch):
    """Two runs of the same model file: its weights are the same without reading them twice from it.

    A copy of the file is another file: its weights are still read and compared.
    """
    from types import SimpleNamespace

    from inspector.compare import origins as module
    from inspector.gguf.header import fingerprint

    def run_of(model: Path) -> SimpleNamespace:
        return SimpleNamespace(config={"model": str(model), "model_facts": {"fingerprint": fingerprint(model)}})

    base = models / "base.gguf"
    reads = []
    monkeypatch.setattr(module, "read_tensor_bytes", lambda header, name: reads.append(name) or b"")
    same = module._Weights(run_of(base), run_of(base))
    assert same.state("blk.1.attn_q.weight") == "same weight" and reads == []
    assert same.state("blk.99.attn_q.weight") == "not captured"  # not a weight of this file
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(base.read_bytes())
    assert module._Weights(run_of(base), run_of(copy)).state("blk.1.attn_q.weight") == "same weight"
    assert reads == ["blk.1.attn_q.weight"] * 2
