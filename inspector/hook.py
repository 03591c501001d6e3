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
that node is observed.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from inspector.constants import GGML_TENSOR_FLAG_INPUT
from inspector.ggml import GgmlLibraries, Tensor, load, read_tensor
from inspector.ggml.tensor import flag_names
from inspector.record import TensorRecord
from inspector.selection import Selection

# bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data)
EvalCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)

TensorSink = Callable[[TensorRecord, np.ndarray], None]


@dataclass
class HookCounters:
    """How often the scheduler called us, to prove the ask phase filters."""

    asked: int = 0
    answered_yes: int = 0
    observed: int = 0
    captured: int = 0


@dataclass
class _PendingNode:
    address: int
    node_index: int
    occurrence: int
    capture_node: bool
    leafs: list[tuple[Tensor, int]] = field(default_factory=list)


class TensorHook:
    """An eval callback that hands copies of the selected tensors to ``sink``.

    The runner calls :meth:`begin_evaluation` before each graph computation so
    that node indices and occurrences restart; pass :attr:`callback` (and a
    null user-data pointer) as ``cb_eval``.  Exceptions never cross into C:
    the first one is kept in :attr:`error`, capturing stops, and the graph
    still completes.  A ``KeyboardInterrupt`` also sets :attr:`interrupted`,
    which :meth:`should_abort` reports to llama.cpp's abort callback.
    """

    def __init__(self, selection: Selection, sink: TensorSink, lib: GgmlLibraries | None = None) -> None:
        self.selection = selection
        self.sink = sink
        self.lib = lib or load()
        self.counters = HookCounters()
        self.error: str | None = None
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

    def request_stop(self) -> None:
        """Stop capturing and ask llama.cpp to abort (used for Ctrl-C)."""
        self.interrupted = True

    def should_abort(self) -> bool:
        return self.interrupted

    def _reset_evaluation(self) -> None:
        self._node_index = 0
        self._occurrences: Counter[str] = Counter()
        self._asked: set[int] = set()
        self._leafs_seen: set[int] = set()
        self._pending: _PendingNode | None = None

    def _on_eval(self, address: int, ask: bool, _user_data: int) -> bool:
        try:
            if ask:
                return self._ask(address)
            self._observe(address)
        except KeyboardInterrupt:
            self.interrupted = True
        except BaseException:  # noqa: BLE001  (nothing may unwind through ctypes)
            if self.error is None:
                self.error = traceback.format_exc(limit=8).strip()
        return True

    def _ask(self, address: int) -> bool:
        counters = self.counters
        counters.asked += 1
        node_index = self._node_index
        self._node_index += 1
        self._asked.add(address)
        tensor = Tensor(self.lib, address)
        name = tensor.name
        occurrence = self._occurrences[name]
        self._occurrences[name] = occurrence + 1
        if not self.capturing:
            return False
        capture_node = self.selection.matches(name)
        leafs = self._new_selected_leafs(tensor)
        if not (capture_node or leafs):
            return False
        counters.answered_yes += 1
        self._pending = _PendingNode(address, node_index, occurrence, capture_node, leafs)
        return True

    def _new_selected_leafs(self, node: Tensor) -> list[tuple[Tensor, int]]:
        """Sources of ``node`` that no op computes, seen for the first time, and selected."""
        selected = []
        for address in node.struct.src:
            if not address or address in self._asked or address in self._leafs_seen:
                continue
            source = Tensor(self.lib, address)
            if not source.is_leaf_like:
                continue
            self._leafs_seen.add(address)
            name = source.name
            occurrence = self._occurrences[name]
            self._occurrences[name] = occurrence + 1
            if self.selection.matches_leaf(name, bool(source.flags & GGML_TENSOR_FLAG_INPUT)):
                selected.append((source, occurrence))
        return selected

    def _observe(self, address: int) -> None:
        self.counters.observed += 1
        pending = self._pending
        self._pending = None
        if pending is None or pending.address != address or not self.capturing:
            return
        node = Tensor(self.lib, address)
        for leaf, occurrence in pending.leafs:
            self._capture(leaf, pending.node_index, occurrence, is_leaf=True, consumer=node.name)
        if pending.capture_node:
            self._capture(node, pending.node_index, pending.occurrence, is_leaf=False, consumer="")

    def _capture(self, tensor: Tensor, node_index: int, occurrence: int, is_leaf: bool, consumer: str) -> None:
        readout = read_tensor(tensor)
        self.last_address = tensor.address
        view_source = tensor.view_source
        record = TensorRecord(
            name=tensor.name,
            eval_index=self._eval_index,
            node_index=node_index,
            occurrence=occurrence,
            op=tensor.op_desc,
            ggml_type=tensor.type_name,
            ne=tensor.ne,
            nb=tensor.nb,
            buffer=tensor.buffer_name,
            storage=readout.storage,
            is_leaf=is_leaf,
            consumer=consumer,
            flags=flag_names(tensor.flags),
            sources=[source.name for source in tensor.sources],
            view_source=view_source.name if view_source else "",
            view_offset=tensor.view_offset,
        )
        self.sink(record, readout.array)
        self.counters.captured += 1


@contextmanager
def stop_on_signals(hook: TensorHook) -> Iterator[None]:
    """While the graph computes, Ctrl-C and SIGTERM ask the hook to stop instead of raising.

    A KeyboardInterrupt raised by Python's default handler can surface at the
    very entry of the ctypes callback, where ctypes swallows it ("Exception
    ignored on calling ctypes callback"); a flag cannot be lost that way.  The
    hook's flag also feeds llama.cpp's abort callback, which ends the compute.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: hook.request_stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
