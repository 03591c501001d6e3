"""Capture an unmodified program: run it with the native hook preloaded and write what it streams.

The hook (``inspector/native/ggml_inspector_hook.c``) interposes the program's
``ggml_backend_sched_*`` calls, selects and copies tensors at compute time
and sends them over a Unix socket (wire format in ``inspector/native/README.md``).
Every process of the program connects on its own, so a program that starts
others is captured whole.  This side accepts the connections and feeds them
to :mod:`inspector.native.stream`, which writes the ordinary dump that ``ls``,
``compare``, plots and the report read like any capture (``import`` reads
the same frames from files).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inspector.capture.hook import SkippedTensor
from inspector.capture.mode import DEFAULT_MODE, CaptureMode
from inspector.capture.selection import SelectionDescription
from inspector.capture.session import INTERRUPTED, CaptureSession
from inspector.dump.format import NO_COMPRESSION, Compression
from inspector.errors import CaptureInterrupted, InspectorError, SetupError
from inspector.ggml import load
from inspector.ggml.system import system_facts
from inspector.native.build import check_extended_regexes, library_path
from inspector.native.stream import PATTERN_SEPARATOR, READ_BUFFER_BYTES, FrameSink, ProcessReport
from inspector.native.tensor_stats import stats_function

# Environment variables that change what ggml computes, recorded with the run.
RECORDED_ENVIRONMENT = ("GGML_", "LLAMA_", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "OMP_", "LD_LIBRARY_PATH")


@dataclass
class ExecSummary:
    path: Path
    exit_status: int
    tensors: int
    bytes: int
    evaluations: int
    seconds: float
    processes: list[ProcessReport] = field(default_factory=list)
    skipped: list[SkippedTensor] = field(default_factory=list)


class Receiver:
    """Accepts the program's connections and hands each to the sink on a thread of its own."""

    def __init__(self, listener: socket.socket, sink: FrameSink) -> None:
        self.listener = listener
        self.sink = sink
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Receiver:
        self._acceptor.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed: the program has ended
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        # Closed at the end of what the sink wants: after a full disk the hook's next send fails and
        # the program runs on unhooked.
        with connection, connection.makefile("rb", buffering=READ_BUFFER_BYTES) as stream:
            self.sink.consume(stream.read)

    def finish(self, timeout: float = 30.0) -> None:
        """After the program ended: stop accepting and wait for the streams it left to be read."""
        # close() alone does not wake an accept() blocked in another thread on Linux; shutdown() does.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._acceptor.join(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def recorded_environment() -> dict[str, str]:
    return {key: value for key, value in sorted(os.environ.items())
            if any(key.startswith(prefix) for prefix in RECORDED_ENVIRONMENT)}


def _signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


def _hooked_environment(hook: Path, socket_path: str, globs: Sequence[str], regexes: Sequence[str],
                        mode: CaptureMode) -> dict[str, str]:
    """The program's environment: the hook preloaded, told where to send, what to select and how."""
    environment = {**os.environ, "GGML_INSPECTOR_SOCKET": socket_path,
                   "GGML_INSPECTOR_GLOBS": PATTERN_SEPARATOR.join(globs),
                   "GGML_INSPECTOR_REGEXES": PATTERN_SEPARATOR.join(regexes), **mode.environment(),
                   "LD_PRELOAD": " ".join(filter(None, [str(hook), os.environ.get("LD_PRELOAD", "")]))}
    environment.pop("GGML_INSPECTOR_DIR", None)  # the socket it is; a folder is for runs without exec
    return environment


