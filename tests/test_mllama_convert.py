"""`mllama convert` on a whole MllamaForConditionalGeneration checkpoint saved by transformers.

Every text tensor of the GGUF must equal the HF parameter bit for bit, the
keys must carry the config's values, rope_freqs must equal an independent
computation of Llama 3's scaling, and `mllama encode` must still run on the
whole-model file.  The HF side is the checkpoint's safetensors file, read
with safetensors and renamed by the table below (llama.cpp's mllama names,
written out here): a name the converter's own table got wrong shows.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import weights
from PIL import Image
from safetensors.numpy import load_file, save_file
from test_cli import assert_one_line_error, cli
from test_mllama_parity import nmse, reference_outputs
from tiny_mllama_hf import IMAGE_TOKEN, ROPE, VOCAB, convert_with_cli, make_model, save

from inspector import open_dump
from inspector.gguf import reader as gguf_info
from inspector.mllama import gguf_layout as L
from inspector.mllama.convert import convert, write_gguf
from inspector.mllama.model import _on_offload

TOKENIZER = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "é": 1}, "merges": []}, "note": "ünï"}
# The tiny config's llama3 freq_factors by hand (d=12, theta 5e5, old context 8192, factor 8, low 1, high 4):
# inv = 5e5^(-i/6): wavelengths 6.28, 56, 499, 11972, 316655, 2.82e6 against the bounds 2048 (8192/4) and
# 8192 (8192/1): three below 2048 (1), two above 8192 (8), one between:
# smooth = (8192/11971.6 - 1) / 3 = -0.10524, 1 / ((1 - smooth) / 8 + smooth) = 2.6945298.
HAND_FACTORS = [1, 1, 1, 2.6945298, 8, 8]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory):
    model = make_model(seed=0)
    folder = save(model, tmp_path_factory.mktemp("hf") / "tiny-mllama")
    (folder / "tokenizer.json").write_text(json.dumps(TOKENIZER, ensure_ascii=False), encoding="utf-8")
    return model, folder


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory) -> Path:
    _, folder = hf_model
    return convert_with_cli(folder, tmp_path_factory.mktemp("gguf") / "whole.gguf")


# HF's on-disk text names -> llama.cpp's mllama names, independent of inspector.mllama.gguf_layout.
HF_TEXT_FIXED = {
    "language_model.model.embed_tokens.weight": "token_embd.weight",
    "language_model.model.norm.weight": "output_norm.weight",
    "language_model.lm_head.weight": "output.weight",
}
HF_TEXT_LEAVES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "cross_attn.q_proj.weight": "cross_attn_q_proj.weight",
    "cross_attn.k_proj.weight": "cross_attn_k_proj.weight",
    "cross_attn.v_proj.weight": "cross_attn_v_proj.weight",
    "cross_attn.o_proj.weight": "cross_attn_o_proj.weight",
    "cross_attn.q_norm.weight": "cross_attn_q_norm.weight",
    "cross_attn.k_norm.weight": "cross_attn_k_norm.weight",
    "cross_attn_attn_gate": "cross_attn_attn_gate",
    "cross_attn_mlp_gate": "cross_attn_mlp_gate",
}
HF_TEXT_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.(.+)$")


def hf_text_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The checkpoint's text tensors as saved (safetensors), by llama.cpp name; an unknown text name fails."""
    found = {}
    for name, value in load_file(folder / "model.safetensors").items():
        layer = HF_TEXT_LAYER.match(name)
        if layer:
            found[f"blk.{layer.group(1)}.{HF_TEXT_LEAVES[layer.group(2)]}"] = value
        elif name.startswith("language_model."):
            found[HF_TEXT_FIXED[name]] = value
    return found


def fields(path: Path) -> dict[str, object]:
    reader = gguf_info.open_gguf(path)
    return {name: gguf_info.field_value(reader, name) for name in reader.fields}


