"""The native hook's frame stream: reading it and turning it into a dump, for ``exec`` and ``import``.

The hook (``inspector/native/ggml_inspector_hook.c``) writes the same frames whether
it talks to ``exec`` over a Unix socket or, with no parent, into a file per
process in a dump folder that ``import`` reads later (wire format in
``inspector/native/README.md``).  Both read them here, so a socket and a file give the
same dump.  A stream file may come from anywhere: every size in it is
bounded before anything is allocated, and a tensor's layout is checked to
lie inside its data before numpy is given strides over it.
"""

from __future__ import annotations

import functools
import math
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inspector.capture.hook import SkippedTensor
from inspector.constants import (
    GGML_MAX_OP_PARAMS,
    GGML_MAX_SRC,
    GGML_TYPE_F32,
    GGML_TYPE_I32,
    LLAMA_MAX_INT32,
    MAX_FRAME_EXPANSION_BYTES,
    MAX_WRITTEN_RUNS,
    NUMPY_DTYPE_OF_GGML_TYPE,
)
from inspector.dump.background_writer import BackgroundWriter
from inspector.dump.inputs import EMBEDDINGS_LEAFS, INPUT_LEAFS, MAX_INPUT_EMBD_BYTES, MAX_INPUT_VALUES, GraphInputs
from inspector.dump.inputs import unknown as unknown_inputs
from inspector.dump.record import TensorRecord, count_rows_written
from inspector.errors import DumpError, InspectorError
from inspector.files.disk_space import DiskFull
from inspector.ggml.readout import materialise, packed_strides
from inspector.ggml.tensor import flag_names
from inspector.ggml.types import sizes

FRAME = struct.Struct("<IIIIQ")
MAGIC = 0x48494747
HELLO, EVAL, TENSOR, SKIP, NOTICE, BYE, INPUT, NAMES = range(1, 9)
# A header is a small JSON object; anything larger is not our hook talking.
MAX_HEADER_BYTES = 1 << 20
# The hook sends no larger tensor; a materialised tensor may not be larger either.
MAX_TENSOR_BYTES = 8 << 30
READ_CHUNK_BYTES = 1 << 20
# A socket is read through a buffer of this size: most frames (a header and a few KiB) then cost no system call.
READ_BUFFER_BYTES = 1 << 20
GGML_MAX_DIMS = 4
PATTERN_SEPARATOR = "\x1f"
# A TENSOR frame of the hook in this very process may lend a large tensor's bytes by address instead of carrying
# them (inspector/native/inprocess.py reads them); any other stream that does so is forged.
LENT_AT, LENT_BYTES = "lent_at", "lent_bytes"
# The library that created a scheduler names what its graphs are: libmtmd's encode images, libllama's
# decode tokens (or an image's embeddings). Any other program's graphs are just graphs.
KINDS_BY_LIBRARY = (("libmtmd", "encode"), ("libllama", "decode"))


def capture_mode(header: dict[str, object]) -> dict[str, str]:
    """How the hook captured an evaluation: ``unsplit`` (with how many nodes it held: read as computed, the plan
    could not keep them) or ``callback`` (with why).

    A stream from before the unsplit mode carries no mode: its hook asked node by node.
    """
    mode = header.get("mode", "callback")
    if mode not in ("unsplit", "callback"):
        raise ProtocolError(f"an EVAL frame with capture mode {str(mode)[:40]!r}")
    reason = header.get("mode_reason", "")
    held = header.get("held", 0)
    if mode == "callback":
        return {"capture_mode": str(mode), "capture_mode_reason": str(reason)[:1024]}
    return {"capture_mode": str(mode), **({"capture_held": held} if isinstance(held, int) and held > 0 else {})}


def evaluation_kind(library: str) -> str:
    """``encode``, ``decode`` or ``graph`` for a scheduler created by ``library`` (a file name)."""
    return next((kind for prefix, kind in KINDS_BY_LIBRARY if library.startswith(prefix)), "graph")

