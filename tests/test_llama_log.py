"""llama.cpp's log callback: routed to the log installed last, and safe to reinstall while another thread logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import llama_cpp

from inspector.ggml.log import install_log

MISSING_MODEL = b"/nonexistent/ggml-inspector/missing.gguf"

# A thread makes llama.cpp log (a model that cannot be opened) as fast as it can while the
# main thread reinstalls the log.  With a ctypes thunk per install, freed when replaced,
# this died with SIGSEGV within a fraction of a second in every trial.
STRESS = f"""
import threading, time
import llama_cpp
from inspector.ggml.log import install_log

stop = threading.Event()
loads = 0

def log_forever():
    global loads
    params = llama_cpp.llama_model_default_params()
    while not stop.is_set():
        assert not llama_cpp.llama_model_load_from_file({MISSING_MODEL!r}, params)
        loads += 1

install_log(False)
thread = threading.Thread(target=log_forever)
thread.start()
installs = 0
deadline = time.monotonic() + 2.0
while time.monotonic() < deadline:
    install_log(False)
    installs += 1
stop.set()
thread.join()
print(installs, loads)
"""


def test_log_lines_go_to_the_log_installed_last():
    first = install_log(False)
    second = install_log(False)
    assert not llama_cpp.llama_model_load_from_file(MISSING_MODEL, llama_cpp.llama_model_default_params())
    assert not first.lines
    assert any("missing.gguf" in line for line in second.lines)


def test_reinstalling_the_log_while_another_thread_logs_does_not_crash():
    result = subprocess.run([sys.executable, "-c", STRESS], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    installs, loads = map(int, result.stdout.split())
    assert installs > 1000 and loads > 100
