"""Capture an unmodified program: run it with the native hook preloaded and write what it streams.

The hook (``hooks/ggml_inspector_hook.c``) interposes the program's
``ggml_backend_sched_*`` calls, selects and copies tensors at compute time
and sends them over a Unix socket (wire format in ``hooks/README.md``).
Every process of the program connects on its own, so a program that starts
others is captured whole.  This side turns frames into records and writes
them with the ordinary dump writer: ``ls``, ``compare``, plots and the
report read the result like any capture.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspector.background_writer import BackgroundWriter
from inspector.disk_space import DiskFull
from inspector.dump_format import NO_COMPRESSION, Compression
from inspector.dump_writer import DumpWriter
from inspector.errors import CaptureInterrupted, InspectorError
from inspector.ggml import load
from inspector.ggml.readout import materialise
from inspector.ggml.tensor import flag_names
from inspector.hook import SkippedTensor
from inspector.native_hook import library_path
from inspector.record import TensorRecord
from inspector.selection import Selection
from inspector.system import system_facts

FRAME = struct.Struct("<IIIIQ")
MAGIC = 0x48494747
HELLO, EVAL, TENSOR, SKIP, NOTICE, BYE = range(1, 7)
# A header is a small JSON object; anything larger is not our hook talking.
MAX_HEADER_BYTES = 1 << 20
MAX_TENSOR_BYTES = 8 << 30
PATTERN_SEPARATOR = "\x1f"
# Environment variables that change what ggml computes, recorded with the run.
RECORDED_ENVIRONMENT = ("GGML_", "LLAMA_", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "OMP_", "LD_LIBRARY_PATH")


class ProtocolError(InspectorError):
    """A connection sent something that is not the hook's wire format."""


@dataclass
class ProcessReport:
    """What one process of the program told us."""

    pid: int
    argv0: str
    compatible: bool = True
    reason: str = ""
    schedulers: int = 0
    computes: int = 0
    evaluations: int = 0
    tensors: int = 0


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


