"""``mllama generate``: the whole Llama 3.2 Vision in ggml against transformers, and the late-read bug on purpose.

A tiny random MllamaForConditionalGeneration (every gate opened) is built
and saved by transformers here, converted by our converter, and run through
build_mllama + the text graph on one ggml scheduler.  The logits of every
prompt position must match transformers' with NMSE < 1e-10 on images of 1, 2
and 4 tiles, and greedy generation must give ``generate``'s tokens.  Then
``--vision-output late-read`` reproduces the original port's symptom: the
language model's output depends on a probe in the vision graph and what it
read depends on the offload count, while ``copy`` is unmoved by either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import assert_one_line_error, cli
from tiny_mllama_hf import IMAGE_TOKEN, convert_with_cli, make_model, save

from inspector import open_dump
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import preset
from inspector.ggml.rpc import LoopbackServer
from inspector.mllama.preprocess import PreprocessConfig, preprocess
from inspector.tiny_models.mllama import write_tiny_mllama

NMSE_LIMIT = 1e-10
# (w, h) -> tiles at tile size 28: one tile, a 1x2 grid, a 2x2 grid
IMAGES = {(20, 25): 1, (50, 22): 2, (60, 50): 4}
PROMPT = [1, 17, 33, IMAGE_TOKEN, 50, 61, 72, 99]


@pytest.fixture(scope="module")
def hf_model():
    return make_model(seed=0)


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory) -> Path:
    folder = save(hf_model, tmp_path_factory.mktemp("hf") / "tiny-mllama")
    return convert_with_cli(folder, tmp_path_factory.mktemp("gguf") / "mllama.gguf")


def image_file(folder: Path, size: tuple[int, int]) -> tuple[Path, Image.Image]:
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    path = folder / f"image-{size[0]}x{size[1]}.png"
    image.save(path)
    return path, image


def hf_inputs(image: Image.Image, token_ids: list[int]) -> dict[str, torch.Tensor]:
    """What MllamaProcessor would hand the model: our HF-exact preprocessing and its cross-attention mask."""
    pre = preprocess(image, PreprocessConfig(tile_size=28))
    tiles = int(pre.aspect_ratio_mask.sum())
    mask = torch.zeros(1, len(token_ids), 1, len(pre.aspect_ratio_mask), dtype=torch.long)
    mask[0, token_ids.index(IMAGE_TOKEN):, 0, :tiles] = 1  # from the image token to the end, real tiles
    return {"input_ids": torch.tensor([token_ids]), "pixel_values": torch.from_numpy(pre.inp_raw)[None, None],
            "aspect_ratio_ids": torch.from_numpy(pre.aspect_ratio_ids.astype(np.int64))[None],
            "aspect_ratio_mask": torch.from_numpy(pre.aspect_ratio_mask.astype(np.int64))[None, None],
            "cross_attention_mask": mask}


def nmse(ours: np.ndarray, reference: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(np.sum((ours.astype(np.float64) - reference) ** 2) / np.sum(reference ** 2))


def run(model: Path, image: Path, out: Path, *extra: object, tokens: list[int] = PROMPT):
    return cli("mllama", "generate", model, "--image", image, "--token-ids", ",".join(map(str, tokens)),
               "-t", "1", "-o", out, "--overwrite", *extra)


@pytest.mark.parametrize("size", list(IMAGES), ids=[f"{IMAGES[s]}-tiles" for s in IMAGES])
def test_logits_of_every_prompt_position_match_transformers(hf_model, converted, tmp_path, size):
    path, image = image_file(tmp_path, size)
    # The image token first, as real prompts start, and after three tokens, whose rows HF masks differently.
    for tokens in (PROMPT, [IMAGE_TOKEN, *PROMPT[:3], *PROMPT[4:]]):
        result = run(converted, path, tmp_path / "gen.h5", "-T", "result_output", tokens=tokens)
        assert result.returncode == 0, result.stderr
        with torch.no_grad():
            reference = hf_model(**hf_inputs(image, tokens), use_cache=False).logits[0].numpy()
        with open_dump(tmp_path / "gen.h5") as dump:
            assert [e["kind"] for e in dump.evaluations] == ["encode", "decode"]
            assert dump.result["tiles"] == IMAGES[size]
            logits = dump.read("result_output", eval_index=1)
        assert logits.shape == reference.shape
        assert nmse(logits, reference) < NMSE_LIMIT, nmse(logits, reference)


def test_greedy_generation_gives_transformers_tokens(hf_model, converted, tmp_path):
    path, image = image_file(tmp_path, (50, 22))
    result = run(converted, path, tmp_path / "gen.h5", "-n", "10", "-T", "result_output")
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = hf_model.generate(**hf_inputs(image, PROMPT), attention_mask=torch.ones(1, len(PROMPT),
                                     dtype=torch.long), max_new_tokens=10, min_new_tokens=10, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    with open_dump(tmp_path / "gen.h5") as dump:
        assert dump.result["generated_ids"] == expected
        assert [e["kind"] for e in dump.evaluations] == ["encode", "decode"] + ["generate"] * 9


def test_late_read_makes_the_text_depend_on_the_graph_and_copy_does_not(converted, tmp_path):
    path, _ = image_file(tmp_path, (50, 22))
    selected = ("-T", "result_output", "-T", "cross_attn_states", "-n", "4")
    outputs = {}
    for mode in ("copy", "late-read"):
        for probe in ((), ("--probe", "ln_pre")):
            out = tmp_path / f"{mode}{len(probe)}.h5"
            result = run(converted, path, out, "--vision-output", mode, *selected, *probe)
            assert result.returncode == 0, result.stderr
            with open_dump(out) as dump:
                outputs[mode, bool(probe)] = (dump.read("result_output", eval_index=1), dump.result["generated_ids"])
    np.testing.assert_array_equal(outputs["copy", False][0], outputs["copy", True][0])
    assert outputs["copy", False][1] == outputs["copy", True][1]
    late, late_probed = outputs["late-read", False], outputs["late-read", True]
    assert not np.array_equal(late[0], late_probed[0], equal_nan=True)
    assert not np.array_equal(late[0], outputs["copy", False][0], equal_nan=True)
    # The first tensor that differs from the copy run is what the language model read.
    comparison = compare_dumps(tmp_path / "copy0.h5", tmp_path / "late-read0.h5", preset("exact"))
    assert comparison.rows[comparison.first_divergence].name == "cross_attn_states"


def test_offload_moves_what_late_read_reads_and_leaves_copy_alone(converted, tmp_path):
    path, _ = image_file(tmp_path, (50, 22))
    read: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    with LoopbackServer() as server:
        for mode in ("copy", "late-read"):
            for layers in (0, 2):
                out = tmp_path / f"{mode}-ngl{layers}.h5"
                result = run(converted, path, out, "--vision-output", mode, "--rpc", server.endpoint, "-ngl",
                             str(layers), "-T", "result_output", "-T", "cross_attn_states", "-T", "l_out-0")
                assert result.returncode == 0, result.stderr
                with open_dump(out) as dump:
                    read[mode, layers] = (dump.read("cross_attn_states"), dump.read("result_output", eval_index=1))
                    on_rpc = dump.find("l_out-0", eval_index=1).buffer.startswith("RPC")
                    assert on_rpc == bool(layers)
    for index in range(2):
        np.testing.assert_array_equal(read["copy", 0][index], read["copy", 2][index])
    assert not np.array_equal(read["late-read", 0][0], read["late-read", 2][0], equal_nan=True)


def test_bad_inputs_are_one_line(converted, tmp_path):
    path, _ = image_file(tmp_path, (20, 25))
    assert_one_line_error(run(converted, path, tmp_path / "a.h5", tokens=[1, 17, 33]), "no image token")
    assert_one_line_error(run(converted, path, tmp_path / "b.h5", tokens=[1, IMAGE_TOKEN, 308]),
                          "outside the embedding table")
    assert_one_line_error(run(converted, path, tmp_path / "c.h5", "--vision-output", "sometimes"), "vision-output")
    vision_only = write_tiny_mllama(tmp_path / "vision-only.gguf")
    assert_one_line_error(run(vision_only, path, tmp_path / "d.h5"), "no mllama language model")
    assert not any(tmp_path.glob("*.h5"))


def test_a_text_prompt_goes_through_the_checkpoints_own_tokenizer(hf_model, converted, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {"<unk>": 0, "<|begin_of_text|>": 1, "a": 17, "photo": 33, "<|image|>": IMAGE_TOKEN, "of": 50,
                  "the": 61, "tower": 72}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|begin_of_text|>", "<|image|>"])
    folder = save(hf_model, tmp_path / "with-tokenizer")
    tokenizer.save(str(folder / "tokenizer.json"))
    model = tmp_path / "tokenized.gguf"
    assert cli("mllama", "convert", folder, "-o", model).returncode == 0
    path, _ = image_file(tmp_path, (20, 25))
    text = "<|begin_of_text|>a photo<|image|>of the tower"
    result = cli("mllama", "generate", model, "--image", path, "-p", text, "-n", "2", "-o", tmp_path / "p.h5")
    assert result.returncode == 0, result.stderr
    with open_dump(tmp_path / "p.h5") as dump:
        assert dump.result["token_ids"] == [1, 17, 33, IMAGE_TOKEN, 50, 61, 72]  # the vocabulary above, by hand
    assert_one_line_error(cli("mllama", "generate", model, "--image", path, "-o", tmp_path / "q.h5"),
                          "exactly one of -p/--prompt and --token-ids")
    assert_one_line_error(cli("mllama", "generate", converted, "--image", path, "-p", text, "-o", tmp_path / "r.h5"),
                          "has no tokenizer")


@pytest.mark.parametrize("vision_output", ["copy", "late-read"])
def test_the_native_hook_captures_what_the_python_hook_does(converted, tmp_path, vision_output):
    """The command line runs generate through the preloaded native hook, node by node on the scheduler it took; the
    Python API through the Python eval callback.  Every tensor of every evaluation, late-read's reused memory
    included, must be the same bytes, and each dump must say which hook ran."""
    from inspector.capture.selection import Selection
    from inspector.mllama.generate import GENERATE_RESERVES, GenerateConfig, generate

    path, _ = image_file(tmp_path, (50, 22))
    native = tmp_path / "native.h5"
    result = run(converted, path, native, "--vision-output", vision_output, "-n", "3")
    assert result.returncode == 0, result.stderr
    python = tmp_path / "python.h5"
    generate(GenerateConfig(model=str(converted), image=str(path), token_ids=PROMPT, n_predict=3, n_ctx=len(PROMPT) + 3,
                            vision_output=vision_output, threads=1), Selection(), python)
    with open_dump(native) as ours, open_dump(python) as theirs:
        assert ours.config["capture_mode"]["hook"] == "native"
        assert theirs.config["capture_mode"]["hook"] == "python"
        for dump in (ours, theirs):
            assert dump.config["capture_mode"]["callback_because"] == GENERATE_RESERVES
        assert ours.result["generated_ids"] == theirs.result["generated_ids"]
        assert [e["kind"] for e in ours.evaluations] == ["encode", "decode", "generate", "generate"]
        key = lambda e: (e.eval_index, e.name, e.occurrence)  # noqa: E731
        entries = {key(e): e for e in ours.entries()}
        assert set(entries) == {key(e) for e in theirs.entries()}
        assert len(entries) > 100
        for entry in theirs.entries():
            np.testing.assert_array_equal(ours.read(entries[key(entry)]), theirs.read(entry), err_msg=entry.name)
