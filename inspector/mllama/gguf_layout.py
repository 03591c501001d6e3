"""The GGUF layout of an mllama checkpoint, and its Hugging Face names.

GGUF tensor names must fit ggml's 63 characters, so HF parameter names are
shortened by the tables below (``docs/mllama.md`` documents them).  The
vision tower and projector (``v.*``, ``mm.*``) keep their keys under
``mllama_vision.*``; a whole-model file (architecture ``mllama``) adds the
text model under the names of Ollama's llama.cpp mllama patch (``token_embd``,
``blk.N.*``, ``output*``, ``rope_freqs``) and its keys under ``mllama.*``.
"""

from __future__ import annotations

import re

ARCH = "mllama_vision"
KEY_IMAGE_SIZE = f"{ARCH}.image_size"
KEY_PATCH_SIZE = f"{ARCH}.patch_size"
KEY_MAX_TILES = f"{ARCH}.max_num_tiles"
KEY_CHANNELS = f"{ARCH}.num_channels"
KEY_HIDDEN = f"{ARCH}.embedding_length"
KEY_FFN = f"{ARCH}.feed_forward_length"
KEY_HEADS = f"{ARCH}.attention.head_count"
KEY_EPS = f"{ARCH}.attention.layer_norm_epsilon"
KEY_LAYERS = f"{ARCH}.block_count"
KEY_GLOBAL_LAYERS = f"{ARCH}.global_block_count"
KEY_INTERMEDIATE = f"{ARCH}.intermediate_layers_indices"
KEY_ASPECT_RATIOS = f"{ARCH}.supported_aspect_ratios"
KEY_PROJECTION_DIM = f"{ARCH}.projection_dim"
KEY_IMAGE_MEAN = f"{ARCH}.image_mean"
KEY_IMAGE_STD = f"{ARCH}.image_std"

# The whole model: general.architecture of a file with the text model too.
TEXT_ARCH = "mllama"
KEY_TEXT_VOCAB = f"{TEXT_ARCH}.vocab_size"  # text vocab_size = logits rows (token_embd has 8 more)
KEY_TEXT_CONTEXT = f"{TEXT_ARCH}.context_length"
KEY_TEXT_HIDDEN = f"{TEXT_ARCH}.embedding_length"
KEY_TEXT_LAYERS = f"{TEXT_ARCH}.block_count"
KEY_TEXT_FFN = f"{TEXT_ARCH}.feed_forward_length"
KEY_TEXT_HEADS = f"{TEXT_ARCH}.attention.head_count"
KEY_TEXT_HEADS_KV = f"{TEXT_ARCH}.attention.head_count_kv"
KEY_TEXT_EPS = f"{TEXT_ARCH}.attention.layer_norm_rms_epsilon"
KEY_TEXT_ROPE_BASE = f"{TEXT_ARCH}.rope.freq_base"
KEY_TEXT_ROPE_DIMS = f"{TEXT_ARCH}.rope.dimension_count"
KEY_TEXT_ROPE_SCALING = f"{TEXT_ARCH}.rope.scaling.type"  # "llama3" or "default"
KEY_CROSS_LAYERS = f"{TEXT_ARCH}.attention.cross_attention_layers"
KEY_IMAGE_TOKEN = f"{TEXT_ARCH}.image_token_id"
KEY_BOS = "tokenizer.ggml.bos_token_id"
KEY_EOS = "tokenizer.ggml.eos_token_id"
KEY_TOKENIZER_JSON = "tokenizer.huggingface.json"
# Rows of token_embd beyond vocab_size (the image token is row vocab_size).
EXTRA_EMBEDDING_ROWS = 8

TOKEN_EMBD = "token_embd.weight"
OUTPUT_NORM = "output_norm.weight"
OUTPUT = "output.weight"
ROPE_FREQS = "rope_freqs.weight"

_FIXED = {
    "vision_model.patch_embedding.weight": "v.patch_embd.weight",
    "vision_model.class_embedding": "v.class_embd",
    "vision_model.gated_positional_embedding.embedding": "v.pos_embd",
    "vision_model.gated_positional_embedding.gate": "v.pos_gate",
    "vision_model.gated_positional_embedding.tile_embedding.weight": "v.tile_pos_embd",
    "vision_model.pre_tile_positional_embedding.embedding.weight": "v.pre_tile_embd",
    "vision_model.pre_tile_positional_embedding.gate": "v.pre_tile_gate",
    "vision_model.post_tile_positional_embedding.embedding.weight": "v.post_tile_embd",
    "vision_model.post_tile_positional_embedding.gate": "v.post_tile_gate",
    "vision_model.layernorm_pre.weight": "v.ln_pre.weight",
    "vision_model.layernorm_pre.bias": "v.ln_pre.bias",
    "vision_model.layernorm_post.weight": "v.ln_post.weight",
    "vision_model.layernorm_post.bias": "v.ln_post.bias",
    "multi_modal_projector.weight": "mm.proj.weight",
    "multi_modal_projector.bias": "mm.proj.bias",
}
_LAYER_PARTS = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_out.weight",
    "mlp.fc1.weight": "ffn_up.weight",
    "mlp.fc1.bias": "ffn_up.bias",
    "mlp.fc2.weight": "ffn_down.weight",
    "mlp.fc2.bias": "ffn_down.bias",
    "input_layernorm.weight": "ln1.weight",
    "input_layernorm.bias": "ln1.bias",
    "post_attention_layernorm.weight": "ln2.weight",
    "post_attention_layernorm.bias": "ln2.bias",
    "gate_attn": "gate_attn",
    "gate_ffn": "gate_ffn",
}
_LAYER = re.compile(r"^vision_model\.(transformer|global_transformer)\.layers\.(\d+)\.(.+)$")


