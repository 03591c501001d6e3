"""``import``: a dump folder the native hook wrote without a parent, turned into one dump.

A program that cannot run under ``exec`` (a static build with the hook
compiled in, a machine without ggml-inspector) sets ``GGML_INSPECTOR_DIR``;
each of its processes then writes its frames to ``<pid>.frames`` there.
The files are read with the same parser and written by the same sink as
``exec``'s sockets (:mod:`inspector.native.stream`), one process after the
other.  A file that does not start as a stream is refused before the dump
is created; a stream cut short (a crash, a full disk on the program's side)
keeps every whole frame and marks the dump incomplete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from inspector.capture.hook import SkippedTensor
from inspector.capture.session import CaptureSession
from inspector.dump.inputs import MAX_INPUT_EMBD_BYTES
from inspector.errors import InspectorError
from inspector.ggml.system import host_facts
from inspector.native.stream import (
    BYE,
    EVAL,
    FRAME,
    HELLO,
    INPUT,
    MAGIC,
    NAMES,
    NOTICE,
    SKIP,
    TENSOR,
    FrameSink,
    ProcessReport,
    ProtocolError,
    input_leaf,
    parse_head,
    tensor_header,
)
from inspector.native.tensor_stats import stats_function

STREAM_SUFFIX = ".frames"
_STREAM_NAME = re.compile(r"(\d+)(?:-(\d+))?\.frames")


@dataclass
class ImportSummary:
    path: Path
    tensors: int
    bytes: int
    evaluations: int
    seconds: float
    # Empty when the dump is complete.
    incomplete_reason: str = ""
    processes: list[ProcessReport] = field(default_factory=list)
    skipped: list[SkippedTensor] = field(default_factory=list)


def _stream_order(path: Path) -> tuple[int, int, str]:
    """Process id, then the hook's -N suffix (the same pid after an exec), then the name for any other file."""
    match = _STREAM_NAME.fullmatch(path.name)
    return (int(match.group(1)), int(match.group(2) or 0), "") if match else (-1, 0, path.name)


def stream_files(folder: Path) -> list[Path]:
    """The folder's ``*.frames`` files, in process order; a folder without any is refused."""
    if not folder.is_dir():
        raise InspectorError(f"{folder} is not a folder (give the GGML_INSPECTOR_DIR the program wrote to)")
    files = sorted((path for path in folder.glob(f"*{STREAM_SUFFIX}") if path.is_file()), key=_stream_order)
    if not files:
        raise InspectorError(f"{folder} holds no {STREAM_SUFFIX} file: no process wrote there "
                             "(was GGML_INSPECTOR_DIR set, and did the program compute a graph?)")
    return files


def hello_of(path: Path) -> dict[str, object] | None:
    """The stream's HELLO header, None if the file ends before it is whole; refuses a file that is no stream.

    Reads at most one frame head and one header, whatever the file claims.
    """
    with open(path, "rb") as handle:
        head = handle.read(FRAME.size)
        if len(head) < FRAME.size:
            if head != MAGIC.to_bytes(4, "little")[:len(head)]:
                raise InspectorError(f"{path} is not a stream of the ggml-inspector hook (it does not start with the "
                                   "hook's magic GGIH)")
            return None
        try:
            frame = parse_head(head)
        except ProtocolError as error:
            raise InspectorError(f"{path} is not a stream of the ggml-inspector hook ({error})") from None
        if frame.kind != HELLO:
            raise InspectorError(f"{path} is not a stream of the ggml-inspector hook (it does not begin with HELLO)")
        raw = handle.read(frame.header_length)
    if len(raw) < frame.header_length:
        return None
    try:
        header = orjson.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise InspectorError(f"{path} is not a stream of the ggml-inspector hook (its HELLO is not a JSON object)")
    return header


FRAME_NAMES = {HELLO: "HELLO", EVAL: "EVAL", TENSOR: "TENSOR", SKIP: "SKIP", NOTICE: "NOTICE", BYE: "BYE",
               INPUT: "INPUT", NAMES: "NAMES"}


