"""An output never replaces an input, and an output appears whole or not at all.

Every command with an output file is run, as a user would, with its output
naming one of its own inputs: by the same path, through a symlink and
through a hard link, with and without --overwrite. Each must exit 2 with one
line on stderr and leave the input byte for byte as it was. A command that
fails part-way leaves no file behind, and keeps the old one --overwrite would
have replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from inspector import open_dump
from inspector.dump.format import NO_COMPRESSION, TENSORS_DATASET, Compression
from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter
from inspector.native.stream import MAGIC
from inspector.tiny_models.mllama import write_tiny_mllama

# Subprocesses run side by side: each refusal is quick, but there are many.
WORKERS = 4
OLD_CONTENT = b"the old output, which a failed command must keep\n"
# Every output of the fault tests is larger than this (a report, a 64x64 float32 tensor, a PNG, a dump).
FILE_LIMIT = 8 * 1024


def cli(*args: object, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GGML_INSPECTOR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, preexec_fn=preexec_fn)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dump(path: Path, arrays: dict[str, np.ndarray], compression: Compression = NO_COMPRESSION) -> Path:
    """A real dump, written by the real writer: one evaluation holding ``arrays``."""
    with DumpWriter(path, {"runner": "test"}, {}, compression=compression) as writer:
        index = writer.begin_evaluation("graph", {})
        for node, (name, array) in enumerate(arrays.items()):
            writer.write(TensorRecord.for_array(name, array, index, node, "NONE"), array)
    return path


def aliases(target: Path) -> list[Path]:
    """``target`` itself, a symlink to it and a hard link to it, each with ``target``'s suffix."""
    link = target.with_name(f"symlink-to-{target.name}")
    hard = target.with_name(f"hardlink-to-{target.name}")
    if not link.is_symlink():
        link.symlink_to(target)
    if not hard.exists():
        os.link(target, hard)
    return [target, link, hard]


