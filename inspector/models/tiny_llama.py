"""Write a small, seeded, random-weight llama-architecture GGUF.

The vocabulary is byte-level so that token ids are known without running a
tokenizer: ``<unk>``, ``<s>``, ``</s>``, then one byte token per value.  As
in every SentencePiece ("llama") vocabulary, a space is first escaped to
U+2581, so the text ``t`` tokenizes to ``[BOS]`` followed by
``BYTE_TOKEN_BASE + byte`` for each UTF-8 byte of ``t.replace(" ", "\u2581")``.
No network, ever: tests, the demo and the benchmarks all generate their model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

BOS_ID = 1
EOS_ID = 2
BYTE_TOKEN_BASE = 3
N_VOCAB = BYTE_TOKEN_BASE + 256
SPM_SPACE = "\u2581"


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Hyperparameters of a generated model; the defaults make a ~0.5 MB model."""

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 256
    rms_eps: float = 1e-5
    rope_base: float = 10000.0
    dtype: str = "f32"
    seed: int = 0
    name: str = "tiny-llama"
    # (layer, flat index, added value): a planted change, for divergence tests.
    perturb: tuple[int, int, float] | None = None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def byte_token_ids(text: str, add_bos: bool = True) -> list[int]:
    """Token ids the generated vocabulary gives ``text`` (computed without llama.cpp)."""
    escaped = text.replace(" ", SPM_SPACE)
    ids = [BYTE_TOKEN_BASE + byte for byte in escaped.encode("utf-8")]
    return [BOS_ID, *ids] if add_bos else ids


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    scores = [0.0] * N_VOCAB
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types]


def _weights(spec: TinyLlamaSpec) -> dict[str, np.ndarray]:
    """Random weights in numpy (row-major) shapes; GGUF stores ``ne`` as the reverse."""
    rng = np.random.default_rng(spec.seed)
    d, f, kv = spec.n_embd, spec.n_ff, spec.head_dim * spec.n_head_kv

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {"token_embd.weight": normal(N_VOCAB, d, scale=1.0)}
    for layer in range(spec.n_layer):
        prefix = f"blk.{layer}."
        weights[prefix + "attn_norm.weight"] = (1.0 + normal(d, scale=0.1)).astype(np.float32)
        weights[prefix + "attn_q.weight"] = normal(d, d, scale=d**-0.5)
        weights[prefix + "attn_k.weight"] = normal(kv, d, scale=d**-0.5)
        weights[prefix + "attn_v.weight"] = normal(kv, d, scale=d**-0.5)
        weights[prefix + "attn_output.weight"] = normal(d, d, scale=d**-0.5)
        weights[prefix + "ffn_norm.weight"] = (1.0 + normal(d, scale=0.1)).astype(np.float32)
        weights[prefix + "ffn_gate.weight"] = normal(f, d, scale=d**-0.5)
        weights[prefix + "ffn_up.weight"] = normal(f, d, scale=d**-0.5)
        weights[prefix + "ffn_down.weight"] = normal(d, f, scale=f**-0.5)
    weights["output_norm.weight"] = (1.0 + normal(d, scale=0.1)).astype(np.float32)
    weights["output.weight"] = normal(N_VOCAB, d, scale=d**-0.5)
    if spec.perturb is not None:
        layer, index, delta = spec.perturb
        target = weights[f"blk.{layer}.attn_q.weight"].reshape(-1)
        target[index] += np.float32(delta)
    return weights


def write_tiny_llama(path: str | os.PathLike[str], spec: TinyLlamaSpec = TinyLlamaSpec()) -> Path:
    """Write the model described by ``spec`` to ``path`` and return the path."""
    if spec.dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be f32 or f16, not {spec.dtype!r}")
    path = Path(path)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(spec.name)
    writer.add_context_length(spec.n_ctx_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_rope_freq_base(spec.rope_base)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_vocab_size(N_VOCAB)
    writer.add_file_type(0 if spec.dtype == "f32" else 1)
    tokens, scores, types = _vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    for name, array in _weights(spec).items():
        # Norm weights stay f32, as llama.cpp's converters keep them.
        keep_f32 = spec.dtype == "f32" or array.ndim == 1
        writer.add_tensor(name, array if keep_f32 else array.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
