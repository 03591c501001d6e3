"""Which ggml type ``mllama convert --outtype`` stores each tensor in.

llama.cpp's ``llama-quantize`` refuses the ``mllama`` architecture, so the
converter quantizes itself, with ggml's own quantizer, and picks the types by
the rules ``llama_tensor_get_type`` (``src/llama-quant.cpp`` of the pinned
llama.cpp) applies to a llama model, matched on the same tensor names:

======================================  ======  ======  ======  ======  ======  ======  =======
tensor                                  f32     f16     bf16    q8_0    q6_k    q4_k    q4_k_m
======================================  ======  ======  ======  ======  ======  ======  =======
``token_embd``                          F32     F32     F32     Q8_0    Q6_K    Q4_K    Q4_K
``output``                              F32     F16     BF16    Q8_0    Q6_K    Q4_K    Q6_K
``blk.N.attn_v`` (self-attention)       F32     F16     BF16    Q8_0    Q6_K    Q4_K    Q6_K/Q4_K [1]
``blk.N.ffn_down`` (every layer)        F32     F16     BF16    Q8_0    Q6_K    Q4_K    Q6_K/Q4_K [2]
other text matrices (attn_q, attn_k,    F32     F16     BF16    Q8_0    Q6_K    Q4_K    Q4_K
attn_output, ffn_gate, ffn_up,
``cross_attn_{q,k,v,o}_proj``)
norms, gates, ``rope_freqs``            F32     F32     F32     F32     F32     F32     F32
vision and projector matrices           F32     F16     BF16    F16     F16     F16     F16
``v.patch_embd`` (the patch kernel)     F32     F16     F16     F16     F16     F16     F16
vision embeddings, biases, norms        F32     F32     F32     F32     F32     F32     F32
======================================  ======  ======  ======  ======  ======  ======  =======

[1] Q6_K where ``use_more_bits(i, n)`` holds for the i-th of the n
``attn_v`` tensors (the self-attention layers, in order), Q4_K elsewhere:
V is shared by every query head of a KV group (4 here), so its error
reaches four heads.  ``cross_attn_v_proj`` does not match llama.cpp's
``attn_v.weight`` pattern (nor Ollama's, which copies it) and keeps Q4_K.
[2] Q6_K where ``use_more_bits(layer, n_layers)`` holds, Q4_K elsewhere:
the first and last eighth of the layers and every third between, where
llama.cpp measured ffn_down's error costing the most perplexity.
``use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2``.
For Llama 3.2 11B (40 layers, 32 of them self-attention) that is 16 of 32
``attn_v`` and 20 of 40 ``ffn_down`` in Q6_K.

``output`` gets Q6_K in q4_k_m (llama.cpp: the logits are the most
sensitive matrix); q8_0 and q6_k are llama.cpp's Q8_0 and Q6_K ftypes,
which change nothing by tensor for a llama model; q4_k is every quantizable
tensor in Q4_K, as ``llama-quantize --pure`` does.  ``token_embd`` is
quantized as llama-quantize quantizes it (ggml's get_rows reads any
quantized type); the float outtypes keep it in f32 as the converter always
has.  Tensors llama.cpp never quantizes stay f32: 1-D tensors, names not
ending in ``weight`` (the tanh gates), ``*_norm.weight``, ``rope_freqs``.

**Fallback** (llama.cpp's ``tensor_type_fallback``): a matrix whose rows
(ggml ``ne[0]``, the input width) are not a multiple of the type's block
(256 for the K-quants, 32 for Q8_0) is stored in Q5_0 instead of Q4_K, in
Q8_0 instead of Q6_K, and in F16 when not even a multiple of 32.

**The vision tower and projector are not quantized** (F16 in every
quantized outtype): llama.cpp's mtmd runs vision encoders from
``convert_hf_to_gguf --mmproj`` files, f16 by default, and never applies
``llama-quantize``'s mixes to them; every image token passes through all
40 layers, and at ~0.9 B parameters they are a sixth of the 11B model.  The
patch kernel is F16 also in bf16 files: ggml's im2col writes f16 or f32
columns only, and the kernel multiplies them as an f16 (or f32) operand.
"""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inspector.constants import MLLAMA_OUTTYPES as OUTTYPES
from inspector.errors import InspectorError
from inspector.mllama import gguf_layout as L

T = GGMLQuantizationType
FLOAT_TYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16}
# The default type of each quantized outtype (llama.cpp's ftype's default_type).
QUANTIZED = {"q8_0": T.Q8_0, "q6_k": T.Q6_K, "q4_k": T.Q4_K, "q4_k_m": T.Q4_K}
# llama.cpp's tensor_type_fallback for the types an outtype here can pick.
FALLBACK = {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}
PATCH_KERNEL = "v.patch_embd.weight"


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise InspectorError(f"--outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")


def use_more_bits(index: int, count: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth, and every third tensor between."""
    return index < count // 8 or index >= 7 * count // 8 or (index - count // 8) % 3 == 2


def fallback(kind: GGMLQuantizationType, row: int) -> GGMLQuantizationType:
    """The type llama.cpp stores a matrix with rows of ``row`` elements in, when ``kind``'s block does not fit."""
    if row % GGML_QUANT_SIZES[kind][0] == 0:
        return kind
    kind = FALLBACK.get(kind, kind)
    return kind if row % GGML_QUANT_SIZES[kind][0] == 0 else T.F16


class TypeMix:
    """The stored type of every tensor of one file, for one ``--outtype`` (see the module's table)."""

    def __init__(self, outtype: str, text_layers: int = 0, cross_layers: tuple[int, ...] = ()) -> None:
        check_outtype(outtype)
        self.outtype = outtype
        self.text_layers = text_layers
        # attn_v's index counts self-attention layers only: cross-attention layers have no attn_v.weight.
        self.self_layers = [i for i in range(text_layers) if i not in cross_layers]

    def stored_type(self, name: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
        if self.outtype == "f32":
            return T.F32
        if name == PATCH_KERNEL:
            return T.F16
        if len(shape) < 2 or not L.takes_any_weight_type(name):
            return T.F32  # norms, gates, biases, embeddings and position tables, rope_freqs
        if not L.is_text_tensor(name):
            return FLOAT_TYPES.get(self.outtype, T.F16)
        if self.outtype in FLOAT_TYPES:
            return T.F32 if name == L.TOKEN_EMBD else FLOAT_TYPES[self.outtype]
        return fallback(self._quantized(name), shape[-1])

    def _quantized(self, name: str) -> GGMLQuantizationType:
        default = QUANTIZED[self.outtype]
        if self.outtype != "q4_k_m":
            return default
        if name == L.OUTPUT:
            return T.Q6_K
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        if name.endswith(".attn_v.weight") and layer in self.self_layers:
            more = use_more_bits(self.self_layers.index(layer), len(self.self_layers))
        elif name.endswith(".ffn_down.weight") and layer is not None:
            more = use_more_bits(layer, self.text_layers)
        else:
            more = False
        return T.Q6_K if more else default