Read = Callable[[int], bytes]
"""Up to n bytes of a stream, b"" at its end: a binary file's or a socket's buffered ``read``, or ``socket.recv``."""
ReadInto = Callable[[memoryview], int]
"""A buffered stream's ``readinto``: fills the view from the stream, returns how many bytes (0 at its end)."""


class ProtocolError(InspectorError):
    """A stream that is not the hook's wire format, or that ends inside a frame."""


@dataclass(frozen=True)
class FrameHead:
    kind: int
    header_length: int
    data_length: int


def parse_head(head: bytes) -> FrameHead:
    """The 24 bytes in front of every frame, refused unless they are the hook's, with sizes it can send."""
    magic, kind, header_length, _reserved, data_length = FRAME.unpack(head)
    if magic != MAGIC:
        raise ProtocolError("a frame that does not start with the hook's magic GGIH")
    if header_length > MAX_HEADER_BYTES or data_length > MAX_TENSOR_BYTES:
        raise ProtocolError(f"a frame of impossible size (header {header_length} bytes, data {data_length} bytes)")
    return FrameHead(kind, header_length, data_length)


def _read_exactly(read: Read, count: int) -> bytes | None:
    """``count`` bytes, or None at a clean end of stream before the first byte.

    Read in pieces, so a size in a forged frame costs no more memory than the
    bytes that are really there.  A buffered reader (a file, or the socket's
    ``makefile``) returns a small frame whole at the first call.
    """
    first = read(min(count, READ_CHUNK_BYTES))
    if len(first) == count:
        return first
    if not first:
        return None
    chunks, remaining = [first], count - len(first)
    while remaining:
        chunk = read(min(remaining, READ_CHUNK_BYTES))
        if not chunk:
            raise ProtocolError("the stream ends inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_into_new(read_into: ReadInto, count: int) -> np.ndarray:
    """``count`` bytes read straight into one new buffer: no piece is copied a second time to join it, and the
    buffer is not zeroed first."""
    data = np.empty(count, np.uint8)
    view, filled = memoryview(data), 0
    while filled < count:
        got = read_into(view[filled:filled + READ_CHUNK_BYTES])
        if not got:
            raise ProtocolError("the stream ends inside a frame")
        filled += got
    return data


def read_frame(read: Read, read_into: ReadInto | None = None
               ) -> tuple[int, dict[str, Any], bytes | np.ndarray] | None:
    """One frame (kind, header, data), or None where the stream ends between frames.

    ``read_into`` (a trusted stream's ``readinto``: the hook in this very process) takes a large tensor's bytes
    into a buffer of the size its frame announces, allocated before they arrive; without it they are read in
    pieces, so that a forged size costs only the bytes really sent.
    """
    raw_head = _read_exactly(read, FRAME.size)
    if raw_head is None:
        return None
    head = parse_head(raw_head)
    raw_header = _read_exactly(read, head.header_length) if head.header_length else b"{}"
    if read_into is not None and head.data_length > READ_CHUNK_BYTES:
        data: bytes | np.ndarray | None = _read_into_new(read_into, head.data_length)
    else:
        data = _read_exactly(read, head.data_length) if head.data_length else b""
    if raw_header is None or data is None:
        raise ProtocolError("the stream ends inside a frame")
    try:
        # orjson: a fifth of the standard library's time a header, and stricter (no NaN, UTF-8 checked whole).
        header = orjson.loads(raw_header)
    except ValueError:
        raise ProtocolError("a frame header that is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("a frame header that is not a JSON object")
    return head.kind, header, data


@functools.lru_cache(maxsize=64)
def _sizes_of(ggml_type: int) -> tuple[int, int, int] | None:
    """(block size, bytes per block, bytes per materialised value) of a ggml type; None for a type gguf lacks."""
    known = sizes(ggml_type)
    if known is None:
        return None
    # numpy's types as they are; bf16 widened and quantized types dequantized to float32.
    return known[0], known[1], known[1] if ggml_type in NUMPY_DTYPE_OF_GGML_TYPE else 4


def _check_layout(ggml_type: int, ne: tuple[int, ...], nb: tuple[int, ...], n_dims: int, block_size: int,
                  type_size: int, nbytes: int) -> None:
    """Refuse a layout that would make numpy read outside the tensor's bytes or build a giant array.

    The bounds are the ones :func:`~inspector.ggml.readout.materialise` walks:
    elements at nb strides for plain types, rows of whole blocks for
    quantized ones; the reach is ggml's own ``ggml_nbytes``.  ggml lets a view
    have any strides, zero and overlapping ones included, so they are not
    refused as such: what is refused is a tensor that would materialise into
    more than its bytes can hold without overlap (for quantized types, what
    they dequantize to) plus ``MAX_FRAME_EXPANSION_BYTES``.
    """
    if (len(ne) != GGML_MAX_DIMS or len(nb) != GGML_MAX_DIMS or min(ne) < 0 or min(nb) < 0
            or not 1 <= n_dims <= GGML_MAX_DIMS or block_size < 1 or type_size < 1):
        raise ProtocolError("a tensor header with an impossible layout")
    sizes = _sizes_of(ggml_type)
    if sizes is not None and sizes[:2] != (block_size, type_size):
        raise ProtocolError(f"a tensor of ggml type {ggml_type} with block size {block_size} and type size "
                            f"{type_size}; ggml's are {sizes[0]} and {sizes[1]}")
    if 0 in ne or sizes is None:
        return  # empty; or a type materialise refuses before reading a byte
    if block_size == 1:
        end = type_size + sum((n - 1) * stride for n, stride in zip(ne, nb, strict=True))
    else:
        end = ne[0] // block_size * type_size + sum((n - 1) * stride for n, stride in zip(ne[1:], nb[1:], strict=True))
    if end > nbytes:
        raise ProtocolError(f"a tensor whose layout reaches byte {end} of the {nbytes} it sent")
    materialised = math.prod(ne) * sizes[2]
    if materialised > MAX_TENSOR_BYTES:
        raise ProtocolError("a tensor larger than 8 GiB once laid out")
    carried = nbytes // type_size * block_size * sizes[2]
    if materialised > carried + MAX_FRAME_EXPANSION_BYTES:
        raise ProtocolError(f"a tensor whose strides repeat its {nbytes} bytes into {materialised} bytes "
                            f"(ne {list(ne)}, nb {list(nb)}): more than {MAX_FRAME_EXPANSION_BYTES >> 20} MiB over "
                            "what the bytes hold without overlap")


@dataclass(frozen=True)
class TensorHeader:
    """A TENSOR frame's header, every field converted and its layout checked against the bytes sent."""

    name: str
    op: str
    type_name: str
    ggml_type: int
    ne: tuple[int, ...]
    nb: tuple[int, ...]
    n_dims: int
    block_size: int
    type_size: int
    node_index: int
    occurrence: int
    flags: int
    view_offset: int
    op_params: list[int]
    op_code: int
    source_details: list[dict[str, Any]]
    # A KV-cache write sent as the rows it wrote (TensorRecord.rows_written, written_of_ne); empty when sent whole.
    rows_written: list[list[int]]
    written_of_ne: list[int]
    # The strides of the bytes sent: nb, or the packed ones of a sparse view sent as its rows.
    sent_nb: tuple[int, ...] = ()


def tensor_header(header: dict[str, Any], data_length: int) -> TensorHeader:
    """The checked header of a TENSOR frame of ``data_length`` bytes; ProtocolError for anything forged.

    ``import`` runs this over a whole file before it writes anything, so a
    stream from someone else is refused in one line, not half imported.
    """
    if LENT_AT in header or LENT_BYTES in header:
        raise ProtocolError("a TENSOR frame that lends memory by address, which only the hook in this very process "
                            "may do")
    try:
        ne, nb = tuple(map(int, header["ne"])), tuple(map(int, header["nb"]))
        ggml_type, n_dims = int(header["type"]), int(header["n_dims"])
        block_size, type_size = int(header["block_size"]), int(header["type_size"])
        name, op, type_name = str(header["name"]), str(header["op"]), str(header["type_name"])
        node_index, occurrence = int(header["node_index"]), int(header["occurrence"])
        flags, view_offset = int(header.get("flags", 0)), int(header.get("view_offset", 0))
        op_params = [int(word) for word in header.get("op_params", [])][:GGML_MAX_OP_PARAMS // 4]
        op_code = int(header.get("op_code", -1))
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ProtocolError("a TENSOR header without its name, op, type or layout, or with a field of the wrong "
                            "kind") from None
    if not -1 <= node_index <= LLAMA_MAX_INT32 or not 0 <= occurrence <= LLAMA_MAX_INT32:
        raise ProtocolError(f"a TENSOR header with node index {node_index} and occurrence {occurrence}; the index "
                            f"stores both as int32")
    sent_nb = _sent_strides(header, ne, nb, block_size, type_size, data_length)
    _check_layout(ggml_type, ne, sent_nb, n_dims, block_size, type_size, data_length)
    runs, whole = header.get("rows_written"), header.get("written_of_ne")
    if runs is not None or whole is not None:
        _check_rows_written({"name": name, "rows_written": runs, "written_of_ne": whole, "ne": list(ne)}, nb,
                            n_dims, block_size, type_size, data_length)
    return TensorHeader(name, op, type_name, ggml_type, ne, nb, n_dims, block_size, type_size, node_index, occurrence,
                        flags, view_offset, op_params, op_code, _source_details(header.get("source_details", [])),
                        runs or [], whole or [], sent_nb)


def _sent_strides(header: dict[str, Any], ne: tuple[int, ...], nb: tuple[int, ...], block_size: int, type_size: int,
                  data_length: int) -> tuple[int, ...]:
    """The strides of the bytes sent: ``nb``, or for a sparse view sent as its rows (``sent_nb``) the packed ones,
    which must be exactly that: rows of whole blocks one after another, as many bytes as the frame holds."""
    sent = header.get("sent_nb")
    if sent is None:
        return nb
    try:
        sent_nb = tuple(int(n) for n in sent)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError("a TENSOR header whose sent_nb is not four numbers") from None
    rows = math.prod(ne[1:]) if len(ne) == GGML_MAX_DIMS else -1
    if block_size < 1 or type_size < 1 or min(ne, default=-1) < 0 or ne[0] % block_size or rows < 1:
        raise ProtocolError("a tensor sent as rows with an impossible layout")
    row_bytes = ne[0] // block_size * type_size
    if sent_nb != packed_strides(ne, block_size, type_size) or \
            data_length != row_bytes * rows or len(nb) != GGML_MAX_DIMS or nb[0] != type_size:
        raise ProtocolError(f"a tensor sent as {rows} rows of {row_bytes} bytes in {data_length} bytes with strides "
                            f"{list(sent_nb)}: not its rows packed")
    return sent_nb


def _check_rows_written(written: dict[str, Any], nb: tuple[int, ...], n_dims: int, block_size: int, type_size: int,
                        data_length: int) -> None:
    """Refuse a KV-cache write whose runs of rows are not exactly the rows its bytes hold, inside its destination.

    The hook sends a write as its rows one after another (``ne`` = [ne0,
    rows, 1, 1], packed strides) with the runs they came from and the whole
    destination's ``ne``; a stream without these fields (any stream before
    writes were sent by rows) carries every tensor whole.  The runs are
    counted, never expanded, so a forged header costs its own bytes.
    """
    runs, whole, ne = written["rows_written"], written["written_of_ne"], written["ne"]
    if not isinstance(runs, list) or not runs or len(runs) > MAX_WRITTEN_RUNS:
        raise ProtocolError(f"a KV-cache write whose rows_written is not a list of 1 to {MAX_WRITTEN_RUNS} runs")
    try:
        count = count_rows_written(written)
    except DumpError as error:
        raise ProtocolError(f"a KV-cache write {error}") from None
    row_bytes = ne[0] // block_size * type_size
    if whole[0] != ne[0] or whole[2:] != [1, 1] or ne[2:] != [1, 1] or n_dims < 2 or ne[0] % block_size:
        raise ProtocolError(f"a KV-cache write of ne {ne} (n_dims {n_dims}) into a destination of ne {whole}: not its "
                            "rows")
    if list(nb) != [type_size, row_bytes, row_bytes * count, row_bytes * count] or data_length != count * row_bytes:
        raise ProtocolError(f"a KV-cache write of {count} rows of {row_bytes} bytes sent as {data_length} bytes "
                            f"with strides {list(nb)}")
    if whole[1] * row_bytes > MAX_TENSOR_BYTES:
        raise ProtocolError(f"a KV-cache write into a destination of {whole[1]} rows of {row_bytes} bytes: more than "
                            "the 8 GiB the hook reads")


def record_of(header: dict[str, Any], eval_index: int, data: bytes) -> tuple[TensorRecord, np.ndarray]:
    """A TENSOR frame as the record and array the Python hook would have made of the same tensor."""
    checked = tensor_header(header, len(data))
    readout = materialise(np.frombuffer(data, dtype=np.uint8), checked.ggml_type, checked.ne,
                          checked.sent_nb or checked.nb, checked.block_size, checked.type_size, checked.n_dims)
    record = TensorRecord(
        name=checked.name, eval_index=eval_index, node_index=checked.node_index, occurrence=checked.occurrence,
        op=checked.op, ggml_type=checked.type_name, ne=checked.ne, nb=checked.nb,
        buffer=str(header.get("buffer", "")), buffer_type=str(header.get("buffer_type", "")),
        storage=readout.storage, is_leaf=bool(header.get("is_leaf")), consumer=str(header.get("consumer", "")),
        sched_copy=str(header.get("sched_copy", "")), flags=flag_names(checked.flags),
        sources=[str(source) for source in header.get("sources", [])],
        view_source=str(header.get("view_source", "")), view_offset=checked.view_offset,
        source_details=checked.source_details, op_params=checked.op_params, op_code=checked.op_code,
        rows_written=checked.rows_written, written_of_ne=checked.written_of_ne,
    )
    return record, readout.array


@dataclass(frozen=True)
class InputLeaf:
    """An INPUT frame, checked: one of llama.cpp's input leafs and its values, or why they were left out."""

    name: str
    values: np.ndarray | None
    omitted: str


def input_leaf(header: dict[str, Any], data: bytes) -> InputLeaf:
    """The checked INPUT frame of ``data``; ProtocolError for a name, type or size the hook never sends."""
    try:
        name, ggml_type = str(header["name"]), int(header["type"])
        ne = [int(n) for n in header["ne"]]
        omitted = str(header.get("omitted", ""))
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ProtocolError("an INPUT header without its name, type or shape, or with a field of the wrong "
                            "kind") from None
    if name not in INPUT_LEAFS or len(ne) != GGML_MAX_DIMS or min(ne) < 0:
        raise ProtocolError(f"an INPUT header for a leaf the hook does not read ({name!r}, ne {ne})")
    count = math.prod(ne)
    embeddings = name in EMBEDDINGS_LEAFS
    if omitted or count == 0:
        if data:
            raise ProtocolError(f"an INPUT frame for {name} with bytes it says it left out")
        return InputLeaf(name, None if omitted else np.zeros((0,), np.int32), omitted)
    if ggml_type != (GGML_TYPE_F32 if embeddings else GGML_TYPE_I32) or len(data) != 4 * count or (
            len(data) > MAX_INPUT_EMBD_BYTES if embeddings else count > MAX_INPUT_VALUES):
        raise ProtocolError(f"an INPUT frame for {name} of type {ggml_type}, ne {ne} and {len(data)} bytes")
    values = np.frombuffer(data, dtype=np.float32 if embeddings else np.int32)
    return InputLeaf(name, values.reshape(-1, ne[0]) if embeddings else values, "")


SOURCE_DETAIL_FIELDS = {"name": str, "occurrence": int, "buffer": str, "buffer_type": str, "type": str, "slot": int}


def _source_details(details: Any) -> list[dict[str, Any]]:
    """The hook's per-source details, each field checked to be of its kind (the stream may come from a file)."""
    if not isinstance(details, list) or len(details) > GGML_MAX_SRC:
        raise ProtocolError("a TENSOR header whose source_details is not a list of at most GGML_MAX_SRC")
    try:
        return [{key: kind(detail[key]) for key, kind in SOURCE_DETAIL_FIELDS.items()} for detail in details]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ProtocolError("a TENSOR header with a malformed source detail") from None


@dataclass
class ProcessReport:
    """What one process of the program told us."""

    pid: int
    argv0: str
    compatible: bool = True
    reason: str = ""
    # Set when the hook stopped capturing in the middle of the run (a NOTICE that is not about
    # the ggml): out of memory, or a selection the hook could not parse.
    stopped: str = ""
    # The process said BYE: its stream ended with the process, not with a crash.
    said_goodbye: bool = False
    schedulers: int = 0
    computes: int = 0
    evaluations: int = 0
    tensors: int = 0
    # Evaluations computed in one piece and copied after, and why the others were captured node by node.
    unsplit: int = 0
    callback_reasons: dict[str, int] = field(default_factory=dict)

    def count_mode(self, mode: dict[str, Any]) -> None:
        """Count one evaluation's mode (:func:`capture_mode`): unsplit, or node by node under its reason (at most
        eight reasons, the rest together)."""
        if mode["capture_mode"] == "unsplit":
            self.unsplit += 1
            return
        reason = mode["capture_mode_reason"] or "no reason given"
        if reason not in self.callback_reasons and len(self.callback_reasons) >= 8:
            reason = "other reasons"
        self.callback_reasons[reason] = self.callback_reasons.get(reason, 0) + 1


class FrameSink:
    """Writes the frames of any number of process streams into one dump; streams may be read concurrently."""

    def __init__(self, writer: BackgroundWriter, progress: Callable[[str], None]) -> None:
        self.writer = writer
        self.progress = progress
        self.processes: list[ProcessReport] = []
        self.skipped: list[SkippedTensor] = []
        self.errors: list[str] = []
        # Set when the dump cannot take more (a full disk): later frames are read and dropped.
        self.stopped = False
        self._lock = threading.Lock()

    def consume(self, read: Read, origin: str = "", read_into: ReadInto | None = None) -> ProcessReport:
        """Read one process's stream to its end; a broken stream keeps what came whole and is noted in errors.

        ``origin`` names the stream in those notes (a file); by default, its process.  ``read_into``: see
        :func:`read_frame`.
        """
        report = ProcessReport(pid=-1, argv0="")
        # Threads computing on different schedulers interleave their frames: a tensor names its
        # (scheduler, compute call), which maps to the evaluation that EVAL opened.
        evaluations: dict[tuple[int, int], int] = {}
        inputs: dict[int, GraphInputs] = {}
        eval_index = -1
        try:
            first = True
            while (frame := read_frame(read, read_into)) is not None:
                kind, header, data = frame
                data = self._frame_data(kind, header, data)
                self._frame_read()
                if first and kind != HELLO:
                    raise ProtocolError("a stream that does not begin with HELLO")
                first = False
                if kind == HELLO:
                    report.pid, report.argv0 = int(header.get("pid", -1)), str(header.get("argv0", ""))
                    report.compatible = bool(header.get("compatible", True))
                    report.reason = str(header.get("reason", ""))
                    with self._lock:
                        self.processes.append(report)
                elif kind == NOTICE:
                    if header.get("incompatible"):
                        report.compatible, report.reason = False, str(header.get("reason", ""))
                    else:
                        report.stopped = str(header.get("reason", "")) or "the hook stopped capturing"
                elif kind == BYE:
                    report.schedulers, report.computes = int(header["schedulers"]), int(header["computes"])
                    report.said_goodbye = True
                elif self.stopped:
                    continue
                elif kind == EVAL:
                    if isinstance(self.writer.error, DiskFull):
                        raise self.writer.error  # the writer is behind: stop before opening more evaluations
                    mode = capture_mode(header)
                    eval_index = self._open_evaluation(header, report, mode)
                    evaluations[(int(header["sched"]), int(header["compute"]))] = eval_index
                    report.evaluations += 1
                    report.count_mode(mode)
                    self.progress(f"evaluation {eval_index} (process {report.pid}, scheduler {header['sched']}, "
                                  f"compute {header['compute']}); {self.writer.tensor_count} tensors so far")
                elif kind == NAMES:
                    self._names(header)
                elif kind in (TENSOR, SKIP, INPUT):
                    owner = evaluations.get((int(header.get("sched", -1)), int(header.get("compute", -1))), eval_index)
                    if kind == INPUT:
                        self._input(header, owner, data, inputs.setdefault(owner, GraphInputs()))
                    else:
                        self._tensor(kind, header, owner, data, report)
        except DiskFull as error:
            self.stopped = True
            self.errors.append(str(error))
        except ProtocolError as error:
            self.errors.append(f"{origin or f'process {report.pid}'}: {error}")
        except (KeyError, TypeError, ValueError) as error:
            self.errors.append(f"{origin or f'process {report.pid}'}: a malformed frame header "
                               f"({type(error).__name__}: {error})")
        except Exception as error:  # noqa: BLE001  (a stream thread must not die with a traceback)
            self.errors.append(f"{origin or f'process {report.pid}'}: {type(error).__name__}: {error}")
        return report

    def _names(self, header: dict[str, Any]) -> None:
        """A NAMES frame: the node names of a scheduler's first graph (what a selection could have matched)."""

    def _frame_read(self) -> None:
        """Called as each frame is read, before it is handled."""

    def _frame_data(self, kind: int, header: dict[str, Any], data: bytes | np.ndarray) -> bytes | np.ndarray:
        """A frame's data as it is handled: what the stream carried (the in-process reader takes lent bytes)."""
        return data

    def _open_evaluation(self, header: dict[str, Any], report: ProcessReport, mode: dict[str, Any]) -> int:
        """The evaluation an EVAL frame opens: a new one, its kind from the library that made the scheduler;
        ``mode`` is how the hook took it (:func:`capture_mode`)."""
        library = str(header.get("library", ""))
        with self._lock:
            return self.writer.begin_evaluation(evaluation_kind(library), {
                "pid": report.pid, "sched": int(header["sched"]), "compute": int(header["compute"]),
                "n_nodes": int(header.get("n_nodes", -1)), "library": library, **mode, **unknown_inputs()})

    def _input(self, header: dict[str, Any], owner: int, data: bytes, inputs: GraphInputs) -> None:
        """An INPUT frame: the evaluation's recorded inputs, rewritten with this leaf added."""
        leaf = input_leaf(header, data)
        if owner < 0:
            raise ProtocolError("an INPUT frame before any EVAL")
        inputs.add(leaf.name, leaf.values, leaf.omitted)
        with self._lock:
            self.writer.update_evaluation(owner, inputs.info())

    def _tensor(self, kind: int, header: dict[str, Any], owner: int, data: bytes, report: ProcessReport) -> None:
        """A TENSOR frame written, or a SKIP (or a tensor numpy cannot lay out) kept among the skipped."""
        reason = str(header.get("reason", ""))
        if kind == TENSOR:
            try:
                record, array = record_of(header, owner, data)
            except ProtocolError:
                raise
            except InspectorError as error:  # an unknown or undecodable type: the stream itself is whole
                reason = f"tensor '{header.get('name', '')}': {error}"
            else:
                with self._lock:
                    self.writer.write(record, array)
                report.tensors += 1
                return
        with self._lock:
            self.skipped.append(SkippedTensor(owner, str(header["name"]), int(header["occurrence"]),
                                              str(header.get("buffer_type", "")), reason))

    def incompatible(self) -> list[ProcessReport]:
        return [process for process in self.processes if not process.compatible]

    def hook_stopped(self) -> str:
        """The first process in which the hook stopped capturing, as one line, or ""."""
        return next((f"process {p.pid}: the hook stopped capturing: {p.stopped}"
                     for p in self.processes if p.compatible and p.stopped), "")
