"""Shared fixtures: generated models (never downloaded) and a capture helper."""

from __future__ import annotations

import functools
import os
import resource
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from llama_programs import llama_programs as build_llama_programs

from inspector.capture.selection import Selection
from inspector.gguf.reader import open_gguf, tensor_array
from inspector.llamacpp.capture import CaptureSummary, capture_llama
from inspector.llamacpp.config import LlamaRunConfig
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

if TYPE_CHECKING:
    from hf_models import HfModel

PROMPT = "Hi, ggml!"
SMALL_DISK = 3 * 1024 * 1024


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_f32(models_dir: Path) -> Path:
    return write_tiny_llama(models_dir / "tiny-f32.gguf", TinyLlamaSpec(dtype="f32", seed=1))


@pytest.fixture(scope="session")
def tiny_f16(models_dir: Path) -> Path:
    return write_tiny_llama(models_dir / "tiny-f16.gguf", TinyLlamaSpec(dtype="f16", seed=2))


@pytest.fixture(scope="session")
def llama_programs() -> Path:
    """llama.cpp's own llama-simple, llama-completion and llama-mtmd-cli, built once (and cached) from the pinned
    source against the installed libraries (tests/llama_programs.py); a failed build fails the tests using them."""
    return build_llama_programs()


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HfModel]:
    """Tiny random Llama, Qwen3 and Gemma3 transformers checkpoints with trained tokenizers, and their f32 GGUFs
    made by llama.cpp's own converter (tests/hf_models.py), by architecture. Imported here, not at the top, so
    that sessions which do not use them never import torch and transformers."""
    from hf_models import build_hf_models

    return build_hf_models(tmp_path_factory.mktemp("hf-models"))


def llama_config(model: Path, **config: object) -> LlamaRunConfig:
    """A run of ``model`` on PROMPT in a deterministic single-thread configuration, ``config`` overriding it."""
    settings: dict[str, object] = {"prompt": PROMPT, "threads": 1, "n_ctx": 64, "flash_attn": "off"}
    settings.update(config)
    return LlamaRunConfig(model=str(model), **settings)


def run_capture(model: Path, out: Path, globs: tuple[str, ...] = (), **config: object) -> CaptureSummary:
    """Capture ``model`` on PROMPT with a deterministic single-thread configuration."""
    return capture_llama(llama_config(model, **config), Selection(globs=globs), out, overwrite=True)


def weights(model: Path) -> dict[str, np.ndarray]:
    """All weights of a GGUF as float32 numpy arrays, read with gguf-py (independent of llama.cpp)."""
    reader = open_gguf(model)
    return {t.name: tensor_array(reader, t.name) for t in reader.tensors}


def rewrite_tensor(path: Path, name: str, change, update_digest: bool = True, eval_index: int | None = None
                   ) -> np.ndarray:
    """Replace tensor ``name`` (first occurrence, in ``eval_index`` or the first evaluation holding it) in a
    dump by ``change(values)``, in place.

    Simulates a run that produced other values: its bytes in /tensors and, unless told
    otherwise, its digest and statistics in the index change together, as the writer writes them.
    """
    import h5py

    from inspector import open_dump
    from inspector.dump.format import digest_of

    with open_dump(path) as dump:
        entry = dump.find(name, eval_index)
        values = change(dump.read(entry).copy())
    assert values.dtype.str == entry.dtype and values.nbytes == entry.nbytes
    with h5py.File(path, "r+") as handle:
        stored = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        handle["tensors"][entry.offset:entry.offset + entry.nbytes] = stored
        if update_digest:
            from inspector.dump.format import TensorStats

            index = handle["index"][()]
            row = index["seq"] == entry.seq
            index["digest"][row] = digest_of(values)
            stats = TensorStats.of(values)
            for field in ("min", "max", "mean", "std", "n_nan", "n_inf"):
                index[field][row] = getattr(stats, field)
            handle["index"][...] = index
    return values


def mount_tmpfs(where: Path) -> bool:
    """A SMALL_DISK tmpfs on ``where`` (root only)."""
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(where)],
                            capture_output=True)
    return result.returncode == 0


@functools.cache
def tmpfs_mountable() -> bool:
    """Whether this machine lets the tests mount a tmpfs (root, and a container that allows it): tried once."""
    with tempfile.TemporaryDirectory() as folder:
        mounted = mount_tmpfs(Path(folder))
        if mounted:
            subprocess.run(["umount", folder], capture_output=True, check=True)
    return mounted


def full_disk_variants() -> list[str]:
    """The real full disks this machine offers: a small tmpfs where ``mount`` is allowed, RLIMIT_FSIZE always."""
    return ["tmpfs", "rlimit"] if tmpfs_mountable() else ["rlimit"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The test id names the full disk that ran (``[tmpfs]``, ``[rlimit]``); none is skipped or expected to fail."""
    if "small_disk" in metafunc.fixturenames:
        metafunc.parametrize("small_disk", full_disk_variants(), indirect=True)


def limit_file_size() -> None:
    """In a child before exec: files stop at SMALL_DISK bytes (writes past it fail with EFBIG).

    The soft limit only, as ``ulimit -S -f`` sets it: the hard one stays, as the room a process may take
    back to close its files.
    """
    resource.setrlimit(resource.RLIMIT_FSIZE, (SMALL_DISK, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.fixture
def small_disk(request, tmp_path, record_property) -> Iterator[tuple[Path, dict]]:
    """A folder on a 3 MiB tmpfs, or a child process limited to 3 MiB files: a real full disk.

    Yields the folder and the ``subprocess`` settings that impose the limit; the variant is in the test id
    and recorded as the ``full_disk`` property (junit XML).
    """
    folder = tmp_path / "disk"
    folder.mkdir()
    record_property("full_disk", request.param)
    if request.param == "rlimit":
        yield folder, {"preexec_fn": limit_file_size}
        return
    assert mount_tmpfs(folder), "mounting a tmpfs worked a moment ago"
    try:
        yield folder, {}
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
