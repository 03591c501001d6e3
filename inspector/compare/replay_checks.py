"""What replay checks before ggml sees a node rebuilt from a dump: an allowlist of ops, and each op's own rules.

A dump comes from someone else, and replay sets a tensor's ``op``,
``op_params``, ``src[]``, ``ne`` and ``nb`` straight from its records.  ggml
trusts those fields: a custom op's ``op_params`` hold a function pointer it
calls, a wrong shape makes a kernel read past its buffer, and a broken
precondition is a ``GGML_ASSERT`` that aborts the process.  So nothing reaches
ggml until this module has checked, in Python, what ggml's constructor
(``ggml.c``) and the CPU kernel (``ggml-cpu/ops.cpp``) would assert for that
op, and what keeps every read and write inside the buffers replay allocates:

- the op is one that llama.cpp's llama graphs and this project's mllama graphs
  compute (:data:`RULES`); every other op, custom and mapped ops first, is
  refused (an op without a rule is refused, not guessed at);
- its sources sit in the slots the op reads, with types the kernel handles;
- every tensor's ``ne`` is at least 1, its strides are whole, non-negative and
  non-overlapping with rows of whole elements (or blocks), and its extent
  stays under :data:`~inspector.constants.REPLAY_MAX_BYTES` in all;
- the output ``ne`` is the one the op produces from its sources' ``ne`` and
  ``op_params``, computed here and required equal;
- ``op_params`` have the op's word count, sub-ops in range, finite floats;
- row indices that GET_ROWS/SET_ROWS will follow are inside the rows they
  index (ggml asserts that per row, while computing).

The numbers mirror the ggml that ``llama-cpp-python==0.3.36`` vendors;
replay confirms each allowed op code's name against the loaded library.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inspector.constants import GGML_MAX_DIMS, GGML_MAX_OP_PARAMS, GGML_MAX_SRC, REPLAY_MAX_BYTES
from inspector.errors import InspectorError

# enum ggml_op values of the ops replay computes (ggml.h); every other value is refused.
OP_CODES = {
    "DUP": 1, "ADD": 2, "MUL": 7, "REPEAT": 20, "CONCAT": 22, "NORM": 24, "RMS_NORM": 25, "MUL_MAT": 29,
    "SCALE": 32, "CPY": 34, "CONT": 35, "GET_ROWS": 40, "SET_ROWS": 42, "SOFT_MAX": 46, "ROPE": 48,
    "IM2COL": 52, "PAD": 64, "FLASH_ATTN_EXT": 74, "UNARY": 91, "GLU": 100,
}
OP_NAMES = {code: name for name, code in OP_CODES.items()}
# Named so the refusal says what they are: they hold function pointers and user data in op_params.
CUSTOM_OPS = {92: "MAP_CUSTOM1", 93: "MAP_CUSTOM2", 94: "MAP_CUSTOM3", 95: "CUSTOM"}

# ggml type name -> (enum ggml_type, block size in elements, bytes per block), for the types replay handles.
TYPES = {
    "f32": (0, 1, 4), "f16": (1, 1, 2), "bf16": (30, 1, 2), "i32": (26, 1, 4), "i64": (27, 1, 8),
    "q4_0": (2, 32, 18), "q4_1": (3, 32, 20), "q5_0": (6, 32, 22), "q5_1": (7, 32, 24), "q8_0": (8, 32, 34),
    "q2_k": (10, 256, 84), "q3_k": (11, 256, 110), "q4_k": (12, 256, 144), "q5_k": (13, 256, 176),
    "q6_k": (14, 256, 210), "iq4_nl": (20, 32, 18), "iq4_xs": (23, 256, 136),
}
FLOATS = ("f32", "f16", "bf16")
QUANTIZED = tuple(name for name, (_id, block, _size) in TYPES.items() if block > 1)
# Types a row of floats converts into (the CPU's from_float): a KV cache's types.
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
# (src0, src1, dst) type triples the CPU's binary ops (ADD, MUL) compute.
BINARY_TYPES = {("f32", "f32", "f32"), ("f16", "f16", "f16"), ("bf16", "bf16", "bf16"), ("f16", "f32", "f16"),
                ("f16", "f32", "f32"), ("bf16", "f32", "bf16"), ("bf16", "f32", "f32")}
# enum ggml_prec: what MUL_MAT and FLASH_ATTN_EXT accept as a precision word.
PRECISIONS = (0, 10)
# enum ggml_unary_op / ggml_glu_op values the llama and mllama graphs use.
UNARY_OPS = {0: "ABS", 2: "NEG", 4: "TANH", 6: "RELU", 7: "SIGMOID", 8: "GELU", 9: "GELU_QUICK", 10: "SILU",
             13: "EXP", 16: "GELU_ERF"}
GLU_OPS = {0: "REGLU", 1: "GEGLU", 2: "SWIGLU", 4: "GEGLU_ERF", 5: "GEGLU_QUICK"}
# Rope modes without position sections: GGML_ROPE_TYPE_NORMAL and GGML_ROPE_TYPE_NEOX.
ROPE_MODES = (0, 2)
# A padding or im2col step past this is no image's; it keeps every size computed here far from int32.
MAX_GEOMETRY = 1 << 16
# im2col addresses its image with C ints: the image stays under 2 GiB.
INT32_BYTES = (1 << 31) - 1
WORDS = GGML_MAX_OP_PARAMS // 4


class ReplayRefused(InspectorError):
    """A record replay will not hand to ggml: the message says which rule it breaks."""


@dataclass(frozen=True)
class Operand:
    """One tensor of the node as replay will build it: its type name, four ``ne`` and four ``nb``."""

    type: str
    ne: tuple[int, ...]
    nb: tuple[int, ...]

    @classmethod
    def contiguous(cls, type_name: str, ne: tuple[int, ...]) -> Operand:
        """The packed layout ggml gives a new tensor (replay's output, a weight, a fresh cache)."""
        _id, block, size = TYPES[type_name]
        nb = [size, size * (ne[0] // block)]
        for n in ne[1:-1]:
            nb.append(nb[-1] * n)
        return cls(type_name, tuple(ne), tuple(nb))

    @property
    def type_size(self) -> int:
        return TYPES[self.type][2]

    @property
    def block(self) -> int:
        return TYPES[self.type][1]

    @property
    def row_bytes(self) -> int:
        return self.type_size * (self.ne[0] // self.block)

    @property
    def nelements(self) -> int:
        return math.prod(self.ne)

    @property
    def packed_rows(self) -> bool:
        """Each row's elements side by side (``nb[0]`` the element size): what every kernel but a copy's needs."""
        return self.nb[0] == self.type_size

    @property
    def nbytes(self) -> int:
        """ggml_nbytes: the bytes from the first element to past the last one, through the strides."""
        if self.block == 1:
            return self.type_size + sum((n - 1) * stride for n, stride in zip(self.ne, self.nb, strict=True))
        return self.row_bytes + sum((n - 1) * stride for n, stride in zip(self.ne[1:], self.nb[1:], strict=True))

    def is_contiguous(self, from_dim: int = 0) -> bool:
        """ggml_is_contiguous_n: packed, except that dimensions up to ``from_dim`` may leave gaps after them."""
        expected = self.type_size
        if self.ne[0] != self.block and self.nb[0] != expected:
            return False
        expected *= self.ne[0] // self.block
        for dim in range(1, GGML_MAX_DIMS):
            if self.ne[dim] != 1:
                if dim > from_dim:
                    if self.nb[dim] != expected:
                        return False
                    expected *= self.ne[dim]
                else:
                    expected = self.ne[dim] * self.nb[dim]
        return True


@dataclass
class Node:
    """The node replay is about to build: everything ggml would read from it."""

    name: str
    op: str
    params: list[int]
    output: Operand
    sources: dict[int, Operand]
    # The values of integer sources that were captured (row indices), by slot.
    indices: dict[int, np.ndarray]


def op_of(name: str, op_code: object) -> str:
    """The op a record's ``op_code`` names, if replay computes it; else one line saying why not."""
    if not isinstance(op_code, int) or isinstance(op_code, bool):
        raise ReplayRefused(f"replay refuses {name}: its op code {op_code!r} is not a number")
    if op_code in CUSTOM_OPS:
        raise ReplayRefused(f"replay refuses {name}: its op is {CUSTOM_OPS[op_code]}, a custom op whose parameters "
                            "are a function pointer and user data; a dump never runs code")
    if op_code not in OP_NAMES:
        raise ReplayRefused(f"replay refuses {name}: op code {op_code} is not an op replay computes "
                            f"({', '.join(sorted(OP_CODES))})")
    return OP_NAMES[op_code]


def operand(label: str, type_name: object, ne: object, nb: object | None = None) -> Operand:
    """An operand from a record's fields, after checking each is of its kind and in range."""
    if not isinstance(type_name, str) or type_name.lower() not in TYPES:
        raise ReplayRefused(f"{label} has type {type_name!r}, which replay does not handle "
                            f"({', '.join(TYPES)})")
    type_name = type_name.lower()
    dims = _integers(label, "ne", ne)
    if any(n < 1 for n in dims):
        raise ReplayRefused(f"{label} has ne {list(dims)}: every dimension must be at least 1")
    if any(n > REPLAY_MAX_BYTES for n in dims):
        raise ReplayRefused(f"{label} has ne {list(dims)}, past replay's bound of {REPLAY_MAX_BYTES} bytes")
    if dims[0] % TYPES[type_name][1]:
        raise ReplayRefused(f"{label} is {type_name} with ne[0] {dims[0]}: rows must be whole blocks of "
                            f"{TYPES[type_name][1]}")
    if nb is None:
        return Operand.contiguous(type_name, dims)
    strides = _integers(label, "nb", nb)
    result = Operand(type_name, dims, strides)
    if result.block > 1 and not result.packed_rows:
        raise ReplayRefused(f"{label} has nb[0] {strides[0]}: blocks of {type_name} are {result.type_size} bytes")
    if any(stride < result.type_size or stride % result.type_size or stride > REPLAY_MAX_BYTES for stride in strides):
        raise ReplayRefused(f"{label} has nb {list(strides)}: strides must be positive multiples of "
                            f"{result.type_size} up to {REPLAY_MAX_BYTES}")
    # Dimensions that step (ne > 1), from the finest stride: each must clear the extent of the ones below.
    first = 1 if result.block > 1 else 0
    extent = result.row_bytes if first else result.type_size
    for dim in sorted((d for d in range(first, GGML_MAX_DIMS) if dims[d] > 1), key=lambda d: strides[d]):
        if strides[dim] < extent:
            raise ReplayRefused(f"{label} has nb {list(strides)} for ne {list(dims)}: its elements overlap")
        extent = strides[dim] * dims[dim]
    if result.nbytes > REPLAY_MAX_BYTES:
        raise ReplayRefused(f"{label} spans {result.nbytes} bytes, past replay's bound of {REPLAY_MAX_BYTES}")
    return result


def _integers(label: str, field: str, values: object) -> tuple[int, ...]:
    """Four integers (fewer are padded with 1 for ne), or ReplayRefused."""
    if (not isinstance(values, list | tuple) or not 1 <= len(values) <= GGML_MAX_DIMS
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        raise ReplayRefused(f"{label}'s {field} is {values!r}, not one to four integers")
    if len(values) < GGML_MAX_DIMS and field == "nb":
        raise ReplayRefused(f"{label}'s nb is {list(values)}: replay needs all four strides")
    return tuple(values) + (1,) * (GGML_MAX_DIMS - len(values))


def op_params(name: str, words: object) -> list[int]:
    """The record's op_params as ggml's int32 words, padded to the struct's length."""
    if (not isinstance(words, list) or len(words) > WORDS
            or not all(isinstance(w, int) and not isinstance(w, bool) and -2**31 <= w < 2**31 for w in words)):
        raise ReplayRefused(f"replay refuses {name}: its op_params are not at most {WORDS} int32 words")
    return list(words) + [0] * (WORDS - len(words))


def check_node(node: Node) -> None:
    """Refuse, in one line, a node that ggml's constructor or CPU kernel would assert on or misread."""
    rule = RULES[node.op]
    for slot, source in sorted(node.sources.items()):
        _require(node, source.packed_rows or node.op in ("CPY", "CONT", "DUP") and slot == 0,
                 f"{node.op} reads rows of side-by-side elements, slot {slot} has nb {list(source.nb)}")
    required, optional = rule.slots
    slots = set(node.sources)
    if not set(required) <= slots or not slots <= set(required) | set(optional):
        _refuse(node, f"{node.op} reads sources in slots {sorted(required)}"
                      + (f" (and optionally {sorted(optional)})" if optional else "")
                      + f", the record gives slots {sorted(slots)}")
    used = rule.words
    if any(node.params[used:]):
        _refuse(node, f"{node.op} takes {used} op_params words, the record sets more")
    total = node.output.nbytes + sum(source.nbytes for source in node.sources.values())
    if total > REPLAY_MAX_BYTES:
        _refuse(node, f"its tensors take {total} bytes, past replay's bound of {REPLAY_MAX_BYTES}")
    rule.check(node)


def _refuse(node: Node, reason: str) -> None:
    raise ReplayRefused(f"replay refuses {node.name}: {reason}")


def _require(node: Node, condition: bool, reason: str) -> None:
    if not condition:
        _refuse(node, reason)


def _float(word: int) -> float:
    return struct.unpack("<f", struct.pack("<i", word))[0]


def _finite_floats(node: Node, *indices: int) -> list[float]:
    values = [_float(node.params[i]) for i in indices]
    _require(node, all(math.isfinite(v) for v in values), f"{node.op}'s float parameters {values} are not finite")
    return values


def _types(node: Node, slot: int, allowed: tuple[str, ...]) -> None:
    actual = node.sources[slot].type
    _require(node, actual in allowed, f"{node.op} reads {', '.join(allowed)} in slot {slot}, not {actual}")


def _output(node: Node, ne: tuple[int, ...], type_name: str | tuple[str, ...]) -> None:
    allowed = (type_name,) if isinstance(type_name, str) else type_name
    _require(node, node.output.type in allowed, f"{node.op} writes {', '.join(allowed)} here, the record says "
                                                f"{node.output.type}")
    _require(node, node.output.ne == tuple(ne), f"{node.op} of these sources gives ne {list(ne)}, "
                                                f"the record says {list(node.output.ne)}")


def _can_repeat(small: Operand, large: Operand) -> bool:
    return all(big % little == 0 for little, big in zip(small.ne, large.ne, strict=True))


def _rows_within(node: Node, slot: int, rows: int) -> None:
    """Row indices (captured) stay in 0..rows-1: ggml asserts it per row, aborting the process."""
    values = node.indices.get(slot)
    _require(node, values is not None, f"{node.op}'s row indices (slot {slot}) were not captured")
    assert values is not None
    _require(node, values.size == node.sources[slot].nelements, f"{node.op}'s row indices do not fill their ne")
    _require(node, values.size == 0 or (int(values.min()) >= 0 and int(values.max()) < rows),
             f"{node.op}'s row indices leave 0..{rows - 1}")


def _binary(node: Node) -> None:
    a, b = node.sources[0], node.sources[1]
    _require(node, (a.type, b.type, node.output.type) in BINARY_TYPES,
             f"{node.op} does not compute {a.type} with {b.type} into {node.output.type}")
    _require(node, _can_repeat(b, a), f"{node.op}'s slot 1 ne {list(b.ne)} does not repeat into {list(a.ne)}")
    _output(node, a.ne, node.output.type)


def _scale(node: Node) -> None:
    _types(node, 0, ("f32",))
    _require(node, node.sources[0].is_contiguous(), "SCALE reads a contiguous source")
    _finite_floats(node, 0, 1)
    _output(node, node.sources[0].ne, "f32")


def _norm(node: Node) -> None:
    _types(node, 0, ("f32",))
    (eps,) = _finite_floats(node, 0)
    _require(node, eps >= 0, f"{node.op}'s eps {eps} is negative")
    _output(node, node.sources[0].ne, "f32")


def _mul_mat(node: Node) -> None:
    a, b = node.sources[0], node.sources[1]
    _types(node, 0, FLOATS + QUANTIZED)
    _types(node, 1, ("f32", "f16") if a.type == "f16" else ("f32",))
    _require(node, a.ne[0] == b.ne[0], f"MUL_MAT's rows differ in length ({a.ne[0]} and {b.ne[0]})")
    _require(node, b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0, "MUL_MAT's slot 0 does not broadcast")
    _require(node, node.params[0] in PRECISIONS and node.params[3] in PRECISIONS and not any(node.params[1:3]),
             f"MUL_MAT's op_params {node.params[:4]} are not a precision and no hint")
    _output(node, (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), "f32")


def _get_rows(node: Node) -> None:
    a, rows = node.sources[0], node.sources[1]
    _types(node, 0, FLOATS + QUANTIZED + ("i32",))
    _types(node, 1, ("i32",))
    _require(node, a.ne[2] == rows.ne[1] and a.ne[3] == rows.ne[2] and rows.ne[3] == 1,
             f"GET_ROWS's indices ne {list(rows.ne)} do not match its rows ne {list(a.ne)}")
    _rows_within(node, 1, a.ne[1])
    _output(node, (a.ne[0], rows.ne[0], rows.ne[1], rows.ne[2]), "i32" if a.type == "i32" else "f32")


def _set_rows(node: Node) -> None:
    values, rows, destination = node.sources[0], node.sources[1], node.sources[2]
    _types(node, 0, ("f32", "f16"))
    _types(node, 1, ("i64", "i32"))
    _require(node, destination.ne[0] == values.ne[0] and destination.ne[2] == values.ne[2]
             and destination.ne[3] == values.ne[3] and values.ne[1] == rows.ne[0]
             and values.ne[2] % rows.ne[1] == 0 and values.ne[3] % rows.ne[2] == 0 and rows.ne[3] == 1,
             f"SET_ROWS's ne {list(values.ne)}, {list(rows.ne)}, {list(destination.ne)} do not fit together")
    _require(node, values.ne[0] % node.output.block == 0, "SET_ROWS's rows are not whole blocks of its output type")
    _rows_within(node, 1, destination.ne[1])
    _output(node, destination.ne, CACHE_TYPES)


def _rope(node: Node) -> None:
    x, positions = node.sources[0], node.sources[1]
    _types(node, 0, ("f32", "f16"))
    _types(node, 1, ("i32",))
    n_dims, mode, n_offs = node.params[1], node.params[2], node.params[15]
    _require(node, mode in ROPE_MODES, f"ROPE mode {mode} is not one replay computes ({ROPE_MODES})")
    _require(node, positions.ne[1:] == (1, 1, 1) and positions.ne[0] == x.ne[2],
             f"ROPE's positions ne {list(positions.ne)} do not give one position per row of {list(x.ne)}")
    _require(node, x.ne[0] % 2 == 0, f"ROPE rotates pairs: ne[0] {x.ne[0]} is odd")
    _require(node, 0 < n_dims <= x.ne[0] and n_dims % 2 == 0 and n_offs >= 0 and n_offs % 2 == 0
             and n_offs + n_dims <= x.ne[0],
             f"ROPE's n_dims {n_dims} and offset {n_offs} do not fit rows of {x.ne[0]}")
    _finite_floats(node, 5, 6, 7, 8, 9, 10)
    if 2 in node.sources:
        _types(node, 2, ("f32",))
        _require(node, node.sources[2].ne[0] >= n_dims // 2, "ROPE's frequency factors are fewer than n_dims/2")
    _output(node, x.ne, x.type)


def _soft_max(node: Node) -> None:
    x = node.sources[0]
    _types(node, 0, ("f32",))
    _require(node, x.is_contiguous(), "SOFT_MAX reads a contiguous source")
    _, max_bias = _finite_floats(node, 0, 1)
    _require(node, max_bias >= 0 and (max_bias == 0 or 1 in node.sources), "SOFT_MAX's max_bias needs a mask")
    if 1 in node.sources:
        mask = node.sources[1]
        _types(node, 1, ("f32", "f16"))
        _require(node, mask.is_contiguous() and mask.ne[0] == x.ne[0] and mask.ne[1] >= x.ne[1]
                 and x.ne[2] % mask.ne[2] == 0 and x.ne[3] % mask.ne[3] == 0,
                 f"SOFT_MAX's mask ne {list(mask.ne)} does not cover {list(x.ne)}")
    if 2 in node.sources:
        _types(node, 2, ("f32",))
        _require(node, node.sources[2].ne[0] == x.ne[2], "SOFT_MAX's sinks are not one per head")
    _output(node, x.ne, "f32")


def _flash_attn(node: Node) -> None:
    q, k, v = node.sources[0], node.sources[1], node.sources[2]
    _types(node, 0, ("f32",))
    _types(node, 1, CACHE_TYPES)
    _types(node, 2, CACHE_TYPES)
    _require(node, k.ne[0] == q.ne[0] and k.ne[1] == v.ne[1] and q.ne[3] == k.ne[3] == v.ne[3]
             and q.ne[2] % k.ne[2] == 0 and q.ne[2] % v.ne[2] == 0,
             f"FLASH_ATTN_EXT's q {list(q.ne)}, k {list(k.ne)}, v {list(v.ne)} do not fit together")
    _, max_bias, _ = _finite_floats(node, 0, 1, 2)
    _require(node, max_bias >= 0 and (max_bias == 0 or 3 in node.sources), "FLASH_ATTN_EXT's max_bias needs a mask")
    _require(node, node.params[3] in PRECISIONS and node.params[4] >= 0,
             f"FLASH_ATTN_EXT's precision {node.params[3]} or n_kv_max {node.params[4]} is out of range")
    if 3 in node.sources:
        mask = node.sources[3]
        _types(node, 3, ("f16",))
        _require(node, mask.is_contiguous() and mask.ne[0] >= k.ne[1] and mask.ne[1] >= q.ne[1]
                 and q.ne[2] % mask.ne[2] == 0 and q.ne[3] % mask.ne[3] == 0,
                 f"FLASH_ATTN_EXT's mask ne {list(mask.ne)} does not cover q {list(q.ne)} and k {list(k.ne)}")
    if 4 in node.sources:
        _types(node, 4, ("f32",))
        _require(node, node.sources[4].ne[0] == q.ne[2], "FLASH_ATTN_EXT's sinks are not one per head")
    _output(node, (v.ne[0], q.ne[2], q.ne[1], q.ne[3]), "f32")


def _unary(node: Node) -> None:
    x = node.sources[0]
    _require(node, node.params[0] in UNARY_OPS, f"unary sub-op {node.params[0]} is not one replay computes "
                                                f"({', '.join(UNARY_OPS.values())})")
    _types(node, 0, ("f32", "f16"))
    _require(node, x.is_contiguous(1), "a unary op reads rows that are contiguous")
    _output(node, x.ne, x.type)


def _glu(node: Node) -> None:
    x = node.sources[0]
    _require(node, node.params[0] in GLU_OPS, f"GLU sub-op {node.params[0]} is not one replay computes "
                                              f"({', '.join(GLU_OPS.values())})")
    _require(node, node.params[1] in (0, 1), f"GLU's swapped flag is {node.params[1]}")
    _types(node, 0, ("f32", "f16"))
    _require(node, x.is_contiguous(1), "GLU reads rows that are contiguous")
    if 1 in node.sources:
        gate = node.sources[1]
        _require(node, gate.type == x.type and gate.ne == x.ne and gate.is_contiguous(1),
                 "GLU's two halves differ in type, shape or layout")
        _output(node, x.ne, x.type)
    else:
        _output(node, (x.ne[0] // 2, *x.ne[1:]), x.type)


def _copies(node: Node, source: Operand) -> None:
    """The type pairs ggml_compute_forward_dup handles: same type, float to float, or float to a block type."""
    into = node.output.type
    plain = source.type not in QUANTIZED and into not in QUANTIZED
    _require(node, source.type == into and plain or source.type in FLOATS and into in FLOATS
             or source.type == "f32" and into == "i32" or source.type == "i32" and into == "f32"
             or source.type in FLOATS and into in CACHE_TYPES and source.ne[0] % TYPES[into][1] == 0
             and source.packed_rows,
             f"{node.op} does not convert {source.type} into {into}")
    _require(node, node.output.nelements == source.nelements,
             f"{node.op} copies {source.nelements} elements into {node.output.nelements}")


def _cpy(node: Node) -> None:
    _copies(node, node.sources[0])
    _output(node, node.sources[1].ne, node.sources[1].type)


def _cont(node: Node) -> None:
    _copies(node, node.sources[0])
    _output(node, node.output.ne, node.sources[0].type)


def _dup(node: Node) -> None:
    _copies(node, node.sources[0])
    _output(node, node.sources[0].ne, node.sources[0].type)


def _repeat(node: Node) -> None:
    _types(node, 0, ("f32", "f16"))
    _require(node, _can_repeat(node.sources[0], node.output), f"REPEAT's source ne {list(node.sources[0].ne)} "
                                                              f"does not repeat into {list(node.output.ne)}")
    _output(node, node.output.ne, node.sources[0].type)


def _concat(node: Node) -> None:
    a, b = node.sources[0], node.sources[1]
    dim = node.params[0]
    _require(node, 0 <= dim < GGML_MAX_DIMS, f"CONCAT's dimension {dim} is not 0..3")
    _types(node, 0, ("f32", "f16", "i32"))
    _require(node, a.type == b.type, "CONCAT's sources differ in type")
    _require(node, all(a.ne[d] == b.ne[d] for d in range(GGML_MAX_DIMS) if d != dim),
             f"CONCAT's sources ne {list(a.ne)} and {list(b.ne)} differ outside dimension {dim}")
    _output(node, tuple(a.ne[d] + b.ne[d] if d == dim else a.ne[d] for d in range(GGML_MAX_DIMS)), a.type)


def _pad(node: Node) -> None:
    x = node.sources[0]
    _types(node, 0, ("f32",))
    pads = node.params[:8]
    _require(node, all(0 <= p <= MAX_GEOMETRY for p in pads) and node.params[8] in (0, 1),
             f"PAD's paddings {pads} are not 0..{MAX_GEOMETRY}")
    _output(node, tuple(x.ne[d] + pads[2 * d] + pads[2 * d + 1] for d in range(GGML_MAX_DIMS)), "f32")


def _im2col(node: Node) -> None:
    kernel, image = node.sources[0], node.sources[1]
    s0, s1, p0, p1, d0, d1, is_2d = node.params[:7]
    _types(node, 0, ("f32", "f16"))
    _types(node, 1, ("f32",))
    _require(node, is_2d in (0, 1), f"IM2COL's 2-D flag is {is_2d}")
    steps = (s0, d0, s1, d1) if is_2d else (s0, d0)
    _require(node, all(0 < s <= MAX_GEOMETRY for s in steps) and all(0 <= p <= MAX_GEOMETRY for p in (p0, p1)),
             f"IM2COL's strides and dilations {steps} must be 1..{MAX_GEOMETRY}, its paddings {(p0, p1)} "
             f"0..{MAX_GEOMETRY}")
    _require(node, image.is_contiguous() and image.nbytes <= INT32_BYTES, "IM2COL reads a contiguous image under "
                                                                          "2 GiB")

    def output_size(size: int, kernel_size: int, stride: int, pad: int, dilation: int) -> int:
        return (size + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1

    width = output_size(image.ne[0], kernel.ne[0], s0, p0, d0)
    if is_2d:
        height = output_size(image.ne[1], kernel.ne[1], s1, p1, d1)
        _require(node, kernel.ne[2] == image.ne[2] and width > 0 and height > 0,
                 f"IM2COL's kernel ne {list(kernel.ne)} does not fit its image ne {list(image.ne)}")
        ne = (kernel.ne[2] * kernel.ne[1] * kernel.ne[0], width, height, image.ne[3])
    else:
        _require(node, image.ne[1] == kernel.ne[1] and image.ne[3] == 1 and width > 0,
                 f"IM2COL's kernel ne {list(kernel.ne)} does not fit its image ne {list(image.ne)}")
        ne = (kernel.ne[1] * kernel.ne[0], width, image.ne[2], 1)
    _output(node, ne, ("f32", "f16"))


@dataclass(frozen=True)
class Rule:
    """An op's sources (required slots, optional slots), its op_params word count, and its check."""

    slots: tuple[tuple[int, ...], tuple[int, ...]]
    words: int
    check: Callable[[Node], None]


RULES: dict[str, Rule] = {
    "ADD": Rule(((0, 1), ()), 0, _binary),
    "MUL": Rule(((0, 1), ()), 0, _binary),
    "SCALE": Rule(((0,), ()), 2, _scale),
    "NORM": Rule(((0,), ()), 1, _norm),
    "RMS_NORM": Rule(((0,), ()), 1, _norm),
    "MUL_MAT": Rule(((0, 1), ()), 4, _mul_mat),
    "GET_ROWS": Rule(((0, 1), ()), 0, _get_rows),
    "SET_ROWS": Rule(((0, 1, 2), ()), 0, _set_rows),
    "ROPE": Rule(((0, 1), (2,)), 16, _rope),
    "SOFT_MAX": Rule(((0,), (1, 2)), 2, _soft_max),
    "FLASH_ATTN_EXT": Rule(((0, 1, 2), (3, 4)), 5, _flash_attn),
    "UNARY": Rule(((0,), ()), 1, _unary),
    "GLU": Rule(((0,), (1,)), 2, _glu),
    "CPY": Rule(((0, 1), ()), 0, _cpy),
    "CONT": Rule(((0,), ()), 0, _cont),
    "DUP": Rule(((0,), ()), 0, _dup),
    "REPEAT": Rule(((0,), ()), 0, _repeat),
    "CONCAT": Rule(((0, 1), ()), 1, _concat),
    "PAD": Rule(((0,), ()), 9, _pad),
    "IM2COL": Rule(((0, 1), ()), 7, _im2col),
}
assert set(RULES) == set(OP_CODES) and all(slot < GGML_MAX_SRC for rule in RULES.values() for slot in rule.slots[0])
