"""Hostile images: a PNG whose header declares 20000x20000 pixels, FIFOs, devices and folders as images.

Before the fixes a 117 KB PNG of 20000x20000 made ``preprocess`` use 1.9 GB
and a FIFO made it hang.  Every case runs ``preprocess`` (and ``mllama
encode``) as a real subprocess under a 1 GiB address-space cap.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from capped_cli import assert_refused, digest, run_capped
from PIL import Image

from inspector.constants import MAX_IMAGE_PIXELS
from inspector.errors import SetupError
from inspector.llamacpp.multimodal import read_image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit greyscale PNG of any size, written row by row by hand: a few KB for 400 M pixels."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none", then the packed pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile-images")
    photo = folder / "photo.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photo)
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    (folder / "folder.png").mkdir()
    return {"photo": photo, "huge": black_png(folder / "huge.png", 20000, 20000),
            # Between Pillow's bound and twice it Pillow only warns: a second stderr line, unless ours decides.
            "large": black_png(folder / "large.png", 9000, 9000), "fifo": fifo, "folder": folder / "folder.png"}


def test_the_crafted_png_is_what_it_claims(images):
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(images["huge"]) as image:
            assert image.size == (20000, 20000) and image.mode == "1"
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    assert images["huge"].stat().st_size < 200_000
    assert 9000 * 9000 > MAX_IMAGE_PIXELS


def test_preprocess_works_on_a_photo_under_the_cap(images, tmp_path):
    outcome = run_capped("preprocess", images["photo"], "-o", tmp_path / "ok.h5")
    assert outcome.returncode == 0, outcome.stderr
    assert (tmp_path / "ok.h5").exists()


@pytest.mark.parametrize("name", ["huge", "large"])
def test_an_image_above_the_pixel_bound_is_refused_before_decoding(images, tmp_path, name):
    before = digest(images[name])
    outcome = run_capped("preprocess", images[name], "-o", tmp_path / "out.h5")
    side = 20000 if name == "huge" else 9000
    assert_refused(outcome, f"{side}x{side} pixels is more than the {MAX_IMAGE_PIXELS}")
    assert digest(images[name]) == before
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(("name", "kind"), [("fifo", "a FIFO"), ("folder", "a folder")])
def test_a_fifo_or_folder_as_image_is_refused_at_once(images, tmp_path, name, kind):
    outcome = run_capped("preprocess", images[name], "-o", tmp_path / "out.h5", timeout=60)
    assert_refused(outcome, f"is {kind}, not an image file")


def test_a_device_as_image_is_refused(tmp_path):
    outcome = run_capped("preprocess", "/dev/zero", "-o", tmp_path / "out.h5", timeout=60)
    assert_refused(outcome, "/dev/zero is a device, not an image file")


def test_max_tiles_is_bounded(images, tmp_path):
    outcome = run_capped("preprocess", images["photo"], "--max-tiles", "100000", "-o", tmp_path / "out.h5",
                         timeout=60)
    assert_refused(outcome, "--max-tiles 100000 is more than 16")
    outcome = run_capped("preprocess", images["photo"], "--tile-size", "100016", "-o", tmp_path / "out.h5",
                         timeout=60)
    assert_refused(outcome, "--tile-size 100016 with --max-tiles 4 makes a canvas larger than")


def test_llama_cpp_images_are_checked_the_same_way(images):
    with pytest.raises(SetupError, match="is a FIFO, not an image file"):
        read_image(str(images["fifo"]))
    with pytest.raises(SetupError, match="20000x20000 pixels is more than"):
        read_image(str(images["huge"]))
    data, facts = read_image(str(images["photo"]))
    assert (facts["width"], facts["height"]) == (64, 48) and data == images["photo"].read_bytes()
