"""``mllama convert --outtype``: every type against transformers, the type mix, streaming memory, offload.

A tiny random MllamaForConditionalGeneration whose text widths fit the
quantized types' blocks (hidden 256, 4 heads of 64, 2 KV heads) is built by
transformers, converted to each ``--outtype`` and run by ``mllama generate``.
Its FFN width, 288, is a multiple of 32 but not of 256, so ``ffn_down``
(rows of 288) takes llama.cpp's fallback (Q4_K -> Q5_0, Q6_K -> Q8_0).

Bounds: the logits of every prompt position against transformers' (f32),
NMSE measured per type on this model and image (f32 1.4e-12, f16 1.9e-6,
bf16 9.2e-5, q8_0 1.2e-3, q6_k 7.4e-3, q4_k 0.110, q4_k_m 0.103; a random
model amplifies weight error more than a trained one) and bounded with a
margin above, and below: a quantized file that silently stored floats
would fall under the lower bound.  The vision tower is f16 in every
quantized type, so their ``ca_patch_embd`` must equal the f16 file's bit
for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from test_cli import assert_one_line_error, cli
from test_mllama_generate import PROMPT, hf_inputs, image_file, nmse
from tiny_mllama_hf import make_model, save

from inspector import open_dump
from inspector.ggml.quantize import quantize_rows
from inspector.ggml.rpc import LoopbackServer
from inspector.mllama import convert as converter
from inspector.mllama.outtypes import fallback, use_more_bits

TEXT = dict(hidden_size=256, intermediate_size=288, num_attention_heads=4, num_key_value_heads=2)
# outtype -> (lower, upper) bound of the logits' NMSE against transformers (measured values in the docstring).
LOGIT_BOUNDS = {"f32": (0.0, 1e-10), "f16": (1e-7, 1e-5), "bf16": (1e-5, 5e-4), "q8_0": (1e-4, 5e-3),
                "q6_k": (1e-3, 3e-2), "q4_k": (2e-2, 0.3), "q4_k_m": (2e-2, 0.3)}
OUTTYPES = list(LOGIT_BOUNDS)
# Type -> bounds of a dequantized weight's NMSE against the checkpoint's (measured: Q4_K 5.1e-3, Q6_K 3.1e-4,
# Q8_0 2.9e-5, as ggml's reference figures for normal weights).
WEIGHT_BOUNDS = {"Q4_K": (1e-3, 1e-2), "Q6_K": (5e-5, 1e-3), "Q8_0": (5e-6, 1e-4)}
QUANTIZED = ["q8_0", "q6_k", "q4_k", "q4_k_m"]
N_PREDICT = 10


@pytest.fixture(scope="module")
def hf_model():
    return make_model(seed=0, **TEXT)


@pytest.fixture(scope="module")
def folder(hf_model, tmp_path_factory) -> Path:
    return save(hf_model, tmp_path_factory.mktemp("hf") / "tiny-mllama-256")


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory) -> dict[str, dict]:
    """Each outtype converted through the command line and run by mllama generate on one 2-tile image."""
    work = tmp_path_factory.mktemp("runs")
    image_path, _ = image_file(work, (50, 22))
    found = {}
    for outtype in OUTTYPES:
        model = work / f"{outtype}.gguf"
        result = cli("mllama", "convert", folder, "-o", model, "--outtype", outtype)
        assert result.returncode == 0, result.stderr
        out = work / f"{outtype}.h5"
        result = cli("mllama", "generate", model, "--image", image_path, "--token-ids", ",".join(map(str, PROMPT)),
                     "-t", "1", "-n", str(N_PREDICT), "-o", out, "-T", "result_output", "-T", "ca_patch_embd")
        assert result.returncode == 0, result.stderr
        with open_dump(out) as dump:
            found[outtype] = {"model": model, "logits": dump.read("result_output", eval_index=1),
                              "ca_patch_embd": dump.read("ca_patch_embd"),
                              "generated": dump.result["generated_ids"], "image": image_path}
    return found


@pytest.fixture(scope="module")
def reference(hf_model, runs) -> dict[str, object]:
    """transformers' logits, projector output and greedy tokens for the same image and prompt."""
    from PIL import Image

    image = Image.open(runs["f32"]["image"])
    inputs = hf_inputs(image, PROMPT)
    with torch.no_grad():
        logits = hf_model(**inputs, use_cache=False).logits[0].numpy()
        inner = hf_model.model
        states = inner.vision_model(pixel_values=inputs["pixel_values"], aspect_ratio_ids=inputs["aspect_ratio_ids"],
                                    aspect_ratio_mask=inputs["aspect_ratio_mask"]).last_hidden_state
        projected = inner.multi_modal_projector(states).numpy()
        tokens = hf_model.generate(**inputs, attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                                   max_new_tokens=N_PREDICT, min_new_tokens=N_PREDICT, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    return {"logits": logits, "ca_patch_embd": projected, "tokens": tokens}


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_logits_match_transformers_within_the_bounds_of_each_outtype(runs, reference, outtype):
    low, high = LOGIT_BOUNDS[outtype]
    measured = nmse(runs[outtype]["logits"], reference["logits"])
    assert low < measured < high, measured if low < measured else f"{measured}: quantized too little?"


def test_vision_output_matches_transformers_and_is_f16_in_quantized_files(runs, reference):
    hidden = TEXT["hidden_size"]
    expected = reference["ca_patch_embd"].reshape(-1, hidden)
    measured = {outtype: nmse(runs[outtype]["ca_patch_embd"].reshape(-1, hidden), expected) for outtype in OUTTYPES}
    assert measured["f32"] < 1e-10, measured
    assert 1e-9 < measured["f16"] < 1e-5 and 1e-7 < measured["bf16"] < 1e-3, measured
    for outtype in QUANTIZED:
        np.testing.assert_array_equal(runs[outtype]["ca_patch_embd"], runs["f16"]["ca_patch_embd"])


def test_f16_and_q8_0_generate_transformers_tokens(runs, reference):
    assert runs["f16"]["generated"] == reference["tokens"]
    assert runs["q8_0"]["generated"] == reference["tokens"]


def _expected_q4_k_m(name: str) -> str:
    """llama.cpp's Q4_K_M for this 4-layer file (cross-attention layers 1 and 3), worked out by hand.

    use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2.  attn_v: the self-attention
    layers 0 and 2 are attn_v 0 and 1 of 2: only 1 (layer 2) gets more bits.  ffn_down: layers 2 and 3 of
    4.  ffn_down's rows of 288 fall back: Q4_K -> Q5_0, Q6_K -> Q8_0.
    """
    by_name = {"token_embd.weight": "Q4_K", "output.weight": "Q6_K", "blk.2.attn_v.weight": "Q6_K",
               "blk.0.ffn_down.weight": "Q5_0", "blk.1.ffn_down.weight": "Q5_0", "blk.2.ffn_down.weight": "Q8_0",
               "blk.3.ffn_down.weight": "Q8_0"}
    return by_name.get(name, "Q4_K")


def _expected(outtype: str, name: str, ndim: int) -> str:
    """The documented type of a tensor of this file, from its name (docs/mllama.md's table)."""
    floats = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
    matrix = ndim >= 2 and not name.endswith(("_norm.weight", "_embd", "rope_freqs.weight"))
    if outtype == "f32" or not matrix:
        return "F32"
    if name.startswith(("v.", "mm.")):
        return "F16" if name == "v.patch_embd.weight" else floats.get(outtype, "F16")
    if outtype in floats:
        return "F32" if name == "token_embd.weight" else floats[outtype]
    if outtype == "q4_k_m":
        return _expected_q4_k_m(name)
    kind = {"q8_0": "Q8_0", "q6_k": "Q6_K", "q4_k": "Q4_K"}[outtype]
    if name.endswith("ffn_down.weight") and kind != "Q8_0":
        return {"Q6_K": "Q8_0", "Q4_K": "Q5_0"}[kind]
    return kind


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_each_tensor_is_stored_in_the_documented_type(runs, outtype):
    tensors = GGUFReader(runs[outtype]["model"]).tensors
    found = {t.name: t.tensor_type.name for t in tensors}
    expected = {t.name: _expected(outtype, t.name, len([n for n in t.shape if n > 1])) for t in tensors}
    assert found == expected
    if outtype in QUANTIZED:
        assert {"blk.0.attn_q.weight", "blk.1.cross_attn_v_proj.weight"} <= {n for n, k in found.items()
                                                                            if k.startswith("Q")}


def test_quantized_bytes_are_ggml_s_quantizer_over_whole_rows_across_chunks(folder, hf_model, tmp_path,
                                                                             monkeypatch):
    """Chunks of 4 rows: the file's bytes equal ggml's quantizer run over the whole tensor, and gguf-py
    (an independent decoder) reads back the checkpoint's weights within the type's error."""
    monkeypatch.setattr(converter, "CHUNK_BYTES", 4 * 256 * 4)
    converter.convert(folder, tmp_path / "q.gguf", "q4_k_m")
    tensors = {t.name: t for t in GGUFReader(tmp_path / "q.gguf").tensors}
    parameters = dict(hf_model.named_parameters())
    for name, hf_name, kind in (("token_embd.weight", "model.language_model.embed_tokens.weight", "Q4_K"),
                                ("output.weight", "lm_head.weight", "Q6_K"),
                                ("blk.3.ffn_down.weight", "model.language_model.layers.3.mlp.down_proj.weight",
                                 "Q8_0")):
        weights = parameters[hf_name].detach().numpy()
        stored = tensors[name]
        assert stored.tensor_type.name == kind
        whole = quantize_rows(weights, stored.tensor_type)
        np.testing.assert_array_equal(np.asarray(stored.data).reshape(whole.shape), whole, err_msg=name)
        error = nmse(dequantize(np.asarray(stored.data), stored.tensor_type).reshape(weights.shape), weights)
        low, high = WEIGHT_BOUNDS[kind]
        assert low < error < high, (name, error)


def test_use_more_bits_and_fallback_as_llama_cpp():
    # Llama 3.2 11B: 40 layers (ffn_down), 32 of them self-attention (attn_v).
    assert [i for i in range(40) if use_more_bits(i, 40)] == [0, 1, 2, 3, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31,
                                                              34, 35, 36, 37, 38, 39]
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29,
                                                              30, 31]
    from gguf import GGMLQuantizationType as T

    assert [fallback(T.Q4_K, row).name for row in (4096, 14336, 288, 48)] == ["Q4_K", "Q4_K", "Q5_0", "F16"]
    assert [fallback(T.Q6_K, row).name for row in (1280, 288, 48)] == ["Q6_K", "Q8_0", "F16"]
    assert [fallback(T.Q8_0, row).name for row in (288, 48)] == ["Q8_0", "F16"]


