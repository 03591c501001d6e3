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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType

BOS_ID = 1
EOS_ID = 2
BYTE_TOKEN_BASE = 3
N_VOCAB = BYTE_TOKEN_BASE + 256
SPM_SPACE = "\u2581"
# dtype="quant": each matrix gets a type the CPU backend repacks on x86 (AVX2) when its
# ne[1] is a multiple of 8 (ggml-cpu/repack.cpp), as a K-quant conversion mixes them;
# the embedding stays Q8_0, which is not repacked there.
QUANT_MIX = {
    "attn_q.weight": GGMLQuantizationType.Q4_0,
    "attn_k.weight": GGMLQuantizationType.Q4_K,
    "attn_v.weight": GGMLQuantizationType.IQ4_NL,
    "attn_output.weight": GGMLQuantizationType.Q4_K,
    "ffn_gate.weight": GGMLQuantizationType.Q4_0,
    "ffn_up.weight": GGMLQuantizationType.IQ4_NL,
    "ffn_down.weight": GGMLQuantizationType.Q6_K,
    "output.weight": GGMLQuantizationType.Q6_K,
    "token_embd.weight": GGMLQuantizationType.Q8_0,
}
# dtype="q4_k_m": what llama.cpp's Q4_K_M conversion makes of a llama: Q4_K matrices, Q6_K for
# the output and for attn_v/ffn_down in half of the layers, Q8_0 where rows are too short for
# a K-quant's 256-element blocks.
Q4_K_M_MIX = {
    "token_embd.weight": GGMLQuantizationType.Q4_K,
    "output.weight": GGMLQuantizationType.Q6_K,
}
DTYPES = ("f32", "f16", "quant", "q4_k_m")


def _q4_k_m_type(name: str, layer: int | None, n_layer: int, row_length: int) -> GGMLQuantizationType:
    if row_length % 256:
        return GGMLQuantizationType.Q8_0
    if name in Q4_K_M_MIX:
        return Q4_K_M_MIX[name]
    more_bits = layer is not None and (layer < n_layer // 8 or layer >= 7 * n_layer // 8 or layer % 3 == 2)
    if more_bits and (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")):
        return GGMLQuantizationType.Q6_K
    return GGMLQuantizationType.Q4_K


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
    dtype: str = "f32"  # one of DTYPES; "quant" needs n_embd and n_ff multiples of 256
    seed: int = 0
    name: str = "tiny-llama"
    # (layer, flat index, added value): a planted change, for divergence tests.
    perturb: tuple[int, int, float] | None = None
    # Tokens beyond the 259 byte-level ones are fillers: a real vocabulary's size (262,144)
    # is what makes metadata arrays cost O(vocabulary) to a careless reader.
    n_vocab: int = N_VOCAB
    # tokenizer.chat_template, for chat-formatting tests.
    chat_template: str | None = None
    # With dtype "quant": only these layers' matrices are quantized (None: every layer), so that offloading
    # the others moves no repacked weight, a boundary a test can plant.
    quant_layers: tuple[int, ...] | None = None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def byte_token_ids(text: str, add_bos: bool = True) -> list[int]:
    """Token ids the generated vocabulary gives ``text`` (computed without llama.cpp)."""
    escaped = text.replace(" ", SPM_SPACE)
    ids = [BYTE_TOKEN_BASE + byte for byte in escaped.encode("utf-8")]
    return [BOS_ID, *ids] if add_bos else ids


def _vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    fillers = n_vocab - N_VOCAB
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    tokens += [f"tok{index}" for index in range(fillers)]
    scores = [0.0] * n_vocab
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types] + [int(TokenType.NORMAL)] * fillers


def _weights(spec: TinyLlamaSpec) -> Iterator[tuple[str, np.ndarray]]:
    """Random weights in numpy (row-major) shapes, one at a time; GGUF stores ``ne`` as the reverse."""
    rng = np.random.default_rng(spec.seed)
    d, f, kv = spec.n_embd, spec.n_ff, spec.head_dim * spec.n_head_kv

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)

    yield "token_embd.weight", normal(spec.n_vocab, d, scale=1.0)
    for layer in range(spec.n_layer):
        prefix = f"blk.{layer}."
        yield prefix + "attn_norm.weight", (1.0 + normal(d, scale=0.1)).astype(np.float32)
        attn_q = normal(d, d, scale=d**-0.5)
        if spec.perturb is not None and spec.perturb[0] == layer:
            attn_q.reshape(-1)[spec.perturb[1]] += np.float32(spec.perturb[2])
        yield prefix + "attn_q.weight", attn_q
        yield prefix + "attn_k.weight", normal(kv, d, scale=d**-0.5)
        yield prefix + "attn_v.weight", normal(kv, d, scale=d**-0.5)
        yield prefix + "attn_output.weight", normal(d, d, scale=d**-0.5)
        yield prefix + "ffn_norm.weight", (1.0 + normal(d, scale=0.1)).astype(np.float32)
        yield prefix + "ffn_gate.weight", normal(f, d, scale=d**-0.5)
        yield prefix + "ffn_up.weight", normal(f, d, scale=d**-0.5)
        yield prefix + "ffn_down.weight", normal(d, f, scale=f**-0.5)
    yield "output_norm.weight", (1.0 + normal(d, scale=0.1)).astype(np.float32)
    yield "output.weight", normal(spec.n_vocab, d, scale=d**-0.5)


def _quant_type(spec: TinyLlamaSpec, name: str, array: np.ndarray) -> GGMLQuantizationType | None:
    """The type a matrix is stored in under ``spec.dtype`` (None: float)."""
    if array.ndim != 2:
        return None
    layer = int(name.split(".")[1]) if name.startswith("blk.") else None
    if spec.dtype == "quant":
        if spec.quant_layers is not None and layer not in spec.quant_layers:
            return None
        role = name.split(".", 2)[2] if layer is not None else name  # blk.3.attn_q.weight -> attn_q.weight
        return QUANT_MIX.get(role)
    if spec.dtype == "q4_k_m":
        return _q4_k_m_type(name, layer, spec.n_layer, array.shape[1])
    return None


def write_tiny_llama(path: str | os.PathLike[str], spec: TinyLlamaSpec = TinyLlamaSpec()) -> Path:
    """Write the model described by ``spec`` to ``path`` and return the path."""
    if spec.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {spec.dtype!r}")
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
    writer.add_vocab_size(spec.n_vocab)
    writer.add_file_type({"f32": 0, "f16": 1, "quant": 15, "q4_k_m": 15}[spec.dtype])  # 15: MOSTLY_Q4_K_M
    tokens, scores, types = _vocabulary(spec.n_vocab)
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
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)
    # Weights are made one at a time and quantized at once: a 262k-vocabulary f32 embedding
    # alone is ~800 MB, its Q4_K form a seventh of that.
    for name, array in _weights(spec):
        quant_type = _quant_type(spec, name, array)
        if quant_type is not None:
            from inspector.ggml.quantize import quantize_rows

            stored, raw_dtype = quantize_rows(array, quant_type), quant_type
        else:
            # Norm weights stay f32, as llama.cpp's converters keep them.
            stored, raw_dtype = (array if spec.dtype != "f16" or array.ndim == 1 else array.astype(np.float16)), None
        writer.add_tensor(name, stored, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
