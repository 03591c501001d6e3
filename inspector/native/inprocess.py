"""The native hook inside ggml-inspector's own process: capture's per-node work in C, Python entered per evaluation.

Why: with the Python eval callback every node of every graph crosses into
the interpreter twice (ask, observe), and a graph can only be captured node
by node; the native hook does that work in C and, preloaded, also flags the
selected tensors where the scheduler plans its buffers, so a graph is
computed in one piece (:mod:`inspector.capture.mode`).  Preloading is the
only way to see those calls: libllama and libmtmd reach
``ggml_backend_sched_*`` through the dynamic linker, and a library loaded
later cannot come before libggml-base in its search order.

How: ``ggml-inspector capture`` re-executes itself once, at start-up, with
the hook in ``LD_PRELOAD`` (:mod:`inspector.native.preload`; about 0.1 s).  The hook
stays off (every call only forwarded) until :class:`NativeHook` hands it one
end of a socket pair (``ggml_inspector_connect``); a thread here reads the
other end with ``exec``'s parser and writes each tensor into the capture's
dump under the evaluation the runner opened for that compute.  The runner's
evaluations stay authoritative (kinds, tokens, positions), and the hook's
frames add how each was captured.  Before each evaluation the runner waits
until every frame the hook wrote has been read: a dump's evaluations are
written in order.

Where the Python hook must run instead (:func:`why_not_native`): not
started through the command (the Python API), ``--tensor-filter`` (Python
regular expressions; the hook reads POSIX ones), and a selection naming
weights (the Python hook reads those from the model file where their buffer
cannot be read back, as the CPU's repacked ones).

``mllama encode`` computes graphs this package builds itself, on a scheduler
it made through ctypes, which the preloaded hook does not stand in front of:
it hands that scheduler over (:meth:`NativeHook.scheduler_calls`).
"""

from __future__ import annotations

import ctypes
import fnmatch
import os
import socket
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from inspector.capture.hook import HookCounters, SkippedTensor
from inspector.capture.mode import CaptureMode
from inspector.capture.selection import Selection
from inspector.capture.session import CaptureSession
from inspector.errors import InspectorError
from inspector.ggml import load
from inspector.ggml.signatures import SCHEDULER, declare
from inspector.gguf.header import read_header
from inspector.native.preload import PRELOADED, USER_PRELOAD
from inspector.native.stream import (
    LENT_AT,
    LENT_BYTES,
    PATTERN_SEPARATOR,
    READ_BUFFER_BYTES,
    TENSOR,
    FrameSink,
    ProcessReport,
)

# How long the runner waits for the reader to catch up before it calls the stream stuck.
CATCH_UP_TIMEOUT_S = 600.0
# The scheduler calls the hook interposes (and exports): a runner that owns its scheduler makes them on the hook.
INTERPOSED = {name: signature for name, signature in SCHEDULER.items()
              if name not in ("ggml_backend_sched_reset", "ggml_backend_sched_get_buffer_size")}


def _preloaded_library() -> ctypes.CDLL | None:
    """The hook this process was started with, or None (started otherwise: the Python API, a plain run)."""
    path = os.environ.get(PRELOADED)
    if not path:
        return None
    # Whatever this process starts gets the user's LD_PRELOAD back: the hook is for this process only.
    if USER_PRELOAD in os.environ:
        user = os.environ.pop(USER_PRELOAD)
        if user:
            os.environ["LD_PRELOAD"] = user
        else:
            os.environ.pop("LD_PRELOAD", None)
    try:
        library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None
    library.ggml_inspector_connect.argtypes = [ctypes.c_int, ctypes.c_void_p]
    library.ggml_inspector_connect.restype = ctypes.c_bool
    library.ggml_inspector_disconnect.argtypes = []
    library.ggml_inspector_disconnect.restype = None
    library.ggml_inspector_frames_sent.argtypes = []
    library.ggml_inspector_frames_sent.restype = ctypes.c_ulonglong
    library.ggml_inspector_adopt.argtypes = [ctypes.c_void_p]
    library.ggml_inspector_adopt.restype = ctypes.c_bool
    library.ggml_inspector_lent_copied.argtypes = []
    library.ggml_inspector_lent_copied.restype = None
    declare(library, (INTERPOSED,))
    return library


