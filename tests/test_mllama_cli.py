"""preprocess, import-raw and diff-preprocess from the command line, with planted causes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, cli
from test_mllama_preprocess import synthetic

from inspector import open_dump
from inspector.mllama.preprocess import preprocess


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 900x600 (w×h) PNG: unresized on a 2×2-tile canvas, padded right and below, so every planted cause shows."""
    path = tmp_path_factory.mktemp("img") / "photo.png"
    synthetic(900, 600, "RGB", seed=3).save(path)
    return path


def test_preprocess_writes_a_dump_with_geometry(photo, tmp_path):
    out = tmp_path / "pre.h5"
    result = cli("preprocess", photo, "--explain", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "loaded 900×600 (w×h) RGB" in result.stdout and "aspect ratio id" in result.stdout
    expected = preprocess(Image.open(photo))
    with open_dump(out) as dump:
        np.testing.assert_array_equal(dump.read("inp_raw"), expected.inp_raw)
        assert dump.find("inp_raw").shape == (4, 3, 560, 560)
        assert dump.metadata(dump.find("inp_raw"))["ne"] == [560, 560, 3, 4]
        np.testing.assert_array_equal(dump.read("aspect_ratio_ids"), [expected.geometry.aspect_ratio_id])
        assert dump.evaluations[0]["kind"] == "preprocess"
        assert dump.config["geometry"]["resized_wh"] == list(expected.geometry.resized_wh)


def test_import_raw_round_trip_and_size_check(photo, tmp_path):
    raw = preprocess(Image.open(photo)).inp_raw
    raw.tofile(tmp_path / "inp_raw.bin")
    out = tmp_path / "imported.h5"
    assert cli("import-raw", tmp_path / "inp_raw.bin", "--name", "inp_raw", "--ne", "560,560,3,4", "-o", out
               ).returncode == 0
    with open_dump(out) as dump:
        np.testing.assert_array_equal(dump.read("inp_raw"), raw)
    np.save(tmp_path / "inp_raw.npy", raw)
    assert cli("import-raw", tmp_path / "inp_raw.npy", "--name", "inp_raw", "-o", tmp_path / "npy.h5").returncode == 0
    assert_one_line_error(cli("import-raw", tmp_path / "inp_raw.bin", "--name", "x", "--shape", "4,3,560,559",
                              "-o", tmp_path / "bad.h5"), "has 15052800 bytes")
    assert_one_line_error(cli("import-raw", tmp_path / "inp_raw.bin", "--name", "x", "-o", tmp_path / "b.h5"),
                          "exactly one of --ne or --shape")
    (tmp_path / "evil.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"{'descr': '|O'}".ljust(118) + b"\n")
    assert_one_line_error(cli("import-raw", tmp_path / "evil.npy", "--name", "x", "-o", tmp_path / "e.h5"), "npy")


def test_imported_raw_compares_with_a_capture_via_map(photo, tmp_path):
    cli("preprocess", photo, "-o", tmp_path / "ref.h5")
    preprocess(Image.open(photo)).inp_raw.tofile(tmp_path / "theirs.bin")
    cli("import-raw", tmp_path / "theirs.bin", "--name", "inp_raw_theirs", "--ne", "560,560,3,4",
        "-o", tmp_path / "theirs.h5")
    result = cli("compare", tmp_path / "ref.h5", tmp_path / "theirs.h5", "-t", "inp_raw", "--map",
                 "inp_raw=inp_raw_theirs", "--json")
    document = json.loads(result.stdout)
    assert document["tensors"][0]["status"] == "identical"


# preprocessor_config.json of Llama-3.2-Vision (CLIP's), written out here rather than imported.
HF_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
HF_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
TILE, MAX_TILES = 560, 4
# HF's geometry for the 900×600 photo, by hand: of the canvases of at most 4 tiles only
# 1120×1120 allows an upscale >= 1 (min(1120/600, 1120/900) = 1.24), and the image already
# lies between the tile size and the canvas on both sides, so it is not resized.
CANVAS_WH, RESIZED_WH = (1120, 1120), (900, 600)


def hf_inp_raw(image: Image.Image, resized_wh: tuple[int, int], pad: int = 0) -> np.ndarray:
    """transformers' numerics with PIL and numpy alone: bilinear resize, pad, rescale, normalise, tile."""
    width, height = resized_wh
    pixels = np.full((CANVAS_WH[1], CANVAS_WH[0], 3), pad, dtype=np.uint8)
    pixels[:height, :width] = np.asarray(image.convert("RGB").resize(resized_wh, Image.Resampling.BILINEAR))
    scaled = (pixels * (1 / 255)).astype(np.float32)  # rescaled in float64, then float32, as HF does
    normalised = ((scaled - HF_MEAN) / HF_STD).transpose(2, 0, 1)
    tiles = [normalised[:, row:row + TILE, col:col + TILE]
             for row in range(0, CANVAS_WH[1], TILE) for col in range(0, CANVAS_WH[0], TILE)]
    inp_raw = np.zeros((MAX_TILES, 3, TILE, TILE), dtype=np.float32)
    inp_raw[: len(tiles)] = tiles
    return inp_raw


def planted_variants(photo: Path) -> dict[str, np.ndarray]:
    """Each cause made with PIL and numpy here, not with the helpers the hypotheses rebuild it with."""
    image = Image.open(photo)
    raw = hf_inp_raw(image, RESIZED_WH)
    np.testing.assert_array_equal(raw, preprocess(image).inp_raw)  # the independent pipeline is HF's
    return {
        "swapped tiles": raw[[1, 0, 2, 3]],
        "swapped channels": raw[:, ::-1].copy(),
        "stretched, not padded": hf_inp_raw(image, CANVAS_WH),
        "width/height transposed": hf_inp_raw(image, (RESIZED_WH[1], RESIZED_WH[0])),
        "white padding": hf_inp_raw(image, RESIZED_WH, pad=255),
    }


@pytest.mark.parametrize("cause", ["swapped tiles", "swapped channels", "stretched, not padded",
                                   "width/height transposed", "white padding"])
def test_diff_preprocess_names_the_planted_cause(photo, tmp_path, cause):
    other = planted_variants(photo)[cause]
    other.tofile(tmp_path / "other.bin")
    result = cli("diff-preprocess", photo, "--against", tmp_path / "other.bin")
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"most likely: {cause}:"), result.stdout
    document = json.loads(cli("diff-preprocess", photo, "--against", tmp_path / "other.bin", "--json").stdout)
    assert document["explanation"]["name"] == cause and document["explanation"]["identical"]
    assert len(document["tile_channel_stats"]) == 4 * 3


def test_diff_preprocess_identical_and_bad_inputs(photo, tmp_path):
    preprocess(Image.open(photo)).inp_raw.tofile(tmp_path / "same.bin")
    result = cli("diff-preprocess", photo, "--against", tmp_path / "same.bin")
    assert result.returncode == 0 and result.stdout.startswith("identical")
    (tmp_path / "short.bin").write_bytes(b"\0" * 1000)
    assert_one_line_error(cli("diff-preprocess", photo, "--against", tmp_path / "short.bin"), "1000 bytes")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    assert_one_line_error(cli("preprocess", tmp_path / "broken.png", "-o", tmp_path / "x.h5"), "broken.png")
    assert_one_line_error(cli("preprocess", tmp_path / "missing.jpg", "-o", tmp_path / "x.h5"), "no such file")
