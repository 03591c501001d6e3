"""The ctypes mirror of ggml_tensor, proved field by field against ggml's own C API."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from inspector.constants import GGML_OBJECT_SIZE, GGML_TENSOR_FLAG_INPUT, GGML_TENSOR_FLAG_OUTPUT, GGML_TYPE_F16
from inspector.errors import InspectorError
from inspector.ggml import GgmlTensorStruct, Tensor, load
from inspector.ggml.abi import GgmlInitParams
from inspector.ggml.library import SONAME_GGML, SONAME_GGML_BASE
from inspector.ggml.signatures import BY_LIBRARY


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


def _called_c_functions() -> set[str]:
    """Every ggml/gguf C function the package's source calls on a library handle or as a Context op."""
    root = Path(__file__).resolve().parents[1] / "inspector"
    handle_call = re.compile(r"\b(?:lib|base|ggml|cpu|rpc|registry)\.((?:ggml|gguf)_\w+)\(")
    op_call = re.compile(r"\b(?:c|context)\.(\w+)\(")
    called = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        called |= set(handle_call.findall(text))
        if "Context" in text:
            called |= {f"ggml_{op}" for op in op_call.findall(text) if op not in ("tensor", "name", "free")}
    return called


def test_every_c_function_the_package_calls_is_declared_in_the_one_table():
    """An undeclared function returns a C int and takes ints: a pointer would be cut to 32 bits."""
    declared = {name for tables in BY_LIBRARY.values() for table in tables for name in table}
    called = _called_c_functions()
    assert len(called) > 60
    assert called <= declared, sorted(called - declared)


def test_the_table_is_declared_on_the_loaded_libraries():
    """Each name exists in the library it is declared on, with the table's signature, once load() returns."""
    lib = load()
    for attribute, tables in BY_LIBRARY.items():
        handle = getattr(lib, attribute)
        assert handle is not None, attribute
        for table in tables:
            for name, (restype, argtypes) in table.items():
                function = getattr(handle, name)
                assert (function.restype, function.argtypes) == (restype, argtypes), name


def test_one_enumeration_serves_every_device_question():
    """The dump's device facts, the CPU backend's device and a name lookup all come from list_devices."""
    from inspector.ggml.devices import device_by_name, find_device, list_devices
    from inspector.ggml.system import ggml_devices

    lib = load()
    devices = list_devices(lib)
    registry = lib.ggml
    assert [d.name for d in devices] == [registry.ggml_backend_dev_name(registry.ggml_backend_dev_get(i)).decode()
                                         for i in range(registry.ggml_backend_dev_count())]
    assert [(f["name"], f["type"]) for f in ggml_devices(lib)] == [(d.name, d.kind) for d in devices]
    cpu = next(d for d in devices if d.kind == "CPU")
    assert find_device(lib, None) == cpu.handle == device_by_name(lib, cpu.name)
    assert device_by_name(lib, "no such device") is None
    with pytest.raises(InspectorError, match="no ggml device 'no such device'; available: CPU"):
        find_device(lib, "no such device")
