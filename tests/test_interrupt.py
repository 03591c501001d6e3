"""Ctrl-C during a real capture leaves a readable dump, marked incomplete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from inspector import open_dump


def test_sigint_mid_capture_keeps_a_readable_incomplete_dump(tiny_f32, tmp_path):
    out = tmp_path / "interrupted.h5"
    prompt = "x" * 400
    process = subprocess.Popen(
        [sys.executable, "-m", "inspector", "capture", str(tiny_f32), "-p", prompt, "--ubatch", "1",
         "--ctx", "512", "--threads", "1", "-o", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    deadline = time.monotonic() + 120
    for line in process.stderr:
        seen.append(line)
        if line.startswith("evaluation 5 "):
            break
        assert time.monotonic() < deadline, "capture never reached evaluation 5"
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert "interrupted" in rest and "marked incomplete" in rest
    with open_dump(out) as dump:
        assert not dump.complete
        assert dump.incomplete_reason == "interrupted"
        assert len(dump) > 0
        assert len(dump.evaluations) < 400
        for entry in dump.entries()[-3:]:
            dump.read(entry)
