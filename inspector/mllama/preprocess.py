"""mllama image preprocessing: a Hugging Face-exact reference and Ollama's convention.

The ``hf`` convention reproduces transformers' ``MllamaImageProcessor`` (PIL
backend, as configured by Llama-3.2-Vision's ``preprocessor_config.json``) to
the bit, step by step and in the same float precision:

1. RGB: an image with alpha (or palette transparency) is composited onto white.
2. Canvas: among the tile grids of at most ``max_tiles`` tiles, take the
   smallest upscale >= 1 if any grid allows upscaling, else the largest
   downscale; ties go to the smallest area, then to the first grid in HF's
   list order.  HF reads each grid tuple as (rows, columns) here.
3. Fit: the side with the smaller scale is exact, the other is floored (at
   least 1); both clamped between the tile size and the canvas.
4. PIL bilinear resize of the uint8 image; zero padding bottom/right to the canvas.
5. Rescale in float64 (``x * (1/255)``) then cast to float32; normalise in
   float32 ``(x - mean) / std``.  The padding is normalised too.
6. Row-major tile split, zero tiles up to ``max_tiles``.
7. ``aspect_ratio_ids`` = 1 + index of (rows, columns) in HF's list of
   supported (width, height) tuples; ``aspect_ratio_mask`` = 1 for real tiles
   (and always tile 0).

The ``ollama`` convention follows Ollama's Go code (model/models/mllama),
reimplemented from reading it; ``docs/mllama-preprocessing.md`` tabulates
every difference with an image size that shows it.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from inspector.constants import (
    MLLAMA_IMAGE_LOADERS,
    MLLAMA_MAX_CANVAS_PIXELS,
    MLLAMA_MAX_TILE_SIZE,
    MLLAMA_MAX_TILES,
)
from inspector.errors import InspectorError
from inspector.files.images import open_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TILE_SIZE = 560
MAX_TILES = 4
PATCH_SIZE = 14
RESCALE_FACTOR = 1 / 255
CONVENTIONS = ("hf", "ollama")
LOADERS = MLLAMA_IMAGE_LOADERS
# Bounds on --max-tiles and --tile-size (and on a GGUF's tiles), see inspector.constants.
MAX_TILES_LIMIT = MLLAMA_MAX_TILES
MAX_TILE_SIZE = MLLAMA_MAX_TILE_SIZE


@dataclass(frozen=True)
class PreprocessConfig:
    tile_size: int = TILE_SIZE
    max_tiles: int = MAX_TILES
    patch_size: int = PATCH_SIZE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    convention: str = "hf"

    def validate(self) -> None:
        if self.convention not in CONVENTIONS:
            raise InspectorError(f"--convention must be one of {', '.join(CONVENTIONS)}")
        if self.tile_size < 1 or self.max_tiles < 1:
            raise InspectorError("--tile-size and --max-tiles must be positive")
        if self.max_tiles > MAX_TILES_LIMIT:
            raise InspectorError(f"--max-tiles {self.max_tiles} is more than {MAX_TILES_LIMIT} (Llama 3.2 Vision "
                                 f"uses {MAX_TILES})")
        if self.tile_size > MAX_TILE_SIZE or self.max_tiles * self.tile_size**2 > MLLAMA_MAX_CANVAS_PIXELS:
            raise InspectorError(f"--tile-size {self.tile_size} with --max-tiles {self.max_tiles} makes a canvas "
                                 f"larger than {MLLAMA_MAX_CANVAS_PIXELS} pixels (tiles of at most {MAX_TILE_SIZE})")
        if self.tile_size % self.patch_size:
            raise InspectorError(f"tile size {self.tile_size} is not a multiple of the patch size {self.patch_size}")


DEFAULT_CONFIG = PreprocessConfig()


@dataclass
class Geometry:
    """Every size of the pipeline, with its axis order spelled out in the field name."""

    original_wh: tuple[int, int]
    canvas_wh: tuple[int, int]
    resized_wh: tuple[int, int]
    grid_rows: int
    grid_cols: int
    aspect_ratio_id: int
    num_tiles: int
    patches_per_tile: int
    num_padding_patches: int
    image_mode: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Preprocessed:
    """The encoder inputs: ``inp_raw`` has numpy shape (max_tiles, 3, tile, tile) = ggml ne reversed."""

    inp_raw: np.ndarray
    aspect_ratio_ids: np.ndarray
    aspect_ratio_mask: np.ndarray
    geometry: Geometry
    config: PreprocessConfig
    steps: list[str] = field(default_factory=list)


def supported_aspect_ratios(max_tiles: int) -> list[tuple[int, int]]:
    """(a, b) with a*b <= max_tiles, a outer: the list both HF and Ollama enumerate."""
    return [(a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1) if a * b <= max_tiles]


def optimal_canvas_hf(height: int, width: int, max_tiles: int, tile: int) -> tuple[int, int]:
    """(canvas_height, canvas_width) by HF's rule: upscale when a grid allows scale >= 1."""
    canvases = [(a * tile, b * tile) for a, b in supported_aspect_ratios(max_tiles)]  # read as (h, w)
    scales = [min(ch / height, cw / width) for ch, cw in canvases]
    upscales = [s for s in scales if s >= 1]
    selected = min(upscales) if upscales else max(s for s in scales if s < 1)
    chosen = [c for c, s in zip(canvases, scales, strict=True) if s == selected]
    return min(chosen, key=lambda c: c[0] * c[1])  # min() keeps the first of equal areas, like argmin


