"""replay: one node recomputed alone on run A's inputs, as run A placed it and as run B placed it.

The outputs are checked against what each run captured (bit for bit), so a
replay that rebuilt the op wrongly cannot pass; the planted causes decide
whether the op or its inputs differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.compare.replay import replay
from inspector.errors import InspectorError
from inspector.ggml.rpc import LoopbackServer
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.mllama import write_tiny_mllama

VIEWS = {"RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE"}


def capture(model: Path, out: Path, *extra: object) -> Path:
    result = cli("capture", "-m", model, "-p", "Hi there", "-t", "1", "-c", "64", "-o", out, *extra)
    assert result.returncode == 0, result.stderr
    return out


def replay_json(a: Path, b: Path, eval_index: int, node: int) -> tuple[int, dict]:
    result = cli("replay", a, b, "--eval", str(eval_index), "--node", str(node), "--json")
    return result.returncode, json.loads(result.stdout)


def node_of(path: Path, name: str, eval_index: int = 0) -> int:
    with open_dump(path) as dump:
        return next(e.node_index for e in dump if e.name == name and e.eval_index == eval_index and not e.is_leaf)


def test_a_repacked_matmul_reproduces_both_runs_and_differs_by_placement(tmp_path):
    model = write_tiny_llama(tmp_path / "quant.gguf", TinyLlamaSpec(seed=3, dtype="quant", n_embd=256, n_ff=512))
    with LoopbackServer() as server:
        cpu = capture(model, tmp_path / "cpu.h5", "-ngl", "0")
        offloaded = capture(model, tmp_path / "rpc.h5", "-ngl", "all", "--rpc", server.endpoint)
    code, result = replay_json(cpu, offloaded, 0, node_of(cpu, "Qcur-0"))
    assert code == 1
    assert result["reproduces_a"] and result["reproduces_b"] and result["op_differs"]
    assert result["placement_a"]["blk.0.attn_q.weight"] == "CPU_REPACK"
    assert result["placement_b"]["blk.0.attn_q.weight"].startswith("RPC0")


def test_a_changed_weight_is_the_data_not_the_kernel(tmp_path):
    a = capture(write_tiny_llama(tmp_path / "a.gguf", TinyLlamaSpec(seed=1)), tmp_path / "a.h5")
    b = capture(write_tiny_llama(tmp_path / "b.gguf", TinyLlamaSpec(seed=1, perturb=(1, 5, 0.5))), tmp_path / "b.h5")
    code, result = replay_json(a, b, 0, node_of(a, "Qcur-1"))
    assert code == 0
    # On A's inputs (A's weight) both placements give A's output; B's came from another weight.
    assert result["reproduces_a"] and not result["reproduces_b"] and not result["op_differs"]


@pytest.mark.parametrize("flash_attn", ["on", "off"])
def test_every_computing_op_of_a_llama_graph_replays_bit_for_bit(tiny_f32, tmp_path, flash_attn):
    dump = capture(tiny_f32, tmp_path / "all.h5", "-fa", flash_attn, "-n", "2")
    replayed = set()
    with open_dump(dump) as opened:
        nodes = [(e.eval_index, e.node_index, e.op) for e in opened if not e.is_leaf and e.op not in VIEWS]
    for eval_index, node, op in nodes:
        try:
            result = replay(dump, dump, eval_index, node)
        except InspectorError as error:
            # Only a write into a cache leaf that earlier evaluations filled, which no dump holds, is refused.
            assert op == "SET_ROWS" and eval_index > 0 and "which no capture holds" in str(error), (op, error)
            continue
        assert result.reproduces_a, (eval_index, node, op)
        replayed.add(op)
    expected = {"GET_ROWS", "RMS_NORM", "MUL", "MUL_MAT", "ROPE", "ADD", "SWIGLU", "SET_ROWS"}
    expected |= {"FLASH_ATTN_EXT"} if flash_attn == "on" else {"SOFT_MAX"}
    assert expected <= replayed, expected - replayed


def test_every_computing_op_of_the_mllama_vision_graph_replays_bit_for_bit(tmp_path):
    model = write_tiny_mllama(tmp_path / "vision.gguf")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    dump = tmp_path / "encode.h5"
    assert cli("mllama", "encode", model, "--image", tmp_path / "i.png", "-t", "1", "-o", dump).returncode == 0
    replayed = set()
    with open_dump(dump) as opened:
        nodes = [(e.node_index, e.op) for e in opened if not e.is_leaf and e.op not in VIEWS]
    for node, op in nodes:
        assert replay(dump, dump, 0, node).reproduces_a, (node, op)
        replayed.add(op)
    assert {"IM2COL", "MUL_MAT", "CONCAT", "PAD", "NORM", "SOFT_MAX", "GELU_ERF", "TANH", "REPEAT"} <= replayed


def test_a_view_or_a_bad_node_is_one_line(tiny_f32, tmp_path):
    dump = capture(tiny_f32, tmp_path / "v.h5")
    with open_dump(dump) as opened:
        view = next(e.node_index for e in opened if e.op == "RESHAPE")
    assert_one_line_error(cli("replay", dump, dump, "--eval", "0", "--node", str(view)), "a view computes nothing")
    assert_one_line_error(cli("replay", dump, dump, "--eval", "7", "--node", "0"), "no captured node")


def test_a_cache_write_of_another_type_is_replayed_in_each_runs_type(tmp_path):
    model = write_tiny_llama(tmp_path / "wide.gguf", TinyLlamaSpec(seed=1, n_embd=128))  # head 32: no rotation
    f16 = capture(model, tmp_path / "f16.h5", "-ctk", "f16")
    q8 = capture(model, tmp_path / "q8.h5", "-ctk", "q8_0")
    code, result = replay_json(f16, q8, 0, node_of(f16, "cache_k_l0 (view)"))
    assert code == 1
    assert result["reproduces_a"] and result["reproduces_b"] and result["op_differs"]
