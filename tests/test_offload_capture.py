"""Capture-all at 0 and at all offloaded layers (loopback RPC server) holds the same tensors.

When a graph input's consumers run on another backend, the scheduler hands
them a per-backend copy (``RPC0#inp_pos#0``); the hook must capture it under
the input's own name so that the two runs compare clean.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PROMPT
from test_cli import cli

from inspector import open_dump
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import preset
from inspector.ggml.rpc import LoopbackServer
from inspector.tiny_models import byte_token_ids


@pytest.fixture(scope="module")
def capture_all(tiny_f32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("offload-all")
    with LoopbackServer(threads=1) as server:
        paths = {}
        for label, layers in (("cpu", "0"), ("all", "99")):
            out = folder / f"{label}.h5"
            args = ["capture", tiny_f32, "-p", PROMPT, "--threads", "1", "--ctx", "64", "--n-predict", "2",
                    "--n-gpu-layers", layers, "-o", out]
            if label == "all":
                args += ["--rpc", server.endpoint]
            result = cli(*args)
            assert result.returncode == 0, result.stderr
            paths[label] = out
        yield paths, server.endpoint


def test_capture_all_compares_clean_across_offload(capture_all):
    paths, _ = capture_all
    result = cli("compare", paths["cpu"], paths["all"], "--tolerance", "exact")
    assert result.returncode == 0, result.stdout
    comparison = compare_dumps(paths["cpu"], paths["all"], preset("exact"))
    counts = comparison.counts()
    assert counts["missing"] == 0 and counts["mismatched"] == 0 and counts["diverged"] == 0
    assert counts["identical"] == len(comparison.rows) > 100


def test_every_graph_input_is_present_in_both_runs(capture_all):
    paths, endpoint = capture_all
    with open_dump(paths["cpu"]) as cpu, open_dump(paths["all"]) as offloaded:
        inputs_cpu = {(e.eval_index, e.name) for e in cpu if e.is_leaf and "input" in cpu.metadata(e)["flags"]}
        leafs_all = {(e.eval_index, e.name): e for e in offloaded if e.is_leaf}
        # The inputs llama.cpp builds for a llama graph, in both evaluations (prompt and one generated token).
        names = {name for _, name in inputs_cpu}
        assert {"inp_tokens", "inp_pos", "attn_inp_kq_mask", "out_ids"} <= names
        assert {eval_index for eval_index, _ in inputs_cpu} == {0, 1}
        assert inputs_cpu <= set(leafs_all)
        # At full offload inp_pos reaches the layers only through the scheduler's copy on RPC0.
        entry = leafs_all[(0, "inp_pos")]
        record = offloaded.metadata(entry)
        assert record["sched_copy"] == f"RPC0[{endpoint}]#inp_pos#0"
        assert entry.buffer == f"RPC0[{endpoint}]"


def test_selecting_a_graph_input_at_full_offload_captures_it(capture_all, tiny_f32, tmp_path):
    _, endpoint = capture_all
    with LoopbackServer(threads=1) as server:
        out = tmp_path / "pos.h5"
        result = cli("capture", tiny_f32, "-p", PROMPT, "--threads", "1", "--ctx", "64", "-T", "inp_pos",
                     "--n-gpu-layers", "99", "--rpc", server.endpoint, "-o", out)
        assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        entries = dump.entries()
        assert [e.name for e in entries] == ["inp_pos"]
        n_tokens = len(byte_token_ids(PROMPT))
        np.testing.assert_array_equal(dump.read(entries[0]), np.arange(n_tokens, dtype=np.int32))
