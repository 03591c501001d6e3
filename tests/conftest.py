"""Shared fixtures: generated models (never downloaded) and a capture helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.capture import CaptureSummary, capture_llama
from inspector.gguf_info import open_gguf, tensor_array
from inspector.models import TinyLlamaSpec, write_tiny_llama
from inspector.runners.llama import LlamaRunConfig
from inspector.selection import Selection

PROMPT = "Hi, ggml!"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_f32(models_dir: Path) -> Path:
    return write_tiny_llama(models_dir / "tiny-f32.gguf", TinyLlamaSpec(dtype="f32", seed=1))


@pytest.fixture(scope="session")
def tiny_f16(models_dir: Path) -> Path:
    return write_tiny_llama(models_dir / "tiny-f16.gguf", TinyLlamaSpec(dtype="f16", seed=2))


def run_capture(model: Path, out: Path, globs: tuple[str, ...] = (), **config: object) -> CaptureSummary:
    """Capture ``model`` on PROMPT with a deterministic single-thread configuration."""
    settings: dict[str, object] = {"prompt": PROMPT, "threads": 1, "n_ctx": 64, "flash_attn": "off"}
    settings.update(config)
    return capture_llama(LlamaRunConfig(model=str(model), **settings), Selection(globs=globs), out, overwrite=True)


def weights(model: Path) -> dict[str, np.ndarray]:
    """All weights of a GGUF as float32 numpy arrays, read with gguf-py (independent of llama.cpp)."""
    reader = open_gguf(model)
    return {t.name: tensor_array(reader, t.name) for t in reader.tensors}
