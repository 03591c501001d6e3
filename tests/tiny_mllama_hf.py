"""A tiny random Hugging Face MllamaForConditionalGeneration for tests.

Shared by the converter and text-model tests.  The text model uses Llama 3
("llama3") RoPE scaling so that every freq_factors regime is exercised
(head_dim 12: factors [1, 1, 1, 2.6945298, 8, 8]).  Every tanh gate is opened
(HF initialises them to 0, which would make the whole cross-attention path a
no-op) and every other parameter is perturbed (HF initialises norms to exactly
1, which would hide a missing norm-weight multiply).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration

VOCAB = 300
IMAGE_TOKEN = VOCAB  # first of the 8 extra embedding rows, like 128256 in the real model
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# tiles -> aspect_ratio_id (1-based) with supported_aspect_ratios
# [[1,1],[1,2],[1,3],[1,4],[2,1],[2,2],[3,1],[4,1]]
CASES = {1: 1, 2: 2, 4: 6}

# exact leaf names of the tanh gates: NOT mlp.gate_proj / gated_positional_embedding.embedding
GATES = ("gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate", "cross_attn_mlp_gate")


def make_config() -> MllamaConfig:
    return MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                           attention_heads=4, image_size=28, patch_size=14, max_num_tiles=4,
                           intermediate_layers_indices=[1, 3], vision_output_dim=96, norm_eps=1e-5),
        text_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         cross_attention_layers=[1, 3], max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters=dict(ROPE)),
        image_token_index=IMAGE_TOKEN,
    )


def make_model(seed: int = 0, **text: object) -> MllamaForConditionalGeneration:
    """The tiny model; ``text`` overrides text_config settings (widths the quantized types' blocks fit)."""
    torch.manual_seed(seed)
    config = make_config()
    for key, value in text.items():
        setattr(config.text_config, key, value)
    config._attn_implementation = "eager"  # after save: from_pretrained(folder, attn_implementation="eager")
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in GATES:
                p.copy_(torch.randn_like(p))  # open every tanh gate (HF inits them to 0)
            else:
                p.add_(torch.randn_like(p) * 0.1)  # norms init to exactly 1, linears/embeddings std 0.02: perturb
    return model


def inputs(model, tiles: int, ar_id: int, seq: int = 10, image_pos: int = 3, seed: int = 0) -> dict:
    """HF forward inputs for one image of ``tiles`` real tiles, as MllamaProcessor would build them."""
    g = torch.Generator().manual_seed(seed)
    vc = model.config.vision_config
    T = vc.max_num_tiles
    pixel_values = torch.randn(1, 1, T, 3, vc.image_size, vc.image_size, generator=g)
    pixel_values[:, :, tiles:] = 0  # padding tiles are zeros (processor / our preprocess)
    aspect_ratio_ids = torch.tensor([[ar_id]])  # (B, num_images), 1-based; 0 = no image
    aspect_ratio_mask = torch.zeros(1, 1, T, dtype=torch.long)
    aspect_ratio_mask[:, :, :tiles] = 1
    input_ids = torch.randint(3, VOCAB, (1, seq), generator=g)
    input_ids[0, 0] = 1
    input_ids[0, image_pos] = IMAGE_TOKEN
    cross_attention_mask = torch.zeros(1, seq, 1, T, dtype=torch.long)
    cross_attention_mask[0, image_pos:, 0, :tiles] = 1  # from the image token to the end, real tiles only
    return dict(input_ids=input_ids, pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids,
                aspect_ratio_mask=aspect_ratio_mask, cross_attention_mask=cross_attention_mask)


def save(model, folder: Path) -> Path:
    """save_pretrained into ``folder`` (safetensors + config.json); returns the folder."""
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def convert_with_cli(folder: Path, out: Path) -> Path:
    """``mllama convert`` through the command line, as a user runs it; the GGUF's path."""
    from test_cli import cli

    result = cli("mllama", "convert", folder, "-o", out)
    assert result.returncode == 0, result.stderr
    return out
