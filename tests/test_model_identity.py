"""Model metadata in O(header): the GGUF header reader, the fingerprint and the cached sha256."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from gguf import GGUFReader
from test_cli import cli

from inspector.gguf.header import cached_sha256, fingerprint, read_header, read_leading_metadata
from inspector.llamacpp.facts import model_facts
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

REAL_VOCAB = 262_144


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    """A model with a real vocabulary's size: what makes careless metadata reads O(vocabulary)."""
    spec = TinyLlamaSpec(dtype="q4_k_m", n_vocab=REAL_VOCAB, n_layer=1, name="big-vocab", seed=4)
    return write_tiny_llama(tmp_path_factory.mktemp("vocab") / "vocab.gguf", spec)


def test_header_matches_gguf_py(tiny_f32):
    header = read_header(tiny_f32)
    reader = GGUFReader(tiny_f32, "r")
    assert set(header.tensors) == {t.name for t in reader.tensors}
    for tensor in reader.tensors:
        info = header.tensors[tensor.name]
        assert info.offset == int(tensor.data_offset) and info.n_bytes == int(tensor.n_bytes)
        assert info.shape == tuple(int(n) for n in tensor.shape)
    assert header.get("general.architecture") == "llama"
    assert header.get("llama.embedding_length") == 64


def test_large_arrays_are_summarised_not_materialised(big_vocab):
    result = cli("gguf", big_vocab, "--json")
    assert result.returncode == 0, result.stderr
    metadata = json.loads(result.stdout)["metadata"]
    assert metadata["tokenizer.ggml.tokens"] == f"[{REAL_VOCAB} items]"
    assert metadata["llama.vocab_size"] == REAL_VOCAB
    leading = read_leading_metadata(big_vocab, ("general.name", "general.architecture"))
    assert leading == {"general.name": "big-vocab", "general.architecture": "llama"}
    facts = model_facts(str(big_vocab))
    assert facts["name"] == "big-vocab" and facts["size"] == big_vocab.stat().st_size and "sha256" not in facts


def test_fingerprint_tells_models_apart_and_compare_says_so(tiny_f32, tmp_path):
    other = write_tiny_llama(tmp_path / "other.gguf", TinyLlamaSpec(dtype="f32", seed=1, perturb=(1, 5, 0.5)))
    assert fingerprint(tiny_f32) == fingerprint(tiny_f32)
    assert fingerprint(tiny_f32) != fingerprint(other)
    for model, out in ((tiny_f32, "a.h5"), (other, "b.h5")):
        assert cli("capture", model, "-p", "hi", "-T", "l_out-*", "--ctx", "64", "-o", tmp_path / out).returncode == 0
    result = cli("compare", tmp_path / "a.h5", tmp_path / "b.h5")
    assert "different model files" in result.stdout


def test_sha256_is_computed_once_per_file_version(tiny_f32, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    copy = tmp_path / "model.gguf"
    copy.write_bytes(tiny_f32.read_bytes())
    expected = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert cached_sha256(copy) == expected
    cache = json.loads((tmp_path / "cache" / "ggml-inspector" / "sha256.json").read_text())
    assert list(cache.values()) == [expected]
    # The cache answers for the same (path, size, mtime): plant a marker to see it used.
    key = next(iter(cache))
    (tmp_path / "cache" / "ggml-inspector" / "sha256.json").write_text(json.dumps({key: "f" * 64}))
    assert cached_sha256(copy) == "f" * 64
    # A new mtime is a new file version: hashed again.
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 1_000_000_000))
    assert cached_sha256(copy) == expected
    result = cli("capture", copy, "-p", "hi", "-T", "l_out-0", "--ctx", "64", "--sha256", "-o", tmp_path / "s.h5")
    assert result.returncode == 0, result.stderr
