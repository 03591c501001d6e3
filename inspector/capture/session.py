"""One capture, from creating its dump to the line that says how it ended: the lifecycle every runner shares.

Every runner (``capture`` with or without images, ``exec``, ``import``,
``mllama encode`` and ``mllama generate``) opens a :class:`CaptureSession`
around its run.  The session owns the dump's :class:`BackgroundWriter`, the
progress messages, SIGINT and SIGTERM, the skipped list, and how the dump is
closed.  Why one place: written once per runner, the same events ended in
different exit codes and messages (an internal class name on a full disk),
and some runners had no background writer or skipped list at all.

How a capture ends, in this order of precedence:

- SIGINT or SIGTERM: ``interrupted after N tensors; kept in PATH, marked
  incomplete`` (:class:`CaptureInterrupted`, exit 130);
- a full disk or the file-size limit: ``disk full after N tensors; kept in
  PATH, marked incomplete`` (:class:`DiskFull`, exit 2);
- capturing stopped for another reason (the hook failed, a program's ggml
  could not be read): ``WHY after N tensors; kept in PATH, marked
  incomplete`` (exit 2), or ``WHY; nothing was captured`` with no dump left;
- a run refused before it computed anything (:class:`SetupError`): its
  message, and no dump left when nothing was written;
- otherwise complete, or incomplete with a reason the runner reports itself
  (a crashed program, a stream cut short).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from inspector.capture.hook import SkippedTensor, TensorHook, TensorSink
from inspector.capture.selection import Selection
from inspector.dump.background_writer import BackgroundWriter
from inspector.dump.format import NO_COMPRESSION, Compression, StatsOf, TensorStats
from inspector.dump.writer import DumpWriter
from inspector.errors import CaptureInterrupted, InspectorError, SetupError
from inspector.files.disk_space import DiskFull
from inspector.ggml import GgmlLibraries
from inspector.gguf.weights import WeightFile, WeightFiles

Progress = Callable[[str], None]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = "interrupted"


def _quiet(_message: str) -> None:
    """The progress of a run nobody watches."""


@contextmanager
def on_stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``handler`` with the signal's number instead of raising.

    Why never raise: a KeyboardInterrupt from Python's default handler can
    surface at the entry of a ctypes callback, where ctypes swallows it, or
    while the dump is being closed, where it would leave the dump open.  A
    flag set here is read where the run can act on it and cannot be lost.
    Only the main thread may set handlers; elsewhere the signals keep theirs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, lambda received, _frame: handler(received))
    try:
        yield
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else text


class CaptureSession:
    """The dump of one run, written on its own thread, and the run's end turned into one outcome.

    Use as a context manager around the run; its last step is
    :meth:`finish`, which leaving the block calls when the runner did not.
    An exception that leaves the block closes the dump too: KeyboardInterrupt
    and :class:`CaptureInterrupted` become the uniform interruption, a
    :class:`SetupError` removes a dump nothing was written to, anything else
    keeps the dump, marked incomplete with the error.
    ``on_signal`` is told of every SIGINT and SIGTERM (``exec`` passes them
    to its program); a hook made by :meth:`tensor_hook` stops capturing.
    ``stats_of`` computes the tensors' statistics (:class:`DumpWriter`).
    """

    def __init__(self, output: str | Path, config: dict[str, Any], system: dict[str, Any], *,
                 overwrite: bool = False, stats_only: bool = False, compression: Compression = NO_COMPRESSION,
                 progress: Progress | None = None, on_signal: Callable[[int], None] | None = None,
                 stats_of: StatsOf = TensorStats.of) -> None:
        self.writer = BackgroundWriter(DumpWriter(output, config, system, overwrite=overwrite,
                                                  stats_only=stats_only, compression=compression, stats_of=stats_of))
        self.say: Progress = progress or _quiet
        self.hook: TensorHook | Any | None = None  # Any: a hook use_hook took (the native one)
        self.interrupted = False
        self._on_signal = on_signal
        self._closed = False
        self._signals = on_stop_signals(self._stop)

    @property
    def path(self) -> Path:
        return self.writer.path

    @property
    def tensor_count(self) -> int:
        return self.writer.tensor_count

    @property
    def byte_count(self) -> int:
        return self.writer.byte_count

    def tensor_hook(self, selection: Selection, lib: GgmlLibraries, *, sink: TensorSink | None = None,
                    weights: WeightFile | WeightFiles | None = None) -> TensorHook:
        """The eval callback of this capture: writes through the session (or ``sink``), stops on a signal."""
        self.hook = TensorHook(selection, sink or self.writer.write, lib, weights=weights)
        if self.interrupted:  # a signal came before the hook did
            self.hook.request_stop()
        return self.hook

    def use_hook(self, hook: Any) -> Any:
        """Make ``hook`` (one that is not a :class:`TensorHook`: the preloaded native hook) this capture's.

        It needs what the session reads of a hook: ``request_stop``,
        ``interrupted``, ``skipped``, ``error``, ``failure``, ``catch_up``
        and ``begin_evaluation``.
        """
        self.hook = hook
        if self.interrupted:
            hook.request_stop()
        return hook

    def begin_evaluation(self, kind: str, info: dict[str, Any], progress: str = "") -> int:
        """Open the next evaluation (the hook's node indices restart); ``progress`` names it in a message.

        The hook catches up first: a hook that writes from another thread (the native hook's reader) has the
        evaluation before written whole before the next one opens.
        """
        if self.hook is not None:
            self.hook.catch_up()
        index = self.writer.begin_evaluation(kind, info)
        if self.hook is not None:
            self.hook.begin_evaluation(index)
        if progress:
            self.say(f"evaluation {index} ({progress}); {self.tensor_count} tensors so far")
        return index

    def interruptible(self, read: Callable[[int], bytes]) -> Callable[[int], bytes]:
        """``read``, ending the stream once a signal arrived: a reader stops at its next frame."""
        return lambda size: b"" if self.interrupted else read(size)

    def _stop(self, number: int) -> None:
        self.interrupted = True
        if self.hook is not None:
            self.hook.request_stop()
        if self._on_signal is not None:
            self._on_signal(number)

    def __enter__(self) -> CaptureSession:
        self._signals.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if not self._closed:
                self._close_after(error)
        finally:
            self._signals.__exit__(kind, error, traceback)

    def _close_after(self, error: BaseException | None) -> None:
        """Close the dump the block left open; the uniform interruption replaces KeyboardInterrupt."""
        if error is None:
            self.finish()
        elif isinstance(error, (KeyboardInterrupt, CaptureInterrupted)):
            self.interrupted = True
            self.finish()
        elif isinstance(error, SetupError):
            self.discard(f"run refused: {error}")
        else:
            self._close(False, str(error) if isinstance(error, InspectorError) else f"{type(error).__name__}: {error}")

    def _close(self, complete: bool, reason: str = "") -> None:
        self._closed = True
        self.writer.close(complete, reason)

    def discard(self, reason: str) -> bool:
        """Close the dump incomplete and remove it when it holds no tensor; True when it was removed."""
        self.writer.drain()
        self._close(False, reason)
        if self.tensor_count:
            return False
        self.path.unlink(missing_ok=True)
        return True

    def _disk_full(self) -> DiskFull | None:
        failure = self.writer.error or (self.hook.failure if self.hook is not None else None)
        return failure if isinstance(failure, DiskFull) else None

    def _stopped(self) -> str:
        """Why capturing stopped early (not a full disk), as one line, or ""."""
        if self.hook is not None and self.hook.error:
            return f"the hook stopped capturing ({_last_line(self.hook.error)})"
        error = self.writer.error
        return f"the dump writer failed ({type(error).__name__}: {error})" if error is not None else ""

    def finish(self, result: dict[str, Any] | None = None, *, skipped: Sequence[SkippedTensor] = (),
               stopped: str = "", incomplete: str = "", note: str = "") -> str:
        """Record ``result`` and the skipped tensors, close the dump, and raise how the capture ended.

        ``stopped``: why the runner stopped capturing (raised after the
        session's own reasons); ``incomplete``: a reason to mark the dump
        incomplete without failing (returned; "" means complete); ``note``
        ends the message of a full disk or a stop (``exec``'s program status).
        """
        all_skipped = [*(self.hook.skipped if self.hook is not None else ()), *skipped]
        if all_skipped:
            self.writer.set_skipped([asdict(skip) for skip in all_skipped])
        if result is not None:
            self.writer.set_result(result)
        self.writer.drain()  # everything queued is written and flushed: the counts below are exact
        tensors, full = self.tensor_count, self._disk_full()
        if self.interrupted or (self.hook is not None and self.hook.interrupted):
            self._close(False, INTERRUPTED)
            raise CaptureInterrupted(f"interrupted after {tensors} tensors; kept in {self.path}, marked incomplete")
        if full is not None:
            self._close(False, f"{full} after {tensors} tensors")
            raise DiskFull(f"{full} after {tensors} tensors; kept in {self.path}, marked incomplete{note}")
        stopped = stopped or self._stopped()
        if stopped:
            if self.discard(stopped):
                raise InspectorError(f"{stopped}; nothing was captured{note}")
            raise InspectorError(f"{stopped} after {tensors} tensors; kept in {self.path}, marked incomplete{note}")
        self._close(not incomplete, incomplete)
        return incomplete
