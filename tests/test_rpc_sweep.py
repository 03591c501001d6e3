"""Offload to a real ggml RPC server on loopback: placement, equality, sweeps, failures."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import PROMPT
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.compare.runs import DIVERGED, MISMATCHED, compare_dumps
from inspector.compare.tolerance import preset
from inspector.errors import InspectorError
from inspector.ggml.rpc import LoopbackServer, free_port
from inspector.sweep.run import parse_vary

N_LAYER = 2  # the tiny_f32 fixture's layers


@pytest.fixture(scope="module")
def server():
    with LoopbackServer(threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def offload_dumps(server, tiny_f32, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("offload")
    dumps = {}
    for label, layers in (("cpu", "0"), ("partial", "1"), ("full", "99")):
        out = folder / f"{label}.h5"
        args = ["capture", tiny_f32, "-p", PROMPT, "-T", "l_out-*", "-T", "attn_norm-*", "-T", "result_output",
                "--threads", "1", "--ctx", "64", "--n-gpu-layers", layers, "-o", out]
        if label != "cpu":
            args += ["--rpc", server.endpoint]
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        dumps[label] = out
    return dumps


def buffers(path: Path) -> dict[str, str]:
    with open_dump(path) as dump:
        return {entry.name: entry.buffer for entry in dump}


def test_offloaded_layers_live_in_rpc_buffers(offload_dumps, server):
    rpc_buffer = f"RPC0[{server.endpoint}]"
    assert set(buffers(offload_dumps["cpu"]).values()) == {"CPU"}
    partial = buffers(offload_dumps["partial"])
    assert partial["l_out-0"] == "CPU" and partial[f"l_out-{N_LAYER - 1}"] == rpc_buffer
    full = buffers(offload_dumps["full"])
    assert full["l_out-0"] == rpc_buffer and full["result_output"] == rpc_buffer
    with open_dump(offload_dumps["full"]) as dump:
        assert dump.config["rpc"] == [server.endpoint]
        assert any(d["name"] == "RPC0" and d["description"] == server.endpoint
                   for d in dump.system["ggml_devices"])


def test_offloaded_runs_agree_with_cpu_within_tolerance(offload_dumps):
    for label in ("partial", "full"):
        comparison = compare_dumps(offload_dumps["cpu"], offload_dumps[label], preset("f32"))
        statuses = {row.status for row in comparison.rows}
        assert comparison.passed, statuses
        assert not statuses & {DIVERGED, MISMATCHED}
        assert any(row.buffer_b.startswith("RPC0[") for row in comparison.rows)
        assert len(comparison.rows) == 2 * N_LAYER + 1
    result = cli("compare", offload_dumps["cpu"], offload_dumps["full"], "--json")
    document = json.loads(result.stdout)
    assert result.returncode == 0 and document["first_divergence"] is None
    assert document["config_differences"]["n_gpu_layers"] == [0, 99]


def test_sweep_with_auto_rpc(tiny_f32, tmp_path):
    out = tmp_path / "sweep"
    result = cli("sweep", tiny_f32, "-p", PROMPT, "--n-gpu-layers", "0,1,all", "--threads", "1", "--ctx", "64",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    assert "started a loopback RPC server" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [c["label"] for c in summary["configurations"]] == ["ngl0", "ngl1", "nglall"]
    endpoint = summary["rpc"][0]
    assert summary["placement"]["ngl1"][str(N_LAYER - 1)] == [f"RPC0[{endpoint}]"]
    assert summary["placement"]["ngl1"]["0"] == ["CPU"]
    assert summary["passed"] and all(c.get("first_divergence") is None for c in summary["configurations"])
    assert len(list(out.glob("*.h5"))) == 3
    host, port = endpoint.rsplit(":", 1)
    with pytest.raises(OSError):  # the loopback server was stopped with the sweep
        socket.create_connection((host, int(port)), timeout=1).close()


def test_unreachable_rpc_server_is_one_line_fast(tiny_f32, tmp_path):
    port = free_port()
    result = cli("capture", tiny_f32, "-p", "x", "--rpc", f"127.0.0.1:{port}", "--n-gpu-layers", "1",
                 "-o", tmp_path / "x.h5")
    assert_one_line_error(result, "unreachable")
    assert_one_line_error(cli("capture", tiny_f32, "-p", "x", "--rpc", "nonsense"), "not HOST:PORT")


def test_sweep_bad_arguments(tiny_f32, tmp_path):
    assert_one_line_error(cli("sweep", tiny_f32, "-p", "x", "--n-gpu-layers", "0,lots", "-o", tmp_path / "s"),
                          "--n-gpu-layers")
    assert_one_line_error(cli("sweep", tiny_f32, "-p", "x", "--vary", "colour=red", "-o", tmp_path / "s"),
                          "--vary")


@pytest.mark.parametrize(("arguments", "fragment"), [
    pytest.param(("--vary", "op_offload=maybe"), "--vary op_offload: 'maybe' is not one of", id="op_offload"),
    pytest.param(("--vary", "flash_attn=on,bogus"), "--vary flash_attn: 'bogus' is not one of auto, on, off",
                 id="flash_attn"),
    pytest.param(("--vary", "type_k=f16,q9_0"), "--vary type_k: 'q9_0' is not one of", id="type_k"),
    pytest.param(("--vary", "threads=1,0"), "--vary threads: 0 is less than 1", id="threads-zero"),
    pytest.param(("--vary", "threads=1,two"), "--vary threads: 'two' is not a whole number", id="threads-text"),
    pytest.param(("--vary", "n_ubatch=4,8"), "cannot be paired by evaluation index", id="n_ubatch"),
    pytest.param(("--vary", "n_batch=4,8"), "cannot be paired by evaluation index", id="n_batch"),
    pytest.param(("--token-ids", "1,2", "--vary", "flash_attn=on,off"),
                 "exactly one of -p/--prompt, -f/--file and --token-ids", id="base-config"),
])
def test_sweep_checks_every_value_before_the_first_capture(tiny_f32, tmp_path, arguments, fragment):
    """A bad value anywhere in the grid fails the sweep before any dump (or the output folder) exists."""
    out = tmp_path / "sweep"
    result = cli("sweep", tiny_f32, "-p", "x", "--n-gpu-layers", "0", "--threads", "1", "-o", out, *arguments)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_vary_op_offload_accepts_only_boolean_spellings():
    assert parse_vary("op_offload=on,No,1,false,YES,off,0,true") == (
        "op_offload", [True, False, True, False, True, False, False, True])
    with pytest.raises(InspectorError, match="'maybe' is not one of"):
        parse_vary("op_offload=on,maybe")
