"""ggml's tensor types: their numbers, names, block sizes and bytes per block.

Why not gguf-py's tables directly: ``import gguf`` loads its writer, vocabulary
and metadata modules, yaml and sentencepiece with them, ~80 ms of every
capture's start-up for a lookup that nearly always asks about f32 or f16.  The
plain types are ours (:data:`inspector.constants.PLAIN_GGML_TYPES`, and bf16); a
quantized type is looked up in gguf-py the first time one is met, so gguf-py
stays the one source for the block formats we do not decode ourselves.
"""

from __future__ import annotations

import functools
from typing import Any

from inspector.constants import GGML_TYPE_BF16, PLAIN_GGML_TYPES

# (block size, bytes per block) of the types numpy holds as they are, and of bf16 (widened on reading).
_PLAIN_SIZES = {ggml_type: (1, int(dtype[-1])) for ggml_type, _name, dtype in PLAIN_GGML_TYPES}
_PLAIN_SIZES[GGML_TYPE_BF16] = (1, 2)
_PLAIN_NUMBERS = {name: ggml_type for ggml_type, name, _dtype in PLAIN_GGML_TYPES} | {"bf16": GGML_TYPE_BF16}


def quant_type(ggml_type: int) -> Any:
    """gguf-py's ``GGMLQuantizationType`` member for ``ggml_type``; ValueError for a number gguf-py does not know."""
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(ggml_type)


@functools.lru_cache(maxsize=64)
def sizes(ggml_type: int) -> tuple[int, int] | None:
    """(values per block, bytes per block) of ``ggml_type``; None for a number gguf-py does not know."""
    if ggml_type in _PLAIN_SIZES:
        return _PLAIN_SIZES[ggml_type]
    from gguf import GGML_QUANT_SIZES

    try:
        return GGML_QUANT_SIZES[quant_type(ggml_type)]
    except (ValueError, KeyError):
        return None


def type_number(name: str) -> int:
    """The ``enum ggml_type`` value of a type named as llama.cpp's options name it (``f16``, ``q8_0``, ``BF16``);
    KeyError for a name gguf-py does not know."""
    lowered = name.lower()
    if lowered in _PLAIN_NUMBERS:
        return _PLAIN_NUMBERS[lowered]
    from gguf import GGMLQuantizationType

    return int(GGMLQuantizationType[name.upper()])
