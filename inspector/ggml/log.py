"""llama.cpp's and ggml's log, routed off the terminal into a bounded buffer.

Why: ggml's GGUF parser, llama.cpp's loader and the CPU backend print their
own lines on stderr (llama-cpp-python's default callback prints every one).
A bad file must cost the user exactly one line, ours, so every parse of an
untrusted file runs with the log captured (:func:`captured_log`), and a run
keeps it for ``--verbose`` (:func:`install_log`).  The buffer's last error
line is what our one-line messages quote.

The C side sees one ctypes thunk for the life of the process: llama.cpp
calls the log callback through a bare C pointer from any thread, without a
lock, and a thunk freed when replaced crashed a thread that had read the old
pointer (``tests/test_llama_log.py``).  Only the Python-side buffer changes.
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

# Log lines kept; the causes of a failure are among the last few.
LOG_LINES_KEPT = 50
# One log line longer than this is cut: a key name in a hostile GGUF can be 64 KiB.
MAX_LOG_LINE_CHARS = 1000


class LogBuffer:
    """The last log lines, echoed on stderr when verbose."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.lines: deque[str] = deque(maxlen=LOG_LINES_KEPT)

    def write(self, text: bytes | None) -> None:
        message = (text or b"").decode("utf-8", errors="replace")
        if message.strip():
            self.lines.append(message.strip()[:MAX_LOG_LINE_CHARS])
        if self.verbose:
            print(message, end="", flush=True, file=sys.stderr)

    def last_error(self) -> str:
        """The most specific recent failure: llama.cpp logs the cause ("error loading model: unknown
        model architecture") before the generic "failed to load model" that follows it."""
        for marker in ("error", "failed"):
            for line in reversed(self.lines):
                if marker in line.lower():
                    return line
        return self.lines[-1] if self.lines else ""


_active: LogBuffer | None = None


def _on_log(_level: int, text: bytes | None, _user_data: int) -> None:
    """Hand a log line to the buffer installed last (read once: another thread may swap it).

    An exception here would be printed by ctypes as a traceback, so none escapes:
    the text may be any bytes (a hostile key is not UTF-8) or NULL.
    """
    log = _active
    if log is None:
        return
    try:
        log.write(text)
    except Exception:  # noqa: BLE001  (a log line is never worth a traceback)
        return


LOG_THUNK = llama_cpp.llama_log_callback(_on_log)


def install_log(verbose: bool) -> LogBuffer:
    """Start a fresh buffer and point llama.cpp's (and so ggml's) log at it, off the terminal."""
    global _active
    _active = LogBuffer(verbose)
    llama_cpp.llama_log_set(LOG_THUNK, ctypes.c_void_p(0))
    return _active


@contextmanager
def captured_log() -> Iterator[LogBuffer]:
    """Capture the log into a fresh buffer for a block (a parse of an untrusted file), then restore the previous.

    The lines stay in the block's buffer, for a message to quote; a verbose
    run's buffer echoes them as well.
    """
    global _active
    previous = _active
    buffer = LogBuffer(previous.verbose if previous is not None else False)
    _active = buffer
    llama_cpp.llama_log_set(LOG_THUNK, ctypes.c_void_p(0))
    try:
        yield buffer
    finally:
        if previous is not None:
            previous.lines.extend(buffer.lines)
        _active = previous if previous is not None else LogBuffer(False)