def fit_to_canvas_hf(height: int, width: int, canvas_h: int, canvas_w: int, tile: int) -> tuple[int, int]:
    """(new_height, new_width): the side with the smaller scale is exact, the other floored (>= 1)."""
    target_w = min(max(width, tile), canvas_w)
    target_h = min(max(height, tile), canvas_h)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


def optimal_canvas_ollama(height: int, width: int, max_tiles: int, tile: int) -> tuple[int, int]:
    """Ollama's rule: upscale only for scale strictly > 1; grids read as (columns, rows)."""
    canvases = [(rows * tile, cols * tile) for cols, rows in supported_aspect_ratios(max_tiles)]
    scales = [min(ch / height, cw / width) for ch, cw in canvases]
    upscales = [s for s in scales if s > 1.0]
    selected = min(upscales) if upscales else max([s for s in scales if s <= 1.0] + [0.0])
    best: tuple[int, int] | None = None
    for canvas, scale in zip(canvases, scales, strict=True):
        if scale == selected and (best is None or canvas[0] * canvas[1] < best[0] * best[1]):
            best = canvas
    assert best is not None
    return best


def fit_to_canvas_ollama(height: int, width: int, canvas_h: int, canvas_w: int, tile: int) -> tuple[int, int]:
    """Ollama floors both sides with one ratio (so an "exact" side can lose a pixel), no minimum of 1."""
    target_w = min(max(width, tile), canvas_w)
    target_h = min(max(height, tile), canvas_h)
    ratio = min(target_w / width, target_h / height)
    return min(math.floor(height * ratio), target_h), min(math.floor(width * ratio), target_w)


def aspect_ratio_id(rows: int, cols: int, max_tiles: int, convention: str) -> int:
    """1-based id: HF looks up (rows, cols), Ollama (cols, rows), in the same list."""
    key = (rows, cols) if convention == "hf" else (cols, rows)
    return supported_aspect_ratios(max_tiles).index(key) + 1