def test_quantized_files_run_offloaded_as_on_the_cpu(runs, tmp_path):
    """On a loopback RPC server (-ngl 2, -ngl all) a quantized and a bf16 file compute what the CPU does."""
    tokens = ",".join(map(str, PROMPT))
    with LoopbackServer() as server:
        for outtype in ("q4_k_m", "bf16"):
            for layers in ("2", "99"):
                out = tmp_path / f"{outtype}-{layers}.h5"
                result = cli("mllama", "generate", runs[outtype]["model"], "--image", runs[outtype]["image"],
                             "--token-ids", tokens, "-t", "1", "-n", "3", "-o", out, "--rpc", server.endpoint,
                             "-ngl", layers, "-T", "result_output", "-T", "ca_patch_embd", "-T", "l_out-0")
                assert result.returncode == 0, result.stderr
                with open_dump(out) as dump:
                    assert dump.find("l_out-0", eval_index=1).buffer.startswith("RPC")
                    np.testing.assert_array_equal(dump.read("result_output", eval_index=1), runs[outtype]["logits"])
                    np.testing.assert_array_equal(dump.read("ca_patch_embd"), runs[outtype]["ca_patch_embd"])
                    assert dump.result["generated_ids"] == runs[outtype]["generated"][:3]


def test_encode_runs_a_quantized_file(runs, tmp_path):
    out = tmp_path / "encode.h5"
    result = cli("mllama", "encode", runs["q4_k"]["model"], "--image", runs["q4_k"]["image"], "-t", "1",
                 "-T", "ca_patch_embd", "-o", out)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        np.testing.assert_array_equal(dump.read("ca_patch_embd"), runs["q4_k"]["ca_patch_embd"])


