"""capture-hf --image against our own Llama 3.2 Vision in ggml: the mllama name map, vision tower and text.

llama.cpp has no mllama graph; this project's (``inspector/mllama``) names
the tensors the map refers to.  A tiny random MllamaForConditionalGeneration
(every gate opened, tests/tiny_mllama_hf.py) is saved by transformers and
converted by ``mllama convert``; ``mllama generate --image -n 1`` captures
the vision graph (kind encode) and the prompt's text graph, and
``capture-hf --image`` the checkpoint.  The expectations do not come from
the map: both implementations compute the same function of the same weights
and the same pixels (transformers' own image processor on one side, our
HF-exact preprocessing on the other), so every mapped tensor must exist in
the graph we build, with its shape, in the evaluation of the same kind, and
agree with it to rounding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, cli
from tiny_mllama_hf import IMAGE_TOKEN, convert_with_cli, make_model, save

from inspector import open_dump
from inspector.errors import InspectorError
from inspector.mllama.preprocess import CLIP_MEAN, CLIP_STD
from inspector.reference.name_map import builtin_maps, parse_map

TOKENS = [1, 17, 33, IMAGE_TOKEN, 50, 61, 72, 99]
IDS = ",".join(map(str, TOKENS))
# The ggml run's evaluation kind for each of the reference's.
KINDS = {"encode": "encode", "prompt": "decode"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """The checkpoint, its GGUF, a 2-tile image, a ggml capture of everything and a capture-hf of it."""
    root = tmp_path_factory.mktemp("capture_hf_mllama")
    folder = save(make_model(seed=0), root / "tiny-mllama")
    gguf = convert_with_cli(folder, root / "mllama.gguf")
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (22, 50, 3), dtype=np.uint8)).save(image)
    ggml, reference = root / "ggml.h5", root / "hf.h5"
    result = cli("mllama", "generate", gguf, "--image", image, "--token-ids", IDS, "-n", "1", "-t", "1", "-o", ggml)
    assert result.returncode == 0, result.stderr
    result = cli("capture-hf", folder, "--token-ids", IDS, "--image", image, "-o", reference)
    assert result.returncode == 0, result.stderr
    return {"root": root, "folder": folder, "gguf": gguf, "image": image, "ggml": ggml, "hf": reference,
            "stderr": result.stderr}


def compare(a: Path, b: Path, *extra: object) -> tuple[int, dict]:
    result = cli("compare", a, b, "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def entries_by_kind(path: Path) -> dict[tuple[str, str, int], tuple[int, ...]]:
    """(evaluation kind, name, occurrence) -> shape of every record in the dump."""
    with open_dump(path) as dump:
        kinds = {e["index"]: e["kind"] for e in dump.evaluations}
        return {(kinds[e.eval_index], e.name, e.occurrence): tuple(e.shape) for e in dump.entries()}


def test_every_mapped_tensor_is_in_our_mllama_graphs_and_agrees(run):
    config = json.loads((run["folder"] / "config.json").read_text())
    expected = {(m.evaluation, m.name, m.occurrence) for m in builtin_maps()["mllama"].mappings(config)}
    reference = entries_by_kind(run["hf"])
    assert set(reference) == expected | {("prompt", "inp_tokens", 0), ("prompt", "inp_pos", 0)}
    # Both towers are covered: the vision side's inputs, layers and projector, the text side's cross-attention.
    assert {("encode", "inp_raw", 0), ("encode", "layer_out-3", 0), ("encode", "global_layer_out-1", 0),
            ("encode", "ca_patch_embd", 0), ("prompt", "cross_attn_k-3", 0), ("prompt", "Qcur-2", 0),
            ("prompt", "cross_attn_out-1", 0), ("prompt", "result_output", 0)} <= set(reference)
    built = entries_by_kind(run["ggml"])
    for (kind, name, occurrence), shape in reference.items():
        assert built.get((KINDS[kind], name, occurrence)) == shape, (kind, name, occurrence, shape)

    code, document = compare(run["ggml"], run["hf"])
    assert code == 0 and document["passed"], [t["name"] for t in document["tensors"] if t["status"] != "incomparable"
                                              and t["status"] not in ("identical", "within")]
    assert [(p["a"], p["b"], p["rule"]) for p in document["alignment"]["pairs"]] == [(0, 0, "order"), (1, 1, "content")]
    compared = {(t["eval_kind"], t["name"], t["occurrence"]): t["status"] for t in document["tensors"]
                if t["status"] in ("identical", "within")}
    assert {(kind, name, occurrence) for kind, name, occurrence in compared} == \
        {(KINDS[kind], name, occurrence) for kind, name, occurrence in reference}
    # transformers' image processor and our HF-exact preprocessing give the same float32 pixels, bit for bit.
    assert compared[("encode", "inp_raw", 0)] == "identical"
    assert "not mapped (" in run["stderr"] and "model.vision_model.transformer.layers.0.self_attn.q_proj" in \
        run["stderr"]
    assert "not computed" not in run["stderr"] and "not in this model" not in run["stderr"]


def test_the_reference_records_its_two_evaluations_and_its_preprocessing(run):
    with open_dump(run["hf"]) as dump:
        encode, prompt = dump.evaluations
        config = dump.config
    assert (encode["kind"], encode["inputs_known"], encode["num_tiles"]) == ("encode", False, 2)
    assert "MllamaImageProcessorPil built from vision_config" in encode["preprocessing"]
    assert config["image_preprocessing"] == encode["preprocessing"] and config["image"] == str(run["image"])
    assert prompt["kind"] == "prompt" and prompt["inputs"]["tokens"] == TOKENS


def test_the_checkpoints_own_processor_config_is_used(run, tmp_path):
    """A preprocessor_config.json with other mean and std: inp_raw follows it, and the pixels underneath agree."""
    folder = tmp_path / "with-processor"
    shutil.copytree(run["folder"], folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "MllamaImageProcessor", "size": {"height": 28, "width": 28}, "max_image_tiles": 4,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True, "do_normalize": True,
        "do_pad": True, "do_rescale": True, "do_resize": True, "resample": 2, "rescale_factor": 1 / 255}))
    out = tmp_path / "half.h5"
    result = cli("capture-hf", folder, "--token-ids", IDS, "--image", run["image"], "-T", "inp_raw", "-o", out)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        assert "from preprocessor_config.json" in dump.evaluations[0]["preprocessing"]
        half = dump.read("inp_raw", eval_index=0)
    with open_dump(run["ggml"]) as dump:
        clip = dump.read("inp_raw", eval_index=0)
    mean, std = np.array(CLIP_MEAN).reshape(3, 1, 1), np.array(CLIP_STD).reshape(3, 1, 1)
    # The image's two tiles hold the same rescaled pixels under either normalisation; the padding tiles are zeros.
    np.testing.assert_allclose(half[:2] * 0.5 + 0.5, clip[:2] * std + mean, atol=1e-6)
    assert not np.allclose(half[:2], clip[:2], atol=1e-2) and not half[2:].any() and not clip[2:].any()


def test_a_map_with_the_llama_qk_permutation_finds_qcur_diverges(run, tmp_path):
    """A user's map file replaces the shipped one: mllama convert keeps transformers' Q/K order, so rope_rows is
    wrong here, and Q after RoPE diverges while V, which has no such step, stays within."""
    shipped = (Path(__file__).parents[1] / "inspector" / "reference" / "maps" / "mllama.toml").read_text()
    permuted = tmp_path / "mllama-permuted.toml"
    marker = 'index = 0\nlayout = ["tokens_first"]'
    assert shipped.count(marker) == 1
    permuted.write_text(shipped.replace(marker, 'index = 0\nlayout = ["tokens_first", "rope_rows:q"]'))
    reference = tmp_path / "permuted.h5"
    result = cli("capture-hf", run["folder"], "--token-ids", IDS, "--image", run["image"], "--map-file", permuted,
                 "-T", "Qcur-0", "-T", "Vcur-0", "-T", "ca_patch_embd", "-o", reference)
    assert result.returncode == 0, result.stderr
    code, document = compare(run["ggml"], reference, "-T", "Qcur-0", "-T", "Vcur-0", "-T", "ca_patch_embd")
    statuses = {(t["eval_kind"], t["name"]): t["status"] for t in document["tensors"]}
    assert code == 1
    assert statuses[("decode", "Qcur-0")] == "diverged"
    assert statuses[("decode", "Vcur-0")] == "within" and statuses[("encode", "ca_patch_embd")] == "within"


def test_a_preprocessing_fault_in_the_port_is_named_at_inp_raw(run, tmp_path):
    """A transparent image: transformers composites it over white; a port that loads it as transformers'
    load_image does for a path (mllama generate --loader hf-path) drops the alpha instead."""
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (22, 50, 4), dtype=np.uint8), "RGBA").save(rgba)
    selected = ("-T", "inp_raw", "-T", "patch_embd", "-T", "ca_patch_embd", "-T", "result_output")
    reference = tmp_path / "hf.h5"
    assert cli("capture-hf", run["folder"], "--token-ids", IDS, "--image", rgba, *selected,
               "-o", reference).returncode == 0
    for loader, passed in (("pil", True), ("hf-path", False)):
        ggml = tmp_path / f"{loader}.h5"
        result = cli("mllama", "generate", run["gguf"], "--image", rgba, "--token-ids", IDS, "-n", "1", "-t", "1",
                     "--loader", loader, *selected, "-o", ggml)
        assert result.returncode == 0, result.stderr
        code, document = compare(ggml, reference)
        assert document["passed"] is passed and code == (0 if passed else 1)
    diverged = [(t["eval_kind"], t["name"]) for t in document["tensors"] if t["status"] == "diverged"]
    assert diverged[0] == ("encode", "inp_raw") and document["first_divergence"]["name"] == "inp_raw"


@pytest.mark.parametrize("extra, fragment", [
    ((), "reads an image: give --image"),
    (("--image", "IMAGE", "--token-ids", "1,17,33"), "no image token (300"),
    (("--image", "IMAGE", "--token-ids", f"1,{IMAGE_TOKEN},5,{IMAGE_TOKEN}"), "takes one image"),
])
def test_image_inputs_are_checked_in_one_line(run, tmp_path, extra, fragment):
    args = [str(run["image"]) if value == "IMAGE" else value for value in extra]
    if "--token-ids" not in args:
        args += ["--token-ids", IDS]
    result = cli("capture-hf", run["folder"], *args, "-o", tmp_path / "out.h5")
    assert result.returncode == 2
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("top, entry, fragment", [
    ("", 'evaluation = "decode"', "evaluation must be one of encode, prompt"),
    ("", 'evaluation = "encode"', "needs the map's image key"),
    ('model_class = "AutoModel"', "", "model_class must be one of"),
    ('image = "llava"', "", "image must be one of mllama"),
])
def test_map_files_are_checked_for_the_image_keys(top, entry, fragment):
    text = f'architecture = "x"\nmodel_types = ["x"]\n{top}\n[[tensor]]\nname = "a"\nmodule = "m"\n{entry}\n'
    with pytest.raises(InspectorError, match=fragment):
        parse_map(text.encode(), "user.toml")