def assert_inputs_kept(command: list[object], inputs: list[Path], targets: list[Path], *,
                       has_overwrite: bool = True, after: tuple[object, ...] = (), quick: bool = False) -> None:
    """Run ``command -o ALIAS [--overwrite] after...`` for every alias of every target: each refused, every
    input intact. ``quick``: only the hard link, with --overwrite (for a second input of the same command)."""
    before = {path: sha256(path) for path in inputs}
    runs = []
    for target in targets:
        for alias in aliases(target)[2:] if quick else aliases(target):
            for overwrite in (False, True) if has_overwrite and not quick else (has_overwrite,):
                runs.append([*command, "-o", alias, *(["--overwrite"] if overwrite else []), *after])
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda args: cli(*args), runs))
    for args, result in zip(runs, results, strict=True):
        lines = result.stderr.splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("ggml-inspector: error: "), (args, result.stderr)
        assert "is the input" in lines[0] and "never replaces an input" in lines[0], (args, result.stderr)
    for path, digest in before.items():
        assert sha256(path) == digest, f"{path} changed"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_f32: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    model = folder / "model.gguf"
    model.write_bytes(tiny_f32.read_bytes())  # a copy: the shared fixture must survive a failure here
    prompt = folder / "prompt.txt"
    prompt.write_text("Hi, ggml!")
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(image)
    values = {"a": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.linspace(-1, 1, 8, dtype=np.float32)}
    raw = folder / "raw.bin"
    values["a"].tofile(raw)
    vision = write_tiny_mllama(folder / "vision.gguf")
    streams = folder / "streams"
    streams.mkdir()
    # A stream cut before its first whole frame: a valid input of import (a process that died early).
    (streams / "123.frames").write_bytes(MAGIC.to_bytes(4, "little"))
    checkpoint = folder / "hf"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    (checkpoint / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    found = {"model": model, "prompt": prompt, "image": image, "raw": raw, "vision": vision, "streams": streams,
             "checkpoint": checkpoint}
    # The dump given a suffix the command insists on, so that each alias reaches the input check.
    for suffix in (".h5", ".npy", ".png", ".html"):
        found[f"dump{suffix}"] = write_dump(folder / f"run{suffix}", values)
    return found


def test_capture_never_writes_over_its_model_or_prompt(files):
    model, prompt = files["model"], files["prompt"]
    command = ["capture", "-m", model, "-f", prompt, "-t", "1", "-c", "64"]
    assert_inputs_kept(command, [model, prompt], [model])
    assert_inputs_kept(command, [model, prompt], [prompt], quick=True)


def test_exec_never_writes_over_its_model_or_program_files(files):
    model = files["model"]
    assert_inputs_kept(["exec", "-m", model], [model], [model], after=("--", "true"))
    # A file named on the program's command line is an input too.
    prompt = files["prompt"]
    result = cli("exec", "-o", prompt, "--overwrite", "--", "cat", prompt)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "is the input" in result.stderr
    assert prompt.read_text() == "Hi, ggml!"


def test_import_commands_never_write_over_their_sources(files):
    raw = files["raw"]
    assert_inputs_kept(["import-raw", raw, "--name", "a", "--ne", "4,3,2"], [raw], [raw])
    stream = files["streams"] / "123.frames"
    assert_inputs_kept(["import", files["streams"]], [stream], [stream])


def test_preprocess_and_mllama_never_write_over_the_image_or_model(files):
    image, vision = files["image"], files["vision"]
    assert_inputs_kept(["preprocess", image], [image], [image])
    command = ["mllama", "encode", "-m", vision, "--image", image, "-t", "1"]
    assert_inputs_kept(command, [image, vision], [vision])
    assert_inputs_kept(command, [image, vision], [image], quick=True)
    before = sha256(vision)
    result = cli("mllama", "sched-check", "-m", vision, "--image", image, "-t", "1", "-o", vision, "--overwrite")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "is the input" in result.stderr
    assert sha256(vision) == before


def test_mllama_convert_never_writes_over_the_checkpoint(files):
    checkpoint = files["checkpoint"]
    inputs = [checkpoint / "config.json", checkpoint / "model.safetensors"]
    assert_inputs_kept(["mllama", "convert", checkpoint], inputs, inputs)


def test_readers_never_write_over_the_dump_they_read(files):
    assert_inputs_kept(["export", files["dump.npy"], "a"], [files["dump.npy"]], [files["dump.npy"]])
    assert_inputs_kept(["report", files["dump.html"]], [files["dump.html"]], [files["dump.html"]],
                       has_overwrite=False)
    png = files["dump.png"]
    assert_inputs_kept(["plot", "hist", png, "a"], [png], [png], has_overwrite=False)
    for command in (["plot", "heatmap", png, "a"], ["plot", "stats", png], ["plot", "diff", files["dump.h5"], png]):
        assert_inputs_kept(command, [png], [png], has_overwrite=False, quick=True)


def test_sweep_and_bisect_refuse_a_folder_holding_an_input_they_would_write(files, tmp_path):
    model = files["model"]
    for command, name in (("sweep", "summary.json"), ("bisect", "bisect.json")):
        folder = tmp_path / command
        folder.mkdir()
        prompt = folder / name
        prompt.write_text("Hi, ggml!")
        extra = ["--bisect", "-ngl", "0..1"] if command == "bisect" else ["-ngl", "0"]
        result = cli("sweep", "-m", model, "-f", prompt, "-t", "1", "-c", "64", "--rpc", "none", *extra,
                     "-o", folder, "--overwrite")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and "is the input" in result.stderr, result.stderr
        assert prompt.read_text() == "Hi, ggml!"
        assert sorted(p.name for p in folder.iterdir()) == [name]  # no dump was started


def _corrupt_first_chunk(dump: Path) -> None:
    """Damage the compressed bytes of /tensors' first chunk: the dump opens, reading a tensor fails."""
    with h5py.File(dump, "r") as handle:
        info = handle[TENSORS_DATASET].id.get_chunk_info(0)
    with open(dump, "r+b") as raw:
        raw.seek(info.byte_offset)
        raw.write(b"\xff" * info.size)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A good dump and one whose tensor bytes cannot be decompressed (same index, same names)."""
    folder = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(5)
    arrays = {"x": rng.standard_normal((64, 64)).astype(np.float32),
              "y": rng.standard_normal((8, 8)).astype(np.float32)}
    good = write_dump(folder / "good.h5", arrays, Compression.parse("gzip"))
    bad = write_dump(folder / "bad.h5", {k: v + 1 for k, v in arrays.items()}, Compression.parse("gzip"))
    _corrupt_first_chunk(bad)
    return good, bad


@pytest.mark.parametrize("command, output_name", [
    (["report", "{good}", "{bad}"], "report.html"),
    (["export", "{bad}", "x", "--overwrite"], "x.npy"),
    (["plot", "hist", "{bad}", "x"], "hist.png"),
    (["plot", "diff", "{good}", "{bad}"], "diff.png"),
])
def test_a_command_failing_before_writing_leaves_no_file(damaged, tmp_path, command, output_name):
    good, bad = damaged
    args = [str(part).format(good=good, bad=bad) for part in command]
    fresh = tmp_path / "fresh" / output_name
    kept = tmp_path / "kept" / output_name
    kept.parent.mkdir()
    kept.write_bytes(OLD_CONTENT)
    for output in (fresh, kept):
        result = cli(*args, "-o", output)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not fresh.parent.exists() or list(fresh.parent.iterdir()) == []
    assert kept.read_bytes() == OLD_CONTENT
    assert [p.name for p in kept.parent.iterdir()] == [output_name]  # no temporary file left either


def _small_files() -> None:
    """In the child: files end at FILE_LIMIT bytes (EFBIG past it; the CLI ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


@pytest.mark.parametrize("command, output_name", [
    (["report", "{good}", "{good}"], "report.html"),
    (["export", "{good}", "x", "--overwrite"], "x.npy"),
    (["plot", "heatmap", "{good}", "x"], "heat.png"),
    (["preprocess", "{image}", "--overwrite"], "pre.h5"),
])
def test_a_write_failing_midway_leaves_no_file_and_keeps_the_old_one(damaged, files, tmp_path, command,
                                                                      output_name):
    """A real fault while the output is written: RLIMIT_FSIZE cuts the file at FILE_LIMIT bytes."""
    good, _ = damaged
    args = [str(part).format(good=good, image=files["image"]) for part in command]
    fresh = tmp_path / "fresh" / output_name
    kept = tmp_path / "kept" / output_name
    fresh.parent.mkdir()
    kept.parent.mkdir()
    kept.write_bytes(OLD_CONTENT)
    for output in (fresh, kept):
        result = cli(*args, "-o", output, preexec_fn=_small_files)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "file size limit" in lines[0], result.stderr
    assert list(fresh.parent.iterdir()) == []
    assert kept.read_bytes() == OLD_CONTENT
    assert [p.name for p in kept.parent.iterdir()] == [output_name]


def test_a_successful_overwrite_replaces_the_file_whole(damaged, tmp_path):
    good, _ = damaged
    output = tmp_path / "x.npy"
    output.write_bytes(OLD_CONTENT)
    assert cli("export", good, "x", "-o", output).returncode == 2  # exists, no --overwrite: kept
    assert output.read_bytes() == OLD_CONTENT
    result = cli("export", good, "x", "-o", output, "--overwrite")
    assert result.returncode == 0, result.stderr
    with open_dump(good) as dump:
        np.testing.assert_array_equal(np.load(output), dump.read("x"))
    assert oct(output.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_mllama_convert_failure_keeps_the_old_gguf(files, tmp_path):
    output = tmp_path / "whole.gguf"
    output.write_bytes(OLD_CONTENT)
    result = cli("mllama", "convert", files["checkpoint"], "-o", output, "--overwrite")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert output.read_bytes() == OLD_CONTENT
    assert [p.name for p in tmp_path.iterdir()] == ["whole.gguf"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_over(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with DumpWriter(path, {"runner": "test"}, {}, overwrite=True) as writer:
        index = writer.begin_evaluation("graph", {})
        for node, (name, array) in enumerate(arrays.items()):
            writer.write(TensorRecord.for_array(name, array, index, node, "NONE"), array)


def test_an_overwritten_dump_is_unlinked_not_truncated(tmp_path):
    """--overwrite takes the old dump's name away and frees its blocks on another thread: the new dump is whole, a
    hard link to the old one keeps the old dump, and a symbolic link is written through as before."""
    old, new = {"old": np.arange(4, dtype=np.float32)}, {"new": np.ones(8, dtype=np.float32)}
    path = write_dump(tmp_path / "d.h5", old)
    os.link(path, tmp_path / "linked.h5")
    _write_over(path, new)
    for name, arrays in (("d.h5", new), ("linked.h5", old)):
        with open_dump(tmp_path / name) as dump:
            assert dump.complete and [entry.name for entry in dump.entries()] == list(arrays)
            np.testing.assert_array_equal(dump.read(next(iter(arrays))), next(iter(arrays.values())))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "linked.h5"]

    target = write_dump(tmp_path / "target.h5", old)
    (tmp_path / "through.h5").symlink_to(target)
    _write_over(tmp_path / "through.h5", new)
    assert (tmp_path / "through.h5").is_symlink()
    with open_dump(target) as dump:
        np.testing.assert_array_equal(dump.read("new"), new["new"])
