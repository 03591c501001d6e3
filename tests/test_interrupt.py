"""SIGINT (Ctrl-C) and SIGTERM during a real capture leave a readable dump, marked incomplete, and exit 130."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from inspector import open_dump

# No wait on the child below may outlast this, whatever it prints or fails to print.
DEADLINE_S = 120


class ChildLines:
    """A child's stderr, read line by line on a thread, so that every wait here has a deadline.

    Why: iterating over ``process.stderr`` blocks until the next line, and a
    child that hangs without printing would hang the test with it.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, wanted: Callable[[str], bool], deadline: float) -> None:
        """Read until a line is ``wanted``; fails at the deadline or when the child's output ends first."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail("the child ended before the line arrived:\n" + "".join(self.lines))
            self.lines.append(line)
            if wanted(line):
                return
        pytest.fail("no such line before the deadline:\n" + "".join(self.lines))

    def rest(self, deadline: float) -> str:
        """Everything the child printed after the line waited for, up to its end (or the deadline)."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        assert not self._thread.is_alive(), "the child's stderr never closed"
        rest = []
        while (line := self._queue.get_nowait()) is not None:
            rest.append(line)
        self.lines += rest
        return "".join(rest)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_mid_capture_keeps_a_readable_incomplete_dump(tiny_f32, tmp_path, stop):
    out = tmp_path / "interrupted.h5"
    prompt = "x" * 400
    process = subprocess.Popen(
        [sys.executable, "-m", "inspector", "capture", str(tiny_f32), "-p", prompt, "--ubatch", "1",
         "--ctx", "512", "--threads", "1", "-o", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        child = ChildLines(process)
        child.wait_for(lambda line: line.startswith("evaluation 5 "), deadline)
        process.send_signal(stop)
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 130, "".join(child.lines)
        rest = child.rest(deadline)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in rest
    errors = [line for line in rest.splitlines() if line.startswith("ggml-inspector: error")]
    assert len(errors) == 1, rest
    line = re.fullmatch(rf"ggml-inspector: error: interrupted after (\d+) tensors; kept in {re.escape(str(out))}, "
                        "marked incomplete", errors[0])
    assert line is not None, errors[0]
    with open_dump(out) as dump:
        assert not dump.complete
        assert dump.incomplete_reason == "interrupted"
        assert len(dump) == int(line.group(1)) > 0
        assert 6 <= len(dump.evaluations) < 400
        for entry in dump.entries()[-3:]:
            dump.read(entry)
