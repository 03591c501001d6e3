"""llama.cpp's own converter on tiny transformers checkpoints: its GGUFs tokenize and compute as transformers does.

These are the feasibility checks behind comparing a port with its reference:
for Llama, Qwen3 and Gemma3 (tests/hf_models.py builds them), llama.cpp's
tokenizer gives transformers' ids and ``ggml-inspector capture`` of the GGUF
gives transformers' logits, computed here in float64, for every prompt token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import torch
import transformers
from hf_models import ARCHITECTURES, HfModel

from inspector import open_dump

PROMPT = "Hello, ggml world! The quick brown fox jumps over 42 lazy dogs."
# Digits, punctuation, repeated whitespace, letters outside ASCII and outside the corpus (byte fallback, or bytes),
# contractions. Not a leading space: for Llama there transformers' tokenizer departs from sentencepiece, which
# llama.cpp follows (" x" gives "▁▁x" in sentencepiece, "▁x" in transformers 5's LlamaTokenizer).
TEXTS = (PROMPT, "Über café naïve — 3.14159", "two  spaces\nand a newline\n\n\ttab", "emoji 🦙 and 日本語",
         "I've been told he's there", "trailing  ")
# float32 ggml against float64 transformers, with an f32 KV cache and without flash attention (whose CPU kernel
# rounds K and V to f16). Gemma3's is looser: ggml's CPU GELU reads a table indexed by the f16-rounded input
# (GGML_GELU_FP16 in ggml-cpu/vec.h). A mapping error is far above either: Gemma3 without its sliding window
# gives an NMSE of about 1.
NMSE_BOUND = {"llama": 1e-10, "qwen3": 1e-10, "gemma3": 1e-6}


def hf_ids(model: HfModel, text: str) -> list[int]:
    return transformers.AutoTokenizer.from_pretrained(model.folder)(text).input_ids


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_llama_cpp_tokenizes_as_transformers(hf_models: dict[str, HfModel], architecture: str):
    model = hf_models[architecture]
    vocab = llama_cpp.Llama(model_path=str(model.gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert vocab.tokenize(text.encode(), add_bos=True, special=False) == hf_ids(model, text), text


def capture_logits(model: HfModel, ids: list[int], out: Path) -> np.ndarray:
    """Every prompt row of result_output, captured by the CLI from ``ids`` fed as they are."""
    command = [sys.executable, "-m", "inspector", "capture", "-m", str(model.gguf), "--token-ids",
               ",".join(map(str, ids)), "-T", "result_output", "--all-logits", "-t", "1", "-fa", "off",
               "-ctk", "f32", "-ctv", "f32", "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        assert dump.result["token_ids"] == ids
        return dump.read("result_output")


def transformers_logits(model: HfModel, ids: list[int]) -> np.ndarray:
    reference = transformers.AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float64,
                                                                  attn_implementation="eager")
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_match_transformers(hf_models: dict[str, HfModel], architecture: str, tmp_path: Path):
    model = hf_models[architecture]
    ids = hf_ids(model, PROMPT)
    got = capture_logits(model, ids, tmp_path / "run.h5")
    expected = transformers_logits(model, ids)
    assert got.shape == expected.shape
    nmse = float(np.sum((got - expected) ** 2) / np.sum(expected**2))
    assert nmse < NMSE_BOUND[architecture], nmse


def test_gemma3_prompt_crosses_local_and_global_layers(hf_models: dict[str, HfModel]):
    """The logits test covers Gemma3's sliding window only if the prompt is longer than it, and both kinds of
    layer are there."""
    config = transformers.AutoConfig.from_pretrained(hf_models["gemma3"].folder)
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    assert len(hf_ids(hf_models["gemma3"], PROMPT)) > 2 * config.sliding_window
