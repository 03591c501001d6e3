"""Hostile variants of every format ggml-inspector reads, made from real files (issue 19).

Each generator starts from a real base file (a dump captured from a generated
model, a frame stream made of that dump's tensors, a generated GGUF, a
generated image) and yields named mutations. A mutation sets one field of the
real format to an edge value (a size of 2^63, a zero stride, a
self-referencing link, a control character) rather than flipping random
bytes, so every check a reader makes is reached on its own; the seeded ones
draw the field and the value from ``random.Random(SEED)``, so a name alone
reproduces a case.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SEED = 19
# What a terminal must never receive raw from a file: the title-setting OSC sequence and a forged line.
HOSTILE_TEXT = "\x1b]0;owned\x07\nFORGED line\r"
FORGED_MARK = "FORGED"

# ---------------------------------------------------------------- ggml's enums, from the installed header


def _ggml_header() -> str:
    """ggml.h as installed with llama-cpp-python: the op numbering of the very library the CLI loads."""
    spec = find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package.parent.glob("**/include/ggml.h")) + sorted(package.glob("**/ggml.h"))
    assert candidates, f"no ggml.h installed beside {package}"
    return candidates[0].read_text()


def _enum(text: str, enum: str, prefix: str) -> list[str]:
    body = re.search(r"enum " + enum + r" \{(.*?)\};", text, re.S)
    assert body is not None, enum
    names = re.findall(r"^\s*(" + prefix + r"[A-Z0-9_]+)\s*(?:=\s*\d+)?\s*,", body.group(1), re.M)
    return [name[len(prefix):] for name in names]


@dataclass(frozen=True)
class GgmlEnums:
    ops: list[str]
    unary: list[str]
    glu: list[str]

    def code(self, op: str) -> int:
        return self.ops.index(op)

    def desc(self, code: int, params: list[int]) -> str:
        """What ggml_op_desc says of an op code with these params (a unary or GLU op names its sub-op)."""
        if not 0 <= code < len(self.ops):
            return f"OP_{code}"
        name = self.ops[code]
        table = {"UNARY": self.unary, "GLU": self.glu}.get(name)
        if table is not None and params and 0 <= params[0] < len(table):
            return table[params[0]]
        return name


def ggml_enums() -> GgmlEnums:
    text = _ggml_header()
    ops = _enum(text, "ggml_op", "GGML_OP_")
    ops = ops[:ops.index("COUNT")]
    return GgmlEnums(ops, _enum(text, "ggml_unary_op", "GGML_UNARY_OP_"), _enum(text, "ggml_glu_op", "GGML_GLU_OP_"))


# ggml_type numbers of the types the frames and records name (ggml.h, stable across versions).
GGML_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "i8": 24, "i16": 25, "i32": 26, "i64": 27, "f64": 28,
                 "bf16": 30}
NUMPY_OF = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64, "f64": np.float64,
            "i8": np.int8, "i16": np.int16}

# Values a crafted integer field takes: the edges of every width a reader may store it in.
U64_EDGES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1)
I64_EDGES = (0, -1, -(2**31), 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63))


@dataclass
class Mutation:
    """A named edit of a copy of a base file (``apply(path)`` edits in place)."""

    name: str
    apply: Callable[[Path], None]
    # What the mutation aims at, for commands that name one tensor: (name, eval index).
    target: tuple[str, int] | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    # Commands (by label) that must refuse the file: accepting it would read corrupt data as if it were whole.
    refuse: frozenset[str] = frozenset()


def materialise(base: Path, folder: Path, mutation: Mutation) -> Path:
    """A copy of ``base`` in ``folder`` with ``mutation`` applied; the file name keeps the base's suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.=+-]", "_", mutation.name)[:120]
    path = folder / f"{safe}{base.suffix}"
    shutil.copyfile(base, path)
    mutation.apply(path)
    return path


# ---------------------------------------------------------------- GGUF


GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                12: "<d"}
GGUF_STRING, GGUF_ARRAY = 8, 9


@dataclass
class GgufKv:
    key: str
    at: int  # the key's length field
    type_at: int
    value_type: int
    value_at: int
    end: int
    elem_type: int | None = None


@dataclass
class GgufTensor:
    name: str
    at: int  # the name's length field
    n_dims_at: int
    ne_at: list[int]
    ne: list[int]
    type_at: int
    offset_at: int
    offset: int


@dataclass
class GgufLayout:
    kvs: list[GgufKv]
    tensors: list[GgufTensor]
    info_end: int
    alignment: int

    def kv(self, key: str) -> GgufKv:
        return next(kv for kv in self.kvs if kv.key == key)


def _skip_value(data: bytes, kind: int, at: int) -> int:
    if kind in GGUF_SCALARS:
        return at + struct.calcsize(GGUF_SCALARS[kind])
    if kind == GGUF_STRING:
        return at + 8 + struct.unpack_from("<Q", data, at)[0]
    assert kind == GGUF_ARRAY, kind
    elem, count = struct.unpack_from("<IQ", data, at)
    at += 12
    if elem in GGUF_SCALARS:
        return at + count * struct.calcsize(GGUF_SCALARS[elem])
    for _ in range(count):
        at = _skip_value(data, elem, at)
    return at


def gguf_layout(data: bytes) -> GgufLayout:
    """Where every field of a (well-formed) GGUF v3 header lies, parsed here independently of the tool."""
    assert data[:4] == b"GGUF"
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    at, kvs = 24, []
    alignment = 32
    for _ in range(n_kv):
        length = struct.unpack_from("<Q", data, at)[0]
        key = data[at + 8:at + 8 + length].decode()
        type_at = at + 8 + length
        kind = struct.unpack_from("<I", data, type_at)[0]
        end = _skip_value(data, kind, type_at + 4)
        elem = struct.unpack_from("<I", data, type_at + 4)[0] if kind == GGUF_ARRAY else None
        kvs.append(GgufKv(key, at, type_at, kind, type_at + 4, end, elem))
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", data, type_at + 4)[0]
        at = end
    tensors = []
    for _ in range(n_tensors):
        length = struct.unpack_from("<Q", data, at)[0]
        name = data[at + 8:at + 8 + length].decode()
        n_dims_at = at + 8 + length
        n_dims = struct.unpack_from("<I", data, n_dims_at)[0]
        ne_at = [n_dims_at + 4 + 8 * i for i in range(n_dims)]
        ne = [struct.unpack_from("<Q", data, p)[0] for p in ne_at]
        type_at = n_dims_at + 4 + 8 * n_dims
        offset = struct.unpack_from("<Q", data, type_at + 4)[0]
        tensors.append(GgufTensor(name, at, n_dims_at, ne_at, ne, type_at, type_at + 4, offset))
        at = type_at + 12
    return GgufLayout(kvs, tensors, at, alignment)


def _patch(path: Path, at: int, fmt: str, value: Any) -> None:
    with open(path, "r+b") as handle:
        handle.seek(at)
        handle.write(struct.pack(fmt, value))