def check_frames(path: Path) -> None:
    """Refuse a stream file holding a forged frame, before anything is written: one line naming the frame.

    Reads every frame head and header but skips over tensor data, so a
    file costs its headers' bytes in memory, whatever sizes it declares (an
    INPUT frame's values are read and checked: at most 64 MiB).
    A file that ends inside a frame is not refused: that is a process that
    crashed, and the import keeps its whole frames.
    """
    number = 0
    with open(path, "rb") as handle:
        while len(head := handle.read(FRAME.size)) == FRAME.size:
            number += 1
            try:
                frame = parse_head(head)
                raw = handle.read(frame.header_length)
                if len(raw) < frame.header_length:
                    return
                header = orjson.loads(raw) if frame.header_length else {}
                if not isinstance(header, dict):
                    raise ProtocolError("a frame header that is not a JSON object")
                if number == 1 and frame.kind != HELLO:
                    raise ProtocolError("a stream that does not begin with HELLO")
                if frame.kind == TENSOR:
                    tensor_header(header, frame.data_length)
                if frame.kind == INPUT:
                    if frame.data_length > MAX_INPUT_EMBD_BYTES:
                        raise ProtocolError("an INPUT frame larger than the 64 MiB the hook sends")
                    data = handle.read(frame.data_length)
                    if len(data) < frame.data_length:
                        return
                    input_leaf(header, data)
                    continue
            except ProtocolError as error:
                raise InspectorError(f"{path.name}: frame {number}: {error}") from None
            except (ValueError, RecursionError):
                raise InspectorError(f"{path.name}: frame {number} ({FRAME_NAMES.get(frame.kind, frame.kind)}): "
                                     "a header that is not JSON") from None
            handle.seek(frame.data_length, 1)


def import_streams(folder: Path, output: Path, *, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None) -> ImportSummary:
    """Write every stream of ``folder`` into the dump ``output`` and say how it went.

    Raises DiskFull (dump kept, incomplete), CaptureInterrupted on SIGINT or
    SIGTERM (dump kept, incomplete), and InspectorError for a folder without
    streams, a file that is not one, a ggml the hook could not read, or a
    hook that stopped capturing mid-run (dump kept, incomplete).
    """
    started = time.perf_counter()
    files = stream_files(folder)
    hellos = [hello_of(path) for path in files]
    for path in files:
        check_frames(path)
    config = {"runner": "import", "folder": str(folder.resolve()), "streams": [path.name for path in files],
              "pids": [hello.get("pid") for hello in hellos if hello is not None],
              "argv0": [hello.get("argv0") for hello in hellos if hello is not None]}
    with CaptureSession(output, config, host_facts(), overwrite=overwrite, progress=progress,
                        stats_of=stats_function()) as session:
        sink = FrameSink(session.writer, session.say)
        cut_short: list[str] = []
        for path in files:
            errors_before = len(sink.errors)
            with open(path, "rb") as handle:
                report = sink.consume(session.interruptible(handle.read), path.name)
            if sink.stopped or session.interrupted:
                break
            if len(sink.errors) > errors_before or report.said_goodbye:
                continue
            ending = ("is empty (the process ended before its first frame)" if report.pid < 0
                      else "ends without BYE (the process crashed or was killed)")
            cut_short.append(f"{path.name}: the stream {ending}")
        return _close(session, sink, folder, cut_short, started)


def _close(session: CaptureSession, sink: FrameSink, folder: Path, cut_short: list[str],
           started: float) -> ImportSummary:
    """Close the dump; a folder whose processes could not be read is a stop, the streams' own faults are not."""
    incompatible = sink.incompatible()
    if incompatible or not sink.processes:
        stopped = (f"process {incompatible[0].pid} ({incompatible[0].argv0}) uses a ggml the hook cannot read "
                   f"({incompatible[0].reason})" if incompatible else
                   f"no stream in {folder} got as far as its first frame")
    else:
        stopped = sink.hook_stopped()
    errors = sink.errors + cut_short
    reason = session.finish({"processes": [asdict(process) for process in sink.processes], "errors": errors},
                            skipped=sink.skipped, stopped=stopped, incomplete=errors[0] if errors else "")
    return ImportSummary(path=session.path, tensors=session.tensor_count, bytes=session.byte_count,
                         evaluations=sum(p.evaluations for p in sink.processes),
                         seconds=time.perf_counter() - started, incomplete_reason=reason,
                         processes=sink.processes, skipped=sink.skipped)
