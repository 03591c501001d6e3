"""The ctypes mirror of ggml_tensor, proved field by field against ggml's own C API."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from inspector.constants import GGML_OBJECT_SIZE, GGML_TENSOR_FLAG_INPUT, GGML_TENSOR_FLAG_OUTPUT, GGML_TYPE_F16
from inspector.ggml import GgmlTensorStruct, Tensor, load
from inspector.ggml.library import SONAME_GGML, SONAME_GGML_BASE, GgmlInitParams


@pytest.fixture()
def ctx():
    lib = load()
    context = lib.base.ggml_init(GgmlInitParams(1 << 20, None, False))
    yield lib, context
    lib.base.ggml_free(context)


def test_struct_size_matches_ggml_tensor_overhead():
    lib = load()
    assert ctypes.sizeof(GgmlTensorStruct) == lib.base.ggml_tensor_overhead() - GGML_OBJECT_SIZE


def test_every_field_we_read_matches_the_c_api(ctx):
    lib, context = ctx
    base = lib.base
    a = base.ggml_new_tensor_3d(context, GGML_TYPE_F16, 8, 3, 2)
    b = base.ggml_new_tensor_3d(context, GGML_TYPE_F16, 8, 3, 2)
    base.ggml_set_name(a, "ä/b c".encode())
    base.ggml_set_input(a)
    base.ggml_set_output(b)
    total = base.ggml_add(context, a, b)
    permuted = base.ggml_permute(context, a, 0, 2, 1, 3)
    view = base.ggml_view_2d(context, a, 4, 3, 16, 6)

    ta, tb, tsum, tperm, tview = (Tensor(lib, p) for p in (a, b, total, permuted, view))
    assert ta.ggml_type == GGML_TYPE_F16 and ta.type_name == "f16"
    assert ta.ne == (8, 3, 2, 1)
    assert ta.nb == (2, 16, 48, 96)
    assert ta.name == "ä/b c" and base.ggml_get_name(a) == "ä/b c".encode()
    assert ta.data == base.ggml_get_data(a) and ta.data is not None
    assert ta.nbytes == base.ggml_nbytes(a) == 96
    assert ta.n_dims == 3
    assert ta.flags & GGML_TENSOR_FLAG_INPUT and tb.flags & GGML_TENSOR_FLAG_OUTPUT
    assert ta.buffer is None
    # op: the C-side description must agree with the enum value read from our struct.
    assert tsum.op_desc == base.ggml_op_name(tsum.op).decode() == "ADD"
    assert tperm.op_desc == "PERMUTE" and ta.op_desc == "NONE" and ta.is_leaf_like
    assert [s.address for s in tsum.sources] == [a, b]
    # op_params: ggml_permute stores the axes as its first four int32 params.
    assert list(tperm.struct.op_params[:4]) == [0, 2, 1, 3]
    assert tperm.ne == (8, 2, 3, 1) and tperm.nb == (2, 48, 16, 96) and not tperm.is_contiguous
    assert tperm.view_source.address == a and tperm.view_offset == 0
    assert tview.view_source.address == a and tview.view_offset == 6
    assert tview.ne == (4, 3, 1, 1) and tview.nb[1] == 16
    assert tview.data == ta.data + 6


def test_one_ggml_is_mapped_in_the_process():
    """libllama's ggml and ours must be the same files, or registries would differ."""
    load()
    mapped = {Path(line.split()[-1]).name for line in Path("/proc/self/maps").read_text().splitlines()
              if "libggml" in line}
    assert SONAME_GGML_BASE in mapped and SONAME_GGML in mapped
    assert not {"libggml.so", "libggml-base.so"} & mapped
    assert not any(name.endswith((".so.0.25.3",)) for name in mapped)


def test_devices_include_the_cpu():
    from inspector.ggml.system import ggml_devices

    devices = ggml_devices(load())
    assert any(device["type"] == "CPU" for device in devices)
