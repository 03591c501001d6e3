"""A seeded random-weight mllama vision tower + projector, written as GGUF without torch.

The weights use Hugging Face's parameter names and shapes and go through the
same converter as a real checkpoint (``inspector.mllama.convert.write_gguf``),
so the demo and the tests that need no reference implementation exercise the
real conversion path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.mllama.convert import write_gguf


@dataclass(frozen=True)
class TinyMllamaSpec:
    hidden: int = 32
    ffn: int = 64
    heads: int = 4
    layers: int = 4
    global_layers: int = 2
    intermediate: tuple[int, ...] = (1, 3)
    image_size: int = 28
    patch_size: int = 14
    max_tiles: int = 4
    text_hidden: int = 48
    seed: int = 0

    def config(self) -> dict:
        """The HF config.json fields the converter reads."""
        ratios = [[w, h] for w in range(1, self.max_tiles + 1) for h in range(1, self.max_tiles + 1)
                  if w * h <= self.max_tiles]
        return {
            "model_type": "mllama", "_name_or_path": "tiny-mllama",
            "vision_config": {
                "hidden_size": self.hidden, "intermediate_size": self.ffn, "attention_heads": self.heads,
                "num_hidden_layers": self.layers, "num_global_layers": self.global_layers,
                "intermediate_layers_indices": list(self.intermediate), "image_size": self.image_size,
                "patch_size": self.patch_size, "max_num_tiles": self.max_tiles, "num_channels": 3,
                "norm_eps": 1e-5, "supported_aspect_ratios": ratios,
                "vision_output_dim": self.hidden * (1 + len(self.intermediate)),
            },
            "text_config": {"hidden_size": self.text_hidden},
        }


def tiny_mllama_tensors(spec: TinyMllamaSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    d, f = spec.hidden, spec.ffn
    positions = (spec.image_size // spec.patch_size) ** 2 + 1
    ids = len(spec.config()["vision_config"]["supported_aspect_ratios"]) + 1

    def normal(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    v = "vision_model."
    tensors = {
        v + "patch_embedding.weight": normal(d, 3, spec.patch_size, spec.patch_size, scale=0.05),
        v + "class_embedding": normal(d),
        v + "gated_positional_embedding.embedding": normal(positions, d),
        v + "gated_positional_embedding.gate": normal(1, scale=1.0),
        v + "gated_positional_embedding.tile_embedding.weight": normal(ids, spec.max_tiles * positions * d),
        v + "pre_tile_positional_embedding.embedding.weight": normal(ids, spec.max_tiles * d),
        v + "pre_tile_positional_embedding.gate": normal(1, scale=1.0),
        v + "post_tile_positional_embedding.embedding.weight": normal(ids, spec.max_tiles * d),
        v + "post_tile_positional_embedding.gate": normal(1, scale=1.0),
        v + "layernorm_pre.weight": 1 + normal(d), v + "layernorm_pre.bias": normal(d),
        v + "layernorm_post.weight": 1 + normal(d), v + "layernorm_post.bias": normal(d),
        "multi_modal_projector.weight": normal(spec.text_hidden, d * (1 + len(spec.intermediate))),
        "multi_modal_projector.bias": normal(spec.text_hidden),
    }
    for stack, count in (("transformer", spec.layers), ("global_transformer", spec.global_layers)):
        for index in range(count):
            p = f"{v}{stack}.layers.{index}."
            for proj in "qkvo":
                tensors[f"{p}self_attn.{proj}_proj.weight"] = normal(d, d)
            tensors[p + "mlp.fc1.weight"], tensors[p + "mlp.fc1.bias"] = normal(f, d), normal(f)
            tensors[p + "mlp.fc2.weight"], tensors[p + "mlp.fc2.bias"] = normal(d, f), normal(d)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                tensors[f"{p}{norm}.weight"], tensors[f"{p}{norm}.bias"] = 1 + normal(d), normal(d)
            if stack == "global_transformer":
                tensors[p + "gate_attn"], tensors[p + "gate_ffn"] = normal(1, scale=1.0), normal(1, scale=1.0)
    return tensors


def write_tiny_mllama(path: str | os.PathLike[str], spec: TinyMllamaSpec = TinyMllamaSpec(),
                      dtype: str = "f32") -> Path:
    return write_gguf(spec.config(), tiny_mllama_tensors(spec), path, dtype)
