"""build_mllama on a generated model: offload to a loopback RPC server, probes, scheduler buffer reuse."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import preset
from inspector.ggml.rpc import LoopbackServer
from inspector.mllama.encode import NEXT_GRAPH_PROBES, EncodeConfig, Session
from inspector.mllama.model import build_mllama
from inspector.tiny_models.mllama import TinyMllamaSpec, write_tiny_mllama

SPEC = TinyMllamaSpec(seed=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny-mllama")
    model = write_tiny_mllama(folder / "vision.gguf", SPEC)
    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(image)
    return model, image


def encode(model: Path, image: Path, out: Path, *extra: object) -> None:
    result = cli("mllama", "encode", model, "--image", image, "--threads", "1", "-o", out, *extra)
    assert result.returncode == 0, result.stderr


def test_offloading_layers_to_rpc_keeps_results_and_records_placement(tiny, tmp_path):
    model, image = tiny
    with LoopbackServer(threads=1) as server:
        for layers in (0, 2, SPEC.layers):
            encode(model, image, tmp_path / f"off{layers}.h5", "--rpc", server.endpoint, "--offload-layers", layers)
    rpc = f"RPC0[{server.endpoint}]"
    with open_dump(tmp_path / "off2.h5") as dump:
        buffers = {entry.name: entry.buffer for entry in dump}
        assert dump.config["offload_layers"] == 2 and dump.config["backends"][0].startswith("RPC0")
    assert buffers["layer_out-0"] == rpc and buffers["layer_out-1"] == rpc
    assert buffers["layer_out-2"] == "CPU" and buffers["ca_patch_embd"] == "CPU"
    with open_dump(tmp_path / f"off{SPEC.layers}.h5") as dump:
        assert all(dump.find(f"layer_out-{i}").buffer == rpc for i in range(SPEC.layers))
    for layers in (2, SPEC.layers):
        comparison = compare_dumps(tmp_path / "off0.h5", tmp_path / f"off{layers}.h5", preset("f32"))
        assert comparison.passed and comparison.first_divergence is None
        assert len(comparison.rows) > 100


def test_probe_of_inp_raw_does_not_change_ca_patch_embd(tiny, tmp_path):
    model, image = tiny
    encode(model, image, tmp_path / "plain.h5", "-T", "ca_patch_embd")
    encode(model, image, tmp_path / "probed.h5", "-T", "ca_patch_embd", "-T", "inp_raw_copy", "--probe", "inp_raw")
    with open_dump(tmp_path / "probed.h5") as dump:
        assert dump.read("inp_raw_copy").shape == (SPEC.max_tiles, 3, SPEC.image_size, SPEC.image_size)
    comparison = compare_dumps(tmp_path / "plain.h5", tmp_path / "probed.h5", preset("exact"), ["ca_patch_embd"])
    assert [row.status for row in comparison.rows] == ["identical"]
    assert_one_line_error(cli("mllama", "encode", model, "--image", image, "--probe", "nope", "-o",
                              tmp_path / "x.h5"), "--probe 'nope'")


def test_late_read_shows_buffer_reuse_while_the_hook_copy_is_intact(tiny, tmp_path):
    model, image = tiny
    encode(model, image, tmp_path / "reference.h5", "-T", "ca_patch_embd", "-T", "ln_pre")
    result = cli("mllama", "sched-check", model, "--image", image, "--threads", "1", "-T", "ca_patch_embd",
                 "-T", "ln_pre", "-o", tmp_path / "check.h5")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines()[2:] if line.strip()
            and not line.startswith(("1", "2", "0"))}
    assert rows["ca_patch_embd"] == ["intact", "OVERWRITTEN"]
    assert rows["ln_pre"][0] == "OVERWRITTEN"  # reused by later nodes of its own graph
    with open_dump(tmp_path / "check.h5") as dump:
        late = {r["name"]: r for r in dump.result["late_reads"]}
        assert late["ca_patch_embd"]["overwritten_by_next_graph"]
    comparison = compare_dumps(tmp_path / "reference.h5", tmp_path / "check.h5", preset("exact"))
    assert comparison.passed  # the copies taken at compute time are exact


def compute_buffer_bytes(model: Path, image: Path, probes: tuple[str, ...]) -> int:
    """The CPU compute buffer one graph needs on a fresh scheduler, as ggml itself sizes it."""
    with Session(EncodeConfig(model=str(model), image=str(image))) as session:
        graph = build_mllama(session.weights, probes)
        try:
            session.compute(graph, session.preprocess(str(image)), None)
        finally:
            graph.free()
        size = session.lib.ggml.ggml_backend_sched_get_buffer_size
        size.restype, size.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_void_p]
        return size(session.sched, session.cpu.address)


def test_sched_check_never_re_reads_memory_a_bigger_next_graph_freed(tmp_path):
    """A model whose next graph needs a bigger buffer: re-reading once read the freed one."""
    model = write_tiny_mllama(tmp_path / "wide.gguf", TinyMllamaSpec(hidden=128, ffn=256, seed=4))
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(image)
    own, following = compute_buffer_bytes(model, image, ()), compute_buffer_bytes(model, image, NEXT_GRAPH_PROBES)
    assert following > own  # on its own, the next graph would make the scheduler reallocate
    out = tmp_path / "check.h5"
    result = cli("mllama", "sched-check", model, "--image", image, "--threads", "1", "-T", "ca_patch_embd",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        assert dump.result["compute_buffers"] == [
            {"backend": "CPU", "after_own_graph": following, "after_next_graph": following}]
        assert [r["name"] for r in dump.result["late_reads"]] == ["ca_patch_embd"]
    assert "reallocated" not in result.stdout


def test_encode_bad_inputs(tiny, tmp_path, tiny_f32):
    model, image = tiny
    assert_one_line_error(cli("mllama", "encode", tiny_f32, "--image", image, "-o", tmp_path / "a.h5"),
                          "mllama_vision")
    assert_one_line_error(cli("mllama", "encode", model, "--image", tmp_path / "none.png", "-o", tmp_path / "b.h5"),
                          "no such file")
    assert_one_line_error(cli("mllama", "encode", model, "--image", image, "--offload-layers", "2",
                              "-o", tmp_path / "c.h5"), "--offload-layers needs")
