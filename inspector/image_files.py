"""Untrusted image files: the pixel count we decode at most, and Pillow's own bound set to it.

Pillow guards against decompression bombs with a process-wide
``Image.MAX_IMAGE_PIXELS``; the tool's readers set it for the duration of
one read, so a limit of ours never leaks into the rest of the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# A 16384 x 16384 image: more than any vision model's preprocessing keeps, and 805 MB as RGB.
MAX_IMAGE_PIXELS = 16384 * 16384


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