def why_not_native(selection: Selection, weight_names: list[str]) -> str:
    """Why this capture runs the Python hook instead of the native one, or "" when the native one can run."""
    if not os.environ.get(PRELOADED):
        return "the native hook is not preloaded in this process (started through the Python API)"
    if selection.regexes:
        return "--tensor-filter takes Python regular expressions, which the Python hook reads"
    named = next((name for name in weight_names for glob in selection.globs if fnmatch.fnmatchcase(name, glob)), "")
    if named:
        return (f"the selection names weights ({named}), which the Python hook reads from the model file where "
                "their buffer cannot be read back")
    return ""


class _InProcessSink(FrameSink):
    """Frames into the capture's dump, each compute under the evaluation the runner opened for it."""

    def __init__(self, session: CaptureSession, selection: Selection, copied: Callable[[], None]) -> None:
        super().__init__(session.writer, lambda _message: None)
        self.selection = selection
        self.copied = copied
        self.frames_read = 0
        self.ended = False  # the stream was read to its end, or reading stopped (a full disk)
        self.announced: int | None = None
        self.caught_up = threading.Condition()

    def _frame_read(self) -> None:
        with self.caught_up:
            self.frames_read += 1
            self.caught_up.notify_all()

    def _open_evaluation(self, header: dict[str, Any], report: ProcessReport, mode: dict[str, Any]) -> int:
        if self.announced is None:  # a compute the runner did not announce (llama.cpp's own)
            return super()._open_evaluation(header, report, mode)
        index, self.announced = self.announced, None
        with self._lock:
            self.writer.update_evaluation(index, {"sched": int(header["sched"]), "compute": int(header["compute"]),
                                                  "n_nodes": int(header.get("n_nodes", -1)), **mode})
        return index

    def _names(self, header: dict[str, Any]) -> None:
        names = header.get("names")
        if isinstance(names, list):
            for name in names[:4096]:
                self.selection.matches(str(name)[:256])  # seen: the nearest names of a pattern that matched none

    def _input(self, *_args: object) -> None:
        """The runner records what each evaluation computed: INPUT frames add nothing."""

    def _tensor(self, kind: int, header: dict[str, Any], owner: int, data: bytes, report: ProcessReport) -> None:
        self.selection.matches(str(header.get("name", "")))  # a pattern that matched is not reported unmatched
        super()._tensor(kind, header, owner, data, report)

    def _frame_data(self, kind: int, header: dict[str, Any], data: bytes | np.ndarray) -> bytes | np.ndarray:
        """The bytes a TENSOR frame lends (``lent_at``, ``lent_bytes``: a large tensor in host memory, which the
        hook in this process sends by address instead of through the socket's two copies), copied into an array
        of ours, unless the dump takes no more; the hook, which waits meanwhile, is told in any case."""
        if kind != TENSOR or LENT_AT not in header:
            return data
        try:
            size, at = int(header.pop(LENT_BYTES)), int(header.pop(LENT_AT))
            if self.stopped:
                return b""
            borrowed = np.empty(size, np.uint8)
            ctypes.memmove(borrowed.ctypes.data, at, size)  # lets the GIL go
            return borrowed
        finally:
            self.copied()