def _patch_bytes(path: Path, at: int, raw: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(at)
        handle.write(raw)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def _add_kv(entry: bytes) -> Callable[[Path], None]:
    """Append a key/value pair to the header (n_kv + 1); the data section moves to the next aligned offset."""
    def apply(path: Path) -> None:
        data = path.read_bytes()
        layout = gguf_layout(data)
        kv_end = layout.kvs[-1].end
        data_start = -(-layout.info_end // layout.alignment) * layout.alignment
        head = (data[:16] + struct.pack("<Q", len(layout.kvs) + 1) + data[24:kv_end] + entry
                + data[kv_end:layout.info_end])
        head += b"\0" * ((-len(head)) % 32)
        path.write_bytes(head + data[data_start:])
    return apply


def _kv(key: bytes, value: bytes) -> bytes:
    """A key/value pair: the key's length and bytes, then the value's type and value."""
    return struct.pack("<Q", len(key)) + key + value


def gguf_mutations(base: Path, count: int, seed: int = SEED) -> list[Mutation]:
    """Named mutations of a GGUF's key/value header and tensor infos, then ``count`` seeded single-field ones."""
    data = base.read_bytes()
    layout = gguf_layout(data)
    size = len(data)
    rng = random.Random(seed)
    strings = [kv for kv in layout.kvs if kv.value_type == GGUF_STRING]
    arrays = [kv for kv in layout.kvs if kv.value_type == GGUF_ARRAY]
    tensors = layout.tensors
    first, middle, last = tensors[0], tensors[len(tensors) // 2], tensors[-1]
    m: list[Mutation] = []

    every, loading = frozenset({"gguf", "capture", "encode"}), frozenset({"capture", "encode"})

    def add(name: str, apply: Callable[[Path], None], *tags: str, refuse: frozenset[str] = every) -> None:
        m.append(Mutation(name, apply, tags=frozenset(tags), refuse=refuse))

    def set_field(at: int, fmt: str, value: Any) -> Callable[[Path], None]:
        return lambda path: _patch(path, at, fmt, value)

    for version in (0, 1, 2, 4, 2**32 - 1):
        add(f"gguf/version={version}", set_field(4, "<I", version), "header",
            refuse=frozenset() if version == 2 else every)
    for value in (0, len(tensors) + 1, 2**63, 2**64 - 1):
        add(f"gguf/n_tensors={value}", set_field(8, "<Q", value), "header", refuse=loading if value == 0 else every)
    for value in (len(layout.kvs) + 1, 2**63, 2**64 - 1):
        add(f"gguf/n_kv={value}", set_field(16, "<Q", value), "header")
    kv = layout.kvs[0]
    for value in (2**63, 0, 2**32 + 5, size):
        add(f"gguf/kv[{kv.key}].key_length={value}", set_field(kv.at, "<Q", value), "header",
            refuse=frozenset() if value == 0 else every)
    add(f"gguf/kv[{kv.key}].key=invalid-utf8", lambda path, at=kv.at: _patch_bytes(path, at + 8, b"\xff\xfe"),
        "header", refuse=loading)
    architecture = layout.kv("general.architecture")
    add("gguf/kv[general.architecture].value=invalid-utf8",
        lambda path, at=architecture.value_at: _patch_bytes(path, at + 8, b"\xff\xfe"), "header", refuse=loading)
    for value in (13, 99, 2**32 - 1, GGUF_ARRAY):
        add(f"gguf/kv[{kv.key}].type={value}", set_field(kv.type_at, "<I", value), "header",
            refuse=loading if value == GGUF_ARRAY else every)
    for kv in strings[:2]:
        for value in (2**63, 2**64 - 1, size):
            add(f"gguf/kv[{kv.key}].string_length={value}", set_field(kv.value_at, "<Q", value), "header")
    hostile = HOSTILE_TEXT.encode()
    add("gguf/kv=control-characters", _add_kv(_kv(b"fuzz.hostile\x1b]0;x\x07\n", struct.pack("<IQ", GGUF_STRING,
                                                                                              len(hostile)) + hostile)),
        "header", "text", refuse=frozenset())
    for kv in arrays[:2]:
        for value in (2**63, 2**64 - 1, 2**32):
            add(f"gguf/kv[{kv.key}].array_count={value}", set_field(kv.value_at + 4, "<Q", value), "header")
        for value in (GGUF_ARRAY, 99):
            add(f"gguf/kv[{kv.key}].array_type={value}", set_field(kv.value_at, "<I", value), "header")
    # gguf-py's reader loops once per element and an element past the end of the file reads as zero bytes:
    # an array of u8 declaring 2^63 items that the file cannot hold grows its lists forever.
    add("gguf/array-of-2^63-u8-past-the-end", _add_kv(_kv(b"fuzz.bomb", struct.pack("<IIQ", GGUF_ARRAY, 0, 2**63))),
        "header")
    nested = struct.pack("<I", GGUF_ARRAY) + struct.pack("<IQ", GGUF_ARRAY, 2**63) + struct.pack("<IQ", 0, 2**63)
    add("gguf/nested-array-of-2^63-arrays", _add_kv(_kv(b"fuzz.nested", nested)), "header")
    deep = struct.pack("<I", GGUF_ARRAY) + struct.pack("<IQ", GGUF_ARRAY, 1) * 64 + struct.pack("<IQ", 0, 0)
    add("gguf/64-deep-nested-arrays", _add_kv(_kv(b"fuzz.deep", deep)), "header")
    duplicate = data[layout.kvs[0].at:layout.kvs[0].end]
    add(f"gguf/duplicate-key-{layout.kvs[0].key}", _add_kv(duplicate), "header")
    for value in (0, 3, 2**31):
        add(f"gguf/general.alignment={value}", _add_kv(_kv(b"general.alignment", struct.pack("<II", 4, value))),
            "header", refuse=loading if value == 2**31 else every)
    # Tensor infos: name length, n_dims, ne, type, offset.
    for tensor in (first, middle):
        for value in (2**63, 0, 65, 2**32):
            add(f"gguf/tensor[{tensor.name}].name_length={value}", set_field(tensor.at, "<Q", value), "tensors",
                refuse=loading if value == 0 else every)
        for value in (0, 5, 2**32 - 1):
            add(f"gguf/tensor[{tensor.name}].n_dims={value}", set_field(tensor.n_dims_at, "<I", value), "tensors",
                refuse=loading if value == 0 else every)
        for value in (0, 2**63, 2**64 - 1, 2**62):
            add(f"gguf/tensor[{tensor.name}].ne0={value}", set_field(tensor.ne_at[0], "<Q", value), "tensors",
                refuse=loading if value == 0 else every)
        for value in (4, 99, 2**32 - 1, GGML_TYPE_IDS["q4_0"]):
            add(f"gguf/tensor[{tensor.name}].type={value}", set_field(tensor.type_at, "<I", value), "tensors")
        for value in (2**64 - 32, 2**63, tensor.offset + 1, size, first.offset if tensor is not first else 32):
            add(f"gguf/tensor[{tensor.name}].offset={value}", set_field(tensor.offset_at, "<Q", value), "tensors")
    if len(last.ne_at) > 1:
        add(f"gguf/tensor[{last.name}].ne=2^32x2^32",
            lambda path, t=last: (_patch(path, t.ne_at[0], "<Q", 2**32), _patch(path, t.ne_at[1], "<Q", 2**32)),
            "tensors")
    add(f"gguf/tensor[{first.name}].name=control-characters",
        lambda path, t=first: _patch_bytes(path, t.at + 8, b"\x1b]0;x\x07\n"[:len(t.name)]), "tensors", "text",
        refuse=loading)
    for cut in sorted({3, 8, 23, layout.kvs[len(layout.kvs) // 2].at + 3, layout.info_end - 5,
                       (layout.info_end + size) // 2, size - 1}):
        add(f"gguf/truncated-at-{cut}", lambda path, c=cut: _truncate(path, c), "truncated",
            refuse=every if cut < layout.info_end else loading)
    # Seeded single-field mutations of any integer field of the header and tensor infos.
    fields: list[tuple[str, int, str]] = [("version", 4, "<I"), ("n_tensors", 8, "<Q"), ("n_kv", 16, "<Q")]
    for kv in layout.kvs:
        fields += [(f"kv[{kv.key}].key_length", kv.at, "<Q"), (f"kv[{kv.key}].type", kv.type_at, "<I")]
        if kv.value_type == GGUF_ARRAY:
            fields += [(f"kv[{kv.key}].array_type", kv.value_at, "<I"),
                       (f"kv[{kv.key}].array_count", kv.value_at + 4, "<Q")]
        elif kv.value_type == GGUF_STRING:
            fields.append((f"kv[{kv.key}].string_length", kv.value_at, "<Q"))
    for tensor in tensors:
        fields += [(f"tensor[{tensor.name}].name_length", tensor.at, "<Q"),
                   (f"tensor[{tensor.name}].n_dims", tensor.n_dims_at, "<I"),
                   (f"tensor[{tensor.name}].type", tensor.type_at, "<I"),
                   (f"tensor[{tensor.name}].offset", tensor.offset_at, "<Q")]
        fields += [(f"tensor[{tensor.name}].ne{i}", at, "<Q") for i, at in enumerate(tensor.ne_at)]
    for _ in range(count):
        name, at, fmt = rng.choice(fields)
        edges = [v for v in U64_EDGES if v < 2 ** (8 * struct.calcsize(fmt))]
        current = struct.unpack_from(fmt, data, at)[0]
        value = rng.choice(edges + [current + 1, max(current - 1, 0), current * 2 + 1])
        value %= 2 ** (8 * struct.calcsize(fmt))
        add(f"gguf/seeded/{name}={value}", set_field(at, fmt, value), "seeded", refuse=frozenset())
    return m


# ---------------------------------------------------------------- dumps


def _index(handle: h5py.File) -> np.ndarray:
    return handle["index"][()]


def edit_rows(path: Path, seq: int, /, **fields: Any) -> None:
    """Set index columns of the row of capture sequence ``seq``."""
    with h5py.File(path, "r+") as handle:
        index = _index(handle)
        row = index["seq"] == seq
        for name, value in fields.items():
            index[name][row] = value
        handle["index"][...] = index


def edit_record(path: Path, seq: int, change: Callable[[dict[str, Any]], Any]) -> None:
    """Replace record ``seq`` by ``change(record)`` (a dict, dumped as JSON, or raw text)."""
    with h5py.File(path, "r+") as handle:
        raw = handle["records"][seq]
        record = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        new = change(record)
        handle["records"][seq] = new if isinstance(new, str) else json.dumps(new)


def _rename(path: Path, seq: int, name: str) -> None:
    edit_rows(path, seq, name=name)
    edit_record(path, seq, lambda record: {**record, "name": name})


def _set_attr(key: str, value: Any) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with h5py.File(path, "r+") as handle:
            handle.attrs[key] = value
    return apply


def _replace_object(name: str, make: Callable[[h5py.File], Any]) -> Callable[[Path], None]:
    """Delete /name and put ``make(handle)`` there (a link, a group, another dataset)."""
    def apply(path: Path) -> None:
        with h5py.File(path, "r+") as handle:
            del handle[name]
            made = make(handle)
            if made is not None:
                handle[name] = made
    return apply


BOMB_CHUNK = 1 << 20


def zero_bomb(path: Path, seq: int, declared: int, shape: tuple[int, ...], written: bool) -> None:
    """Grow /tensors by ``declared`` bytes of zeros and point row ``seq`` at them as one f32 tensor.

    ``written``: every added chunk is stored, gzip'd (a 1 MiB chunk of zeros is ~1 KiB: the file stays
    a few MB); otherwise no chunk is written at all and HDF5 reads its fill value.
    """
    with h5py.File(path, "r+") as handle:
        old = handle["tensors"][()]
        del handle["tensors"]
        start = math.ceil(len(old) / BOMB_CHUNK) * BOMB_CHUNK
        total = start + math.ceil(declared / BOMB_CHUNK) * BOMB_CHUNK
        stream = handle.create_dataset("tensors", shape=(total,), maxshape=(None,), dtype=np.uint8,
                                       chunks=(BOMB_CHUNK,), compression="gzip")
        stream[:len(old)] = old
        if written:
            zeros = zlib.compress(bytes(BOMB_CHUNK), 9)
            for offset in range(start, total, BOMB_CHUNK):
                stream.id.write_direct_chunk((offset,), zeros)
        index = _index(handle)
        row = index["seq"] == seq
        index["offset"][row] = start
        index["nbytes"][row] = declared
        index["ndim"][row] = len(shape)
        index["shape"][row] = list(shape) + [0] * (4 - len(shape))
        index["dtype"][row] = "<f4"
        index["stored"][row] = "full"
        handle["index"][...] = index


@dataclass(frozen=True)
class DumpTarget:
    """The tensor a dump mutation aims at, and the node replay recomputes."""

    seq: int
    name: str
    eval_index: int
    node: int = 0


def dump_rows(path: Path) -> list[dict[str, Any]]:
    with h5py.File(path, "r") as handle:
        index = _index(handle)
        return [dict(zip(index.dtype.names, row, strict=True)) for row in index.tolist()]


def _text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def dump_structure_mutations(base: Path, target: DumpTarget, model: Path, fifo: Path, folder: Path
                             ) -> list[Mutation]:
    """Attributes, links, tables and the /tensors stream; each aimed at ``target`` where it needs a tensor."""
    seq, name = target.seq, target.name
    aim = (name, target.eval_index)
    three_gib = 3 << 30
    m: list[Mutation] = []

    def add(label: str, apply: Callable[[Path], None], *tags: str, aimed: tuple[str, int] | None = aim,
            refuse: frozenset[str] = frozenset()) -> None:
        m.append(Mutation(f"dump/{label}", apply, aimed, frozenset(tags), refuse))

    reads = frozenset({"show", "export", "plot-hist", "plot-heatmap"})

    add("tensors=gzip-zeros,row=3GiB-2d", lambda p: zero_bomb(p, seq, three_gib, (786432, 1024), True), "bomb")
    add("tensors=gzip-zeros,row=3GiB-1d", lambda p: zero_bomb(p, seq, three_gib, (three_gib // 4,), True), "bomb")
    add("tensors=unwritten-chunks,row=3GiB", lambda p: zero_bomb(p, seq, three_gib, (786432, 1024), False), "bomb")
    add("tensors=unwritten-chunks,row=64GiB", lambda p: zero_bomb(p, seq, 64 << 30, (1 << 24, 1024), False), "bomb")
    add("row.stored=weird", lambda p: edit_rows(p, seq, stored="weird"), "plots", refuse=reads)
    add("row.stored=stats", lambda p: edit_rows(p, seq, stored="stats"))
    add("row.stored=empty", lambda p: edit_rows(p, seq, stored=""))
    for dtype in ("|O", "<U4", "V8", ">f4", "<c8", "<M8[s]", "f16", "S0", "<f2", "bool"):
        add(f"row.dtype={dtype}", lambda p, d=dtype: edit_rows(p, seq, dtype=d),
            refuse=reads if dtype in ("|O", "<U4", "V8", "<c8", "<M8[s]", "S0") else frozenset())
    add("data=nan-and-inf", lambda p: _fill(p, seq, [np.nan, np.inf, -np.inf, 0.0]), "values")
    add("data=float32-max", lambda p: _fill(p, seq, [3.4e38, -3.4e38, 3.4e38]), "values")
    add("row.shape=2^62-elements", lambda p: edit_rows(p, seq, shape=[2**31, 2**31, 1, 0], ndim=2))
    add("row.offset+nbytes-overflows", lambda p: edit_rows(p, seq, offset=2**62, nbytes=2**62))
    add("row.name=control-characters", lambda p: _rename(p, seq, name + HOSTILE_TEXT), "text", "plots",
        aimed=(name + HOSTILE_TEXT, target.eval_index))
    add("row.op=control-characters", lambda p: edit_rows(p, seq, op=HOSTILE_TEXT, buffer=HOSTILE_TEXT), "text")
    add("attr.incomplete_reason=control-characters",
        lambda p: (_set_attr("complete", False)(p), _set_attr("incomplete_reason", HOSTILE_TEXT)(p)), "text")
    add("attr.config.prompt=control-characters", lambda p: _edit_config(p, prompt=HOSTILE_TEXT), "text")
    add("attr.config.prompt=lone-surrogate", lambda p: _set_attr("config", json.dumps({"prompt": "\ud800"}))(p),
        "text", "report")
    add("attr.skipped=control-characters", _set_attr("skipped", json.dumps(
        [{"eval_index": 0, "name": HOSTILE_TEXT, "occurrence": 0, "buffer_type": HOSTILE_TEXT,
          "reason": HOSTILE_TEXT}])), "text")
    add("evals.kind=control-characters", lambda p: _edit_first_eval(p, "kind", HOSTILE_TEXT), "text", "plots")
    add("evals.index=not-a-number", lambda p: _edit_first_eval(p, "index", "x"))
    add("evals.info=not-json", lambda p: _edit_first_eval(p, "info", "{"), "plots")
    add("link./index->/index", _replace_object("index", lambda h: h5py.SoftLink("/index")), "link")
    add("link./tensors->/index", _replace_object("tensors", lambda h: h5py.SoftLink("/index")), "link")
    add("link./records->/nowhere", _replace_object("records", lambda h: h5py.SoftLink("/nowhere")), "link")
    add("link./index->external-model", _replace_object("index", lambda h: h5py.ExternalLink(str(model), "/index")),
        "link")
    add("link./index->external-self", _replace_object("index", lambda h: h5py.ExternalLink(".", "/index")), "link")
    add("link./tensors->external-fifo", _replace_object("tensors", lambda h: h5py.ExternalLink(str(fifo), "/t")),
        "link")
    add("link./evals->/evals/loop", lambda p: _evals_loop(p), "link", "plots")
    add("index=group", _replace_object("index", lambda h: h.create_group("index") and None))
    add("tensors=group", _replace_object("tensors", lambda h: h.create_group("tensors") and None))
    add("tensors=2d-float", _replace_object("tensors", lambda h: h.create_dataset("tensors", data=np.zeros((4, 4)))
                                            and None))
    add("records=ints", _replace_object("records", lambda h: h.create_dataset("records", data=np.arange(5000))
                                        and None))
    add("index=no-rows", lambda p: _resize(p, "index", 0))
    add("index=10^9-unwritten-rows", lambda p: _resize(p, "index", 10**9))
    add("records=no-rows", lambda p: _resize(p, "records", 0))
    add("records=10^9-unwritten-rows", lambda p: _resize(p, "records", 10**9))
    add("tensors=truncated-to-16-bytes", lambda p: _resize(p, "tensors", 16))
    add("index=missing-columns", _replace_object("index", lambda h: h.create_dataset(
        "index", data=np.zeros(3, dtype=[("eval", "<i4"), ("name", "S4")])) and None))
    for key, value in (("format_version", "2"), ("format_version", np.array([2, 2])), ("format_version", 2.5),
                       ("format_version", 1), ("format", "other"), ("complete", "yes"),
                       ("config", "{not json"), ("config", "[1, 2]"), ("config", "[" * 100000 + "]" * 100000),
                       ("result", '{"token_ids": "x", "generated_ids": {"a": 1}, "seconds": "slow"}'),
                       ("system", "\xff"), ("tool_version", HOSTILE_TEXT)):
        label = value if isinstance(value, str) and len(value) < 40 else type(value).__name__
        add(f"attr.{key}={label!r}"[:90], _set_attr(key, value), "text" if key == "tool_version" else "attr")
    add("attr.config.model=fifo", lambda p: _edit_config(p, model=str(fifo)), "model")
    add("attr.config.model=/dev/zero", lambda p: _edit_config(p, model="/dev/zero"), "model")
    add("attr.config.model=folder", lambda p: _edit_config(p, model=str(folder)), "model")
    add("attr.config.model=missing", lambda p: _edit_config(p, model=str(folder / "missing.gguf")), "model")
    add("attr.config.model=not-a-gguf", lambda p: _edit_config(p, model=str(p)), "model")
    size = base.stat().st_size
    for fraction in (0.1, 0.5, 0.9):
        add(f"truncated-at-{fraction}", lambda p, f=fraction: _truncate(p, int(size * f)), "truncated")
    return m


def _fill(path: Path, seq: int, pattern: list[float]) -> None:
    """Overwrite the f32 tensor of row ``seq`` with ``pattern`` repeated: values a run may well produce."""
    with h5py.File(path, "r+") as handle:
        index = _index(handle)
        row = index[index["seq"] == seq][0]
        count = int(row["nbytes"]) // 4
        values = np.resize(np.array(pattern, dtype=np.float32), count)
        handle["tensors"][row["offset"]:row["offset"] + row["nbytes"]] = values.view(np.uint8)


def _edit_config(path: Path, **values: Any) -> None:
    with h5py.File(path, "r+") as handle:
        config = json.loads(_text_of(handle.attrs["config"]))
        config.update(values)
        handle.attrs["config"] = json.dumps(config)


def _edit_first_eval(path: Path, key: str, value: Any) -> None:
    with h5py.File(path, "r+") as handle:
        group = handle["evals"][sorted(handle["evals"])[0]]
        group.attrs[key] = value


def _evals_loop(path: Path) -> None:
    with h5py.File(path, "r+") as handle:
        handle["evals"]["loop"] = h5py.SoftLink("/evals")


def _resize(path: Path, name: str, rows: int) -> None:
    """Give /name ``rows`` rows: cut it, or grow it with rows that are never written."""
    with h5py.File(path, "r+") as handle:
        dataset = handle[name]
        if rows <= dataset.shape[0] or dataset.maxshape[0] is None:
            dataset.resize((rows,))
            return
        raise AssertionError(f"/{name} cannot grow")


INDEX_EDGES: dict[str, tuple[Any, ...]] = {
    "eval": (-1, 2**31 - 1, -(2**31)), "node": (-1, 2**31 - 1), "occurrence": (-1, 2**31 - 1),
    "seq": (-1, 2**62, 10**6), "ndim": (-1, 5, 2**31 - 1, 0), "offset": (-1, 2**62, 2**63 - 1),
    "nbytes": (-1, 0, 3, 2**40, 2**63 - 1), "shape": ([-1, 1, 1, 1], [0, 0, 0, 0], [2**62, 4, 1, 1]),
    "min": (float("nan"), float("inf")), "max": (float("-inf"),), "mean": (float("nan"),), "std": (-1.0,),
    "n_nan": (-1, 2**62), "n_inf": (-(2**63),), "dtype": ("", "<f8", "|O", "x"), "stored": ("", "weird"),
    "storage": ("", HOSTILE_TEXT), "name": ("", "\xff\ud800"[:1] + "x"), "op": ("",), "ggml_type": ("", "q4_0"),
    "buffer": ("",), "buffer_type": ("",), "digest": ("", "zz"), "is_leaf": (True,),
}


def dump_row_mutations(base: Path, count: int, seed: int = SEED) -> list[Mutation]:
    """``count`` seeded single-field mutations of index rows (any row, any column, an edge value)."""
    rng = random.Random(seed)
    rows = dump_rows(base)
    m = []
    for _ in range(count):
        row = rng.choice(rows)
        column = rng.choice(sorted(INDEX_EDGES))
        value = rng.choice(INDEX_EDGES[column])
        seq, name, eval_index = int(row["seq"]), _text_of(row["name"]), int(row["eval"])
        m.append(Mutation(f"dump/seeded/row[{seq}:{name}].{column}={value!r}",
                          lambda p, s=seq, c=column, v=value: edit_rows(p, s, **{c: v}), (name, eval_index),
                          frozenset({"seeded"})))
    return m


RECORD_FIELD_EDGES: dict[str, tuple[Any, ...]] = {
    "ne": ([0, 1, 1, 1], [-1, 1, 1, 1], [2**31, 2**31, 1, 1], [2**62, 1, 1, 1], [1, 1], [1, 1, 1, 1, 1, 1], "x"),
    "nb": ([0, 0, 0, 0], [1, 1, 1, 1], [-4, 4, 4, 4], [4, 2**62, 2**62, 2**62], [3, 5, 7, 9]),
    "ggml_type": ("q4_0", "i32", "f16", "i8", "bf16", "nope", 7),
    "op_params": ([0x41414141, 0x4141, 1, 1], [-1] * 16, [2**31 - 1] * 16, [0] * 100, ["x"], [2**40], [7, 0, 0, 0],
                  [0, 3, 0, 0, 64, 0]),
}


def record_mutations(base: Path, node: DumpTarget, enums: GgmlEnums, count: int, seed: int = SEED
                     ) -> list[Mutation]:
    """Records of ``node`` (the node replay recomputes) made hostile: custom ops, and seeded single fields.

    The custom ops name both the op code and its description, as a crafted file would, with op_params that
    hold a function pointer (0x0000414141414141).
    """
    rng = random.Random(seed)
    with h5py.File(base, "r") as handle:
        raw = handle["records"][node.seq]
        record = json.loads(_text_of(raw))
    slots = [detail["slot"] for detail in record.get("source_details", [])]
    aim = (node.name, node.eval_index)
    m: list[Mutation] = []

    def add(label: str, change: Callable[[dict[str, Any]], Any], *tags: str) -> None:
        refuse = frozenset({"replay"}) if "custom" in tags else frozenset()
        m.append(Mutation(f"record/{label}", lambda p: edit_record(p, node.seq, change), aim,
                          frozenset({"record", *tags}), refuse))

    pointer = [0x41414141, 0x4141, 1, 0, 0, 0, 0, 0]
    for op in ("MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3", "CUSTOM"):
        code = enums.code(op)
        add(f"op={op},op_params=function-pointer",
            lambda r, c=code, o=op: {**r, "op_code": c, "op": o, "op_params": pointer}, "custom")
    im2col = enums.code("IM2COL")
    add("op=IM2COL,op_params=garbage", lambda r: {**r, "op_code": im2col, "op": "IM2COL",
                                                  "op_params": [7, 0, 0, 0, -3, 99, 1]}, "custom")
    for value in (-1, len(enums.ops), 2**31, 2**63):
        add(f"op_code={value}", lambda r, v=value: {**r, "op_code": v})
    add("source_details=not-a-list", lambda r: {**r, "source_details": "x"})
    add("source_details=11-entries", lambda r: {**r, "source_details": (r["source_details"] * 11)[:11]})
    add("source_details[0].slot=10", lambda r: _detail(r, 0, slot=10))
    add("source_details[0].slot=-1", lambda r: _detail(r, 0, slot=-1))
    add("source_details[0].slot=2^40", lambda r: _detail(r, 0, slot=2**40))
    add("source_details[0].type=q4_0", lambda r: _detail(r, 0, type="q4_0"))
    add("source_details[0].name=control-characters", lambda r: _detail(r, 0, name=HOSTILE_TEXT), "text")
    add("record=deep-json", lambda r: "[" * 100000 + "]" * 100000)
    add("record=list", lambda r: "[1, 2, 3]")
    for _ in range(count):
        kind = rng.choice(("op_code", "ne", "nb", "ggml_type", "slot", "op_params", "src_ne", "src_type"))
        if kind == "op_code":
            code = rng.randrange(len(enums.ops))
            params = list(record.get("op_params", []))
            if enums.ops[code] in ("UNARY", "GLU") and rng.random() < 0.7:
                params = [rng.randrange(len(enums.unary if enums.ops[code] == "UNARY" else enums.glu))] + params[1:]
            desc = enums.desc(code, params)
            add(f"seeded/op_code={code}({desc})",
                lambda r, c=code, d=desc, p=params: {**r, "op_code": c, "op": d, "op_params": p}, "seeded")
        elif kind in ("ne", "nb", "ggml_type", "op_params"):
            value = rng.choice(RECORD_FIELD_EDGES[kind])
            if kind in ("ne", "nb") and isinstance(value, list) and len(value) == 4 and rng.random() < 0.5:
                dim = rng.randrange(4)
                original = list(record[kind])
                original[dim] = rng.choice((0, -1, 2**31, 2**40, original[dim] * 3, original[dim] + 1))
                value = original
            add(f"seeded/{kind}={value!r}"[:100], lambda r, k=kind, v=value: {**r, k: v}, "seeded")
        elif kind == "slot" and slots:
            index = rng.randrange(len(slots))
            value = rng.choice((0, 1, 2, 9, 10, -1))
            add(f"seeded/source_details[{index}].slot={value}", lambda r, i=index, v=value: _detail(r, i, slot=v),
                "seeded")
        elif slots:
            index = rng.randrange(len(slots))
            value = rng.choice(("f16", "i32", "q8_0", "f64", "bf16"))
            add(f"seeded/source_details[{index}].type={value}", lambda r, i=index, v=value: _detail(r, i, type=v),
                "seeded")
    return m


def _detail(record: dict[str, Any], index: int, **values: Any) -> dict[str, Any]:
    details = [dict(detail) for detail in record["source_details"]]
    details[index].update(values)
    return {**record, "source_details": details}


# ---------------------------------------------------------------- .frames streams

FRAME = struct.Struct("<IIIIQ")
MAGIC = 0x48494747
HELLO, EVAL, TENSOR, SKIP, NOTICE, BYE = range(1, 7)


@dataclass
class Frame:
    kind: int
    header: Any  # a dict (dumped as JSON) or raw bytes
    data: bytes = b""
    magic: int = MAGIC
    reserved: int = 0
    header_length: int | None = None  # a lie about the header's size
    data_length: int | None = None  # a lie about the data's size

    def encode(self) -> bytes:
        raw = self.header if isinstance(self.header, bytes) else json.dumps(self.header).encode()
        head = FRAME.pack(self.magic, self.kind, len(raw) if self.header_length is None else self.header_length,
                          self.reserved, len(self.data) if self.data_length is None else self.data_length)
        return head + raw + self.data


def encode_stream(frames: list[Frame]) -> bytes:
    return b"".join(frame.encode() for frame in frames)


def _contiguous(ne: list[int], item: int) -> list[int]:
    nb = [item]
    for n in ne[:-1]:
        nb.append(nb[-1] * n)
    return nb


def tensor_header(name: str, ne: list[int], type_name: str = "f32", **extra: Any) -> dict[str, Any]:
    """A TENSOR header as the hook writes one (inspector/native/README.md), contiguous, with the given extra fields."""
    item = np.dtype(NUMPY_OF[type_name]).itemsize
    header = {"sched": 0, "compute": 0, "name": name, "node_index": 0, "occurrence": 0, "op": "NONE", "op_code": 0,
              "type": GGML_TYPE_IDS[type_name], "type_name": type_name, "ne": ne, "nb": _contiguous(ne, item),
              "n_dims": 4, "block_size": 1, "type_size": item, "buffer": "CPU", "buffer_type": "CPU",
              "is_leaf": False, "consumer": "", "sched_copy": "", "flags": 0, "sources": [], "view_source": "",
              "view_offset": 0, "source_details": [], "op_params": []}
    header.update(extra)
    return header


def frames_from_dump(dump: Path, limit: int) -> list[Frame]:
    """A stream as the hook would send evaluation 0 of ``dump``: its first ``limit`` native tensors and data."""
    with h5py.File(dump, "r") as handle:
        index = _index(handle)
        records = handle["records"][()]
        stream = handle["tensors"][()]
    frames = [Frame(HELLO, {"pid": 4242, "argv0": "llama-cli", "compatible": True}),
              Frame(EVAL, {"sched": 0, "compute": 0, "n_nodes": len(index), "library": "libllama.so"})]
    rows = sorted((row for row in index.tolist() if row[0] == 0), key=lambda row: row[3])
    names = index.dtype.names
    for values in rows:
        row = dict(zip(names, values, strict=True))
        record = json.loads(_text_of(records[row["seq"]]))
        if record["ggml_type"] not in NUMPY_OF or _text_of(row["storage"]) != "native":
            continue
        data = stream[row["offset"]:row["offset"] + row["nbytes"]].tobytes()
        header = tensor_header(record["name"], [int(n) for n in record["ne"]], record["ggml_type"],
                               node_index=record["node_index"], occurrence=record["occurrence"], op=record["op"],
                               op_code=record.get("op_code", -1), op_params=record.get("op_params", []),
                               is_leaf=record["is_leaf"], consumer=record.get("consumer", ""),
                               sources=record.get("sources", []), source_details=record.get("source_details", []),
                               buffer=record["buffer"], buffer_type=record.get("buffer_type", ""),
                               n_dims=max(1, int(row["ndim"])))
        frames.append(Frame(TENSOR, header, data))
        if len(frames) - 2 >= limit:
            break
    frames.append(Frame(BYE, {"schedulers": 1, "computes": 1}))
    return frames


def op_stream(enums: GgmlEnums, op: str = "ADD", ne: list[int] | None = None, params: list[int] | None = None,
              op_code: int | None = None) -> list[Frame]:
    """Two captured leaves a, b and the node c = op(a, b): the smallest stream ``replay`` can recompute."""
    shape = [8, 4, 1, 1]
    rng = np.random.default_rng(SEED)
    a, b = (rng.standard_normal(32).astype(np.float32) for _ in range(2))
    details = [{"name": name, "occurrence": 0, "buffer": "CPU", "buffer_type": "CPU", "type": "f32", "slot": slot}
               for slot, name in enumerate("ab")]
    code = enums.code(op) if op_code is None else op_code
    node = tensor_header("c", ne or shape, op=enums.desc(code, params or []) if op_code is not None else op,
                         op_code=code, op_params=params or [], sources=["a", "b"], source_details=details)
    c_item = 4
    c_bytes = math.prod(max(n, 0) for n in node["ne"]) * c_item if all(0 <= n < 2**20 for n in node["ne"]) else 4
    return [Frame(HELLO, {"pid": 1, "argv0": "forged", "compatible": True}),
            Frame(EVAL, {"sched": 0, "compute": 0, "n_nodes": 1, "library": "libggml.so"}),
            Frame(TENSOR, tensor_header("a", shape, is_leaf=True, consumer="c"), a.tobytes()),
            Frame(TENSOR, tensor_header("b", shape, is_leaf=True, consumer="c"), b.tobytes()),
            Frame(TENSOR, node, (a + b).tobytes()[:c_bytes].ljust(c_bytes, b"\0")),
            Frame(BYE, {"schedulers": 1, "computes": 1})]


def _tensor_frame(frames: list[Frame], which: int = 0) -> Frame:
    return [frame for frame in frames if frame.kind == TENSOR][which]


def frame_mutations(base: list[Frame], count: int, seed: int = SEED) -> list[tuple[str, bytes, frozenset[str]]]:
    """(name, stream bytes, tags): frame heads, JSON headers and data of a real stream made hostile."""
    rng = random.Random(seed)
    m: list[tuple[str, bytes, frozenset[str]]] = []

    def add(label: str, change: Callable[[list[Frame]], list[Frame] | bytes | None], *tags: str) -> None:
        frames = [Frame(f.kind, json.loads(json.dumps(f.header)) if isinstance(f.header, dict) else f.header,
                        f.data) for f in base]
        result = change(frames)
        stream = result if isinstance(result, bytes) else encode_stream(result if isinstance(result, list) else frames)
        m.append((f"frames/{label}", stream, frozenset(tags)))

    def on_tensor(**values: Any) -> Callable[[list[Frame]], None]:
        def change(frames: list[Frame]) -> None:
            _tensor_frame(frames).header.update(values)
        return change

    def bomb(frames: list[Frame]) -> None:
        frame = _tensor_frame(frames)
        frame.header.update(ne=[2**29, 3, 1, 1], nb=[0, 0, 0, 0], type=0, type_name="f32", type_size=4,
                            block_size=1, n_dims=2)
        frame.data = b"\0" * 16

    add("tensor.ne=[2^29,3,1,1],nb=0", bomb, "bomb")
    add("tensor.ne=[2^40,2^40,1,1],nb=0", on_tensor(ne=[2**40, 2**40, 1, 1], nb=[0, 0, 0, 0]), "bomb")
    add("tensor.ne=[2^31,1,1,1],nb=[0,...]", on_tensor(ne=[2**31, 1, 1, 1], nb=[0, 0, 0, 0]), "bomb")
    add("tensor.nb=[4,0,0,0]-broadcast", on_tensor(nb=[4, 0, 0, 0]))
    for key, value in (("ne", [-1, 1, 1, 1]), ("ne", [1, 1, 1]), ("ne", [1, 1, 1, 1, 1]), ("ne", "x"),
                       ("ne", [1e308, 1, 1, 1]), ("nb", [-4, 4, 4, 4]), ("nb", [3, 3, 3, 3]),
                       ("n_dims", 0), ("n_dims", 5), ("type", 99), ("type", -1), ("type", 2),
                       ("type", 30), ("block_size", 0), ("type_size", 0), ("type_size", 2**62),
                       ("block_size", 2**62), ("name", ["list"]), ("name", "x" * 70000), ("name", HOSTILE_TEXT),
                       ("node_index", 2**40), ("node_index", -1), ("occurrence", 2**63), ("eval", -5),
                       ("flags", 2**80), ("flags", "x"), ("op_params", list(range(100000))), ("op_params", ["x"]),
                       ("op_params", [2**80]), ("op_code", 2**70), ("source_details", "x"),
                       ("source_details", [{}] * 11), ("source_details", [{"name": 1}]), ("view_offset", "x"),
                       ("sources", 5), ("sched", "x"), ("compute", 2**70), ("rows_written", [[0, 1]]),
                       ("rows_written", "x"), ("rows_written", [[2**62, 2**62]]),
                       ("written_of_ne", [1, 2**62, 1, 1])):
        text = repr(value) if len(repr(value)) < 40 else type(value).__name__ + f"[{len(value)}]"
        add(f"tensor.{key}={text}", on_tensor(**{key: value}), "text" if value == HOSTILE_TEXT else "header")
    add("tensor.missing-name", lambda fr: _tensor_frame(fr).header.pop("name") and None)
    add("tensor.data=one-byte-short", lambda fr: setattr(_tensor_frame(fr), "data", _tensor_frame(fr).data[:-1]))
    add("tensor.header=deep-json", lambda fr: setattr(_tensor_frame(fr), "header", b"[" * 200000 + b"]" * 200000))
    add("tensor.header=invalid-utf8", lambda fr: setattr(_tensor_frame(fr), "header", b'{"name": "\xff\xfe"}'))
    add("tensor.header=NaN-and-huge", lambda fr: setattr(_tensor_frame(fr), "header",
                                                         json.dumps(_tensor_frame(fr).header).replace(
                                                             '"view_offset": 0', '"view_offset": NaN, "x": 1e999')
                                                         .encode()))
    add("tensor.header=list", lambda fr: setattr(_tensor_frame(fr), "header", b"[1]"))
    add("head.magic=0", lambda fr: setattr(fr[0], "magic", 0))
    add("head.magic=0-on-a-tensor", lambda fr: setattr(_tensor_frame(fr), "magic", 0))
    add("head.kind=0", lambda fr: setattr(_tensor_frame(fr), "kind", 0))
    add("head.kind=99", lambda fr: setattr(_tensor_frame(fr), "kind", 99))
    add("head.kind=2^32-1", lambda fr: setattr(_tensor_frame(fr), "kind", 2**32 - 1))
    add("head.reserved=7", lambda fr: setattr(_tensor_frame(fr), "reserved", 7))
    for value in (0, 1, 2**20, 2**20 + 1, 2**32 - 1):
        add(f"head.header_length={value}", lambda fr, v=value: setattr(_tensor_frame(fr), "header_length", v))
    for value in (0, 2**33, 2**63, 2**64 - 1):
        add(f"head.data_length={value}", lambda fr, v=value: setattr(_tensor_frame(fr), "data_length", v))
    add("head.data_length=8GiB-declared,16-bytes-sent",
        lambda fr: (setattr(_tensor_frame(fr), "data_length", 8 << 30), None)[1])
    add("eval.missing-sched", lambda fr: fr[1].header.pop("sched") and None)
    add("eval.library=control-characters", lambda fr: fr[1].header.update(library=HOSTILE_TEXT), "text")
    add("hello.argv0=control-characters", lambda fr: fr[0].header.update(argv0=HOSTILE_TEXT, pid=HOSTILE_TEXT), "text")
    add("bye.schedulers=x", lambda fr: fr[-1].header.update(schedulers="x"))
    add("bye.missing", lambda fr: fr[:-1])
    add("notice.incompatible", lambda fr: [*fr[:2], Frame(NOTICE, {"incompatible": True, "reason": HOSTILE_TEXT}),
                                           *fr[2:]], "text")
    add("notice.stopped", lambda fr: [*fr[:2], Frame(NOTICE, {"reason": HOSTILE_TEXT}), *fr[2:]], "text")
    add("skip.without-name", lambda fr: [*fr[:2], Frame(SKIP, {"sched": 0, "compute": 0}), *fr[2:]])
    add("skip.reason=control-characters",
        lambda fr: [*fr[:2], Frame(SKIP, {"sched": 0, "compute": 0, "name": "s", "occurrence": 0,
                                          "reason": HOSTILE_TEXT}), *fr[2:]], "text")
    add("starts-with-eval", lambda fr: fr[1:])
    add("hello-twice", lambda fr: [fr[0], *fr])
    add("2000-evals", lambda fr: [fr[0], *[Frame(EVAL, {"sched": 0, "compute": i}) for i in range(2000)], fr[-1]])
    stream = encode_stream(base)
    for cut in sorted({rng.randrange(1, len(stream)) for _ in range(6)} | {FRAME.size - 1, FRAME.size + 3}):
        add(f"truncated-at-{cut}", lambda fr, c=cut: stream[:c], "truncated")
    tensor_keys = ["ne", "nb", "type", "n_dims", "block_size", "type_size", "node_index", "occurrence", "op_code"]
    for _ in range(count):
        key = rng.choice(tensor_keys)
        which = rng.randrange(sum(frame.kind == TENSOR for frame in base))
        if key in ("ne", "nb"):
            dim = rng.randrange(4)
            edge = rng.choice(I64_EDGES + (3, 7))

            def change(frames: list[Frame], k=key, d=dim, e=edge, w=which) -> None:
                values = list(_tensor_frame(frames, w).header[k])
                values[d] = e
                _tensor_frame(frames, w).header[k] = values
            add(f"seeded/tensor[{which}].{key}[{dim}]={edge}", change, "seeded")
        else:
            edge = rng.choice(I64_EDGES + (2, 3, 5))
            add(f"seeded/tensor[{which}].{key}={edge}",
                lambda fr, k=key, e=edge, w=which: _tensor_frame(fr, w).header.update({k: e}), "seeded")
    return m


def replay_streams(enums: GgmlEnums, count: int, seed: int = SEED) -> list[tuple[str, bytes]]:
    """Streams whose node replay would rebuild: custom ops with a function pointer, then seeded ops and shapes."""
    rng = random.Random(seed)
    pointer = [0x41414141, 0x4141, 1, 0, 0, 0, 0, 0]
    streams = [("replay-stream/ADD", encode_stream(op_stream(enums)))]
    for op in ("MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3", "CUSTOM"):
        streams.append((f"replay-stream/op={op},op_params=function-pointer",
                        encode_stream(op_stream(enums, op_code=enums.code(op), params=pointer))))
    streams.append(("replay-stream/op=IM2COL,op_params=garbage",
                     encode_stream(op_stream(enums, op_code=enums.code("IM2COL"), params=[7, 0, 0, 0, -3, 99, 1]))))
    for _ in range(count):
        code = rng.randrange(len(enums.ops))
        params = [rng.choice((0, 1, 2, 3, -1, 7, 2**31 - 1)) for _ in range(rng.randrange(0, 8))]
        if enums.ops[code] in ("UNARY", "GLU") and params:
            params[0] = rng.randrange(len(enums.unary if enums.ops[code] == "UNARY" else enums.glu))
        ne = rng.choice(([8, 4, 1, 1], [4, 8, 1, 1], [8, 1, 1, 1], [1, 1, 1, 1], [0, 4, 1, 1], [32, 1, 1, 1],
                         [8, 4, 2, 1]))
        streams.append((f"replay-stream/seeded/op={enums.desc(code, params)}({code}),params={params},ne={ne}",
                        encode_stream(op_stream(enums, ne=ne, params=params, op_code=code))))
    return streams


# ---------------------------------------------------------------- images


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(side: int) -> bytes:
    """A real side x side 1-bit PNG of zeros: every row is there, compressed (a few hundred KB)."""
    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


def _with_ihdr(png: bytes, width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]


def image_mutations(png: Path, jpeg: Path) -> list[tuple[str, bytes, str]]:
    """(name, bytes, suffix): image headers made hostile, truncated data, other formats' edge headers."""
    raw = png.read_bytes()
    jpg = jpeg.read_bytes()
    m: list[tuple[str, bytes, str]] = [(f"image/png-{side}x{side}-real-rows", png_bomb(side), ".png")
                                       for side in (20000, 16000)]
    for width, height in ((20000, 20000), (65535, 65535), (2**31 - 1, 1), (1, 2**31 - 1), (0, 0), (1, 200000),
                          (16385, 16384)):
        m.append((f"image/png-ihdr={width}x{height}-original-rows", _with_ihdr(raw, width, height), ".png"))
    m.append(("image/png-bad-crc", raw[:29] + b"\0\0\0\0" + raw[33:], ".png"))
    for fraction in (0.3, 0.7):
        m.append((f"image/png-truncated-at-{fraction}", raw[:int(len(raw) * fraction)], ".png"))
    sof = next(i for i in range(2, len(jpg) - 9) if jpg[i] == 0xFF and jpg[i + 1] in (0xC0, 0xC2))
    m.append(("image/jpeg-sof=65500x65500", jpg[:sof + 5] + struct.pack(">HH", 65500, 65500) + jpg[sof + 9:], ".jpg"))
    m.append(("image/jpeg-truncated", jpg[:len(jpg) // 2], ".jpg"))
    gif = (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b"\x2c" + struct.pack("<HHHH", 0, 0,
           65535, 65535) + b"\x00\x02\x02\x44\x01\x00\x3b")
    m.append(("image/gif-65535x65535", gif, ".gif"))
    bmp_header = b"BM" + struct.pack("<IHHI", 62, 0, 0, 62) + struct.pack("<IiiHHIIiiII", 40, 2**31 - 1, 2**31 - 1, 1,
                                                                          1, 0, 0, 0, 0, 0, 0) + b"\0" * 8
    m.append(("image/bmp-2^31x2^31", bmp_header, ".bmp"))
    m.append(("image/eps-needs-ghostscript", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
              b"newpath 0 0 moveto 100 100 lineto stroke showpage\n", ".eps"))
    m.append(("image/text-named-png", b"hello, not an image\n", ".png"))
    m.append(("image/empty", b"", ".png"))
    return m


# ---------------------------------------------------------------- .npy files and sweep summaries


def npy_bytes(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0), header_length: int | None = None
              ) -> bytes:
    """A .npy file written from its parts (numpy's format 1.0/2.0/3.0), so its header can say anything."""
    raw = header.encode("utf-8" if version[0] >= 3 else "latin1")
    width = 2 if version[0] == 1 else 4
    pad = (-(6 + 2 + width + len(raw) + 1)) % 64
    raw += b" " * pad + b"\n"
    length = len(raw) if header_length is None else header_length
    prefix = b"\x93NUMPY" + bytes(version) + (struct.pack("<H", length) if width == 2 else struct.pack("<I", length))
    return prefix + raw + data


def npy_mutations() -> list[tuple[str, bytes]]:
    """(name, bytes): .npy headers that lie about their data, pickle, or nest without end."""
    def header(descr: str, shape: str, fortran: str = "False") -> str:
        return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"

    sixteen = bytes(16)
    return [
        ("npy/shape=(2^40,)", npy_bytes(header("'<f4'", "(1099511627776,)"), sixteen)),
        ("npy/shape=(4,3,560,560)-16-bytes", npy_bytes(header("'<f4'", "(4, 3, 560, 560)"), sixteen)),
        ("npy/shape=(2^31,2^31)", npy_bytes(header("'<f4'", "(2147483648, 2147483648)"), sixteen)),
        ("npy/shape=(-1,)", npy_bytes(header("'<f4'", "(-1,)"), sixteen)),
        ("npy/descr=object", npy_bytes(header("'|O'", "(2,)"), sixteen)),
        ("npy/descr=unicode", npy_bytes(header("'<U4'", "(1,)"), sixteen)),
        ("npy/descr=void", npy_bytes(header("'|V16'", "(1,)"), sixteen)),
        ("npy/descr=structured", npy_bytes(header("[('a', '<f4'), ('b', '<f4')]", "(2,)"), sixteen)),
        ("npy/descr=big-endian", npy_bytes(header("'>f4'", "(4,)"), sixteen)),
        ("npy/fortran-order", npy_bytes(header("'<f4'", "(2, 2)", "True"), sixteen)),
        ("npy/header=deep-nesting", npy_bytes("{'descr': " + "[" * 50000 + "]" * 50000 + "}", sixteen, (2, 0))),
        ("npy/header=not-a-dict", npy_bytes("[1, 2, 3]", sixteen)),
        ("npy/header=call", npy_bytes("{'descr': __import__('os').system('true'), 'fortran_order': False, "
                                      "'shape': (4,)}", sixteen)),
        ("npy/header_length=2^32-1", npy_bytes(header("'<f4'", "(4,)"), sixteen, (2, 0), 2**32 - 1)),
        ("npy/version=9.9", npy_bytes(header("'<f4'", "(4,)"), sixteen, (9, 9))),
        ("npy/truncated-header", npy_bytes(header("'<f4'", "(4,)"), sixteen)[:20]),
    ]


def sweep_summaries() -> list[tuple[str, str]]:
    """(name, text): summary.json documents plot sweep reads, made hostile."""
    return [
        ("summary/deep-nesting", "[" * 100000 + "]" * 100000),
        ("summary/empty-object", "{}"),
        ("summary/list", "[1, 2, 3]"),
        ("summary/wrong-types", json.dumps({"configs": "x", "rows": 5, "tensors": None, "layers": {"a": 1}})),
        ("summary/huge-numbers", '{"configs": [1e999], "rows": [[1e999, -1e999, NaN]]}'),
        ("summary/control-characters", json.dumps({"configs": [HOSTILE_TEXT], "rows": [{"name": HOSTILE_TEXT}]})),
        ("summary/invalid-utf8", "\udcff"),
    ]
