"""TensorHook on real llama.cpp graphs: the ask phase filters, and errors never escape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPT, run_capture

from inspector import open_dump
from inspector.capture.hook import TensorHook
from inspector.capture.selection import Selection
from inspector.ggml.log import install_log
from inspector.llamacpp.config import LlamaRunConfig
from inspector.llamacpp.decode import run
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

# ~240 MB in f16: large enough that capturing everything would be visible.
BIG = TinyLlamaSpec(n_embd=1024, n_layer=8, n_head=16, n_head_kv=8, n_ff=4096, dtype="f16", seed=5)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_tiny_llama(tmp_path_factory.mktemp("big") / "big.gguf", BIG)
    assert path.stat().st_size > 200 * 1024**2
    return path


def test_selecting_l_out_asks_only_for_those_nodes(big_model, tmp_path):
    summary = run_capture(big_model, tmp_path / "l_out.h5", ("l_out-*",), threads=2, n_predict=2)
    counters = summary.counters
    evaluations = summary.evaluations
    assert evaluations == 2
    assert counters.answered_yes == BIG.n_layer * evaluations
    assert counters.observed == BIG.n_layer * evaluations
    assert counters.captured == BIG.n_layer * evaluations
    with open_dump(tmp_path / "l_out.h5") as dump:
        assert sorted({e.name for e in dump}) == sorted(f"l_out-{i}" for i in range(BIG.n_layer))
    # Every node was asked about; the same graph with everything selected says yes to each, but the whole KV
    # cache reshaped for each transposed-V write (no flash attention): skipped, one per layer and evaluation.
    everything = run_capture(big_model, tmp_path / "all.h5", (), threads=2, n_predict=2)
    assert everything.counters.asked == counters.asked
    whole_caches = [s for s in everything.skipped if "whole KV cache" in s.reason]
    assert len(whole_caches) == BIG.n_layer * evaluations
    assert everything.counters.answered_yes == everything.counters.asked - len(whole_caches)
    assert counters.asked > 20 * counters.answered_yes


def test_exception_in_the_sink_stops_capturing_but_not_the_run(tiny_f32, tmp_path):
    captured = []

    def sink(record, array):
        if len(captured) == 2:
            raise RuntimeError("disk on fire")
        captured.append(record.name)

    hook = TensorHook(Selection(), sink)
    config = LlamaRunConfig(model=str(tiny_f32), prompt=PROMPT, threads=1, n_ctx=64, n_predict=2)
    log = install_log(False)
    indices = iter(range(100))
    result = run(config, hook, lambda kind, info: next(indices), log)
    assert hook.error is not None and "disk on fire" in hook.error
    assert len(captured) == 2 and hook.counters.captured == 2
    assert result.prompt_logits.shape == (1, 259)  # the last prompt token's, as llama.cpp computes by default
    assert np.isfinite(result.prompt_logits).all()