def to_rgb(image: Image.Image, convention: str) -> Image.Image:
    """HF composites transparency onto white; Ollama's premultiplied RGBA reads it as black."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = (255, 255, 255, 255) if convention == "hf" else (0, 0, 0, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("RGB")


def load_image(path: str | os.PathLike[str], loader: str = "pil") -> Image.Image:
    """Open an untrusted image file: a regular file, its pixel count bounded before decoding.

    ``pil`` hands the decoded image on as is (what ``processor(images=Image.open(p))``
    sees); ``hf-path`` mimics transformers' ``load_image`` for a path string,
    which applies the EXIF orientation and converts to RGB without compositing.
    """
    if loader not in LOADERS:
        raise InspectorError(f"unknown loader {loader!r}; choose one of {', '.join(LOADERS)}")
    image = open_image(Path(path))
    if loader == "hf-path":
        try:
            image = ImageOps.exif_transpose(image).convert("RGB")
        except MemoryError:
            raise InspectorError(f"{path}: not enough memory to convert {image.width}x{image.height} pixels") from None
    return image


def _normalise(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 HWC -> float32 HWC, in the precision order of the convention."""
    mean = np.array(config.mean, dtype=np.float32)
    std = np.array(config.std, dtype=np.float32)
    if config.convention == "hf":
        scaled = (pixels.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
    else:
        scaled = pixels.astype(np.float32) / np.float32(255.0)
    return (scaled - mean) / std


def render(rgb: Image.Image, canvas_hw: tuple[int, int], size_hw: tuple[int, int], config: PreprocessConfig,
           *, resample: Image.Resampling = Image.Resampling.BILINEAR, pad_value: int = 0) -> np.ndarray:
    """Resize ``rgb`` to ``size_hw``, pad to ``canvas_hw``, normalise and tile: the numeric core.

    Exposed separately so that diagnosis can re-run it with another geometry,
    filter or padding value and see which variant another implementation matches.
    """
    tile = config.tile_size
    canvas_h, canvas_w = canvas_hw
    new_h, new_w = size_hw
    rows, cols = canvas_h // tile, canvas_w // tile
    resized = rgb.resize((new_w, new_h), resample=resample)
    pixels = np.full((canvas_h, canvas_w, 3), pad_value, dtype=np.uint8)
    pixels[:new_h, :new_w] = np.asarray(resized, dtype=np.uint8)
    normalised = _normalise(pixels, config).transpose(2, 0, 1)  # CHW
    tiles = normalised.reshape(3, rows, tile, cols, tile).transpose(1, 3, 0, 2, 4)
    inp_raw = np.zeros((config.max_tiles, 3, tile, tile), dtype=np.float32)
    inp_raw[: rows * cols] = tiles.reshape(rows * cols, 3, tile, tile)
    return inp_raw


def preprocess(image: Image.Image, config: PreprocessConfig = DEFAULT_CONFIG) -> Preprocessed:
    """Turn one image into mllama's ``inp_raw``, ``aspect_ratio_ids`` and ``aspect_ratio_mask``."""
    config.validate()
    tile, hf = config.tile_size, config.convention == "hf"
    steps = []
    width, height = image.size
    if width < 1 or height < 1:
        raise InspectorError("the image is empty")
    try:
        rgb = to_rgb(image, config.convention)
    except MemoryError:
        raise InspectorError(f"not enough memory to convert the {width}×{height} image to RGB") from None
    steps.append(f"loaded {width}×{height} (w×h) {image.mode}" + (
        f", converted to RGB{' (alpha over white)' if hf else ' (alpha premultiplied: transparent is black)'}"
        if image.mode != "RGB" else ""))
    canvas_h, canvas_w = (optimal_canvas_hf if hf else optimal_canvas_ollama)(height, width, config.max_tiles, tile)
    rows, cols = canvas_h // tile, canvas_w // tile
    steps.append(f"canvas {canvas_w}×{canvas_h} (w×h): {rows} row{'s' * (rows > 1)} × {cols} column"
                 f"{'s' * (cols > 1)} of {tile}×{tile} tiles")
    new_h, new_w = (fit_to_canvas_hf if hf else fit_to_canvas_ollama)(height, width, canvas_h, canvas_w, tile)
    if new_w < 1 or new_h < 1:
        raise InspectorError(f"the {config.convention} convention resizes this {width}×{height} image to nothing")
    steps.append(f"resized to {new_w}×{new_h} (w×h) with bilinear filtering; padded with zeros to "
                 f"{canvas_w}×{canvas_h} (right {canvas_w - new_w}, bottom {canvas_h - new_h} pixels)")
    inp_raw = render(rgb, (canvas_h, canvas_w), (new_h, new_w), config)
    ratio_id = aspect_ratio_id(rows, cols, config.max_tiles, config.convention)
    mask = np.zeros(config.max_tiles, dtype=np.int32)
    mask[0] = 1
    mask[: rows * cols] = 1
    patches = (tile // config.patch_size) ** 2
    padding_patches = (8 - (patches + 1) % 8) % 8
    steps.append(f"rescaled {'(x * 1/255 in float64, then float32)' if hf else '(float32 x / 255)'} and "
                 f"normalised with mean {list(config.mean)} std {list(config.std)}")
    steps.append(f"split into {rows * cols} tile(s) row by row, zero tiles up to {config.max_tiles}; "
                 f"aspect ratio id {ratio_id} ({config.convention} order); mask {mask.tolist()}")
    steps.append(f"{patches} patches of {config.patch_size}×{config.patch_size} per tile + 1 class token; "
                 f"{padding_patches} padding patches to a multiple of 8")
    geometry = Geometry(
        original_wh=(width, height), canvas_wh=(canvas_w, canvas_h), resized_wh=(new_w, new_h),
        grid_rows=rows, grid_cols=cols, aspect_ratio_id=ratio_id, num_tiles=rows * cols,
        patches_per_tile=patches, num_padding_patches=padding_patches, image_mode=image.mode,
    )
    return Preprocessed(inp_raw, np.array([ratio_id], dtype=np.int32), mask, geometry, config, steps)
