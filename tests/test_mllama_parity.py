"""build_mllama against Hugging Face's MllamaVisionModel + projector, on a tiny random model.

transformers builds and saves the model here (the ``reference`` extra);
our converter reads the safetensors without torch, build_mllama runs it on a
real ggml scheduler, and every compared tensor must match with NMSE < 1e-10.
The reference side is ``capture-hf``'s mllama map: transformers' own image
processor and forward hooks, its vision tower in the dump's encode evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import assert_one_line_error, cli
from tiny_mllama_hf import convert_with_cli
from transformers import MllamaConfig, MllamaForConditionalGeneration

from inspector import open_dump
from inspector.capture.selection import Selection
from inspector.reference.capture import HfRunConfig, capture_hf

NMSE_LIMIT = 1e-10
INTERMEDIATE = [1, 3]
IMAGE_TOKEN = 300
COMPARED = ("ln_pre", "layer_out-0", "layer_out-3", "ln_post", "global_layer_out-1", "vision_out", "ca_patch_embd")


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                           attention_heads=4, image_size=28, patch_size=14, max_num_tiles=4,
                           intermediate_layers_indices=INTERMEDIATE, vision_output_dim=96, norm_eps=1e-5),
        text_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         cross_attention_layers=[1], max_position_embeddings=128),
        image_token_index=IMAGE_TOKEN,  # the default 128256 lies outside a 308-row table: convert refuses it
    )
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "gate" in name:  # HF initialises gates to 0 or pi/4: randomise so every gated path counts
                parameter.copy_(torch.randn_like(parameter))
            elif "vision_model" in name or "multi_modal_projector" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    folder = tmp_path_factory.mktemp("hf") / "tiny-mllama"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory) -> Path:
    return convert_with_cli(hf_model, tmp_path_factory.mktemp("gguf") / "vision.gguf")


def reference_outputs(folder: Path, image_path: Path, out: Path) -> dict[str, np.ndarray]:
    """transformers' tensors for the same image: capture-hf of the checkpoint, its encode evaluation."""
    capture_hf(HfRunConfig(str(folder), token_ids=[1, IMAGE_TOKEN], image=str(image_path)),
               Selection(globs=COMPARED), out)
    with open_dump(out) as dump:
        assert dump.evaluations[0]["kind"] == "encode"
        return {name: dump.read(name, eval_index=0) for name in COMPARED}


def nmse(ours: np.ndarray, reference: np.ndarray) -> float:
    a = reference.astype(np.float64)
    return float(np.sum((ours.astype(np.float64) - a) ** 2) / np.sum(a * a))


# (w, h) -> tiles: 1 tile, a 1x2 wide grid, a 3x1 tall grid (non-square), 2x2
IMAGES = {(20, 25): 1, (50, 22): 2, (20, 80): 3, (60, 50): 4}


@pytest.mark.parametrize("size", list(IMAGES), ids=[f"{w}x{h}" for w, h in IMAGES])
def test_ca_patch_embd_and_hidden_states_match_hf(hf_model, converted, tmp_path, size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image_path = tmp_path / "image.png"
    image.save(image_path)
    out = tmp_path / "encode.h5"
    result = cli("mllama", "encode", converted, "--image", image_path, "--threads", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    reference = reference_outputs(hf_model, image_path, tmp_path / "hf.h5")
    with open_dump(out) as dump:
        geometry = dump.config["geometry"]
        assert geometry["num_tiles"] == IMAGES[size]
        for name in COMPARED:
            ours = dump.read(name)
            assert ours.shape == reference[name].shape, name
            assert nmse(ours, reference[name]) < NMSE_LIMIT, (name, nmse(ours, reference[name]))


def test_f16_conversion_is_close(hf_model, tmp_path):
    out = tmp_path / "vision-f16.gguf"
    assert cli("mllama", "convert", hf_model, "-o", out, "--dtype", "f16").returncode == 0
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    assert cli("mllama", "encode", out, "--image", tmp_path / "image.png", "-T", "ca_patch_embd",
               "-o", tmp_path / "f16.h5").returncode == 0
    with open_dump(tmp_path / "f16.h5") as dump:
        error = nmse(dump.read("ca_patch_embd"),
                     reference_outputs(hf_model, tmp_path / "image.png", tmp_path / "hf.h5")["ca_patch_embd"])
    assert 0 < error < 1e-4


def test_convert_bad_inputs(tmp_path, hf_model):
    assert_one_line_error(cli("mllama", "convert", tmp_path, "-o", tmp_path / "x.gguf"), "no config.json")
    folder = hf_model
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    (broken / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:5000])
    assert_one_line_error(cli("mllama", "convert", broken, "-o", tmp_path / "y.gguf"), "safetensors")
