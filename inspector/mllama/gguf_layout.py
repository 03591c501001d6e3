"""The GGUF layout of an mllama vision tower + projector, and its Hugging Face names.

GGUF tensor names must fit ggml's 63 characters, so HF parameter names are
shortened by the table below (``docs/mllama.md`` documents it).  Keys live
under the architecture ``mllama_vision``.
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


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of an HF parameter (``model.`` prefix optional), or None if not part of the tower."""
    name = hf_name.removeprefix("model.")
    if name in _FIXED:
        return _FIXED[name]
    match = _LAYER.match(name)
    if match and match.group(3) in _LAYER_PARTS:
        block = "blk" if match.group(1) == "transformer" else "gblk"
        return f"v.{block}.{match.group(2)}.{_LAYER_PARTS[match.group(3)]}"
    return None


def layer_prefix(global_layer: bool, index: int) -> str:
    return f"v.{'gblk' if global_layer else 'blk'}.{index}."
