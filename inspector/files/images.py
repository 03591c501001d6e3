"""Untrusted image files: regular files only, and a pixel bound checked before any pixel is decoded.

Pillow reads an image's header when it opens it and decodes the pixels only
on ``load()``; a 117 KB PNG can declare 20000 x 20000 pixels (1.9 GB
decoded).  So the size is checked between the two.  Pillow's own
decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, process-wide) is
switched off for the read: between one and two times its bound it only
warns, which would be a second line on stderr; ours decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from inspector.constants import MAX_IMAGE_PIXELS
from inspector.errors import InspectorError
from inspector.files.inputs import open_regular_file

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MAX_IMAGE_PIXELS", "check_pixels", "open_image", "pillow_pixel_limit"]


@contextmanager
def pillow_pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb bound set to ``limit`` (None: off, the caller checks) for one read.

    Pillow is imported here, not at import time: capture's start-up does not need it.
    """
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def check_pixels(label: str, width: int, height: int, error: type[InspectorError] = InspectorError) -> None:
    """Refuse an image larger than :data:`MAX_IMAGE_PIXELS` (from its header, before decoding)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise error(f"{label}: {width}x{height} pixels is more than the {MAX_IMAGE_PIXELS} an image may have")


def open_image(path: str | Path, label: str | None = None, error: type[InspectorError] = InspectorError
               ) -> Image.Image:
    """Decode an untrusted image file: a regular file, its header's size checked first; else one-line ``error``."""
    from PIL import Image, UnidentifiedImageError

    label = label or str(path)
    width = height = 0
    try:
        with open_regular_file(path, "an image file", error) as handle, pillow_pixel_limit(None):
            image = Image.open(handle)
            width, height = image.size
            check_pixels(label, width, height, error)
            image.load()
    except UnidentifiedImageError:
        raise error(f"{label} is not a readable image (Pillow knows no such format)") from None
    except MemoryError:
        raise error(f"{label}: not enough memory to decode {width}x{height} pixels") from None
    except (OSError, ValueError, SyntaxError) as problem:
        raise error(f"{label} cannot be decoded (truncated or corrupt: {problem})") from None
    return image
