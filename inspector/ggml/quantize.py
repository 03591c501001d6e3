"""Quantize float weights with ggml's own quantizers, for generated models.

gguf-py quantizes only a few types (Q4_0, Q8_0, ...); the K-quants and
IQ4_NL that real conversions use, and that the CPU backend repacks, need
ggml's ``ggml_quantize_chunk``.  Tests never check values against this path:
they dequantize the file's bytes with gguf-py, an independent decoder.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inspector.ggml.library import load


def quantize_rows(array: np.ndarray, quant_type: GGMLQuantizationType) -> np.ndarray:
    """Quantize a 2-D float32 array row by row; returns the bytes as (rows, bytes per row) uint8."""
    values = np.ascontiguousarray(array, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError("quantize_rows takes a 2-D array")
    rows, n_per_row = values.shape
    block_size, type_size = GGML_QUANT_SIZES[quant_type]
    if n_per_row % block_size:
        raise ValueError(f"rows of {n_per_row} are not a multiple of {quant_type.name}'s block of {block_size}")
    out = np.empty((rows, n_per_row // block_size * type_size), dtype=np.uint8)
    written = load().base.ggml_quantize_chunk(int(quant_type), values.ctypes.data, out.ctypes.data, 0, rows,
                                              n_per_row, None)
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out
