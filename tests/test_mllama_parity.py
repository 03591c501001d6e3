"""build_mllama against Hugging Face's MllamaVisionModel + projector, on a tiny random model.

transformers builds and saves the model here (the ``reference`` extra);
our converter reads the safetensors without torch, build_mllama runs it on a
real ggml scheduler, and every compared tensor must match with NMSE < 1e-10.
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
from inspector.mllama.preprocess import PreprocessConfig, preprocess

NMSE_LIMIT = 1e-10
INTERMEDIATE = [1, 3]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                           attention_heads=4, image_size=28, patch_size=14, max_num_tiles=4,
                           intermediate_layers_indices=INTERMEDIATE, vision_output_dim=96, norm_eps=1e-5),
        text_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         cross_attention_layers=[1], max_position_embeddings=128),
        image_token_index=300,  # the default 128256 lies outside a 308-row table: convert refuses it
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
    return model, folder


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory) -> Path:
    _, folder = hf_model
    return convert_with_cli(folder, tmp_path_factory.mktemp("gguf") / "vision.gguf")


def reference_outputs(model, image: Image.Image) -> dict[str, np.ndarray]:
    """HF's tensors for the same preprocessed input, caught with forward hooks."""
    pre = preprocess(image, PreprocessConfig(tile_size=28))
    vision = model.model.vision_model
    caught: dict[str, torch.Tensor] = {}
    hooks = [vision.layernorm_pre.register_forward_hook(lambda m, i, o: caught.__setitem__("ln_pre", o)),
             vision.layernorm_post.register_forward_hook(lambda m, i, o: caught.__setitem__("ln_post", o))]
    for index, layer in enumerate(vision.transformer.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, index=index: caught.__setitem__(f"layer_out-{index}", o)))
    for index, layer in enumerate(vision.global_transformer.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, index=index: caught.__setitem__(f"global_layer_out-{index}", o)))
    with torch.no_grad():
        out = vision(pixel_values=torch.from_numpy(pre.inp_raw)[None, None],
                     aspect_ratio_ids=torch.from_numpy(pre.aspect_ratio_ids.astype(np.int64))[None],
                     aspect_ratio_mask=torch.from_numpy(pre.aspect_ratio_mask.astype(np.int64))[None, None])
        caught["vision_out"] = out.last_hidden_state
        caught["ca_patch_embd"] = model.model.multi_modal_projector(out.last_hidden_state)
    for hook in hooks:
        hook.remove()
    return {name: tensor.numpy() for name, tensor in caught.items()}


def nmse(ours: np.ndarray, reference: np.ndarray) -> float:
    a = reference.astype(np.float64).reshape(ours.shape)
    return float(np.sum((ours.astype(np.float64) - a) ** 2) / np.sum(a * a))


# (w, h) -> tiles: 1 tile, a 1x2 wide grid, a 3x1 tall grid (non-square), 2x2
IMAGES = {(20, 25): 1, (50, 22): 2, (20, 80): 3, (60, 50): 4}


@pytest.mark.parametrize("size", list(IMAGES), ids=[f"{w}x{h}" for w, h in IMAGES])
def test_ca_patch_embd_and_hidden_states_match_hf(hf_model, converted, tmp_path, size):
    model, _ = hf_model
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image_path = tmp_path / "image.png"
    image.save(image_path)
    out = tmp_path / "encode.h5"
    result = cli("mllama", "encode", converted, "--image", image_path, "--threads", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    reference = reference_outputs(model, image)
    with open_dump(out) as dump:
        geometry = dump.config["geometry"]
        assert geometry["num_tiles"] == IMAGES[size]
        for name in ("ln_pre", "layer_out-0", "layer_out-3", "ln_post", "global_layer_out-1", "vision_out",
                     "ca_patch_embd"):
            ours = dump.read(name)
            assert ours.size == reference[name].size, name
            assert nmse(ours, reference[name]) < NMSE_LIMIT, (name, nmse(ours, reference[name]))


def test_f16_conversion_is_close(hf_model, tmp_path):
    model, folder = hf_model
    out = tmp_path / "vision-f16.gguf"
    assert cli("mllama", "convert", folder, "-o", out, "--dtype", "f16").returncode == 0
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    assert cli("mllama", "encode", out, "--image", tmp_path / "image.png", "-T", "ca_patch_embd",
               "-o", tmp_path / "f16.h5").returncode == 0
    with open_dump(tmp_path / "f16.h5") as dump:
        error = nmse(dump.read("ca_patch_embd"), reference_outputs(model, image)["ca_patch_embd"])
    assert 0 < error < 1e-4


def test_convert_bad_inputs(tmp_path, hf_model):
    assert_one_line_error(cli("mllama", "convert", tmp_path, "-o", tmp_path / "x.gguf"), "no config.json")
    _, folder = hf_model
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    (broken / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:5000])
    assert_one_line_error(cli("mllama", "convert", broken, "-o", tmp_path / "y.gguf"), "safetensors")
