"""``TensorHook``: the eval callback that copies selected tensors as they are computed.

``ggml_backend_sched`` calls the callback twice per node it wants to know
about.  In the *ask* phase (``ask=True``) for every node in execution order:
answering False lets the scheduler compute the node together with its
neighbours, so unselected tensors cost nothing but the question.  In the
*observe* phase (``ask=False``), right after a node we said yes to has been
computed and its backend synchronised, the data is valid: we copy it out with
``ggml_backend_tensor_get`` (works for GPU and RPC buffers too) before the
scheduler can reuse the memory for a later node or graph.

Leafs (graph inputs such as ``inp_tokens``) are never asked about; we notice
them in the ``src[]`` of the first node that consumes them and copy them when
that node is observed.  When that consumer runs on another backend, the
scheduler has replaced the leaf in ``src[]`` by its per-backend copy
(``RPC0#inp_pos#0``): we capture the copy under the original's name, once,
and record the copy's name, so runs at any offload count hold the same
tensors.

Weights in a buffer that cannot be read back (the CPU's repacked
``CPU_REPACK`` layout has no ``get_tensor``) are read from the model file by
name and offset instead, or skipped with the reason recorded; never read
through a null function pointer.
"""

from __future__ import annotations

import ctypes
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from inspector.capture.selection import Selection
from inspector.constants import GGML_TENSOR_FLAG_COMPUTE, GGML_TENSOR_FLAG_INPUT, MAX_WRITTEN_RUNS
from inspector.dump.record import TensorRecord
from inspector.ggml import GgmlLibraries, Tensor, load, read_tensor
from inspector.ggml.readout import UnreadableTensor, read_rows, row_runs, written_layout
from inspector.ggml.tensor import flag_names
from inspector.gguf.weights import WeightFile, WeightFiles
from inspector.identity import is_model_state, kv_cache_of, parse_sched_copy

# bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data)
EvalCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)

TensorSink = Callable[[TensorRecord, np.ndarray], None]

# Why a selected node is not captured (the native hook says the same: ggml_inspector_hook.c).
WHOLE_CACHE_REASON = "a view of the whole KV cache (n_ctx rows): the writes store the rows each evaluation wrote"
WHOLE_CACHE_LEAF_REASON = ("the whole KV cache (n_ctx rows): its writes store the rows each evaluation wrote, "
                           "and export --eval E rebuilds it")
NOT_COMPUTED_REASON = "not computed: no output of the graph needs it (ggml_build_forward_select chose another path)"


@dataclass(frozen=True)
class SkippedTensor:
    """A selected tensor that could not be captured, and why (kept in the dump)."""

    eval_index: int
    name: str
    occurrence: int
    buffer_type: str
    reason: str


@dataclass
class HookCounters:
    """How often the scheduler called us, to prove the ask phase filters."""

    asked: int = 0
    answered_yes: int = 0
    observed: int = 0
    captured: int = 0


@dataclass
class _PendingLeaf:
    tensor: Tensor
    name: str  # the original's name when ``tensor`` is a scheduler copy
    occurrence: int
    sched_copy: str = ""


@dataclass
class _PendingNode:
    address: int
    node_index: int
    occurrence: int
    capture_node: bool
    leafs: list[_PendingLeaf] = field(default_factory=list)


