"""Write a dump on its own thread, so the eval callback only copies and enqueues.

Why: the callback runs while the scheduler waits, node by node; statistics,
digests and HDF5 writes done there stretched a capture-all to many times a
plain run.  Here the callback's work ends at handing over an array it already
owns; the writer thread does the rest while ggml computes on.

Bounded: at most ``max_bytes`` of tensors wait in the queue; a producer past
that blocks until the writer catches up (back-pressure), so memory stays flat
however fast the graph produces.  A failure in the writer (a full disk)
is kept and raised by the next :meth:`write`, which makes the hook stop
capturing with that one error.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from inspector.dump.record import TensorRecord
from inspector.dump.writer import FLUSH_INTERVAL_S, DumpWriter

DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024
_STOP = object()


class BackgroundWriter:
    """A :class:`DumpWriter` fed through a bounded queue by one producer thread."""

    def __init__(self, writer: DumpWriter, max_bytes: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self.writer = writer
        self.max_bytes = max_bytes
        self.error: BaseException | None = None
        self._queue: queue.Queue[object] = queue.Queue()
        self._queued_bytes = 0
        self._room = threading.Condition()
        self._eval_index = writer.current_evaluation
        self._thread = threading.Thread(target=self._run, name="dump-writer", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path:
        return self.writer.path

    @property
    def tensor_count(self) -> int:
        return self.writer.tensor_count

    @property
    def byte_count(self) -> int:
        return self.writer.byte_count

    def begin_evaluation(self, kind: str, info: dict[str, Any]) -> int:
        """Queue the next evaluation's group (a flush point) and return its index at once.

        Never raises a writer failure: the run goes on to its end, the hook has
        stopped capturing, and the capture reports the failure then.
        """
        self._eval_index += 1
        self._queue.put((self.writer.begin_evaluation, (kind, info), 0))
        return self._eval_index

    def update_evaluation(self, index: int, info: dict[str, Any]) -> None:
        """Queue a merge of ``info`` into evaluation ``index``'s (see :meth:`DumpWriter.update_evaluation`)."""
        self._queue.put((self.writer.update_evaluation, (index, info), 0))

    def write(self, record: TensorRecord, array: np.ndarray) -> None:
        """Queue one tensor; blocks while more than ``max_bytes`` wait.  ``array`` must not change after."""
        self._raise_error()
        nbytes = array.nbytes
        with self._room:
            while self._queued_bytes and self._queued_bytes + nbytes > self.max_bytes and self.error is None:
                self._room.wait()
            self._queued_bytes += nbytes
        self._queue.put((self.writer.write, (record, array), nbytes))

    def set_skipped(self, skipped: list[dict[str, Any]]) -> None:
        self._queue.put((self.writer.set_skipped, (skipped,), 0))

    def set_result(self, result: dict[str, Any]) -> None:
        self._queue.put((self.writer.set_result, (result,), 0))

    def drain(self) -> None:
        """Wait until everything queued so far is written and flushed (or the writer failed)."""
        done = threading.Event()
        self._queue.put((self.writer.flush, (), 0))
        self._queue.put((lambda: done.set(), (), 0))
        while not done.wait(0.1):
            if not self._thread.is_alive():
                return

    def close(self, complete: bool, reason: str = "") -> None:
        """Write what is queued, stop the thread and close the dump (incomplete if the writer failed)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self.error is not None and not reason:
            reason = f"{type(self.error).__name__}: {self.error}"
        self.writer.close(complete and self.error is None, reason)

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=FLUSH_INTERVAL_S)
            except queue.Empty:
                self._call(self.writer.flush, ())  # idle: make what was written durable
                continue
            if item is _STOP:
                return
            function, args, nbytes = item  # type: ignore[misc]
            if self.error is None or function is not self.writer.write:
                self._call(function, args)  # results, groups and the drain marker still land after a failure
            if nbytes:
                with self._room:
                    self._queued_bytes -= nbytes
                    self._room.notify_all()

    def _call(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            function(*args)
        except BaseException as error:  # noqa: BLE001  (kept and raised on the producer's side)
            if self.error is None:
                self.error = error
            with self._room:
                self._room.notify_all()
