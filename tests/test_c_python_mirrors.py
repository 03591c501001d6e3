"""The rules the native hook (C) and the Python hook both apply, proved to agree.

Two hooks capture the same graphs: the eval callback in Python
(``inspector.capture.hook``) and the preloaded C library
(``inspector/native/ggml_inspector_hook.c``).  Where both must decide the
same thing they hold their own copy of the rule: the readable reasons a
tensor is skipped, the parser of the scheduler's copy names
(``BACKEND#name#N``), and what counts as model state (weights, KV cache).
These tests read the C source, and compile a small program around the C
parser itself, so a change to either side alone fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from inspector.ggml.tensor import NO_GET_TENSOR, NOT_ALLOCATED, UNKNOWN_BUFFER_LAYOUT
from inspector.identity import is_model_state, parse_sched_copy
from inspector.native.build import SOURCE, include_directory

# Runs each NUL-terminated name of stdin through the hook's own parse_sched_copy and is_model_state, and
# writes, NUL-terminated: '1' and the original's bytes for a scheduler copy ('0' for another name), then
# '1' or '0' for whether the name is model state.
PROGRAM = r"""
#include "ggml_inspector_hook.c"

int main(void) {
    static char input[1 << 16];
    size_t size = fread(input, 1, sizeof input, stdin);
    for (size_t start = 0; start < size;) {
        const char * name = input + start;
        size_t length = strlen(name);
        const char * original = NULL;
        size_t original_length = 0;
        if (parse_sched_copy(name, length, &original, &original_length)) {
            putchar('1');
            fwrite(original, 1, original_length, stdout);
        } else {
            putchar('0');
        }
        putchar(is_model_state(name) ? '1' : '0');
        putchar('\0');
        start += length + 1;
    }
    return 0;
}
"""

NAMES = [
    "RPC0#inp_pos#0", "CUDA0#attn_norm-0#12", "CPU#blk.0.attn_q.weight#3", "RPC0[127.0.0.1:50052]#inp_embd#1",
    "inp_pos", "l_out-7", "#inp_pos#0", "RPC0##0", "RPC0#inp_pos#", "RPC0#inp_pos#x1", "RPC0#inp_pos#-1",
    "RPC0#a#b#3", "RPC0#a#b#", "RPC0#inp_pos#0#", "A#b#007", "a#b#0 ", " #b#0", "A#b#1.5", "##0#1",
    # Where Python's re and the C loop can part: a Unicode digit, a final newline, a newline inside.
    "RPC0#inp_pos#\uff11", "RPC0#inp_pos#0\n", "RPC0#inp\npos#0", "\u00e9#\u00fc#9",
    "blk.0.attn_q.weight", "output.bias", "cache_k_l0", "cache_v_l0 (view)", "xcache_k_l0", "weight",
    ".weight", "a.weights", "bias", ".bias", "cache_", "cach_k",
]


@pytest.fixture(scope="module")
def c_parser(tmp_path_factory) -> Path:
    """The test program, compiled against the hook's source as `ggml-inspector build-hook` compiles it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "a C compiler is needed (the native hook needs one too)"
    folder = tmp_path_factory.mktemp("mirror")
    (folder / "mirror.c").write_text(PROGRAM)
    program = folder / "mirror"
    subprocess.run([compiler, "-std=c11", "-O1", f"-I{SOURCE.parent}", f"-I{include_directory()}",
                    str(folder / "mirror.c"), "-o", str(program), "-ldl", "-lpthread"], check=True, timeout=120)
    return program


def _c_answers(program: Path, names: list[str]) -> list[tuple[str | None, bool]]:
    encoded = b"".join(name.encode("utf-8") + b"\0" for name in names)
    result = subprocess.run([str(program)], input=encoded, capture_output=True, check=True, timeout=60)
    records = result.stdout.split(b"\0")[:-1]
    assert len(records) == len(names)
    answers = []
    for record in records:
        original = record[1:-1].decode("utf-8") if record[:1] == b"1" else None
        answers.append((original, record[-1:] == b"1"))
    return answers


def test_the_scheduler_copy_parser_is_the_same_in_c_and_python(c_parser):
    c_side = _c_answers(c_parser, NAMES)
    for name, (c_original, _state) in zip(NAMES, c_side, strict=True):
        copy = parse_sched_copy(name)
        assert (copy.original if copy is not None else None) == c_original, name
    assert sum(original is not None for original, _state in c_side) >= 8


def test_model_state_is_the_same_in_c_and_python(c_parser):
    plain = [name for name in NAMES if parse_sched_copy(name) is None]
    for name, (_original, c_state) in zip(plain, _c_answers(c_parser, plain), strict=True):
        assert is_model_state(name) == c_state, name
    assert any(is_model_state(name) for name in plain) and not all(is_model_state(name) for name in plain)


def _c_skip_reasons() -> list[str]:
    """The reasons the C hook's readable() gives capture() for a tensor it cannot read, in the order it checks them."""
    source = SOURCE.read_text()
    body = source[source.index("static size_t readable("):]
    body = body[:body.index("\n}\n")]
    formats = re.findall(r'snprintf\(why, size, "((?:[^"\\]|\\.)*)"', body)
    return [re.sub(r"%(?:\.\d+)?s", "{buffer_type}", text) for text in formats]


def test_the_skip_reasons_are_the_same_in_c_and_python():
    """The Python hook's three checks, in its order, are the C hook's first three, word for word.

    The C hook's further reasons (a tensor past 8 GiB, no memory for its copy)
    come from its socket and copy buffer, which the Python hook does not have.
    """
    c_reasons = _c_skip_reasons()
    assert len(c_reasons) == 5
    assert c_reasons[:3] == [NOT_ALLOCATED, UNKNOWN_BUFFER_LAYOUT, NO_GET_TENSOR]
