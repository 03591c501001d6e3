"""capture-hf against llama.cpp: a transformers checkpoint and the GGUF llama.cpp's converter made of it.

Each architecture's checkpoint is built by transformers and converted by the
pinned ``convert_hf_to_gguf.py`` (tests/hf_models.py).  The ggml side is
``ggml-inspector capture`` of that GGUF; the reference side ``capture-hf`` of
the checkpoint.  The expectations are independent of the maps under test:
the two implementations compute the same function of the same weights, so
every mapped tensor must exist in the graph llama.cpp really built, with the
shape ggml gave it, and agree with it to rounding; a map without the Q/K row
permutation the converter applies must not.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import xxhash
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.reference.name_map import builtin_maps

PROMPT = "The quick brown fox jumps over the lazy dog"
# Before attention both sides compute the same float32 products of the same weights, in another order.
BEFORE_ATTENTION_NMSE = 1e-12


@pytest.fixture(scope="module")
def runs(hf_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Per architecture: the checkpoint, its GGUF, a ggml capture and a capture-hf of the same token ids."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("capture_hf")
    made = {}
    for architecture, model in hf_models.items():
        ids = ",".join(map(str, AutoTokenizer.from_pretrained(model.folder)(PROMPT)["input_ids"]))
        ggml, reference = root / f"{architecture}-ggml.h5", root / f"{architecture}-hf.h5"
        result = cli("capture", model.gguf, "--token-ids", ids, "-n", "1", "-c", "64", "-t", "1", "-o", ggml)
        assert result.returncode == 0, result.stderr
        result = cli("capture-hf", model.folder, "--token-ids", ids, "-o", reference)
        assert result.returncode == 0, result.stderr
        made[architecture] = {"folder": model.folder, "gguf": model.gguf, "ggml": ggml, "hf": reference,
                              "ids": ids, "stderr": result.stderr}
    return made


@pytest.mark.parametrize("architecture", ["llama", "qwen3", "gemma3"])
def test_every_mapped_tensor_is_in_llama_cpps_graph_and_agrees(runs, architecture):
    run = runs[architecture]
    with open_dump(run["ggml"]) as ggml, open_dump(run["hf"]) as reference:
        built = {(e.name, e.occurrence): e for e in ggml.entries() if e.eval_index == 0}
        mapped = [e for e in reference.entries()]
        layers = json.loads((run["folder"] / "config.json").read_text())["num_hidden_layers"]
    expected = {m.name for entry in builtin_maps()[architecture].tensors for m in entry.expand(layers)}
    assert {e.name for e in mapped} == expected | {"inp_tokens", "inp_pos"}
    for entry in mapped:
        assert (entry.name, entry.occurrence) in built, entry.name
        ggml_shape = built[(entry.name, entry.occurrence)].shape
        # The last layer keeps only the output row in ggml (llama.cpp's out_ids): the rest of the shape agrees.
        assert entry.shape[1:] == ggml_shape[1:] or (entry.shape[-1],) == ggml_shape, entry.name
    code, document = compare(run["ggml"], run["hf"])
    assert code == 0 and document["passed"], [t["name"] for t in document["tensors"] if t["status"] == "diverged"]
    compared = {(t["name"], t["occurrence"]): t for t in document["tensors"] if t["status"] in ("identical", "within")}
    assert set(compared) == {(e.name, e.occurrence) for e in mapped}
    for (name, _), row in compared.items():
        if name.startswith(("attn_norm-0", "Qcur-0", "Kcur-0", "Vcur-0", "Qcur_normed-0", "Kcur_normed-0")):
            assert row["metrics"]["nmse"] < BEFORE_ATTENTION_NMSE, name
    assert document["tolerance"]["reason"].startswith("tolerance f16: ")
    assert "not mapped (" in run["stderr"] and "model.rotary_emb" in run["stderr"]


def compare(a: Path, b: Path, *extra: str) -> tuple[int, dict]:
    result = cli("compare", a, b, "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_map_without_the_converters_qk_permutation_finds_rope_rows_differ(runs, tmp_path):
    """The user's map file replaces the shipped one; without rope_rows, llama's Q and K stop matching."""
    run = runs["llama"]
    shipped = (Path(__file__).parents[1] / "inspector" / "reference" / "maps" / "llama.toml").read_text()
    unpermuted = tmp_path / "llama-unpermuted.toml"
    unpermuted.write_text(shipped.replace('layout = ["rope_rows:q"]', "layout = []")
                          .replace('layout = ["heads:q", "rope_rows:q"]', 'layout = ["heads:q"]'))
    reference = tmp_path / "unpermuted.h5"
    result = cli("capture-hf", run["folder"], "--token-ids", run["ids"], "--map-file", unpermuted, "-T", "Qcur-0",
                 "-T", "Vcur-0", "-o", reference)
    assert result.returncode == 0, result.stderr
    code, document = compare(run["ggml"], reference, "-T", "Qcur-0", "-T", "Vcur-0")
    statuses = {(t["name"], t["occurrence"]): t["status"] for t in document["tensors"]}
    assert code == 1 and statuses[("Qcur-0", 1)] == "diverged" and statuses[("Vcur-0", 0)] == "within"


def test_the_dump_records_the_checkpoint_and_the_software(runs):
    import torch
    import transformers

    run = runs["qwen3"]
    with open_dump(run["hf"]) as dump:
        recorded = dump.config["reference"]
        evaluation = dump.evaluations[0]
    config_bytes = (run["folder"] / "config.json").read_bytes()
    assert recorded["config_xxh3_128"] == xxhash.xxh3_128_hexdigest(config_bytes)
    weights = next(name for name in recorded["files"] if name.endswith(".safetensors"))
    assert recorded["files"][weights]["bytes"] == (run["folder"] / weights).stat().st_size
    assert (recorded["transformers"], recorded["torch"]) == (transformers.__version__, torch.__version__)
    ids = [int(token) for token in run["ids"].split(",")]
    assert evaluation["inputs"]["tokens"] == ids and evaluation["inputs"]["outputs"] == list(range(len(ids)))


def test_a_float64_reference_against_a_split_ggml_run(runs, tmp_path):
    run = runs["llama"]
    reference, split = tmp_path / "f64.h5", tmp_path / "ub3.h5"
    assert cli("capture-hf", run["folder"], "--token-ids", run["ids"], "--dtype", "float64", "-T", "l_out-*",
               "-o", reference).returncode == 0
    with h5py.File(reference) as handle:
        assert {row["dtype"].decode() for row in handle["index"][()]} == {"<f8"}
    assert cli("capture", run["gguf"], "--token-ids", run["ids"], "-n", "1", "-c", "64", "-t", "1", "-ub", "3",
               "-b", "3", "-T", "l_out-*", "-o", split).returncode == 0
    code, document = compare(split, reference)
    assert code == 0 and document["alignment"]["splits"][0]["kind"] == "batches"
    assert {t["status"] for t in document["tensors"]} <= {"within", "identical"}


@pytest.mark.parametrize("damage, fragment", [
    ("pickle", "pickled, which would run code when loaded"),
    ("remote", "never run"),
    ("map", "unknown key 'modules'"),
    ("empty", "not a checkpoint folder"),
])
def test_hostile_checkpoints_and_maps_are_refused_in_one_line(runs, tmp_path, damage, fragment):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    config = json.loads((runs["llama"]["folder"] / "config.json").read_text())
    extra: list[str] = []
    if damage == "pickle":
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    elif damage == "remote":
        (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    elif damage == "map":
        folder = runs["llama"]["folder"]
        bad = tmp_path / "bad.toml"
        bad.write_text('architecture = "llama"\nmodel_types = ["llama"]\nmodules = 1\n')
        extra = ["--map-file", str(bad)]
    else:
        folder = tmp_path / "nothing"
    result = cli("capture-hf", folder, "--token-ids", "1,2,3", *extra, "-o", tmp_path / "out.h5")
    assert result.returncode == 2
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out.h5").exists()
