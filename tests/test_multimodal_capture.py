"""``capture --mmproj --image``: libmtmd's image encoder and the language model in one dump.

The projector is a generated LLaVA-1.5-style ``mlp`` projector matched to the
tiny language model.  Expected values are computed here, independently of
llama.cpp: ``inp_raw`` with Pillow's bicubic resize, the LLaVA padding and
CLIP's normalisation in numpy; the first patch embedding with a numpy
convolution of the captured ``inp_raw`` and the projector's weights read by
gguf-py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import weights
from PIL import Image
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.llava import IMAGE_MEAN, IMAGE_STD, PAD_COLOR, TinyLlavaSpec, write_tiny_llava

SPEC = TinyLlavaSpec(text_n_embd=TinyLlamaSpec().n_embd)
MARKER = "<__media__>"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("multimodal")
    return (write_tiny_llama(folder / "lm.gguf", TinyLlamaSpec(seed=5)),
            write_tiny_llava(folder / "mmproj.gguf", SPEC))


def write_image(path: Path, width: int, height: int, seed: int) -> Path:
    """A photo-like test image: smooth gradients plus noise, so resampling has something to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def expected_inp_raw(path: Path, size: int) -> np.ndarray:
    """LLaVA's fixed-size preprocessing: fit inside size x size with bicubic, centre on grey, normalise.

    The fitted size is computed in float32 and rounded up, as libmtmd does
    (``PAD_CEIL``); the result is planar (3, size, size), the layout of ``inp_raw``.
    """
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = min(np.float32(size) / np.float32(width), np.float32(size) / np.float32(height))
    new_width = min(int(np.ceil(np.float32(width) * scale)), size)
    new_height = min(int(np.ceil(np.float32(height) * scale)), size)
    canvas = Image.new("RGB", (size, size), PAD_COLOR)
    canvas.paste(image.resize((new_width, new_height), Image.Resampling.BICUBIC),
                 ((size - new_width) // 2, (size - new_height) // 2))
    pixels = np.asarray(canvas, dtype=np.float32) / np.float32(255.0)
    normalised = (pixels - np.array(IMAGE_MEAN, dtype=np.float32)) / np.array(IMAGE_STD, dtype=np.float32)
    return normalised.transpose(2, 0, 1)


def patch_embeddings(inp_raw: np.ndarray, kernel: np.ndarray, bias: np.ndarray, patch: int) -> np.ndarray:
    """The stride-``patch`` convolution as a matrix product over patches: (n_patches, n_embd), row-major patches.

    ggml_conv_2d unrolls the image with im2col into f16 (whatever the kernel's
    type), and a matrix product with an f16 operand converts the other to f16
    too: both are rounded first, as the graph computes them.
    """
    channels, height, width = inp_raw.shape
    image = inp_raw.astype(np.float16).astype(np.float64)
    patches = image.reshape(channels, height // patch, patch, width // patch, patch).transpose(1, 3, 0, 2, 4)
    columns = patches.reshape(-1, channels * patch * patch)
    weights = kernel.reshape(kernel.shape[0], -1).astype(np.float16).astype(np.float64)
    return columns @ weights.T + bias.astype(np.float64)


def capture(models: tuple[Path, Path], image: Path, out: Path, *extra: str):
    model, projector = models
    return cli("capture", "-m", model, "--mmproj", projector, "--image", image, "-t", "1", "-c", "128",
               "-fa", "off", "-o", out, "--overwrite", *extra)


def test_the_encoder_and_the_language_model_in_one_dump(models, tmp_path):
    image = write_image(tmp_path / "wide.png", 37, 23, seed=1)
    result = capture(models, image, tmp_path / "mm.h5", "-p", "Hi", "-n", "2")
    assert result.returncode == 0, result.stderr
    with open_dump(tmp_path / "mm.h5") as dump:
        kinds = [e["kind"] for e in dump.evaluations]
        # BOS, the image through the encoder, its embeddings through the language model, "Hi", one generated.
        assert kinds == ["prompt", "encode", "prompt", "prompt", "generate"], kinds
        assert [c["type"] for c in dump.result["chunks"]] == ["text", "image", "text"]
        assert dump.result["images"][0]["width"] == 37 and dump.config["mmproj"] == str(models[1])
        assert dump.config["mmproj_facts"]["architecture"] == "clip"

        inp_raw = dump.read("inp_raw", eval_index=1)
        np.testing.assert_allclose(inp_raw, expected_inp_raw(image, SPEC.image_size), rtol=0, atol=2e-6)

        w = weights(models[1])
        expected = patch_embeddings(inp_raw, w["v.patch_embd.weight"], w["v.patch_embd.bias"], SPEC.patch_size)
        np.testing.assert_allclose(dump.read("patch_bias", eval_index=1), expected, rtol=1e-5, atol=1e-5)

        # What the language model read is exactly what the projector wrote: its last node.
        encode = [e for e in dump if e.eval_index == 1]
        projected = dump.read(max(encode, key=lambda e: e.node_index))
        assert projected.shape == (SPEC.n_patches, SPEC.text_n_embd)
        np.testing.assert_array_equal(dump.read("embd", eval_index=2), projected)
        assert {e.name for e in dump if e.eval_index == 2} >= {"l_out-0", "l_out-1", "result_output"}
    listed = cli("ls", tmp_path / "mm.h5", "-t", "inp_raw")
    assert "1 encode" in listed.stdout, listed.stdout


def test_a_different_image_diverges_first_at_inp_raw_in_the_encoder(models, tmp_path):
    first = capture(models, write_image(tmp_path / "a.png", 32, 32, seed=2), tmp_path / "a.h5", "-p", "Hi")
    second = capture(models, write_image(tmp_path / "b.png", 32, 32, seed=3), tmp_path / "b.h5", "-p", "Hi")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    compared = cli("compare", tmp_path / "a.h5", tmp_path / "b.h5")
    headline = compared.stdout.splitlines()[0]
    assert headline.startswith("first divergence: inp_raw (eval 1 encode"), headline


def test_markers_place_the_image_inside_the_prompt(models, tmp_path):
    image = write_image(tmp_path / "c.png", 16, 40, seed=4)
    result = capture(models, image, tmp_path / "inside.h5", "-p", f"a{MARKER}b")
    assert result.returncode == 0, result.stderr
    with open_dump(tmp_path / "inside.h5") as dump:
        chunks = dump.result["chunks"]
        assert [c["type"] for c in chunks] == ["text", "image", "text"]
        assert chunks[0]["token_ids"] == [1, 3 + ord("a")] and chunks[2]["token_ids"] == [3 + ord("b")]
        assert chunks[2]["pos0"] == 2 + SPEC.n_patches


def test_bad_multimodal_input_is_one_line_and_leaves_no_dump(models, tmp_path):
    model, projector = models
    image = write_image(tmp_path / "ok.png", 8, 8, seed=5)
    out = tmp_path / "bad.h5"
    assert_one_line_error(capture(models, image, out, "-p", f"{MARKER}{MARKER}two"), "media markers")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert_one_line_error(capture(models, text, out, "-p", "x"), "not an image file")
    assert_one_line_error(cli("capture", "-m", model, "--image", image, "-p", "x", "-o", out), "--mmproj")
    narrow = write_tiny_llava(tmp_path / "narrow.gguf", TinyLlavaSpec(text_n_embd=32))
    assert_one_line_error(capture((model, narrow), image, out, "-p", "x"), "mismatch between text model")
    assert_one_line_error(capture((model, model), image, out, "-p", "x"), "is not a vision projector")
    assert not out.exists()
