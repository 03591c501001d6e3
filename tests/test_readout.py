"""Materialising ggml byte layouts into numpy, on buffers built independently with numpy."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from inspector.constants import GGML_TYPE_BF16, GGML_TYPE_F16, GGML_TYPE_F32, GGML_TYPE_I32, GGML_TYPE_Q8_0
from inspector.ggml import materialise, numpy_shape


def contiguous_nb(ne, itemsize):
    nb = [itemsize]
    for n in ne[:-1]:
        nb.append(nb[-1] * n)
    return tuple(nb)


def test_numpy_shape_is_reversed_ne_trimmed():
    assert numpy_shape((64, 6, 1, 1), 2) == (6, 64)
    assert numpy_shape((5, 1, 1, 1), 1) == (5,)
    assert numpy_shape((16, 4, 6, 1), 3) == (6, 4, 16)


@pytest.mark.parametrize("ggml_type,dtype", [(GGML_TYPE_F32, np.float32), (GGML_TYPE_F16, np.float16),
                                             (GGML_TYPE_I32, np.int32)])
def test_contiguous_round_trip(ggml_type, dtype):
    values = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    ne = (5, 3, 2, 1)
    out = materialise(values.view(np.uint8).reshape(-1), ggml_type, ne, contiguous_nb(ne, values.itemsize),
                      1, values.itemsize, 3)
    assert out.storage == "native" and out.array.dtype == dtype
    np.testing.assert_array_equal(out.array, values)


def test_permuted_strides_give_the_transpose():
    values = np.arange(4 * 3 * 2, dtype=np.float32).reshape(2, 3, 4)  # ne = (4, 3, 2)
    nb = contiguous_nb((4, 3, 2, 1), 4)
    # permute(0, 2, 1, 3): swap ne1/ne2 and nb1/nb2
    out = materialise(values.view(np.uint8).reshape(-1), GGML_TYPE_F32, (4, 2, 3, 1),
                      (nb[0], nb[2], nb[1], nb[3]), 1, 4, 3)
    np.testing.assert_array_equal(out.array, np.transpose(values, (1, 0, 2)))
    assert out.array.flags.c_contiguous


def test_view_with_row_padding_skips_the_padding():
    values = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    # a 3-wide view into 4-wide rows: nb1 stays 16 bytes
    raw = values.view(np.uint8).reshape(-1)[: (5 * 16 + 12)]
    out = materialise(raw, GGML_TYPE_F32, (3, 6, 1, 1), (4, 16, 96, 96), 1, 4, 2)
    np.testing.assert_array_equal(out.array, values[:, :3])


def test_bf16_is_widened_exactly():
    floats = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bits = (floats.view(np.uint32) >> 16).astype("<u2")
    out = materialise(bits.view(np.uint8), GGML_TYPE_BF16, (4, 1, 1, 1), (2, 8, 8, 8), 1, 2, 1)
    assert out.storage == "bf16->f32"
    np.testing.assert_array_equal(out.array, (bits.astype(np.uint32) << 16).view(np.float32))


def test_q8_0_rows_are_dequantized():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((3, 64)).astype(np.float32)
    packed = quantize(values, GGMLQuantizationType.Q8_0)  # (3, 68) bytes: 2 blocks of 34
    out = materialise(packed.reshape(-1), GGML_TYPE_Q8_0, (64, 3, 1, 1), (34, 68, 204, 204), 32, 34, 2)
    assert out.storage == "dequantized" and out.array.shape == (3, 64)
    step = np.abs(values).reshape(3, 2, 32).max(axis=2, keepdims=True) / 127
    assert np.all(np.abs(out.array - values).reshape(3, 2, 32) <= step / 2 + 1e-6)
