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
from types import FrameType, TracebackType

from inspector.capture.hook import SkippedTensor
from inspector.dump.background_writer import BackgroundWriter
from inspector.dump.format import NO_COMPRESSION, Compression
from inspector.dump.writer import DumpWriter
from inspector.errors import CaptureInterrupted, InspectorError
from inspector.files.disk_space import DiskFull
from inspector.ggml import load
from inspector.ggml.system import system_facts
from inspector.native.build import check_extended_regexes, library_path
from inspector.native.stream import PATTERN_SEPARATOR, FrameSink, ProcessReport

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
        with connection:
            self.sink.consume(connection.recv)

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


class _Interrupts:
    """SIGINT and SIGTERM while exec runs: passed on to the program and remembered, never raised.

    Why not KeyboardInterrupt: the signal can land at any point, also after the
    program was reaped and before the dump is closed, and an exception there
    would leave the dump open.  A flag read at the end cannot be missed, and a
    second Ctrl-C while the dump closes cannot break it.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.received = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, _type: type[BaseException] | None, _error: BaseException | None,
                 _traceback: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        # A terminal's Ctrl-C reached the program too; a kill aimed at exec alone did not.
        self.received = True
        if self.child is not None:
            self.child.send_signal(number)


def exec_capture(argv: list[str], globs: Sequence[str], regexes: Sequence[str], output: str | Path, *,
                 overwrite: bool = False, progress: Callable[[str], None] | None = None, stats_only: bool = False,
                 compression: Compression = NO_COMPRESSION, model: str | Path | None = None) -> ExecSummary:
    """Run ``argv`` with the hook preloaded, write the dump, and return what happened.

    ``model``, the GGUF the program loads if the caller knows it, is recorded
    as ``capture`` records its model (path and facts, in bounded reads).

    ``regexes`` are POSIX extended regular expressions, the hook's dialect;
    each is checked with the C library's regcomp before the program starts.
    The dump is complete only when the program exited normally and every
    stream was read; a crash (signal), Ctrl-C or a full disk keep what
    arrived, marked incomplete with the reason.  A program whose ggml the
    hook cannot use runs unhooked and raises InspectorError afterwards, as
    does a hook that stopped capturing in the middle of the run.
    """
    if not argv:
        raise InspectorError("give the program to run after --")
    for pattern in (*globs, *regexes):
        if "\0" in pattern or PATTERN_SEPARATOR in pattern:
            raise InspectorError(f"pattern {pattern!r} holds a NUL or a 0x1F byte, which cannot reach the hook")
    check_extended_regexes(regexes)
    hook = library_path()
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    config = {"runner": "exec", "argv": list(argv), "command_line": shlex.join(argv), "cwd": os.getcwd(),
              "environment": recorded_environment(), "select": {"globs": list(globs), "regexes": list(regexes)}}
    if model is not None:
        from inspector.llamacpp.session import model_facts

        config.update(model=str(model), model_facts=model_facts(str(model)))
    with tempfile.TemporaryDirectory(prefix="ggml-inspector-") as folder, _Interrupts() as interrupts:
        address = str(Path(folder) / "hook.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(16)
        writer = BackgroundWriter(DumpWriter(output, config, system_facts(load()), overwrite=overwrite,
                                             stats_only=stats_only, compression=compression))
        sink = FrameSink(writer, say)
        receiver = Receiver(listener, sink).start()
        environment = {**os.environ, "GGML_INSPECTOR_SOCKET": address,
                       "GGML_INSPECTOR_GLOBS": PATTERN_SEPARATOR.join(globs),
                       "GGML_INSPECTOR_REGEXES": PATTERN_SEPARATOR.join(regexes),
                       "LD_PRELOAD": " ".join(filter(None, [str(hook), os.environ.get("LD_PRELOAD", "")]))}
        environment.pop("GGML_INSPECTOR_DIR", None)  # the socket it is; a folder is for runs without exec
        try:
            interrupts.child = subprocess.Popen(argv, env=environment)
        except OSError as error:
            listener.close()
            writer.close(False, f"could not start the program: {error.strerror or error}")
            Path(writer.path).unlink(missing_ok=True)
            raise InspectorError(f"cannot run {argv[0]}: {error.strerror or error}") from None
        status = interrupts.child.wait()
        receiver.finish()
        return _close(writer, sink, argv, status, interrupts, started)


def _close(writer: BackgroundWriter, sink: FrameSink, argv: list[str], status: int, interrupts: _Interrupts,
           started: float) -> ExecSummary:
    processes = sink.processes
    if sink.skipped:
        writer.set_skipped([asdict(skip) for skip in sink.skipped])
    writer.set_result({"exit_status": status, "signal": _signal_name(status) if status < 0 else "",
                       "processes": [asdict(process) for process in processes], "errors": sink.errors})
    writer.drain()  # everything queued is written: the counts below are exact
    incompatible = sink.incompatible()
    if incompatible or not processes:
        writer.close(False, "nothing captured")
        if writer.tensor_count == 0:
            Path(writer.path).unlink(missing_ok=True)
        if interrupts.received:
            raise CaptureInterrupted("interrupted before the program computed a graph; nothing was captured")
        if incompatible:
            raise InspectorError(f"{argv[0]} uses a ggml the hook cannot read ({incompatible[0].reason}); "
                                 "it ran unhooked and nothing was captured")
        raise InspectorError(f"{argv[0]} computed no graph through a shared libggml-base's ggml_backend_sched "
                             "(statically linked, or built against another ggml?); nothing was captured")
    tensors = writer.tensor_count
    full = writer.error if isinstance(writer.error, DiskFull) else None
    stopped = sink.hook_stopped()
    if interrupts.received:
        reason = "interrupted"
    elif full is not None:
        reason = f"{full} after {tensors} tensors"
    elif stopped:
        reason = stopped
    elif status < 0:
        reason = f"the program was killed by {_signal_name(status)}"
    else:
        reason = sink.errors[0] if sink.errors else (f"{writer.error}" if writer.error is not None else "")
    writer.close(not reason, reason)
    if interrupts.received:
        raise CaptureInterrupted(f"interrupted; kept {tensors} tensors in {writer.path} (marked incomplete)")
    if full is not None:
        raise DiskFull(f"{reason}; kept in {writer.path}, marked incomplete (the program ran on unhooked, "
                       f"{_status_text(status)})")
    if stopped:
        kept = f"kept {tensors} tensors in {writer.path}, marked incomplete" if tensors else "nothing was captured"
        if not tensors:
            Path(writer.path).unlink(missing_ok=True)
        raise InspectorError(f"{stopped}; {kept} (the program ran on unhooked, {_status_text(status)})")
    return ExecSummary(path=Path(writer.path), exit_status=status, tensors=tensors, bytes=writer.byte_count,
                       evaluations=sum(p.evaluations for p in processes), seconds=time.perf_counter() - started,
                       processes=processes, skipped=sink.skipped)


def _status_text(status: int) -> str:
    return f"killed by {_signal_name(status)}" if status < 0 else f"exit status {status}"