def _read_exactly(connection: socket.socket, count: int) -> bytes | None:
    """``count`` bytes, or None at a clean end of stream before the first byte."""
    chunks, remaining = [], count
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 20))
        if not chunk:
            if remaining == count:
                return None
            raise ProtocolError("the hook's stream ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(connection: socket.socket) -> tuple[int, dict[str, Any], bytes] | None:
    """One frame (kind, header, data), or None when the process closed its stream."""
    head = _read_exactly(connection, FRAME.size)
    if head is None:
        return None
    magic, kind, header_length, _reserved, data_length = FRAME.unpack(head)
    if magic != MAGIC or header_length > MAX_HEADER_BYTES or data_length > MAX_TENSOR_BYTES:
        raise ProtocolError("a frame that is not the hook's (bad magic or size)")
    header = json.loads((_read_exactly(connection, header_length) or b"{}").decode("utf-8"))
    data = _read_exactly(connection, data_length) or b"" if data_length else b""
    if not isinstance(header, dict):
        raise ProtocolError("a frame header that is not a JSON object")
    return kind, header, data


def record_of(header: dict[str, Any], eval_index: int, data: bytes) -> tuple[TensorRecord, np.ndarray]:
    """A TENSOR frame as the record and array the Python hook would have made of the same tensor."""
    ne, nb = tuple(int(n) for n in header["ne"]), tuple(int(n) for n in header["nb"])
    readout = materialise(np.frombuffer(data, dtype=np.uint8), int(header["type"]), ne, nb,
                          int(header["block_size"]), int(header["type_size"]), int(header["n_dims"]))
    record = TensorRecord(
        name=header["name"], eval_index=eval_index, node_index=int(header["node_index"]),
        occurrence=int(header["occurrence"]), op=header["op"], ggml_type=header["type_name"], ne=ne, nb=nb,
        buffer=header.get("buffer", ""), buffer_type=header.get("buffer_type", ""), storage=readout.storage,
        is_leaf=bool(header.get("is_leaf")), consumer=header.get("consumer", ""),
        sched_copy=header.get("sched_copy", ""), flags=flag_names(int(header.get("flags", 0))),
        sources=list(header.get("sources", [])), view_source=header.get("view_source", ""),
        view_offset=int(header.get("view_offset", 0)),
    )
    return record, readout.array


class Receiver:
    """Accepts the program's connections and writes their frames, one thread per process."""

    def __init__(self, listener: socket.socket, writer: BackgroundWriter, progress: Callable[[str], None]) -> None:
        self.listener = listener
        self.writer = writer
        self.progress = progress
        self.processes: list[ProcessReport] = []
        self.skipped: list[SkippedTensor] = []
        self.errors: list[str] = []
        self.stopped = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
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
                self._connections.append(connection)
                self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        report = ProcessReport(pid=-1, argv0="")
        # Threads computing on different schedulers interleave their frames: a tensor names its
        # (scheduler, compute call), which maps to the evaluation that EVAL opened.
        evaluations: dict[tuple[int, int], int] = {}
        eval_index = -1
        try:
            while (frame := read_frame(connection)) is not None:
                kind, header, data = frame
                if kind == HELLO:
                    report.pid, report.argv0 = int(header.get("pid", -1)), str(header.get("argv0", ""))
                    report.compatible = bool(header.get("compatible", True))
                    report.reason = str(header.get("reason", ""))
                    with self._lock:
                        self.processes.append(report)
                elif kind == NOTICE:
                    report.compatible = report.compatible and not header.get("incompatible")
                    report.reason = str(header.get("reason", ""))
                elif kind == BYE:
                    report.schedulers, report.computes = int(header["schedulers"]), int(header["computes"])
                elif self.stopped:
                    continue  # the dump is closing (full disk): drain, so the program runs on
                elif kind == EVAL:
                    with self._lock:
                        eval_index = self.writer.begin_evaluation("graph", {
                            "pid": report.pid, "sched": int(header["sched"]), "compute": int(header["compute"]),
                            "n_nodes": int(header.get("n_nodes", -1))})
                    evaluations[(int(header["sched"]), int(header["compute"]))] = eval_index
                    report.evaluations += 1
                    self.progress(f"evaluation {eval_index} (process {report.pid}, scheduler {header['sched']}, "
                                  f"compute {header['compute']}); {self.writer.tensor_count} tensors so far")
                elif kind == TENSOR:
                    owner = evaluations.get((int(header.get("sched", -1)), int(header.get("compute", -1))), eval_index)
                    record, array = record_of(header, owner, data)
                    with self._lock:
                        self.writer.write(record, array)
                    report.tensors += 1
                elif kind == SKIP:
                    owner = evaluations.get((int(header.get("sched", -1)), int(header.get("compute", -1))), eval_index)
                    with self._lock:
                        self.skipped.append(SkippedTensor(owner, header["name"], int(header["occurrence"]),
                                                          header.get("buffer_type", ""), header.get("reason", "")))
        except DiskFull as error:
            self.stopped = True
            self.errors.append(str(error))
        except (InspectorError, OSError, ValueError, KeyError, TypeError) as error:
            self.errors.append(f"process {report.pid}: {error}")
        finally:
            connection.close()

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


def exec_capture(argv: list[str], selection: Selection, output: str | Path, *, overwrite: bool = False,
                 progress: Callable[[str], None] | None = None, stats_only: bool = False,
                 compression: Compression = NO_COMPRESSION) -> ExecSummary:
    """Run ``argv`` with the hook preloaded, write the dump, and return what happened.

    The dump is complete only when the program exited normally and every
    stream was read; a crash (signal), Ctrl-C or a full disk keep what
    arrived, marked incomplete with the reason.  A program whose ggml the
    hook cannot use runs unhooked and raises InspectorError afterwards.
    """
    if not argv:
        raise InspectorError("give the program to run after --")
    hook = library_path()
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    config = {"runner": "exec", "argv": list(argv), "command_line": shlex.join(argv), "cwd": os.getcwd(),
              "environment": recorded_environment(),
              "select": {"globs": list(selection.globs), "regexes": list(selection.regexes)}}
    with tempfile.TemporaryDirectory(prefix="ggml-inspector-") as folder:
        address = str(Path(folder) / "hook.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(16)
        writer = BackgroundWriter(DumpWriter(output, config, system_facts(load()), overwrite=overwrite,
                                             stats_only=stats_only, compression=compression))
        receiver = Receiver(listener, writer, say).start()
        environment = {**os.environ, "GGML_INSPECTOR_SOCKET": address,
                       "GGML_INSPECTOR_GLOBS": PATTERN_SEPARATOR.join(selection.globs),
                       "GGML_INSPECTOR_REGEXES": PATTERN_SEPARATOR.join(selection.regexes),
                       "LD_PRELOAD": " ".join(filter(None, [str(hook), os.environ.get("LD_PRELOAD", "")]))}
        try:
            child = subprocess.Popen(argv, env=environment)
        except OSError as error:
            listener.close()
            writer.close(False, f"could not start the program: {error.strerror or error}")
            Path(writer.path).unlink(missing_ok=True)
            raise InspectorError(f"cannot run {argv[0]}: {error.strerror or error}") from None
        interrupted = False
        while True:
            try:
                status = child.wait()
                break
            except KeyboardInterrupt:
                # The terminal's Ctrl-C reached the program too; wait for it to finish its way.
                interrupted = True
                child.send_signal(signal.SIGINT)
        receiver.finish()
    return _close(writer, receiver, argv, status, interrupted, started)


def _close(writer: BackgroundWriter, receiver: Receiver, argv: list[str], status: int, interrupted: bool,
           started: float) -> ExecSummary:
    processes = receiver.processes
    if receiver.skipped:
        writer.set_skipped([asdict(skip) for skip in receiver.skipped])
    writer.set_result({"exit_status": status, "signal": _signal_name(status) if status < 0 else "",
                       "processes": [asdict(process) for process in processes], "errors": receiver.errors})
    writer.drain()
    incompatible = [p for p in processes if not p.compatible]
    reason = ""
    if interrupted:
        reason = "interrupted"
    elif status < 0:
        reason = f"the program was killed by {_signal_name(status)}"
    elif receiver.errors or writer.error is not None:
        reason = receiver.errors[0] if receiver.errors else f"{writer.error}"
    if incompatible or not processes:
        writer.close(False, "nothing captured")
        if writer.tensor_count == 0:
            Path(writer.path).unlink(missing_ok=True)
        if incompatible:
            raise InspectorError(f"{argv[0]} uses a ggml the hook cannot read ({incompatible[0].reason}); "
                                 "it ran unhooked and nothing was captured")
        raise InspectorError(f"{argv[0]} computed no graph through a shared libggml-base's ggml_backend_sched "
                             "(statically linked, or built against another ggml?); nothing was captured")
    writer.close(not reason, reason)
    summary = ExecSummary(path=Path(writer.path), exit_status=status, tensors=writer.tensor_count,
                          bytes=writer.byte_count, evaluations=sum(p.evaluations for p in processes),
                          seconds=time.perf_counter() - started, processes=processes, skipped=receiver.skipped)
    if interrupted:
        raise CaptureInterrupted(f"interrupted; kept {summary.tensors} tensors in {summary.path} (marked incomplete)")
    if isinstance(writer.error, DiskFull) or any("disk full" in error for error in receiver.errors):
        raise DiskFull(f"{reason}; kept {summary.tensors} tensors in {summary.path}, marked incomplete")
    return summary
