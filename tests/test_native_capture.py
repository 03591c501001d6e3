"""``capture`` through the native hook in its own process: the same dump as the Python eval callback, and a say on
which hook ran.

The command line starts itself again with the hook preloaded (inspector/native/preload.py); the Python API cannot,
so ``capture_llama`` called here runs the Python eval callback: the reference each test compares the command's dump
against, tensor by tensor and bit for bit (the Python hook's own values are checked against numpy elsewhere).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROMPT, llama_config, run_capture
from test_cli import cli

from inspector import open_dump
from inspector.capture.selection import Selection
from inspector.constants import LEND_MIN_BYTES
from inspector.llamacpp.capture import capture_llama
from inspector.native.build import SOURCE, library_path
from inspector.native.preload import PRELOADED, USER_PRELOAD
from inspector.tiny_models.llama import TinyLlamaSpec, write_tiny_llama

RUN = ("-p", PROMPT, "-t", "1", "-c", "64", "-fa", "off", "-n", "3")


def values(path: Path) -> dict[tuple[int, str, int], bytes]:
    with open_dump(path) as dump:
        return {(e.eval_index, e.name, e.occurrence): dump.read(e).tobytes() for e in dump.entries()}


def capture_mode(path: Path) -> dict:
    with open_dump(path) as dump:
        return dump.config["capture_mode"]


@pytest.mark.parametrize("mode", ["unsplit", "callback"])
def test_the_command_captures_with_the_native_hook_what_the_python_hook_captures(tiny_f32, tmp_path, mode):
    native, python = tmp_path / "native.h5", tmp_path / "python.h5"
    result = cli("capture", tiny_f32, *RUN, "--mode", mode, "-o", native)
    assert result.returncode == 0, result.stderr
    run_capture(tiny_f32, python, n_predict=3)
    assert capture_mode(native) == {"requested": mode, "unsplit_max_mib": 4096, "hook": "native"}
    assert capture_mode(python)["hook"] == "python"
    assert capture_mode(python)["python_hook_because"] == "called through the Python API, with no native hook"
    a, b = values(native), values(python)
    assert len(a) > 100 and a.keys() == b.keys()
    assert [key for key in a if a[key] != b[key]] == []
    with open_dump(native) as dump:
        taken = {e["capture_mode"] for e in dump.evaluations}
        assert len(dump.evaluations) == 3 and taken == {mode}
    said = [line for line in result.stderr.splitlines() if line.startswith("native hook:")]
    assert said == [f"native hook: {3 if mode == 'unsplit' else 0} evaluations computed in one piece"]


def test_python_regular_expressions_run_the_python_hook_and_say_so(tiny_f32, tmp_path):
    out = tmp_path / "regex.h5"
    # \d is Python's, not POSIX's: the hook's regcomp would read it otherwise.
    result = cli("capture", tiny_f32, *RUN, "--tensor-filter", r"^l_out-\d$", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "note: the Python eval callback captured node by node: --tensor-filter takes Python regular " \
        "expressions" in result.stderr
    assert capture_mode(out)["hook"] == "python"
    with open_dump(out) as dump:
        assert sorted({e.name for e in dump.entries()}) == ["l_out-0", "l_out-1"]


def test_a_selection_naming_weights_runs_the_python_hook_which_reads_them(tiny_f32, tmp_path):
    out = tmp_path / "weights.h5"
    result = cli("capture", tiny_f32, *RUN, "-T", "blk.0.attn_q.*", "-T", "l_out-0", "-o", out)
    assert result.returncode == 0, result.stderr
    mode = capture_mode(out)
    assert mode["hook"] == "python" and "blk.0.attn_q.weight" in mode["python_hook_because"]
    with open_dump(out) as dump:
        assert {"blk.0.attn_q.weight", "l_out-0"} <= {e.name for e in dump.entries()}


PROBE = """
import os, subprocess, sys
from inspector.native.inprocess import _preloaded_library
assert _preloaded_library() is not None, "the hook is not in this process"
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('LD_PRELOAD', '-'))"],
                       capture_output=True, text=True)
print(child.stdout.strip())
"""


@pytest.mark.parametrize("user_preload", ["", "libuser.so"])
def test_programs_the_capture_starts_do_not_inherit_the_hook(user_preload):
    """Preloaded for the capture's own process only: what it starts gets the user's LD_PRELOAD back."""
    hook = str(library_path())
    environment = {**os.environ, PRELOADED: hook, USER_PRELOAD: user_preload, "LD_PRELOAD": hook}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (user_preload or "-")


@pytest.mark.parametrize("mode", ["unsplit", "callback"])
def test_tensors_the_hook_lends_by_address_are_the_python_hooks_bytes(tmp_path, mode):
    """In its own process the hook lends a host tensor of LEND_MIN_BYTES or more by address, and waits while the
    reader copies it (the socket would copy it twice).  Logits of every prompt token over an 8,192-token vocabulary
    cross that size: the command's dump must hold what the Python hook copies out itself."""
    define = re.search(r"#define LEND_MIN_BYTES \(\(size_t\) 1 << (\d+)\)", SOURCE.read_text())
    assert define is not None and 1 << int(define.group(1)) == LEND_MIN_BYTES
    model = write_tiny_llama(tmp_path / "wide.gguf", TinyLlamaSpec(n_vocab=8192, seed=3))
    prompt = "a prompt long enough for its logits to pass a mebibyte, in byte tokens"
    native, python = tmp_path / "native.h5", tmp_path / "python.h5"
    result = cli("capture", model, "-p", prompt, "-t", "1", "-c", "128", "-fa", "off", "-n", "2", "--all-logits",
                 "--mode", mode, "-o", native)
    assert result.returncode == 0, result.stderr
    capture_llama(llama_config(model, prompt=prompt, n_ctx=128, n_predict=2, all_logits=True), Selection(), python)
    assert capture_mode(native)["hook"] == "native"
    with open_dump(native) as dump:
        assert max(entry.nbytes for entry in dump.entries()) >= LEND_MIN_BYTES
    a, b = values(native), values(python)
    assert len(a) > 50 and a.keys() == b.keys()
    assert [key for key in a if a[key] != b[key]] == []