def independent_llama3_factors(head_dim: int, p: dict) -> np.ndarray:
    """transformers' llama3 inv_freq written out again; freq_factors = plain inv_freq / scaled inv_freq."""
    inv = 1.0 / p["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * math.pi / inv
    old, lo, hi, factor = (p["original_max_position_embeddings"], p["low_freq_factor"], p["high_freq_factor"],
                           p["factor"])
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    scaled = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv / scaled


def test_every_text_tensor_equals_hf(hf_model, converted):
    model, folder = hf_model
    ours = weights(converted)
    reference = hf_text_tensors(folder)
    assert len(reference) == 47  # 4 layers (2 self, 2 cross), embeddings, norm, head
    # Spot checks by name, each against the HF module the checkpoint was saved from.
    text = model.model.language_model
    for gguf_name, parameter in (("blk.0.ffn_gate.weight", text.layers[0].mlp.gate_proj.weight),
                                 ("blk.0.ffn_up.weight", text.layers[0].mlp.up_proj.weight),
                                 ("blk.2.attn_k.weight", text.layers[2].self_attn.k_proj.weight),
                                 ("blk.3.cross_attn_mlp_gate", text.layers[3].cross_attn_mlp_gate),
                                 ("output_norm.weight", text.norm.weight)):
        np.testing.assert_array_equal(ours[gguf_name], parameter.detach().numpy(), err_msg=gguf_name)
    for name, value in reference.items():
        assert ours[name].shape == value.shape, name
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    assert ours[L.TOKEN_EMBD].shape == (VOCAB + 8, 48)  # the 8 rows past vocab_size, image token included
    np.testing.assert_array_equal(ours[L.TOKEN_EMBD][IMAGE_TOKEN],
                                  model.model.language_model.embed_tokens.weight[IMAGE_TOKEN].detach().numpy())
    assert ours[L.OUTPUT].shape == (VOCAB, 48)
    assert ours["blk.1.cross_attn_attn_gate"].shape == (1,) and "blk.1.attn_q.weight" not in ours
    assert "blk.0.cross_attn_q_proj.weight" not in ours and ours["blk.3.cross_attn_k_norm.weight"].shape == (12,)
    # the vision tower and projector are there too, as before
    state = model.state_dict()
    np.testing.assert_array_equal(ours["mm.proj.weight"], state["model.multi_modal_projector.weight"].numpy())
    np.testing.assert_array_equal(ours["v.gblk.1.gate_ffn"],
                                  state["model.vision_model.global_transformer.layers.1.gate_ffn"].numpy())
    text = [name for name in ours if L.is_text_tensor(name)]
    assert sorted(text) == sorted([*reference, L.ROPE_FREQS])
    reader = gguf_info.open_gguf(converted)
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}


def test_keys_carry_the_config(hf_model, converted):
    model, folder = hf_model
    found = fields(converted)
    text = model.config.text_config
    assert found["general.architecture"] == L.TEXT_ARCH == "mllama"
    expected = {
        L.KEY_TEXT_VOCAB: VOCAB, L.KEY_TEXT_CONTEXT: 131072, L.KEY_TEXT_HIDDEN: 48, L.KEY_TEXT_LAYERS: 4,
        L.KEY_TEXT_FFN: 64, L.KEY_TEXT_HEADS: 4, L.KEY_TEXT_HEADS_KV: 2, L.KEY_TEXT_ROPE_BASE: 500000.0,
        L.KEY_TEXT_ROPE_DIMS: 12, L.KEY_TEXT_ROPE_SCALING: "llama3", L.KEY_CROSS_LAYERS: [1, 3],
        L.KEY_IMAGE_TOKEN: IMAGE_TOKEN, L.KEY_BOS: 1, L.KEY_EOS: 2,
        # the vision keys keep their names in the same file
        L.KEY_IMAGE_SIZE: 28, L.KEY_LAYERS: 4, L.KEY_GLOBAL_LAYERS: 2, L.KEY_PROJECTION_DIM: 48,
    }
    for key, value in expected.items():
        assert found[key] == value, key
    assert found[L.KEY_TEXT_EPS] == pytest.approx(text.rms_norm_eps, rel=1e-7)
    assert found[L.KEY_TOKENIZER_JSON] == (folder / "tokenizer.json").read_text(encoding="utf-8")
    assert json.loads(found[L.KEY_TOKENIZER_JSON]) == TOKENIZER
    assert not [key for key in found if key.startswith("tokenizer.") and key not in
                (L.KEY_BOS, L.KEY_EOS, L.KEY_TOKENIZER_JSON)]
    reader = gguf_info.open_gguf(converted)
    assert reader.get_field(L.KEY_CROSS_LAYERS).types[-1].name == "INT32"


