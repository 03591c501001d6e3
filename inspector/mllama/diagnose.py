"""Explain how another implementation's ``inp_raw`` differs from the reference.

Checksums only say *that* two preprocessed images differ.  Here every usual
cause becomes a hypothesis that rebuilds the reference with that one mistake
(tiles swapped, channels swapped, width and height transposed, stretched
instead of padded, a resize size off by one, another padding value, float32
rescaling, Ollama's convention, ...), and the hypotheses are ranked by how
close each comes to the other array.  A hypothesis that reproduces the other
array exactly, or nearly, is the explanation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from inspector.compare.metrics import compare_arrays
from inspector.errors import InspectorError
from inspector.mllama.preprocess import DEFAULT_CONFIG, PreprocessConfig, Preprocessed, preprocess, render, to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A hypothesis "explains" the difference when it leaves at most this NMSE ...
EXPLAINED_NMSE = 1e-6
# ... and improves on the plain reference at least this much.
EXPLAINED_GAIN = 100.0


@dataclass
class HypothesisResult:
    name: str
    explanation: str
    nmse: float
    max_abs_diff: float
    identical: bool


@dataclass
class ChannelStats:
    tile: int
    channel: int
    mean_reference: float
    mean_other: float
    std_reference: float
    std_other: float
    nmse: float


@dataclass
class Diagnosis:
    reference: Preprocessed
    baseline: HypothesisResult
    ranked: list[HypothesisResult]
    stats: list[ChannelStats]

    @property
    def best(self) -> HypothesisResult | None:
        """The explaining hypothesis, if one explains the difference."""
        if self.baseline.identical:
            return None
        top = self.ranked[0] if self.ranked else None
        if top is None:
            return None
        gain = self.baseline.nmse / top.nmse if top.nmse > 0 else float("inf")
        return top if top.identical or (top.nmse <= EXPLAINED_NMSE and gain >= EXPLAINED_GAIN) else None


def _score(name: str, explanation: str, candidate: np.ndarray, other: np.ndarray) -> HypothesisResult:
    metrics = compare_arrays(candidate.astype(np.float32), other)
    return HypothesisResult(name, explanation, metrics.nmse, metrics.max_abs_diff, metrics.identical)


def _tile_permutation(reference: np.ndarray, other: np.ndarray, num_tiles: int) -> list[int] | None:
    """For each tile of ``other``, the reference tile it equals (None if not a permutation)."""
    mapping = []
    for i in range(num_tiles):
        errors = [float(np.mean((other[i] - reference[j]) ** 2)) for j in range(num_tiles)]
        mapping.append(int(np.argmin(errors)))
    return mapping if sorted(mapping) == list(range(num_tiles)) else None


def _hypotheses(image: Image.Image, reference: Preprocessed, other: np.ndarray
                ) -> list[tuple[str, str, Callable[[], np.ndarray]]]:
    config = reference.config
    g = reference.geometry
    tile = config.tile_size
    rgb = to_rgb(image, "hf")
    canvas_w, canvas_h = g.canvas_wh
    new_w, new_h = g.resized_wh
    raw = reference.inp_raw
    found: list[tuple[str, str, Callable[[], np.ndarray]]] = []

    permutation = _tile_permutation(raw, other, g.num_tiles)
    if permutation is not None and permutation != list(range(g.num_tiles)):
        def permuted() -> np.ndarray:
            out = raw.copy()
            out[: g.num_tiles] = raw[permutation]
            return out
        found.append(("swapped tiles", f"tiles are in another order: other tile i = reference tile "
                      f"{permutation} (row-major split expected)", permuted))
    for order in itertools.permutations(range(3)):
        if order != (0, 1, 2):
            names = "".join("RGB"[c] for c in order)
            found.append(("swapped channels", f"channels are in {names} order instead of RGB",
                          lambda o=order: raw[:, list(o)]))
    found.append(("channels-last layout", "the data is H×W×C (interleaved) but read as C×H×W (planar)",
                  lambda: raw.transpose(0, 2, 3, 1).reshape(raw.shape).copy()))
    found.append(("each tile transposed", "width and height are swapped inside each tile (x and y indices exchanged)",
                  lambda: raw.transpose(0, 1, 3, 2).copy()))
    # Geometry mistakes: re-run the numeric core with another size.
    if new_w != new_h and new_w <= canvas_h and new_h <= canvas_w:
        found.append(("width/height transposed",
                      f"the resize target had width and height exchanged: {new_h}×{new_w} (w×h) instead of "
                      f"{new_w}×{new_h}",
                      lambda: render(rgb, (canvas_h, canvas_w), (new_w, new_h), config)))
    if (new_h, new_w) != (canvas_h, canvas_w):
        found.append(("stretched, not padded",
                      f"the image was resized to the whole canvas {canvas_w}×{canvas_h} (aspect ratio lost) "
                      f"instead of {new_w}×{new_h} plus padding",
                      lambda: render(rgb, (canvas_h, canvas_w), (canvas_h, canvas_w), config)))
    for dw, dh in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        size_h, size_w = new_h + dh, new_w + dw
        if 0 < size_h <= canvas_h and 0 < size_w <= canvas_w:
            found.append(("resize size off by one",
                          f"resized to {size_w}×{size_h} (w×h) instead of {new_w}×{new_h}: a rounding or "
                          "flooring rule differs",
                          lambda s=(size_h, size_w): render(rgb, (canvas_h, canvas_w), s, config)))
    if (new_h, new_w) != (canvas_h, canvas_w):
        found.append(("white padding", "the padding is white (255) instead of black (0) before normalisation",
                      lambda: render(rgb, (canvas_h, canvas_w), (new_h, new_w), config, pad_value=255)))

        def zero_after_normalisation() -> np.ndarray:
            out = raw.copy()
            mask = np.zeros((canvas_h, canvas_w), dtype=bool)
            mask[new_h:, :] = True
            mask[:, new_w:] = True
            rows, cols = canvas_h // tile, canvas_w // tile
            tiled = mask.reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3).reshape(rows * cols, tile, tile)
            out[: rows * cols] = np.where(tiled[:, None], 0.0, out[: rows * cols])
            return out
        found.append(("padding after normalisation",
                      "the padding is 0 after normalisation (the mean colour) instead of normalised black",
                      zero_after_normalisation))
    for label, resample in (("bicubic", Image.Resampling.BICUBIC), ("nearest", Image.Resampling.NEAREST),
                            ("box", Image.Resampling.BOX)):
        found.append((f"{label} resampling", f"the resize used {label} instead of bilinear filtering",
                      lambda r=resample: render(rgb, (canvas_h, canvas_w), (new_h, new_w), config, resample=r)))
    found.append(("ImageNet normalisation", "ImageNet mean/std were used instead of CLIP's",
                  lambda: render(rgb, (canvas_h, canvas_w), (new_h, new_w),
                                 replace(config, mean=IMAGENET_MEAN, std=IMAGENET_STD))))
    found.append(("Ollama convention", "the whole pipeline follows Ollama's Go code (canvas, flooring, alpha; "
                  "see docs/mllama-preprocessing.md)",
                  lambda: preprocess(image, replace(config, convention="ollama")).inp_raw))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        found.append(("alpha over black", "transparent pixels were made black instead of composited onto white",
                      lambda: render(to_rgb(image, "ollama"), (canvas_h, canvas_w), (new_h, new_w), config)))
    return found


def channel_stats(reference: np.ndarray, other: np.ndarray) -> list[ChannelStats]:
    stats = []
    for tile, channel in itertools.product(range(reference.shape[0]), range(reference.shape[1])):
        a, b = reference[tile, channel].astype(np.float64), other[tile, channel].astype(np.float64)
        reference_energy = float(np.sum(a * a))
        error = float(np.sum((a - b) ** 2))
        stats.append(ChannelStats(tile, channel, float(a.mean()), float(b.mean()), float(a.std()), float(b.std()),
                                  error / reference_energy if reference_energy else (0.0 if error == 0 else
                                                                                     float("inf"))))
    return stats


def diagnose(image: Image.Image, other: np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG) -> Diagnosis:
    """Rank explanations of how ``other`` differs from the HF reference preprocessing of ``image``."""
    reference = preprocess(image, replace(config, convention="hf"))
    expected = reference.inp_raw.shape
    if other.shape != expected:
        if other.size == reference.inp_raw.size:
            other = other.reshape(expected)
        else:
            raise InspectorError(f"the other inp_raw has shape {other.shape} ({other.size} values); the reference "
                                 f"has {expected} ({reference.inp_raw.size}): tile size or max tiles differ")
    other = other.astype(np.float32)
    baseline = _score("reference", "the Hugging Face reference itself", reference.inp_raw, other)
    ranked = [] if baseline.identical else sorted(
        (_score(name, explanation, build(), other) for name, explanation, build in
         _hypotheses(image, reference, other)),
        key=lambda result: (not result.identical, result.nmse))
    return Diagnosis(reference, baseline, ranked, channel_stats(reference.inp_raw, other))