class NativeHook:
    """What the runner sees of a capture by the preloaded native hook (the Python hook's interface).

    ``callback`` is None: the hook installs its own on every scheduler.
    """

    callback = None

    def __init__(self, session: CaptureSession, selection: Selection, mode: CaptureMode) -> None:
        library = _preloaded_library()
        if library is None:
            raise InspectorError("the native hook is not loaded in this process")
        self.library = library
        self.selection = selection
        self.interrupted = False
        self._sink = _InProcessSink(session, selection, library.ggml_inspector_lent_copied)
        os.environ.update({"GGML_INSPECTOR_GLOBS": PATTERN_SEPARATOR.join(selection.globs),
                           "GGML_INSPECTOR_REGEXES": "", **mode.environment()})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket = ours
        in_ggml = ctypes.cast(load().base.ggml_backend_sched_new, ctypes.c_void_p)
        if not library.ggml_inspector_connect(theirs.detach(), in_ggml):
            ours.close()
            raise InspectorError("the native hook is already capturing in this process")
        self._thread = threading.Thread(target=self._read, name="native-hook-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._socket.makefile("rb", buffering=READ_BUFFER_BYTES) as stream:
                # The hook in this very process: its frame sizes are trusted, large tensors read straight in.
                self._sink.consume(lambda size: b"" if self.interrupted else stream.read(size), "the native hook",
                                   lambda view: 0 if self.interrupted else stream.readinto(view))
        finally:
            # Nobody reads on: the hook's next write fails and it turns itself off, so the run never blocks on it.
            self._socket.shutdown(socket.SHUT_RDWR)
            with self._sink.caught_up:
                self._sink.ended = True
                self._sink.caught_up.notify_all()

    @property
    def counters(self) -> HookCounters:
        captured = sum(process.tensors for process in self._sink.processes)
        return HookCounters(captured=captured, observed=captured)

    @property
    def skipped(self) -> list[SkippedTensor]:
        return self._sink.skipped

    @property
    def error(self) -> str | None:
        return self._sink.hook_stopped() or (self._sink.errors[0] if self._sink.errors else None)

    @property
    def failure(self) -> BaseException | None:
        return None  # a full disk is the writer's error, which the session reads

    @property
    def capturing(self) -> bool:
        return not self.interrupted and not self._sink.stopped

    def modes(self) -> dict[str, Any]:
        """How many evaluations ran unsplit, and why the others ran node by node."""
        processes = self._sink.processes
        reasons: dict[str, int] = {}
        for process in processes:
            for reason, count in process.callback_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
        return {"unsplit": sum(process.unsplit for process in processes), "callback": reasons}

    def scheduler_calls(self, sched: int, ggml: Any) -> Any:
        """The ``ggml_backend_sched_*`` functions to call on ``sched``, a scheduler this process made before the hook
        connected and has not yet planned a graph on (mllama's): the hook's own where it interposes them, ``ggml``'s
        (the library object the runner calls) for the rest.

        Why: this process calls libggml-base through ctypes handles, which the preloaded hook does not stand in
        front of; called on the hook, reserve, alloc and compute are seen, and the graph runs unsplit.
        """
        if not self.library.ggml_inspector_adopt(sched):
            raise InspectorError("the native hook could not take the scheduler")
        return SimpleNamespace(**{name: getattr(self.library if name in INTERPOSED else ggml, name)
                                  for name in SCHEDULER})

    def begin_evaluation(self, index: int) -> None:
        """The runner's evaluation ``index`` is opened: the hook's next compute is its."""
        self._sink.announced = index

    def catch_up(self) -> None:
        """Wait until every frame the hook wrote has been read: call it before the session opens an evaluation."""
        sent = self.library.ggml_inspector_frames_sent()
        with self._sink.caught_up:
            waited = self._sink.caught_up.wait_for(lambda: self._sink.frames_read >= sent or self._sink.ended,
                                                   CATCH_UP_TIMEOUT_S)
        if not waited:
            raise InspectorError(f"the native hook's stream stopped being read ({self._sink.frames_read} of "
                                 f"{sent} frames)")

    def close(self) -> None:
        """Read what the hook wrote, then stop it (the process runs on unhooked) and the reader."""
        if self._thread.is_alive() and not self.interrupted:
            self.catch_up()
        self.library.ggml_inspector_disconnect()
        self._thread.join(timeout=CATCH_UP_TIMEOUT_S)
        self._socket.close()

    def request_stop(self) -> None:
        self.interrupted = True

    def should_abort(self) -> bool:
        return self.interrupted


def native_capture(model_files: list[str], selection: Selection, mode: CaptureMode
                   ) -> tuple[Callable[[CaptureSession], NativeHook] | None, dict[str, Any]]:
    """The hook a capture of these files runs, as a factory for its session (None: the Python hook), and what the
    dump's config records of it."""
    weight_names: list[str] = []
    if selection.globs and os.environ.get(PRELOADED):
        for path in model_files:
            try:
                weight_names += list(read_header(path).tensors)
            except InspectorError:
                pass  # the run itself reports a file llama.cpp cannot read
    why = why_not_native(selection, weight_names)
    record = {**mode.describe(), "hook": "python" if why else "native", **({"python_hook_because": why} if why else {})}
    if why:
        return None, record
    return (lambda session: NativeHook(session, selection, mode)), record