def exec_capture(argv: list[str], globs: Sequence[str], regexes: Sequence[str], output: str | Path, *,
                 overwrite: bool = False, progress: Callable[[str], None] | None = None, stats_only: bool = False,
                 compression: Compression = NO_COMPRESSION, model: str | Path | None = None,
                 mode: CaptureMode = DEFAULT_MODE) -> ExecSummary:
    """Run ``argv`` with the hook preloaded, write the dump, and return what happened.

    ``mode`` says how the hook captures each graph (:class:`CaptureMode`).
    ``model``, the GGUF the program loads if the caller knows it, is recorded
    as ``capture`` records its model (path and facts, in bounded reads).

    ``regexes`` are POSIX extended regular expressions, the hook's dialect;
    each is checked with the C library's regcomp before the program starts.
    The dump is complete only when the program exited normally and every
    stream was read; a crash (signal), SIGINT or SIGTERM (passed on to the
    program, which runs to its end) or a full disk keep what arrived, marked
    incomplete with the reason.  A program whose ggml the hook cannot use
    runs unhooked and raises InspectorError afterwards, as does a hook that
    stopped capturing in the middle of the run.
    """
    if not argv:
        raise InspectorError("give the program to run after --")
    for pattern in (*globs, *regexes):
        if "\0" in pattern or PATTERN_SEPARATOR in pattern:
            raise InspectorError(f"pattern {pattern!r} holds a NUL or a 0x1F byte, which cannot reach the hook")
    check_extended_regexes(regexes)
    hook = library_path()  # built (or refused) before the dump is created
    started = time.perf_counter()
    selection = SelectionDescription(tuple(globs), tuple(regexes))
    config = {"runner": "exec", "argv": list(argv), "command_line": shlex.join(argv), "cwd": os.getcwd(),
              "environment": recorded_environment(), "select": selection.describe(), "capture_mode": mode.describe()}
    if model is not None:
        from inspector.llamacpp.facts import model_facts

        config.update(model=str(model), model_facts=model_facts(str(model)))
    children: list[subprocess.Popen[bytes]] = []

    def pass_on(number: int) -> None:
        # A terminal's Ctrl-C reached the program too; a kill aimed at exec alone did not.
        for child in children:
            child.send_signal(number)

    with tempfile.TemporaryDirectory(prefix="ggml-inspector-") as folder:
        address = str(Path(folder) / "hook.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(16)
        with CaptureSession(output, config, system_facts(load()), overwrite=overwrite, stats_only=stats_only,
                            compression=compression, progress=progress, on_signal=pass_on,
                            stats_of=stats_function()) as session:
            sink = FrameSink(session.writer, session.say)
            receiver = Receiver(listener, sink).start()
            try:
                children.append(subprocess.Popen(argv, env=_hooked_environment(hook, address, globs, regexes, mode)))
            except OSError as error:
                listener.close()
                raise SetupError(f"cannot run {argv[0]}: {error.strerror or error}") from None
            status = children[0].wait()
            receiver.finish()
            return _close(session, sink, argv, status, started)


def _close(session: CaptureSession, sink: FrameSink, argv: list[str], status: int, started: float) -> ExecSummary:
    """Close the dump after the program ended; a program the hook could not follow leaves none."""
    processes = sink.processes
    result = {"exit_status": status, "signal": _signal_name(status) if status < 0 else "",
              "processes": [asdict(process) for process in processes], "errors": sink.errors}
    incompatible = sink.incompatible()
    if incompatible:
        stopped = f"{argv[0]} uses a ggml the hook cannot read ({incompatible[0].reason}), so it ran unhooked"
    elif not processes:
        stopped = (f"{argv[0]} computed no graph through a shared libggml-base's ggml_backend_sched "
                   "(statically linked, or built against another ggml?)")
    else:
        stopped = sink.hook_stopped()
    if status < 0:
        incomplete = f"the program was killed by {_signal_name(status)}"
    else:
        incomplete = sink.errors[0] if sink.errors else ""
    if not processes and session.interrupted:
        session.discard(INTERRUPTED)
        raise CaptureInterrupted("interrupted before the program computed a graph; nothing was captured")
    followed = bool(processes) and not incompatible  # the hook ran in the program, then stopped capturing
    note = f" (the program ran on unhooked, {_status_text(status)})" if followed else ""
    session.finish(result, skipped=sink.skipped, stopped=stopped, incomplete=incomplete, note=note)
    return ExecSummary(path=session.path, exit_status=status, tensors=session.tensor_count,
                       bytes=session.byte_count, evaluations=sum(p.evaluations for p in processes),
                       seconds=time.perf_counter() - started, processes=processes, skipped=sink.skipped)


def _status_text(status: int) -> str:
    return f"killed by {_signal_name(status)}" if status < 0 else f"exit status {status}"
