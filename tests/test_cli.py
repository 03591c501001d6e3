"""The command line, run as a user would: a subprocess per command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPT

from inspector import open_dump
from inspector.tiny_models import byte_token_ids


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GGML_INSPECTOR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], result.stderr


@pytest.fixture(scope="module")
def dump(tiny_f32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run.h5"
    result = cli("capture", tiny_f32, "-p", PROMPT, "-T", "l_out-*", "-T", "inp_tokens", "--regex", "^attn_norm-0$",
                 "--threads", "1", "--ctx", "64", "--n-predict", "2", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "captured" in result.stderr and str(out) in result.stderr
    return out


def test_capture_then_ls_json(dump):
    result = cli("ls", dump, "--json")
    assert result.returncode == 0
    listing = json.loads(result.stdout)
    names = {row["name"] for row in listing["tensors"]}
    assert names == {"inp_tokens", "attn_norm-0", "l_out-0", "l_out-1"}
    assert listing["complete"] is True
    with open_dump(dump) as opened:
        row = next(r for r in listing["tensors"] if r["name"] == "l_out-1" and r["eval"] == 0)
        array = opened.read("l_out-1", eval_index=0).astype(np.float64)
    assert row["shape"] == list(array.shape) and row["buffer"] == "CPU"
    assert row["mean"] == pytest.approx(array.mean()) and row["std"] == pytest.approx(array.std())
    assert row["min"] == pytest.approx(array.min()) and row["n_nan"] == 0


def test_ls_table_and_filter(dump):
    result = cli("ls", dump, "-t", "l_out-*")
    assert result.returncode == 0
    assert "l_out-0" in result.stdout and "inp_tokens" not in result.stdout


def test_show_prints_stats_and_values(dump):
    result = cli("show", dump, "inp_tokens", "--json")
    assert result.returncode == 0
    shown = json.loads(result.stdout)
    assert shown["head"] == byte_token_ids(PROMPT)[:6]
    assert shown["sum"] == sum(byte_token_ids(PROMPT))
    text = cli("show", dump, "l_out-0", "--eval", "1")
    assert text.returncode == 0 and "eval 1" in text.stdout and "ADD" in text.stdout


def test_show_values_limit_zero_prints_no_values(dump):
    """``-n 0`` prints no value at all (``flat[-0:]`` once printed the whole tensor as the tail)."""
    token_ids = byte_token_ids(PROMPT)
    shown = json.loads(cli("show", dump, "inp_tokens", "-n", "0", "--json").stdout)
    assert (shown["head"], shown["tail"]) == ([], [])
    text = cli("show", dump, "inp_tokens", "-n", "0")
    assert text.returncode == 0 and "inp_tokens" in text.stdout
    assert "first:" not in text.stdout and "last:" not in text.stdout
    two = json.loads(cli("show", dump, "inp_tokens", "-n", "2", "--json").stdout)
    assert (two["head"], two["tail"]) == (token_ids[:2], token_ids[-2:])
    negative = cli("show", dump, "inp_tokens", "-n", "-1")
    assert negative.returncode == 2 and "-1 is not in the range" in negative.stderr


def test_export_writes_npy(dump, tmp_path):
    out = tmp_path / "x.npy"
    result = cli("export", dump, "attn_norm-0", "-o", out)
    assert result.returncode == 0
    with open_dump(dump) as opened:
        np.testing.assert_array_equal(np.load(out, allow_pickle=False), opened.read("attn_norm-0"))


def test_gguf_command(tiny_f32):
    result = cli("gguf", tiny_f32, "--tensors", "--json")
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert info["metadata"]["general.architecture"] == "llama"
    assert any(t["name"] == "token_embd.weight" and t["ne"] == [64, 259] for t in info["tensors"])


def test_pattern_matching_nothing_warns_with_nearest_names(tiny_f32, tmp_path):
    result = cli("capture", tiny_f32, "-p", PROMPT, "-T", "l_out-*", "-T", "atn_norm-0", "--ctx", "64",
                 "-o", tmp_path / "w.h5")
    assert result.returncode == 0
    warning = next(line for line in result.stderr.splitlines() if "warning" in line)
    assert "'atn_norm-0'" in warning and "attn_norm-0" in warning


def test_demo_runs_on_its_embedded_model(tmp_path):
    result = cli("demo", "-o", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert "l_out-3" in result.stdout
    with open_dump(tmp_path / "demo" / "capture.h5") as opened:
        assert opened.complete and len(opened) > 0


def test_bad_model_inputs(tmp_path, tiny_f32):
    missing = cli("capture", tmp_path / "nope.gguf", "-p", "x")
    assert_one_line_error(missing, "no such file")
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    assert_one_line_error(cli("capture", not_gguf, "-p", "x"), "not a GGUF file")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_f32.read_bytes()[:200_000])
    assert_one_line_error(cli("capture", truncated, "-p", "x", "-o", tmp_path / "t.h5"), "not within the file bounds")
    assert_one_line_error(cli("gguf", truncated), "truncated")


def test_existing_output_is_kept_without_overwrite(tiny_f32, tmp_path):
    out = tmp_path / "exists.h5"
    out.write_bytes(b"precious")
    assert_one_line_error(cli("capture", tiny_f32, "-p", "x", "-o", out), "--overwrite")
    assert out.read_bytes() == b"precious"


def test_unwritable_output_folder(tiny_f32, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(cli("capture", tiny_f32, "-p", "x", "-o", blocker / "sub" / "d.h5"),
                          "cannot create output folder")


def test_bad_dumps_for_ls_show_export(tmp_path, dump):
    not_ours = tmp_path / "model.gguf"
    not_ours.write_bytes(b"GGUF" + b"\0" * 64)
    for command in (("ls", not_ours), ("show", not_ours, "x"), ("export", not_ours, "x", "-o", tmp_path / "o.npy")):
        assert_one_line_error(cli(*command), "not a ggml-inspector dump")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(dump.read_bytes()[:4000])
    assert_one_line_error(cli("ls", truncated), "truncated.h5")
    assert_one_line_error(cli("show", dump, "no-such-tensor"), "no tensor 'no-such-tensor'")
    assert_one_line_error(cli("ls", tmp_path / "missing.h5"), "no such file")


def test_a_model_llama_cpp_refuses_says_why_and_leaves_no_dump(tmp_path):
    """A valid GGUF of an architecture llama.cpp does not know: one line with the cause, no empty dump."""
    from gguf import GGUFWriter

    path = tmp_path / "alien.gguf"
    writer = GGUFWriter(str(path), "nosucharch")
    writer.add_tensor("a.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "refused.h5"
    assert_one_line_error(cli("capture", path, "-p", "x", "-o", out), "unknown model architecture: 'nosucharch'")
    assert not out.exists()
    assert not list(tmp_path.glob(".*space-reserve"))