# The command line in a process that reports its own peak resident set (VmHWM) as it exits.  Not wait4's
# ru_maxrss: Linux carries the parent's high-water mark across fork and exec, and pytest's is far larger.
PEAK_RSS = ("import sys\nfrom inspector.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')), file=sys.stderr)")


def _peak_rss(*arguments: object) -> int:
    """The peak resident set (bytes) of one command-line run in a fresh process."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, arguments)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_convert_memory_does_not_grow_with_the_largest_tensor(folder, tmp_path):
    """A checkpoint with 250,000-row bf16 embedding and head (256 MiB each in f32) converts in about the
    memory of the tiny one: far within the issue's 1.5x the largest tensor plus a constant."""
    from safetensors.torch import load_file, save_file

    big = tmp_path / "big"
    big.mkdir()
    vocab = 250_000
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["vocab_size"] = vocab
    (big / "config.json").write_text(json.dumps(config))
    tensors = {name: value.to(torch.bfloat16) for name, value in load_file(folder / "model.safetensors").items()}
    generator = torch.Generator().manual_seed(1)
    hidden = TEXT["hidden_size"]
    tensors["language_model.model.embed_tokens.weight"] = torch.randn(vocab + 8, hidden, generator=generator,
                                                                      dtype=torch.bfloat16)
    tensors["language_model.lm_head.weight"] = torch.randn(vocab, hidden, generator=generator, dtype=torch.bfloat16)
    save_file(tensors, big / "model.safetensors")
    del tensors
    largest = (vocab + 8) * hidden * 4
    for outtype in ("f16", "q4_k_m"):
        small = _peak_rss("mllama", "convert", folder, "-o", tmp_path / "small.gguf", "--outtype", outtype,
                          "--overwrite")
        large = _peak_rss("mllama", "convert", big, "-o", tmp_path / "large.gguf", "--outtype", outtype,
                          "--overwrite")
        print(f"convert --outtype {outtype}: peak RSS {small >> 20} MiB (tiny), {large >> 20} MiB (largest tensor "
              f"{largest >> 20} MiB in f32)")
        assert large - small < largest / 2, (outtype, small, large, largest)


