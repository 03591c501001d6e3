"""Write a small, seeded LLaVA-1.5-style vision projector (``clip`` GGUF, projector type ``mlp``).

libmtmd loads it beside a generated language model (``--mmproj``): a CLIP
ViT (patch convolution with bias, class embedding, learned positions,
pre-layernorm, pre-norm blocks with biased attention and a GELU MLP) whose
second-to-last layer feeds a two-matrix GELU projector into the language
model's embedding width.  It is the oldest projector libmtmd supports and its
preprocessing is the simplest one that still resizes and pads: Pillow's
bicubic resize to fit ``image_size``, centred on the LLaVA grey
(122, 116, 104), then ``(x / 255 - mean) / std`` per channel.  Tests check
libmtmd's ``inp_raw`` against a numpy/Pillow version of exactly that.

Key and tensor names are libmtmd's (``tools/mtmd/clip-impl.h``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, Keys

# LLaVA-1.5's padding colour and OpenAI CLIP's normalisation, which libmtmd uses for "mlp" projectors.
PAD_COLOR = (122, 116, 104)
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Hyperparameters of a generated projector; ``text_n_embd`` must equal the language model's n_embd."""

    text_n_embd: int = 64
    image_size: int = 32
    patch_size: int = 8
    n_embd: int = 48
    n_ff: int = 96  # not n_embd: libmtmd swaps ffn_up/ffn_down of legacy files whose ffn_down is n_embd wide
    n_head: int = 4
    # libmtmd feeds the projector from the second-to-last layer, as LLaVA does.
    n_layer: int = 3
    projector_hidden: int = 80
    eps: float = 1e-5
    seed: int = 0

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def tiny_llava_tensors(spec: TinyLlavaSpec) -> dict[str, np.ndarray]:
    """The projector's weights in numpy (row-major) shapes; GGUF stores ``ne`` reversed."""
    rng = np.random.default_rng(spec.seed)
    d, f, p = spec.n_embd, spec.n_ff, spec.patch_size

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)

    tensors = {
        "v.patch_embd.weight": normal(d, 3, p, p, scale=(3 * p * p) ** -0.5),
        "v.patch_embd.bias": normal(d, scale=0.1),
        "v.class_embd": normal(d, scale=0.5),
        "v.position_embd.weight": normal(spec.n_patches + 1, d, scale=0.5),
        "v.pre_ln.weight": (1.0 + normal(d, scale=0.1)).astype(np.float32),
        "v.pre_ln.bias": normal(d, scale=0.1),
    }
    for layer in range(spec.n_layer):
        prefix = f"v.blk.{layer}."
        for role in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[prefix + role + ".weight"] = normal(d, d, scale=d ** -0.5)
            tensors[prefix + role + ".bias"] = normal(d, scale=0.05)
        for norm in ("ln1", "ln2"):
            tensors[prefix + norm + ".weight"] = (1.0 + normal(d, scale=0.1)).astype(np.float32)
            tensors[prefix + norm + ".bias"] = normal(d, scale=0.05)
        tensors[prefix + "ffn_up.weight"] = normal(f, d, scale=d ** -0.5)
        tensors[prefix + "ffn_up.bias"] = normal(f, scale=0.05)
        tensors[prefix + "ffn_down.weight"] = normal(d, f, scale=f ** -0.5)
        tensors[prefix + "ffn_down.bias"] = normal(d, scale=0.05)
    tensors["mm.0.weight"] = normal(spec.projector_hidden, d, scale=d ** -0.5)
    tensors["mm.0.bias"] = normal(spec.projector_hidden, scale=0.05)
    tensors["mm.2.weight"] = normal(spec.text_n_embd, spec.projector_hidden, scale=spec.projector_hidden ** -0.5)
    tensors["mm.2.bias"] = normal(spec.text_n_embd, scale=0.05)
    return tensors


def write_tiny_llava(path: str | os.PathLike[str], spec: TinyLlavaSpec = TinyLlavaSpec()) -> Path:
    """Write the projector described by ``spec`` to ``path`` (all f32) and return the path."""
    path = Path(path)
    writer = GGUFWriter(str(path), "clip")
    writer.add_name("tiny-llava-projector")
    writer.add_string(Keys.Clip.PROJECTOR_TYPE, "mlp")
    writer.add_bool(Keys.Clip.HAS_VISION_ENCODER, True)
    writer.add_bool(Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    writer.add_uint32(Keys.ClipVision.IMAGE_SIZE, spec.image_size)
    writer.add_uint32(Keys.ClipVision.PATCH_SIZE, spec.patch_size)
    writer.add_uint32(Keys.ClipVision.EMBEDDING_LENGTH, spec.n_embd)
    writer.add_uint32(Keys.ClipVision.FEED_FORWARD_LENGTH, spec.n_ff)
    writer.add_uint32(Keys.ClipVision.BLOCK_COUNT, spec.n_layer)
    writer.add_uint32(Keys.ClipVision.PROJECTION_DIM, spec.text_n_embd)
    writer.add_uint32(Keys.ClipVision.Attention.HEAD_COUNT, spec.n_head)
    writer.add_float32(Keys.ClipVision.Attention.LAYERNORM_EPS, spec.eps)
    writer.add_array(Keys.ClipVision.IMAGE_MEAN, list(IMAGE_MEAN))
    writer.add_array(Keys.ClipVision.IMAGE_STD, list(IMAGE_STD))
    writer.add_bool(Keys.ClipVision.USE_GELU, True)
    for name, array in tiny_llava_tensors(spec).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