def test_rope_freqs_follow_llama3(hf_model, converted):
    model, _ = hf_model
    factors = weights(converted)[L.ROPE_FREQS]
    assert factors.shape == (6,)
    np.testing.assert_allclose(factors, HAND_FACTORS, rtol=1e-7)
    np.testing.assert_allclose(factors, independent_llama3_factors(12, ROPE), rtol=1e-7)
    # and against transformers' own inv_freq: plain / scaled
    inv = model.model.language_model.rotary_emb.inv_freq.numpy().astype(np.float64)
    plain = 1.0 / ROPE["rope_theta"] ** (np.arange(0, 12, 2) / 12)
    np.testing.assert_allclose(factors, plain / inv, rtol=1e-6)


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def _edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_hub_style_rope_scaling_and_default_rope(hf_model, converted, tmp_path):
    _, folder = hf_model

    def hub_style(config):  # older config.json: rope_scaling with "type" + rope_theta next to it
        text = config["text_config"]
        params = text.pop("rope_parameters")
        text["rope_theta"] = params.pop("rope_theta")
        params["type"] = params.pop("rope_type")
        text["rope_scaling"] = params

    hub = _copy(folder, tmp_path / "hub")
    _edit_config(hub, hub_style)
    convert(hub, tmp_path / "hub.gguf")
    np.testing.assert_array_equal(weights(tmp_path / "hub.gguf")[L.ROPE_FREQS], weights(converted)[L.ROPE_FREQS])
    assert fields(tmp_path / "hub.gguf")[L.KEY_TEXT_ROPE_SCALING] == "llama3"

    plain = _copy(folder, tmp_path / "plain")
    _edit_config(plain, lambda c: c["text_config"].update(rope_parameters={"rope_type": "default",
                                                                            "rope_theta": 10000.0}))
    convert(plain, tmp_path / "plain.gguf")
    np.testing.assert_array_equal(weights(tmp_path / "plain.gguf")[L.ROPE_FREQS], np.ones(6, np.float32))
    found = fields(tmp_path / "plain.gguf")
    assert found[L.KEY_TEXT_ROPE_SCALING] == "default" and found[L.KEY_TEXT_ROPE_BASE] == 10000.0
    assert L.KEY_TOKENIZER_JSON in found  # the copy has the tokenizer too


def test_in_memory_names_and_sharded_checkpoints(hf_model, converted, tmp_path):
    model, _ = hf_model
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    write_gguf(model.config.to_dict(), state, tmp_path / "memory.gguf")
    expected = weights(converted)
    ours = weights(tmp_path / "memory.gguf")
    assert sorted(ours) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert len(list(sharded.glob("*.safetensors"))) > 2
    convert(sharded, tmp_path / "sharded.gguf")
    ours = weights(tmp_path / "sharded.gguf")
    assert sorted(ours) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)


def test_f16_keeps_embeddings_norms_gates_and_rope_freqs_f32(hf_model, tmp_path):
    _, folder = hf_model
    assert cli("mllama", "convert", folder, "-o", tmp_path / "f16.gguf", "--dtype", "f16").returncode == 0
    types = {t.name: t.tensor_type.name for t in gguf_info.open_gguf(tmp_path / "f16.gguf").tensors}
    f32 = {L.TOKEN_EMBD, L.ROPE_FREQS, L.OUTPUT_NORM, "blk.0.attn_norm.weight", "blk.1.ffn_norm.weight",
           "blk.1.cross_attn_q_norm.weight", "blk.3.cross_attn_k_norm.weight", "blk.1.cross_attn_attn_gate",
           "blk.3.cross_attn_mlp_gate"}
    f16 = {L.OUTPUT, "blk.0.attn_q.weight", "blk.2.attn_output.weight", "blk.0.ffn_gate.weight",
           "blk.1.ffn_down.weight", "blk.1.cross_attn_q_proj.weight", "blk.3.cross_attn_o_proj.weight"}
    assert {name: types[name] for name in f32} == dict.fromkeys(f32, "F32")
    assert {name: types[name] for name in f16} == dict.fromkeys(f16, "F16")
    text = [name for name in types if L.is_text_tensor(name)]
    assert sorted(name for name in text if types[name] == "F16") == sorted(
        name for name in text if name not in f32 and not name.endswith(("_norm.weight", "_gate")))


def test_encode_runs_on_the_whole_model(hf_model, converted, tmp_path):
    _, folder = hf_model
    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    out = tmp_path / "encode.h5"
    result = cli("mllama", "encode", converted, "--image", tmp_path / "image.png", "--threads", "1",
                 "-T", "ca_patch_embd", "-o", out)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        ours = dump.read("ca_patch_embd")
    reference = reference_outputs(folder, tmp_path / "image.png", tmp_path / "hf.h5")["ca_patch_embd"]
    assert nmse(ours, reference) < 1e-10


def test_offload_only_moves_vision_layers():
    assert _on_offload("v.blk.0.attn_q.weight", 1)
    assert not _on_offload("v.blk.1.attn_q.weight", 1)
    assert not _on_offload("v.gblk.0.attn_q.weight", 4)
    assert not _on_offload("blk.0.attn_q.weight", 4)
    assert not _on_offload("blk.1.cross_attn_attn_gate", 4)
    assert not _on_offload("token_embd.weight", 4)


def _without(folder: Path, target: Path, drop) -> Path:
    target.mkdir()
    shutil.copy(folder / "config.json", target / "config.json")
    tensors = load_file(folder / "model.safetensors")
    save_file({name: value for name, value in tensors.items() if not drop(name)}, target / "model.safetensors")
    return target