def test_unknown_outtype_is_one_line(folder, tmp_path):
    result = cli("mllama", "convert", folder, "-o", tmp_path / "x.gguf", "--outtype", "q3_k_m")
    assert result.returncode == 2
    assert_one_line_error(result, "outtype")
    assert not (tmp_path / "x.gguf").exists()


def test_a_quantized_tensor_the_graph_reads_as_floats_is_refused_in_one_line(folder, runs, tmp_path, monkeypatch):
    """A file (written by the converter, its mix bent) with a Q8_0 norm: ggml would compute garbage or abort."""
    from gguf import GGMLQuantizationType

    from inspector.mllama.outtypes import TypeMix

    chosen = TypeMix.stored_type
    monkeypatch.setattr(TypeMix, "stored_type", lambda self, name, shape: GGMLQuantizationType.Q8_0
                        if name == "output_norm.weight" else chosen(self, name, shape))
    converter.convert(folder, tmp_path / "bent.gguf", "q8_0")
    assert {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "bent.gguf").tensors}["output_norm.weight"] \
        == "Q8_0"
    result = cli("mllama", "generate", tmp_path / "bent.gguf", "--image", runs["f32"]["image"], "--token-ids",
                 ",".join(map(str, PROMPT)), "-t", "1", "-o", tmp_path / "bent.h5")
    assert_one_line_error(result, "output_norm.weight is Q8_0; the graph reads it only as F16/F32")
    assert not (tmp_path / "bent.h5").exists()
