"""mllama preprocessing: bit-identical to Hugging Face's MllamaImageProcessor (PIL backend).

The expected values come from transformers itself, run here (the ``reference``
extra, installed by CI); images are generated, never downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

from inspector.mllama.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    PreprocessConfig,
    fit_to_canvas_ollama,
    optimal_canvas_ollama,
    preprocess,
)

# Llama-3.2-11B-Vision's preprocessor_config.json
HF_CONFIG = dict(do_convert_rgb=True, do_normalize=True, do_pad=True, do_rescale=True, do_resize=True,
                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), max_image_tiles=4, resample=2,
                 rescale_factor=0.00392156862745098, size={"height": 560, "width": 560})


@pytest.fixture(scope="module")
def processor():
    return MllamaImageProcessorPil(**HF_CONFIG)


def synthetic(width: int, height: int, mode: str, seed: int) -> Image.Image:
    """A random image of a given size and mode, with smooth structure so resampling matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                     ((x + y) * 7) % 256], axis=-1).astype(np.int32)
    noise = rng.integers(-40, 40, size=(height, width, 3))
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
        alpha[: height // 2] = 255
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "LA":
        image = image.convert("L")
        image = Image.merge("LA", (image, Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))))
    elif mode == "P-transparent":
        image = image.convert("P")
        image.info["transparency"] = 0
    elif mode != "RGB":
        image = image.convert(mode)
    return image


CASES = [
    (560, 560, "RGB"),       # exactly one tile
    (1120, 1120, "RGB"),     # exactly 2x2 tiles
    (1120, 560, "RGB"),      # exact 1 row x 2 columns
    (560, 1680, "RGB"),      # exact 3 rows x 1 column
    (2240, 560, "RGB"),      # 4x1 strip
    (400, 2000, "RGB"),      # tall strip
    (3000, 40, "RGB"),       # extreme strip (floored side near 1 tile)
    (10, 10, "RGB"),         # tiny: upscaled
    (1, 1, "RGB"),
    (561, 559, "RGB"),       # just around one tile
    (1500, 1749, "RGB"),     # the apple photo's geometry
    (1280, 853, "RGB"),      # the Eiffel tower photo's geometry
    (777, 333, "RGBA"),
    (640, 480, "L"),
    (300, 900, "LA"),
    (1000, 700, "P-transparent"),
    (500, 800, "P"),
    (350, 250, "CMYK"),
]


@pytest.mark.parametrize("width,height,mode", CASES, ids=[f"{w}x{h}-{m}" for w, h, m in CASES])
def test_bit_identical_to_transformers(processor, width, height, mode):
    image = synthetic(width, height, mode, seed=width * 7 + height)
    expected = processor(images=[[image]], return_tensors="np")
    ours = preprocess(image)
    assert ours.inp_raw.dtype == np.float32
    assert ours.inp_raw.tobytes() == expected["pixel_values"][0, 0].astype(np.float32).tobytes()
    np.testing.assert_array_equal(ours.aspect_ratio_ids, expected["aspect_ratio_ids"][0])
    np.testing.assert_array_equal(ours.aspect_ratio_mask, expected["aspect_ratio_mask"][0, 0])
    assert ours.geometry.num_tiles == expected["num_tiles"][0][0]


def test_apple_geometry_and_white_pixel():
    image = Image.new("RGB", (1500, 1749), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))
    image.paste((255, 255, 255), (0, 0, 8, 8))  # survives the bilinear downscale as pure white
    result = preprocess(image)
    g = result.geometry
    assert g.canvas_wh == (1120, 1120) and (g.grid_rows, g.grid_cols) == (2, 2)
    assert g.resized_wh == (960, 1120)
    assert g.aspect_ratio_id == 6 and g.num_padding_patches == 7
    assert result.inp_raw[0, 0, 0, 0] == np.float32(1.9303361)
    assert "loaded 1500×1749 (w×h)" in result.steps[0]
    assert "resized to 960×1120 (w×h)" in result.steps[2]


def test_ollama_convention_differences():
    # an exact tile multiple: HF keeps scale 1.0 (one tile); Ollama only upscales for scale > 1 -> 2x2
    hf = preprocess(Image.new("RGB", (560, 560)))
    ollama = preprocess(Image.new("RGB", (560, 560)), PreprocessConfig(convention="ollama"))
    assert hf.geometry.canvas_wh == (560, 560)
    assert ollama.geometry.canvas_wh == (1120, 1120)
    # a wide 2x1 grid: HF looks up (rows, cols) = (1, 2) -> id 2, Ollama (cols, rows) = (2, 1) -> id 5
    wide_hf = preprocess(Image.new("RGB", (1100, 500)))
    wide_ollama = preprocess(Image.new("RGB", (1100, 500)), PreprocessConfig(convention="ollama"))
    assert (wide_hf.geometry.grid_rows, wide_hf.geometry.grid_cols) == (1, 2)
    assert wide_hf.geometry.aspect_ratio_id == 2 and wide_ollama.geometry.aspect_ratio_id == 5
    # alpha: white under HF, black under Ollama
    transparent = Image.new("RGBA", (560, 560), (10, 20, 30, 0))
    assert preprocess(transparent).inp_raw[0, 0, 0, 0] == np.float32(1.9303361)
    black = (0 - np.float32(CLIP_MEAN[0])) / np.float32(CLIP_STD[0])
    assert preprocess(transparent, PreprocessConfig(convention="ollama")).inp_raw[0, 0, 0, 0] == black


def test_ollama_flooring_can_lose_a_pixel_on_the_exact_side():
    # 275x27 upscales by 560/275; HF sets the limiting side to exactly 560, Ollama floors
    # 275 * (560/275) = 559.99999999999994 to 559.
    hf = preprocess(Image.new("RGB", (275, 27)))
    ollama = preprocess(Image.new("RGB", (275, 27)), PreprocessConfig(convention="ollama"))
    assert hf.geometry.canvas_wh == ollama.geometry.canvas_wh == (560, 560)
    assert hf.geometry.resized_wh == (560, 54) and ollama.geometry.resized_wh == (559, 54)
    # and HF keeps at least one pixel where Ollama's floor reaches zero
    assert preprocess(Image.new("RGB", (1, 2241))).geometry.resized_wh == (1, 2240)
    assert fit_to_canvas_ollama(2241, 1, *optimal_canvas_ollama(2241, 1, 4, 560), 560) == (2240, 0)


def test_float32_and_float64_rescaling_agree_on_all_bytes():
    values = np.arange(256)
    assert np.array_equal((values.astype(np.float64) * (1 / 255)).astype(np.float32),
                          values.astype(np.float32) / np.float32(255))
