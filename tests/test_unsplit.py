"""The unsplit mode: selected tensors flagged as graph outputs where the scheduler plans and allocates, the graph
computed in one piece, and every tensor copied after.

The reference is the per-node callback (``--mode callback``), the other mechanism: the scheduler stops after each
node asked for and the hook reads it that moment, before anything can reuse its memory (its own values are checked
against numpy and transformers elsewhere).  Read after the whole graph, every node must hold the very bytes it held
when it was computed, or the allocator reused its memory: so the two dumps are compared node by node, bit for bit,
on llama.cpp's own ``llama-completion`` (flash attention on and off, on the CPU and offloaded to an RPC server,
where inputs reach the offloaded layers through scheduler copies) and on mllama's vision graph.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPT
from PIL import Image
from test_cli import cli

from inspector import open_dump
from inspector.capture.selection import Selection
from inspector.ggml.rpc import LoopbackServer
from inspector.mllama.encode import EncodeConfig
from inspector.mllama.encode import encode as encode_graph
from inspector.tiny_models.mllama import TinyMllamaSpec, write_tiny_mllama

COMPLETION = ("-n", "4", "-no-cnv", "--temp", "0", "-t", "1")


def run_exec(programs: Path, model: Path, out: Path, *options: object, program_args: tuple = ()) -> str:
    result = subprocess.run([sys.executable, "-m", "inspector", "exec", "-o", str(out), *map(str, options), "--",
                             str(programs / "llama-completion"), "-m", str(model), "-p", PROMPT, *COMPLETION,
                             *map(str, program_args)], capture_output=True, text=True, errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


def values(path: Path) -> dict[tuple[int, str, int], np.ndarray]:
    with open_dump(path) as dump:
        return {(e.eval_index, e.name, e.occurrence): dump.read(e) for e in dump.entries()}


def modes(path: Path) -> list[tuple[str, str]]:
    with open_dump(path) as dump:
        return [(e["capture_mode"], e.get("capture_mode_reason", "")) for e in dump.evaluations]


def assert_same_bytes(unsplit: Path, callback: Path) -> int:
    a, b = values(unsplit), values(callback)
    assert a.keys() == b.keys()
    different = [key for key in a if a[key].dtype != b[key].dtype or a[key].tobytes() != b[key].tobytes()]
    assert different == []
    return len(a)


@pytest.mark.parametrize("flash_attn", ["on", "off"])
def test_every_node_of_a_llama_graph_equals_the_per_node_callback(llama_programs, tiny_f32, tmp_path, flash_attn):
    unsplit, callback = tmp_path / "unsplit.h5", tmp_path / "callback.h5"
    said = run_exec(llama_programs, tiny_f32, unsplit, program_args=("-fa", flash_attn))
    run_exec(llama_programs, tiny_f32, callback, "--mode", "callback", program_args=("-fa", flash_attn))
    # llama-completion's warm-up, the prompt and three generated tokens: five graphs, each computed in one piece.
    assert modes(unsplit) == [("unsplit", "")] * 5
    assert modes(callback) == [("callback", "the per-node callback was asked for (GGML_INSPECTOR_MODE=callback)")] * 5
    assert "5 graph computations" in said and "5 computed in one piece" in said
    assert assert_same_bytes(unsplit, callback) > 300


def test_offloaded_layers_read_their_inputs_through_the_originals(llama_programs, tiny_f32, tmp_path):
    unsplit, callback = tmp_path / "unsplit.h5", tmp_path / "callback.h5"
    with LoopbackServer(threads=1) as server:
        offload = ("--rpc", server.endpoint, "-ngl", "99")
        run_exec(llama_programs, tiny_f32, unsplit, program_args=offload)
        run_exec(llama_programs, tiny_f32, callback, "--mode", "callback", program_args=offload)
    assert {mode for mode, _ in modes(unsplit)} == {"unsplit"}
    with open_dump(unsplit) as dump:
        leafs = [entry for entry in dump.entries() if entry.is_leaf]
        copies = {entry.name for entry, meta in zip(leafs, dump.metadata_of(leafs).values(), strict=True)
                  if meta.get("sched_copy")}
        assert any(entry.buffer.startswith("RPC0") for entry in dump.entries())
    # Positions and the KV-cache row indices reach the offloaded layers through the scheduler's copies, whose memory
    # the allocator may reuse once their split ran: they must still be the values the layers read.
    assert {"inp_pos", "attn_inp_k_idxs"} <= copies
    assert assert_same_bytes(unsplit, callback) > 300


def held(path: Path) -> list[int]:
    with open_dump(path) as dump:
        return [e.get("capture_held", 0) for e in dump.evaluations]


def test_past_the_bound_the_largest_tensors_are_read_as_computed(llama_programs, tiny_f32, tmp_path):
    """Within a small bound the graph still runs in one piece: the tensors the plan cannot keep are copied as the
    scheduler computes them (it splits the graph there only), the rest after."""
    bounded, callback = tmp_path / "bounded.h5", tmp_path / "callback.h5"
    said = run_exec(llama_programs, tiny_f32, bounded, "--unsplit-max-mib", "1")
    run_exec(llama_programs, tiny_f32, callback, "--mode", "callback")
    assert {mode for mode, _ in modes(bounded)} == {"unsplit"} and "5 computed in one piece" in said
    assert all(count > 0 for count in held(bounded))
    assert assert_same_bytes(bounded, callback) > 300


def test_with_no_room_at_all_the_per_node_callback_runs_and_says_why(llama_programs, tiny_f32, tmp_path):
    bounded, unbounded = tmp_path / "bounded.h5", tmp_path / "unsplit.h5"
    said = run_exec(llama_programs, tiny_f32, bounded, "--unsplit-max-mib", "0")
    run_exec(llama_programs, tiny_f32, unbounded)
    (reason,) = {reason for mode, reason in modes(bounded) if mode == "callback"}
    assert len(modes(bounded)) == 5 and {mode for mode, _ in modes(bounded)} == {"callback"}
    assert reason.startswith("keeping the graph inputs alone would take up to ") and \
        reason.endswith("MiB of compute buffer, over the bound of 0 MiB (GGML_INSPECTOR_UNSPLIT_MAX_MIB)")
    assert f"5 captured node by node: {reason}" in said
    assert held(unbounded) == [0] * 5
    assert assert_same_bytes(unbounded, bounded) > 300
    # One small tensor fits a small bound: the selection decides what is kept.
    one = tmp_path / "one.h5"
    run_exec(llama_programs, tiny_f32, one, "-T", "result_norm", "--unsplit-max-mib", "1")
    assert {mode for mode, _ in modes(one)} == {"unsplit"} and held(one) == [0] * 5
    with open_dump(one) as dump, open_dump(unbounded) as everything:
        for entry in dump.entries():
            assert entry.name == "result_norm"
            np.testing.assert_array_equal(dump.read(entry),
                                          everything.read("result_norm", entry.eval_index, entry.occurrence))


@pytest.fixture(scope="module")
def tiny_mllama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("unsplit-mllama")
    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(image)
    return write_tiny_mllama(folder / "vision.gguf", TinyMllamaSpec(seed=4)), image


def encode(model: Path, image: Path, out: Path, *extra: object) -> None:
    result = cli("mllama", "encode", model, "--image", image, "--threads", "1", "-o", out, *extra)
    assert result.returncode == 0, result.stderr


def python_encode(model: Path, image: Path, out: Path, **placement: object) -> None:
    """The Python API's encode: no hook preloaded, so the Python hook and this package's own unsplit plan."""
    encode_graph(EncodeConfig(model=str(model), image=str(image), threads=1, **placement), Selection(), out)


def hook_of(path: Path) -> str:
    with open_dump(path) as dump:
        return dump.config["capture_mode"].get("hook", "python")


def test_every_node_of_the_mllama_vision_graph_equals_the_per_node_callback(tiny_mllama, tmp_path):
    """The command line's native hook takes mllama's own scheduler: unsplit, its callback and the Python hook's plan
    (the Python API) give the same bytes for every node."""
    model, image = tiny_mllama
    encode(model, image, tmp_path / "unsplit.h5")
    encode(model, image, tmp_path / "callback.h5", "--mode", "callback")
    python_encode(model, image, tmp_path / "python.h5")
    assert hook_of(tmp_path / "unsplit.h5") == hook_of(tmp_path / "callback.h5") == "native"
    assert hook_of(tmp_path / "python.h5") == "python"
    assert modes(tmp_path / "unsplit.h5") == [("unsplit", "")] == modes(tmp_path / "python.h5")
    assert modes(tmp_path / "callback.h5") == [
        ("callback", "the per-node callback was asked for (GGML_INSPECTOR_MODE=callback)")]
    assert assert_same_bytes(tmp_path / "unsplit.h5", tmp_path / "callback.h5") > 200
    assert assert_same_bytes(tmp_path / "unsplit.h5", tmp_path / "python.h5") > 200


def test_an_offloaded_mllama_graph_runs_unsplit_through_the_native_hook(tiny_mllama, tmp_path):
    """Offloaded, the graph's inputs reach the RPC layer through scheduler copies: the native hook reads their
    originals and computes the graph in one piece; the Python API's plan keeps no copies and says so."""
    model, image = tiny_mllama
    with LoopbackServer(threads=1) as server:
        offload = ("--rpc", server.endpoint, "--offload-layers", 1)
        encode(model, image, tmp_path / "offloaded.h5", *offload)
        encode(model, image, tmp_path / "callback.h5", *offload, "--mode", "callback")
        python_encode(model, image, tmp_path / "python.h5", rpc=[server.endpoint], offload_layers=1)
    assert modes(tmp_path / "offloaded.h5") == [("unsplit", "")]
    with open_dump(tmp_path / "offloaded.h5") as dump:
        assert any(entry.buffer.startswith("RPC0") for entry in dump.entries())
    assert assert_same_bytes(tmp_path / "offloaded.h5", tmp_path / "callback.h5") > 200
    ((mode, reason),) = modes(tmp_path / "python.h5")
    assert mode == "callback" and reason.startswith("the graph runs on more than one backend")
