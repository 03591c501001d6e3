"""capture --observer-check: the same run without the hook, and whether observing changed its logits.

Asking the scheduler for a node splits the graph there; on a backend that
fuses ops this can change the numbers being observed.  The check reruns the
configuration with no eval callback and records the verdict; compare and the
report warn about a run whose check failed.

On the CPU backend observing changes no bit: ggml-cpu's one fusion (RMS_NORM
followed by MUL) multiplies in the same order as the two ops apart, and every
op a graph view holds runs with the same thread count.  So the check is shown
failing on a difference that is real but planted: ggml-cpu's flash attention,
for a one-token ubatch over 512 or more KV cells, gives each thread its own
chunk of the cells and merges the partial softmaxes (``use_split_kv_path`` in
ggml-cpu/ops.cpp), so its result depends on the thread count.  The rerun is
given one thread instead of two, through the progress message said just
before it; the same switch with flash attention off changes no bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import PROMPT, llama_config
from test_cli import cli

from inspector import open_dump
from inspector.capture.selection import Selection
from inspector.llamacpp.capture import capture_llama

# 258 prompt tokens decoded as 257 then 1: the last ubatch (the one whose logits the check compares) is one
# token over 258 cells, which the KV cache pads to 512.
SPLIT_KV_TOKENS = [3 + (7 * i) % 250 for i in range(258)]


def capture_checked(model: Path, out: Path, flash_attn: str, rerun_threads: int, threads: int = 2) -> dict:
    """Capture result_output on ``threads`` with --observer-check, its rerun on ``rerun_threads``."""
    config = llama_config(model, prompt="", token_ids=SPLIT_KV_TOKENS, threads=threads, n_ctx=512, n_batch=257,
                          n_ubatch=257, flash_attn=flash_attn)

    def before_the_rerun(message: str) -> None:
        if message.startswith("observer check:"):
            config.threads = rerun_threads

    capture_llama(config, Selection(globs=("result_output",)), out, progress=before_the_rerun,
                  check_observer=True)
    with open_dump(out) as dump:
        return dump.result["observer_check"]


def last_logits(path: Path) -> np.ndarray:
    with open_dump(path) as dump:
        return dump.read("result_output", eval_index=len(dump.evaluations) - 1).astype(np.float64)


def test_capturing_everything_on_the_cpu_leaves_the_logits_bit_identical(tiny_f32, tmp_path):
    out = tmp_path / "checked.h5"
    result = cli("capture", "-m", tiny_f32, "-p", PROMPT, "-t", "1", "-c", "64", "-n", "3", "--observer-check",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        check = dump.result["observer_check"]
        assert check["identical"] and check["logits_identical"] and check["max_abs_diff"] == 0.0
        assert check["plain_generated_ids"] == dump.result["generated_ids"]
        assert len(dump.result["generated_ids"]) == 3


def test_the_check_reports_a_rerun_whose_attention_was_split_otherwise(tiny_f32, tmp_path):
    same = capture_checked(tiny_f32, tmp_path / "same.h5", "on", rerun_threads=2)
    assert same["identical"] and same["max_abs_diff"] == 0.0
    # The thread count alone, without the split attention, changes nothing.
    plain = capture_checked(tiny_f32, tmp_path / "plain.h5", "off", rerun_threads=1)
    assert plain["identical"] and plain["max_abs_diff"] == 0.0

    split = capture_checked(tiny_f32, tmp_path / "split.h5", "on", rerun_threads=1)
    assert not split["identical"] and not split["logits_identical"]
    # The rerun's logits are those of a one-thread run, which checks itself as identical.
    one = capture_checked(tiny_f32, tmp_path / "one.h5", "on", rerun_threads=1, threads=1)
    assert one["identical"]
    expected = np.abs(last_logits(tmp_path / "split.h5") - last_logits(tmp_path / "one.h5")).max()
    assert 0.0 < split["max_abs_diff"] == expected < 1e-2


def test_compare_warns_about_a_run_whose_observer_check_failed(tiny_f32, tmp_path):
    capture_checked(tiny_f32, tmp_path / "a.h5", "on", rerun_threads=2)
    capture_checked(tiny_f32, tmp_path / "b.h5", "on", rerun_threads=1)
    text = cli("compare", tmp_path / "a.h5", tmp_path / "b.h5").stdout
    assert "warning: run B's observer check failed" in text and "run A's" not in text
    document = json.loads(cli("compare", tmp_path / "a.h5", tmp_path / "b.h5", "--json").stdout)
    assert document["observer_check_failed"] == ["B"]