class TensorHook:
    """An eval callback that hands copies of the selected tensors to ``sink``.

    The runner calls :meth:`begin_evaluation` before each graph computation so
    that node indices and occurrences restart; pass :attr:`callback` (and a
    null user-data pointer) as ``cb_eval``.  Exceptions never cross into C:
    the first one is kept in :attr:`error`, capturing stops, and the graph
    still completes.  A ``KeyboardInterrupt`` also sets :attr:`interrupted`,
    which :meth:`should_abort` reports to llama.cpp's abort callback.
    """

    def __init__(self, selection: Selection, sink: TensorSink, lib: GgmlLibraries | None = None, *,
                 weights: WeightFile | WeightFiles | None = None) -> None:
        """``weights`` reads the weights whose buffer cannot be read back from the model file."""
        self.selection = selection
        self.sink = sink
        self.lib = lib or load()
        self.weights = weights
        self.counters = HookCounters()
        self.skipped: list[SkippedTensor] = []
        self.error: str | None = None
        # The exception behind ``error``, so callers can tell a full disk from a bug.
        self.failure: BaseException | None = None
        self.interrupted = False
        # Address of the tensor being handed to the sink, for checks that re-read it later.
        self.last_address = 0
        self._eval_index = -1
        self._reset_evaluation()
        self.callback = EvalCallback(self._on_eval)

    @property
    def capturing(self) -> bool:
        return self.error is None and not self.interrupted

    def begin_evaluation(self, eval_index: int) -> None:
        """Start a new graph evaluation: node indices and occurrences restart."""
        self._eval_index = eval_index
        self._reset_evaluation()

    def catch_up(self) -> None:
        """Nothing to wait for before the next evaluation opens: this hook writes each tensor as it is called."""

    def request_stop(self) -> None:
        """Stop capturing and ask llama.cpp to abort (used for Ctrl-C)."""
        self.interrupted = True

    def should_abort(self) -> bool:
        return self.interrupted

    def _reset_evaluation(self) -> None:
        self._node_index = 0
        self._occurrences: Counter[str] = Counter()
        self._asked: set[int] = set()
        self._node_names: set[str] = set()
        self._leafs_seen: set[int] = set()
        # Names of leafs taken directly, and of originals taken through a scheduler copy:
        # a leaf read both ways (partial offload) is captured once.
        self._direct_leaf_names: set[str] = set()
        self._copied_leaf_names: set[str] = set()
        self._pending: _PendingNode | None = None
        # Address -> (name, occurrence) of every node and leaf seen in this evaluation: a source's identity.
        self._identity: dict[int, tuple[str, int]] = {}

    def on_node(self, address: int, ask: bool) -> bool:
        """What the scheduler's call would do, for a graph computed in one piece and read after (unsplit mode)."""
        return self._on_eval(address, ask, 0)

    def _on_eval(self, address: int, ask: bool, _user_data: int) -> bool:
        try:
            if ask:
                return self._ask(address)
            self._observe(address)
        except KeyboardInterrupt:
            self.interrupted = True
        except BaseException as error:  # noqa: BLE001  (nothing may unwind through ctypes)
            if self.error is None:
                self.error = traceback.format_exc(limit=8).strip()
                self.failure = error
        return True

    def _ask(self, address: int) -> bool:
        counters = self.counters
        counters.asked += 1
        node_index = self._node_index
        self._node_index += 1
        self._asked.add(address)
        tensor = Tensor(self.lib, address)
        name = tensor.name
        self._node_names.add(name)
        occurrence = self._occurrences[name]
        self._occurrences[name] = occurrence + 1
        self._identity[address] = (name, occurrence)
        if not self.capturing:
            return False
        # A node ggml does not compute (llama.cpp builds the token and the embeddings path, and
        # ggml_build_forward_select flags one) holds whatever its memory held: it and the leafs only it
        # reads are not captured.
        computed = bool(tensor.flags & GGML_TENSOR_FLAG_COMPUTE)
        capture_node = False
        if self.selection.matches(name):
            if not computed:
                self._skip(tensor, name, occurrence, NOT_COMPUTED_REASON)
            else:
                capture_node = not self._whole_cache_view(tensor, occurrence)
        leafs = self._new_selected_leafs(tensor) if computed else []
        if not (capture_node or leafs):
            return False
        counters.answered_yes += 1
        self._pending = _PendingNode(address, node_index, occurrence, capture_node, leafs)
        return True

    def _new_selected_leafs(self, node: Tensor) -> list[_PendingLeaf]:
        """Sources of ``node`` that no op computes, seen for the first time, and selected."""
        selected = []
        for address in node.struct.src:
            if not address or address in self._asked or address in self._leafs_seen:
                continue
            source = Tensor(self.lib, address)
            if not source.is_leaf_like:
                continue
            self._leafs_seen.add(address)
            leaf = self._identify_leaf(source)
            if leaf is None:
                continue
            occurrence = self._occurrences[leaf.name]
            self._occurrences[leaf.name] = occurrence + 1
            leaf.occurrence = occurrence
            self._identity[address] = (leaf.name, occurrence)
            if leaf.sched_copy:
                is_input = not is_model_state(leaf.name)
            else:
                is_input = bool(source.flags & GGML_TENSOR_FLAG_INPUT)
            if not self.selection.matches_leaf(leaf.name, is_input):
                continue
            if kv_cache_of(leaf.name) == leaf.name:
                self._skip(source, leaf.name, occurrence, WHOLE_CACHE_LEAF_REASON)
            else:
                selected.append(leaf)
        return selected

    def _identify_leaf(self, source: Tensor) -> _PendingLeaf | None:
        """The leaf under its own name, or None when it is already covered in this evaluation.

        A scheduler copy of a *computed* node is covered by that node (captured
        where it was computed); a leaf read both directly and through a copy
        is captured the first time only.
        """
        raw_name = source.name
        copy = parse_sched_copy(raw_name)
        if copy is None:
            if raw_name in self._copied_leaf_names:
                return None
            self._direct_leaf_names.add(raw_name)
            return _PendingLeaf(source, raw_name, 0)
        name = copy.original
        if name in self._node_names or name in self._direct_leaf_names or name in self._copied_leaf_names:
            return None
        self._copied_leaf_names.add(name)
        return _PendingLeaf(source, name, 0, sched_copy=raw_name)

    def _observe(self, address: int) -> None:
        self.counters.observed += 1
        pending = self._pending
        self._pending = None
        if pending is None or pending.address != address or not self.capturing:
            return
        node = Tensor(self.lib, address)
        for leaf in pending.leafs:
            self._capture(leaf.tensor, pending.node_index, leaf.occurrence, is_leaf=True, consumer=node.name,
                          name=leaf.name, sched_copy=leaf.sched_copy)
        if pending.capture_node:
            self._capture(node, pending.node_index, pending.occurrence, is_leaf=False, consumer="")

    def _capture(self, tensor: Tensor, node_index: int, occurrence: int, is_leaf: bool, consumer: str,
                 name: str = "", sched_copy: str = "") -> None:
        name = name or tensor.name
        read_from = "buffer"
        written = [] if is_leaf else self._rows_written(tensor)
        try:
            readout = read_rows(tensor, written) if written else read_tensor(tensor)
        except UnreadableTensor as unreadable:
            try:
                if self.weights is None or not is_leaf:
                    raise unreadable
                readout = self.weights.read(name, tensor)
            except UnreadableTensor as reason:
                self.skipped.append(SkippedTensor(self._eval_index, name, occurrence, tensor.buffer_type_name,
                                                  str(reason)))
                return
            read_from = "file"
        self.last_address = tensor.address
        view_source = tensor.view_source
        record = TensorRecord(
            name=name,
            eval_index=self._eval_index,
            node_index=node_index,
            occurrence=occurrence,
            op=tensor.op_desc,
            ggml_type=tensor.type_name,
            ne=tensor.ne,
            nb=tensor.nb,
            buffer=tensor.buffer_name,
            buffer_type=tensor.buffer_type_name,
            read_from=read_from,
            sched_copy=sched_copy,
            storage=readout.storage,
            is_leaf=is_leaf,
            consumer=consumer,
            flags=flag_names(tensor.flags),
            sources=[source.name for source in tensor.sources],
            view_source=view_source.name if view_source else "",
            view_offset=tensor.view_offset,
            source_details=[{**self._source_detail(Tensor(self.lib, address)), "slot": slot}
                            for slot, address in enumerate(tensor.struct.src) if address],
            op_params=trimmed(list(tensor.struct.op_params)),
            op_code=tensor.op,
        )
        if written:
            record.rows_written = [list(run) for run in row_runs(written)]
            record.written_of_ne = list(tensor.ne)
            record.ne, record.nb = written_layout(tensor, len(written))
        self.sink(record, readout.array)
        self.counters.captured += 1


    def _whole_cache_view(self, tensor: Tensor, occurrence: int) -> bool:
        """True (and recorded as skipped) for the whole KV cache reshaped: n_ctx rows, which the writes store.

        Without flash attention llama.cpp reshapes the whole transposed V
        cache into a column to write into it; stored at every evaluation,
        that reshape alone would make a dump grow with the context.  The
        views attention reads (``ggml_view``, over the n_kv cells in use)
        grow with the tokens and are kept, even where they span the cache.
        """
        source = tensor.view_source
        if source is None or tensor.op_desc != "RESHAPE" or kv_cache_of(source.name) != source.name \
                or tensor.nbytes < source.nbytes:
            return False
        self._skip(tensor, tensor.name, occurrence, WHOLE_CACHE_REASON)
        return True

    def _skip(self, tensor: Tensor, name: str, occurrence: int, reason: str) -> None:
        self.skipped.append(SkippedTensor(self._eval_index, name, occurrence, tensor.buffer_type_name, reason))

    def _rows_written(self, tensor: Tensor) -> list[int]:
        """The destination rows a KV-cache write (SET_ROWS) wrote, from its row-index source; [] otherwise.

        The indices are read at the moment of the write, like the node: the
        scheduler may reuse their buffer for the next graph.
        """
        if tensor.op_desc != "SET_ROWS" or tensor.ne[2] != 1 or tensor.ne[3] != 1:
            return []
        indices = tensor.struct.src[1]
        if not indices:
            return []
        rows = [int(row) for row in read_tensor(Tensor(self.lib, indices)).array.reshape(-1)]
        if len(row_runs(rows)) > MAX_WRITTEN_RUNS:
            rows = sorted(rows)  # a transposed V cache: one value per row, token by token
        return rows if len(row_runs(rows)) <= MAX_WRITTEN_RUNS else []

    def _source_detail(self, source: Tensor) -> dict:
        """How compare finds a source again: its pairing key here, its buffer, buffer type and ggml type."""
        raw = source.name
        copy = parse_sched_copy(raw)
        name, occurrence = self._identity.get(source.address, (copy.original if copy else raw, -1))
        if copy is not None and occurrence < 0 and self._occurrences[name]:
            occurrence = self._occurrences[name] - 1  # a copy of a node: the latest node of that name
        return {"name": name, "occurrence": occurrence, "buffer": source.buffer_name,
                "buffer_type": source.buffer_type_name, "type": source.type_name}


def trimmed(words: list[int]) -> list[int]:
    while words and words[-1] == 0:
        words.pop()
    return words