def test_convert_bad_inputs(hf_model, tmp_path):
    _, folder = hf_model
    vision_only = _without(folder, tmp_path / "vision", lambda name: name.startswith("language_model."))
    assert_one_line_error(cli("mllama", "convert", vision_only, "-o", tmp_path / "a.gguf"), "has no text model")
    gate = "language_model.model.layers.1.cross_attn_attn_gate"
    one_missing = _without(folder, tmp_path / "gate", lambda name: name == gate)
    assert_one_line_error(cli("mllama", "convert", one_missing, "-o", tmp_path / "b.gguf"),
                          f"lacks text tensor {gate}")
    no_vision = _without(folder, tmp_path / "novision", lambda name: name.startswith("vision_model."))
    assert_one_line_error(cli("mllama", "convert", no_vision, "-o", tmp_path / "c.gguf"), "no vision model")

    far = _copy(folder, tmp_path / "far")
    _edit_config(far, lambda c: c.update(image_token_index=128256))  # transformers' default, past 308 rows
    assert_one_line_error(cli("mllama", "convert", far, "-o", tmp_path / "d.gguf"), "image_token_index 128256")
    yarn = _copy(folder, tmp_path / "yarn")
    _edit_config(yarn, lambda c: c["text_config"]["rope_parameters"].update(rope_type="yarn"))
    assert_one_line_error(cli("mllama", "convert", yarn, "-o", tmp_path / "e.gguf"), "rope_type 'yarn'")
    vocab = _copy(folder, tmp_path / "vocab")
    _edit_config(vocab, lambda c: c["text_config"].update(vocab_size=299))
    assert_one_line_error(cli("mllama", "convert", vocab, "-o", tmp_path / "f.gguf"), "has shape (308, 48)")
    layers = _copy(folder, tmp_path / "layers")
    _edit_config(layers, lambda c: c["text_config"].update(cross_attention_layers=[1, 2]))
    assert_one_line_error(cli("mllama", "convert", layers, "-o", tmp_path / "g.gguf"), "lacks text tensor")
    tokenizer = _copy(folder, tmp_path / "tok")
    (tokenizer / "tokenizer.json").write_bytes(b'{"model": "\xff"}')
    assert_one_line_error(cli("mllama", "convert", tokenizer, "-o", tmp_path / "h.gguf"), "not valid UTF-8 JSON")
    (tokenizer / "tokenizer.json").write_text("[1, 2]")
    assert_one_line_error(cli("mllama", "convert", tokenizer, "-o", tmp_path / "i.gguf"), "not a JSON object")
    assert not list(tmp_path.glob("*.gguf"))  # nothing half-written


def test_image_token_index_defaults_to_the_first_extra_row(hf_model, tmp_path):
    _, folder = hf_model
    missing = _copy(folder, tmp_path / "missing")
    _edit_config(missing, lambda c: c.pop("image_token_index"))
    convert(missing, tmp_path / "m.gguf")
    assert fields(tmp_path / "m.gguf")[L.KEY_IMAGE_TOKEN] == VOCAB
    last = _copy(folder, tmp_path / "last")
    _edit_config(last, lambda c: c.update(image_token_index=VOCAB + 7))
    convert(last, tmp_path / "l.gguf")
    assert fields(tmp_path / "l.gguf")[L.KEY_IMAGE_TOKEN] == VOCAB + 7


def test_vision_only_tensors_still_write_a_vision_gguf(tmp_path):
    """The torch-free tiny vision model (demo, graph tests) goes through write_gguf without a text model."""
    from inspector.tiny_models.mllama import write_tiny_mllama

    path = write_tiny_mllama(tmp_path / "vision.gguf")
    assert fields(path)["general.architecture"] == L.ARCH
    assert not [name for name in weights(path) if L.is_text_tensor(name)]


def test_hf_state_dict_has_no_unconverted_text_parameter(hf_model):
    model, _ = hf_model
    names = [name for name, _ in model.named_parameters() if L.gguf_name(name) is None]
    assert names == []


def test_the_output_head_is_hfs_lm_head_not_the_embedding(hf_model, converted):
    """output.weight is lm_head as saved and as the HF module holds it; the tiny config does not tie it."""
    model, folder = hf_model
    head = load_file(folder / "model.safetensors")["language_model.lm_head.weight"]
    ours = weights(converted)[L.OUTPUT]
    np.testing.assert_array_equal(ours, head)
    np.testing.assert_array_equal(ours, model.lm_head.weight.detach().numpy())
    embedding = model.model.language_model.embed_tokens.weight.detach().numpy()[:VOCAB]
    assert not model.config.text_config.tie_word_embeddings and not np.array_equal(ours, embedding)