# Text model: names below the language-model prefix (see text_part).
_TEXT_FIXED = {
    "embed_tokens.weight": TOKEN_EMBD,
    "norm.weight": OUTPUT_NORM,
    "lm_head.weight": OUTPUT,
}
_TEXT_COMMON_PARTS = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TEXT_SELF_PARTS = {
    **_TEXT_COMMON_PARTS,
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
}
TEXT_CROSS_PARTS = {
    **_TEXT_COMMON_PARTS,
    "cross_attn.q_proj.weight": "cross_attn_q_proj.weight",
    "cross_attn.k_proj.weight": "cross_attn_k_proj.weight",
    "cross_attn.v_proj.weight": "cross_attn_v_proj.weight",
    "cross_attn.o_proj.weight": "cross_attn_o_proj.weight",
    "cross_attn.q_norm.weight": "cross_attn_q_norm.weight",
    "cross_attn.k_norm.weight": "cross_attn_k_norm.weight",
    "cross_attn_attn_gate": "cross_attn_attn_gate",
    "cross_attn_mlp_gate": "cross_attn_mlp_gate",
}
_TEXT_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
# On disk (save_pretrained, the hub checkpoint) and in memory (state_dict()) prefixes.
TEXT_PREFIX_ON_DISK = "language_model.model."
TEXT_HEAD_ON_DISK = "language_model.lm_head.weight"
TEXT_PREFIX_IN_MEMORY = "model.language_model."
TEXT_HEAD_IN_MEMORY = "lm_head.weight"


def text_part(hf_name: str) -> str | None:
    """The text-model name below its prefix (``layers.1.cross_attn_mlp_gate``, ``lm_head.weight``), or None.

    Accepts the on-disk ``language_model.model.*`` / ``language_model.lm_head.weight`` and the in-memory
    ``model.language_model.*`` / ``lm_head.weight``.
    """
    if hf_name in (TEXT_HEAD_ON_DISK, TEXT_HEAD_IN_MEMORY):
        return "lm_head.weight"
    for prefix in (TEXT_PREFIX_ON_DISK, TEXT_PREFIX_IN_MEMORY):
        if hf_name.startswith(prefix):
            return hf_name[len(prefix):]
    return None


def text_gguf_name(part: str) -> str | None:
    """GGUF name of a text-model part (see text_part), or None if not one the text model has."""
    if part in _TEXT_FIXED:
        return _TEXT_FIXED[part]
    match = _TEXT_LAYER.match(part)
    if match:
        leaf = match.group(2)
        mapped = TEXT_SELF_PARTS.get(leaf) or TEXT_CROSS_PARTS.get(leaf)
        if mapped is not None:
            return f"{text_layer_prefix(int(match.group(1)))}{mapped}"
    return None


def text_parts(n_layers: int, cross_layers: set[int] | frozenset[int]) -> list[str]:
    """Every text-model part a checkpoint with this config must hold (text_part names), in file order."""
    parts = ["embed_tokens.weight"]
    for index in range(n_layers):
        table = TEXT_CROSS_PARTS if index in cross_layers else TEXT_SELF_PARTS
        parts.extend(f"layers.{index}.{leaf}" for leaf in table)
    return parts + ["norm.weight", "lm_head.weight"]


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of an HF parameter (``model.`` prefix optional), or None if not part of the model."""
    part = text_part(hf_name)
    if part is not None:
        return text_gguf_name(part)
    name = hf_name.removeprefix("model.")
    if name in _FIXED:
        return _FIXED[name]
    match = _LAYER.match(name)
    if match and match.group(3) in _LAYER_PARTS:
        block = "blk" if match.group(1) == "transformer" else "gblk"
        return f"v.{block}.{match.group(2)}.{_LAYER_PARTS[match.group(3)]}"
    return None


def is_text_tensor(gguf: str) -> bool:
    """True for a text-model GGUF name (vision and projector names start with ``v.`` / ``mm.``)."""
    return not gguf.startswith(("v.", "mm."))


# The weights the graphs only multiply as mul_mat's first operand or gather rows of (token_embd): ggml
# computes those from any weight type (bf16, the quantized types); every other tensor is read as f32/f16.
_ANY_TYPE_TEXT = (".attn_q.weight", ".attn_k.weight", ".attn_v.weight", ".attn_output.weight", ".ffn_gate.weight",
                  ".ffn_up.weight", ".ffn_down.weight", ".cross_attn_q_proj.weight", ".cross_attn_k_proj.weight",
                  ".cross_attn_v_proj.weight", ".cross_attn_o_proj.weight")
_ANY_TYPE_VISION = (".attn_q.weight", ".attn_k.weight", ".attn_v.weight", ".attn_out.weight", ".ffn_up.weight",
                    ".ffn_down.weight")


def takes_any_weight_type(gguf: str) -> bool:
    """True for a tensor the mllama graphs can read in any weight type (a matrix mul_mat multiplies, token_embd)."""
    if gguf in (TOKEN_EMBD, OUTPUT, "mm.proj.weight"):
        return True
    if is_text_tensor(gguf):
        return gguf.startswith("blk.") and gguf.endswith(_ANY_TYPE_TEXT)
    return gguf.startswith(("v.blk.", "v.gblk.")) and gguf.endswith(_ANY_TYPE_VISION)


def layer_prefix(global_layer: bool, index: int) -> str:
    return f"v.{'gblk' if global_layer else 'blk'}.{index}."


def text_layer_prefix(index: int) -> str:
    return f"blk.{index}."
