"""Op replay: one node of run A, recomputed alone on A's inputs, as run A placed it and as run B placed it.

An origin says a node's output differs while its inputs are identical.
Replay says why: it rebuilds the node as a one-op graph (the same op, the
same ``op_params``, its sources' types and shapes), feeds it run A's captured
inputs and the model file's weights, and computes it twice: with the weights
in the buffer type each run used (the CPU's repacked ``CPU_REPACK`` layout,
an RPC server's buffer, plain CPU memory) on the backend each run computed
it on.  ``reproduces_a``/``reproduces_b`` say whether each replay gives that
run's captured output bit for bit; ``op_differs`` whether the two placements
disagree on identical inputs: then the kernel on that backend is the cause,
not the data it was handed.

The node is built generically: a tensor of the captured output type and
shape whose ``op``, ``op_params`` and ``src[]`` are set as the capture
recorded them.  Views compute nothing and are refused, as are sources that
were not captured.  A dump comes from someone else and ggml trusts these
fields, so nothing reaches ggml before :mod:`inspector.compare.replay_checks` has
checked the op against its allowlist and that op's own rules; the model file
a dump names is opened only if it is a regular file.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture.selection import SelectionDescription
from inspector.compare.replay_checks import TYPES, Node, Operand, ReplayRefused, check_node, op_of, op_params, operand
from inspector.constants import NUMPY_DTYPE_OF_TYPE_NAME, VIEW_OPS
from inspector.dump.reader import Dump, Entry, open_dump
from inspector.dump.record import rows_written_of
from inspector.errors import InspectorError, ModelError
from inspector.ggml import load, read_tensor, rpc
from inspector.ggml.abi import GgmlTensorStruct
from inspector.ggml.graph import Backend, Context, init_backend
from inspector.ggml.library import GgmlLibraries
from inspector.ggml.log import install_log
from inspector.ggml.rpc import LoopbackServer
from inspector.ggml.tensor import Tensor
from inspector.gguf.header import GgufHeader, read_header, read_tensor_bytes
from inspector.identity import KV_CACHE_PREFIX, kv_cache_of
from inspector.llamacpp.placement import extra_buffer_types

# A leaf (NONE) or a view computes nothing to replay.
UNREPLAYABLE_OPS = frozenset({"NONE", *VIEW_OPS})
# The src[] slot of the tensor an op writes into (its result is a view of it): ggml_set_rows, ggml_cpy.
DESTINATION_SLOTS = {"SET_ROWS": 2, "CPY": 1}
# The stored types a captured tensor is fed back as (a quantized one was stored dequantized).
CAPTURED_DTYPES = {name: np.dtype(NUMPY_DTYPE_OF_TYPE_NAME[name]) for name in ("f32", "f16", "i32", "i64")}
HOST_BUFFER_TYPES = {"CPU", "CPU_Mapped"}


@dataclass
class Replay:
    eval_index: int
    node: int
    name: str
    op: str
    placement_a: dict[str, str]
    placement_b: dict[str, str]
    reproduces_a: bool
    reproduces_b: bool
    op_differs: bool
    max_abs_diff: float | None


def _node(dump: Dump, eval_index: int, node: int) -> Entry:
    for entry in dump.entries():
        if entry.eval_index == eval_index and entry.node_index == node and not entry.is_leaf:
            return entry
    raise InspectorError(f"{dump.path}: no captured node {node} in evaluation {eval_index}")


def _fresh_cache(dump: Dump, cache: str, eval_index: int, node: int) -> bool:
    """True when nothing wrote ``cache`` before node ``node``: decidable only when every node was captured."""
    if not SelectionDescription.from_config(dump.config).selects_all:
        return False
    return not any((entry.eval_index, entry.node_index) < (eval_index, node) and kv_cache_of(entry.name) == cache
                   and entry.op in ("SET_ROWS", "CPY") for entry in dump.entries())


def _type_id(name: str) -> int:
    return TYPES[name][0]


def _model_header(model: object) -> GgufHeader:
    """The header of the model file a dump names, opened only if it is a regular file.

    The path comes from the dump: a FIFO would block the open forever, a
    device or a folder is no model.  ``read_header`` refuses a tensor whose
    offset and size reach past the file's end, so weight reads stay inside it.
    """
    if not isinstance(model, str) or not model or "\0" in model:
        raise ModelError(f"the dump names its model as {model!r}, not a file path")
    try:
        mode = os.stat(model).st_mode
    except OSError as error:
        raise ModelError(f"{model}, the model the dump names, cannot be read: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ModelError(f"{model}, the model the dump names, is not a regular file: replay reads weights only "
                         "from one")
    return read_header(model)


def _source_details(name: str, details: object) -> list[dict[str, Any]]:
    """A record's source_details, each field of its kind and each slot one of ggml's, once."""
    kinds = {"name": str, "occurrence": int, "slot": int, "type": str}
    if not isinstance(details, list) or not all(
            isinstance(d, dict) and all(isinstance(d.get(k), kind) and not isinstance(d.get(k), bool)
                                        for k, kind in kinds.items()) for d in details):
        raise ReplayRefused(f"replay refuses {name}: its source_details are not a list of sources with a name, "
                            "occurrence, slot and type")
    slots = [d["slot"] for d in details]
    if len(set(slots)) != len(slots) or not all(0 <= slot < len(GgmlTensorStruct().src) for slot in slots):
        raise ReplayRefused(f"replay refuses {name}: its sources' slots {slots} are not distinct slots of ggml's src[]")
    for d in details:
        where = d.get("buffer_type") or d.get("buffer", "")
        if not isinstance(where, str):
            raise ReplayRefused(f"replay refuses {name}: a source's buffer is {where!r}, not a name")
    return details


def _laid_out(values: np.ndarray, ne: list[int], nb: list[int]) -> np.ndarray:
    """The bytes of a tensor with strides ``nb`` holding ``values`` (numpy order): a permuted view's layout.

    A source that was a view (a permuted K cache, a transposed V) is fed in
    the very layout the op read, so the kernel takes the same path.
    """
    itemsize = values.dtype.itemsize
    if any(stride % itemsize for stride in nb):
        raise InspectorError("replay cannot lay out a source whose strides are not whole elements")
    extent = 1 + sum((n - 1) * stride for n, stride in zip(ne, nb, strict=True)) // itemsize
    flat = np.zeros(extent, dtype=values.dtype)
    strided = np.lib.stride_tricks.as_strided(flat, shape=tuple(reversed(ne)),
                                              strides=tuple(reversed([stride for stride in nb])))
    strided[...] = values.reshape(strided.shape)
    return flat


class _Placements:
    """Backends and buffer types by the names the runs recorded (``CPU``, ``CPU_REPACK``, ``RPC0[host:port]``)."""

    def __init__(self, lib: GgmlLibraries, threads: int) -> None:
        self.lib = lib
        self.threads = threads
        self.server: LoopbackServer | None = None
        self.backends: dict[str, Backend] = {}

    def backend(self, buffer_name: str) -> Backend:
        """The backend that computed a node whose output lived in ``buffer_name``."""
        if buffer_name.startswith("RPC"):
            key = "RPC"
        elif buffer_name in HOST_BUFFER_TYPES or buffer_name.startswith("CPU") or not buffer_name:
            key = "CPU"
        else:
            raise InspectorError(f"replay runs ops on the CPU and on RPC servers; this node ran on {buffer_name}")
        if key not in self.backends:
            if key == "CPU":
                self.backends[key] = init_backend(self.lib, None, self.threads)
            else:
                # The run's server is gone: a loopback server runs the same CPU kernels behind RPC.
                self.server = LoopbackServer(threads=self.threads).start()
                device = rpc.add_servers([self.server.endpoint])[0]
                self.backends[key] = init_backend(self.lib, device, self.threads)
        return self.backends[key]

    def buffer_type(self, buffer_type_name: str, compute: Backend) -> int:
        if buffer_type_name in HOST_BUFFER_TYPES or buffer_type_name.startswith("RPC") or not buffer_type_name:
            return compute.buffer_type
        extra = extra_buffer_types(self.lib)
        if buffer_type_name in extra:
            return extra[buffer_type_name]
        raise InspectorError(f"replay cannot place a tensor in buffer type {buffer_type_name!r} on this machine")

    def close(self) -> None:
        for backend in self.backends.values():
            self.lib.ggml.ggml_backend_free(backend.address)
        if self.server is not None:
            self.server.stop()


def _compute(lib: GgmlLibraries, placements: _Placements, record: dict[str, Any], node_buffer: str,
             sources: list[tuple[dict[str, Any], Any, str]]) -> np.ndarray:
    """One placement: sources ``(detail, data, where)`` (data: an array, or raw weight bytes) -> the output."""
    compute = placements.backend(node_buffer)
    contexts: list[Context] = []
    buffers: list[int] = []
    try:
        groups: dict[int, list[tuple[dict[str, Any], Any]]] = {}
        for detail, data, where in sources:
            groups.setdefault(placements.buffer_type(where, compute), []).append((detail, data))
        addresses: dict[int, int] = {}
        for buft, members in [*groups.items(), (compute.buffer_type, [])]:
            context = Context(len(members) + 2, lib)
            contexts.append(context)
            for detail, _data in members:
                ne = [int(n) for n in detail["ne"]] + [1] * (4 - len(detail["ne"]))
                address = lib.base.ggml_new_tensor_4d(context.address, _type_id(detail["type"]), *ne)
                if "nb" in detail:  # the strides the op read, before the buffer sizes the tensor from them
                    GgmlTensorStruct.from_address(address).nb[:] = [int(n) for n in detail["nb"]]
                addresses[detail["slot"]] = address
            if not members:  # the last context holds the node, allocated with the compute backend's memory
                ne = [int(n) for n in record["ne"]] + [1] * (4 - len(record["ne"]))
                node = lib.base.ggml_new_tensor_4d(context.address, _type_id(record["ggml_type"]), *ne)
                struct = GgmlTensorStruct.from_address(node)
                struct.op = int(record["op_code"])
                for index, word in enumerate(record["op_params"]):
                    struct.op_params[index] = word
                # ggml's op numbering changes between versions: the rebuilt op must be the recorded one.
                if lib.base.ggml_op_desc(node).decode() != record["op"]:
                    raise InspectorError(f"op code {record['op_code']} is {lib.base.ggml_op_desc(node).decode()} "
                                         f"in this ggml, but the capture recorded {record['op']} (another ggml "
                                         "version?): cannot replay")
                for slot, address in addresses.items():
                    struct.src[slot] = address
            buffer = lib.base.ggml_backend_alloc_ctx_tensors_from_buft(context.address, buft)
            if not buffer:
                raise InspectorError("replay could not allocate its tensors")
            buffers.append(buffer)
            for detail, _data in members:
                # An extra buffer type (CPU_REPACK) lays out only the types and shapes it knows; ggml would
                # write any other through a null layout.
                if buft != compute.buffer_type and not GgmlTensorStruct.from_address(addresses[detail["slot"]]).extra:
                    raise ReplayRefused(f"replay refuses {record['name']}: this ggml has no {detail['type']} "
                                        f"layout of ne {detail['ne']} for {detail['name']}'s buffer type")
            lib.base.ggml_backend_buffer_clear(buffer, 0)
            for detail, data in members:
                raw = np.ascontiguousarray(data).view(np.uint8) if isinstance(data, np.ndarray) else \
                    np.frombuffer(data, dtype=np.uint8)
                target = addresses[detail["slot"]]
                if raw.nbytes != lib.base.ggml_nbytes(target):
                    raise InspectorError(f"replay: {detail['name']} has {raw.nbytes} bytes for "
                                         f"{lib.base.ggml_nbytes(target)}")
                lib.base.ggml_backend_tensor_set(target, raw.ctypes.data_as(ctypes.c_void_p), 0, raw.nbytes)
        # An op that writes into a view (SET_ROWS, CPY into a cache) leaves the rest of its destination as
        # it was: the node starts as a copy of that destination.
        slot = DESTINATION_SLOTS.get(record["op"])
        destination = next(((detail, data) for detail, data, _where in sources if detail["slot"] == slot), None)
        if destination is not None:
            raw = np.ascontiguousarray(destination[1]).view(np.uint8)
            if raw.nbytes == lib.base.ggml_nbytes(node):
                lib.base.ggml_backend_tensor_set(node, raw.ctypes.data_as(ctypes.c_void_p), 0, raw.nbytes)
        graph = lib.base.ggml_new_graph(contexts[-1].address)
        lib.base.ggml_build_forward_expand(graph, node)
        if lib.base.ggml_backend_graph_compute(compute.address, graph) != 0:
            raise InspectorError(f"replay of {record['name']} failed on {compute.name}")
        return read_tensor(Tensor(lib, node)).array
    finally:
        for buffer in buffers:
            lib.base.ggml_backend_buffer_free(buffer)
        for context in contexts:
            context.free()


def replay(path_a: str | Path, path_b: str | Path, eval_index: int, node: int, threads: int = 1) -> Replay:
    """Replay node ``node`` of evaluation ``eval_index`` of run A under A's and B's placements."""
    lib = load()
    install_log(False)  # ggml's own log (the CPU backend announces each repack) stays off the terminal
    with open_dump(path_a) as dump_a, open_dump(path_b) as dump_b:
        entry_a = _node(dump_a, eval_index, node)
        entry_b = dump_b.find(entry_a.name, eval_index, entry_a.occurrence)
        # A KV-cache write stores the rows it wrote: the op is replayed whole, its written rows compared.
        (record_a, rows_a), (record_b, rows_b) = (_whole(dump.metadata(entry))
                                                  for dump, entry in ((dump_a, entry_a), (dump_b, entry_b)))
        op = record_a.get("op")
        op_name, words, outputs = _checked_node(path_a, entry_a.name, record_a, record_b)
        inputs = _Inputs(dump_a, entry_a, op_name)
        details_b = record_b.get("source_details")
        details_a = _source_details(entry_a.name, record_a["source_details"])
        if not isinstance(details_b, list) or [d.get("slot") for d in details_a] != \
                [d.get("slot") if isinstance(d, dict) else None for d in details_b]:
            raise InspectorError(f"{entry_a.name} reads other sources in run B than in run A (or B's capture did not "
                                 "record them): the two runs computed different ops, nothing to replay as both")
        sources_a, sources_b = [], []
        for detail_a, detail_b in zip(details_a, _source_details(entry_a.name, details_b), strict=True):
            detail, data = inputs.source(detail_a, record_a)
            where_a = detail_a.get("buffer_type") or detail_a.get("buffer", "")
            where_b = detail_b.get("buffer_type") or detail_b.get("buffer", "")
            if not (op_name == "MUL_MAT" and detail_a["slot"] == 0) and any(map(_extra_placement, (where_a, where_b))):
                raise ReplayRefused(f"replay refuses {entry_a.name}: {detail_a['name']} is in buffer "
                                    f"{where_a or where_b}, a layout only a matrix multiplication's weight has")
            sources_a.append((detail, data, where_a))
            sources_b.append((detail, data, where_b))
        for output in outputs:
            check_node(Node(entry_a.name, op_name, words, output, inputs.operands, inputs.indices))
        record_a = {**record_a, "name": entry_a.name, "ne": list(outputs[0].ne), "ggml_type": outputs[0].type,
                    "op_params": words}
        placements = _Placements(lib, threads)
        try:
            output_a = _compute(lib, placements, record_a, record_a.get("buffer", ""), sources_a)
            # As B placed it includes the type B wrote (an f16 or a q8_0 KV cache, say).
            as_b = {**record_a, "ggml_type": outputs[1].type}
            output_b = _compute(lib, placements, as_b, record_b.get("buffer", ""), sources_b)
        finally:
            placements.close()
        captured_a, captured_b = dump_a.read(entry_a), dump_b.read(entry_b)
    output_a, output_b = _rows_of(output_a, rows_a), _rows_of(output_b, rows_b)
    difference = None
    if output_a.shape == output_b.shape:
        gap = np.abs(output_a.astype(np.float64) - output_b.astype(np.float64))
        difference = float(np.nanmax(gap)) if output_a.size and not np.isnan(gap).all() else None
    return Replay(
        eval_index=eval_index, node=node, name=entry_a.name, op=op,
        placement_a={"node": record_a.get("buffer", ""), **{s[0]["name"]: s[2] for s in sources_a}},
        placement_b={"node": record_b.get("buffer", ""), **{s[0]["name"]: s[2] for s in sources_b}},
        reproduces_a=_same_bits(output_a, captured_a), reproduces_b=_same_bits(output_b, captured_b),
        op_differs=not _same_bits(output_a, output_b), max_abs_diff=difference)


def _whole(record: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """A record as the op computed it (a write's whole destination) and the rows its capture stored."""
    rows = rows_written_of(record)
    return ({**record, "ne": record["written_of_ne"]} if rows else record), rows


def _rows_of(output: np.ndarray, rows: list[int]) -> np.ndarray:
    """The rows of a replayed write that its capture stored, in stored order (the output itself otherwise)."""
    return output if not rows else np.ascontiguousarray(output.reshape(-1, output.shape[-1])[rows])


def _checked_node(path_a: str | Path, name: str, record_a: dict[str, Any], record_b: dict[str, Any]
                  ) -> tuple[str, list[int], list[Operand]]:
    """The op name, its checked op_params, and the output operand as A and as B wrote it."""
    op = record_a.get("op")
    if not isinstance(record_a.get("op_code"), int) or record_a["op_code"] < 0 or "source_details" not in record_a:
        raise InspectorError(f"{path_a} was captured before ops and sources were recorded: capture it again")
    if isinstance(op, str) and op in UNREPLAYABLE_OPS:
        raise InspectorError(f"{name} is a {op}: a view computes nothing, so there is nothing to replay")
    op_name = op_of(name, record_a["op_code"])
    words = op_params(name, record_a.get("op_params", []))
    outputs = [operand(f"{name}'s output", record_a.get("ggml_type"), record_a.get("ne")),
               operand(f"{name}'s output in run B", record_b.get("ggml_type"), record_a.get("ne"))]
    if not all(isinstance(record.get("buffer", ""), str) for record in (record_a, record_b)):
        raise ReplayRefused(f"replay refuses {name}: its record's buffer is not a name")
    return op_name, words, outputs


class _Inputs:
    """Where each source of the replayed node comes from: run A's capture, a fresh cache, or the model file."""

    def __init__(self, dump: Dump, entry: Entry, op_name: str) -> None:
        self.dump, self.entry, self.op_name = dump, entry, op_name
        self.keys = {e.key: e for e in dump.entries()}
        self.header: GgufHeader | None = None
        self.operands: dict[int, Operand] = {}
        self.indices: dict[int, np.ndarray] = {}

    def source(self, detail: dict[str, Any], record: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """The source's checked detail (its real ne, nb, type) and its data: an array, or a weight's raw bytes."""
        name, occurrence, slot = detail["name"], detail["occurrence"], detail["slot"]
        label = f"{self.entry.name}'s source {name} (slot {slot})"
        captured = self.keys.get((self.entry.eval_index, name, occurrence))
        if captured is not None:
            source, data = self._captured(captured, label, slot)
        elif (kv_cache_of(name) is not None and slot == DESTINATION_SLOTS.get(self.op_name)
              and _fresh_cache(self.dump, kv_cache_of(name), self.entry.eval_index, self.entry.node_index)):
            # The cache this op writes into (or its reshape, which captures skip: n_ctx rows), which nothing
            # wrote before (caches start cleared): zeros. The op's result is a view of it: the node's shape.
            if detail["type"] not in CAPTURED_DTYPES:
                raise InspectorError(f"{name} is a {detail['type']} cache: replay fills f32/f16 caches only")
            source = operand(label, detail["type"], record.get("ne"))
            data = np.zeros(source.nelements, dtype=CAPTURED_DTYPES[detail["type"]])
        else:
            source, data = self._weight(name, label)
        self.operands[slot] = source
        return {**detail, "ne": list(source.ne), "nb": list(source.nb), "type": source.type}, data

    def _captured(self, captured: Entry, label: str, slot: int) -> tuple[Operand, np.ndarray]:
        meta = self.dump.metadata(captured)
        if meta.get("ggml_type") not in CAPTURED_DTYPES:
            raise InspectorError(f"{captured.name} is {meta.get('ggml_type')}: replay feeds captured inputs of types "
                                 f"{', '.join(CAPTURED_DTYPES)} only (a quantized one is stored dequantized)")
        source = operand(label, meta["ggml_type"], meta.get("ne"), meta.get("nb"))
        values = self.dump.read(captured).astype(CAPTURED_DTYPES[meta["ggml_type"]], copy=False)
        if values.size != source.nelements:
            raise ReplayRefused(f"replay refuses {self.entry.name}: {captured.name} holds {values.size} values for "
                                f"ne {list(source.ne)}")
        if meta["ggml_type"] in ("i32", "i64"):
            self.indices[slot] = values
        return source, _laid_out(values, list(source.ne), list(source.nb))

    def _weight(self, name: str, label: str) -> tuple[Operand, bytes]:
        model = self.dump.config.get("model")
        if self.header is None and model and not name.startswith(KV_CACHE_PREFIX):
            self.header = _model_header(model)
        if self.header is not None and name in self.header.tensors:
            info = self.header.tensors[name]
            source = operand(label, info.type_name, list(info.ne))
            if info.n_bytes != source.nbytes:
                raise ModelError(f"{self.header.path}: tensor {name!r} has {info.n_bytes} bytes for its "
                                 f"{info.type_name} shape {list(info.ne)}")
            return source, read_tensor_bytes(self.header, name)
        if name.startswith(KV_CACHE_PREFIX):
            raise InspectorError(f"{self.entry.name} needs the KV cache {name} as it was at that point, which no "
                                 "capture holds: replay a write into a fresh cache, or a node that reads a captured "
                                 "view of it")
        raise InspectorError(f"{self.entry.name}'s input {name} was not captured and is not a weight of "
                             f"{model or 'a known model file'}: capture it to replay")


def _extra_placement(where: str) -> bool:
    """A buffer type other than plain host or RPC memory: a repacked weight layout such as CPU_REPACK."""
    return bool(where) and where not in HOST_BUFFER_TYPES and not where.startswith("RPC")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical, NaN included (a NaN reproduced is a NaN reproduced)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
