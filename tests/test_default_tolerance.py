"""compare's default tolerance follows the runs' types, and its one line of settings names only what matters.

Real captures of generated models: the expected presets are the documented
rules (docs/compare.md, "Default tolerance"), the weights' file types are
the numbers the model writer stored as llama.cpp names them (llama.h's
``LLAMA_FTYPE_*``), fingerprints are recomputed here, and the exec dumps come
from an unmodified libllama client that warms up as llama.cpp's programs do.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import llama_cpp
import pytest
from conftest import PROMPT, run_capture
from test_cli import cli
from test_exec import compile_program

from inspector import open_dump
from inspector.compare.align import align
from inspector.compare.runs import compare_dumps
from inspector.compare.settings import MAX_VALUE_CHARS, describe
from inspector.compare.tolerance import ToleranceRequest, choose_preset
from inspector.gguf.header import LEADING_METADATA_BYTES, fingerprint
from inspector.llamacpp.facts import model_facts
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

LAYERS = ("l_out-*",)


@pytest.fixture(scope="module")
def tiny_quant(tmp_path_factory) -> Path:
    """K-quant and Q4_0/IQ4_NL matrices (general.file_type 15): a quantized model, as small as they come."""
    return write_tiny_llama(tmp_path_factory.mktemp("quant") / "tiny-quant.gguf",
                            TinyLlamaSpec(dtype="quant", n_embd=256, n_ff=256, seed=4))


@pytest.fixture(scope="module")
def warmup_client(tmp_path_factory) -> Path:
    return compile_program("warmup_client.c", tmp_path_factory.mktemp("programs"), "llama", "ggml", "ggml-base")


def capture(model: Path, path: Path, **config: object) -> Path:
    run_capture(model, path, LAYERS, **config)
    return path


def configs(*paths: Path) -> list[dict]:
    opened = [open_dump(path) for path in paths]
    try:
        return [dump.config for dump in opened]
    finally:
        for dump in opened:
            dump.close()


def test_model_facts_name_the_weights_file_type(tiny_f32, tiny_f16, tiny_quant):
    assert llama_cpp.LLAMA_FTYPE_ALL_F32 == 0 and llama_cpp.LLAMA_FTYPE_MOSTLY_F16 == 1
    assert llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M == 15  # what write_tiny_llama stores for dtype "quant"
    assert [model_facts(str(m))["file_type"] for m in (tiny_f32, tiny_f16, tiny_quant)] == ["F32", "F16", "Q4_K_M"]


def test_the_file_type_is_found_after_short_arrays_but_no_vocabulary_is_walked(tmp_path):
    """Converters write general.tags (an array) before general.file_type; the vocabulary comes later."""
    def write(path: Path, tags: list[str]) -> Path:
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name("tagged")
        writer.add_array("general.tags", tags)
        writer.add_file_type(7)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        return path

    assert model_facts(str(write(tmp_path / "tags.gguf", ["gemma", "google"])))["file_type"] == "Q8_0"
    # An array that does not end within the bounded read is not walked: the key after it stays unknown.
    vocabulary = [f"token{index}" for index in range(LEADING_METADATA_BYTES // 8)]
    assert model_facts(str(write(tmp_path / "vocab.gguf", vocabulary)))["file_type"] is None


def test_the_preset_follows_the_weights_cache_types_flash_attention_and_batch_splits(tiny_f32, tiny_quant, tmp_path):
    quant = capture(tiny_quant, tmp_path / "quant.h5")
    quant_ub3 = capture(tiny_quant, tmp_path / "quant-ub3.h5", n_ubatch=3, n_batch=3)
    quant_t2 = capture(tiny_quant, tmp_path / "quant-t2.h5", threads=2)
    f32 = capture(tiny_f32, tmp_path / "f32.h5")
    f32_ub3 = capture(tiny_f32, tmp_path / "f32-ub3.h5", n_ubatch=3, n_batch=3)
    f32_fa = capture(tiny_f32, tmp_path / "f32-fa.h5", flash_attn="on")
    # tiny_f32's heads (16 wide) are too narrow for a q8_0 cache's 32-element blocks.
    quant_fa = capture(tiny_quant, tmp_path / "quant-fa.h5", flash_attn="on")
    quant_q8 = capture(tiny_quant, tmp_path / "quant-q8.h5", flash_attn="on", type_k="q8_0", type_v="q8_0")
    expected = {
        (quant, quant_ub3): ("quant", "tolerance quant: batch splits differ with Q4_K_M weights (quantized matmul "
                                      "kernels differ by batch size)"),
        (quant, quant_t2): ("f32", "tolerance f32: no recorded setting makes the runs round differently (weight "
                                   "and KV cache types, flash attention, batch splits)"),
        (f32, f32_ub3): ("f32", "tolerance f32: batch splits differ with F32 weights (float32 sums in another "
                                "order)"),
        (f32, quant): ("quant", "tolerance quant: weights F32 vs Q4_K_M (quantization error)"),
        (f32, f32_fa): ("f16", "tolerance f16: flash attention off vs on (f16 rounding)"),
        (quant_fa, quant_q8): ("quant", "tolerance quant: KV cache f16/f16 vs q8_0/q8_0 (quantized cache)"),
        (quant, quant_fa): ("quant", "tolerance quant: flash attention off vs on with Q4_K_M weights (their "
                                     "quantized activations amplify rounding differences)"),
    }
    for (a, b), (name, reason) in expected.items():
        tolerance = compare_dumps(a, b, ToleranceRequest()).tolerance
        assert (tolerance.name, tolerance.reason) == (name, reason), (a.name, b.name)
    listed = cli("ls", "--config", quant).stdout.splitlines()
    assert any(line.startswith("model: tiny-llama (llama)") and line.endswith(", weights Q4_K_M") for line in listed)


def test_batch_splits_are_read_from_the_rows_not_from_the_options(tiny_f32, warmup_client, tmp_path):
    prompt_rows = capture(tiny_f32, tmp_path / "ub512.h5", n_predict=2)
    # A prompt shorter than both ubatch sizes is split alike, whatever -ub says.
    same = capture(tiny_f32, tmp_path / "ub64.h5", n_predict=2, n_ubatch=64, n_batch=64)
    split = capture(tiny_f32, tmp_path / "ub3.h5", n_predict=2, n_ubatch=3, n_batch=3)
    executed = tmp_path / "exec.h5"
    result = cli("exec", "-T", "l_out-*", "-o", executed, "--", warmup_client, tiny_f32, PROMPT, "2")
    assert result.returncode == 0, result.stderr

    def differ(a: Path, b: Path) -> bool:
        with open_dump(a) as dump_a, open_dump(b) as dump_b:
            return bool(align(dump_a.evaluations, dump_b.evaluations).splits)

    assert not differ(prompt_rows, same) and differ(prompt_rows, split)
    # The client decodes BOS, EOS first and then the whole prompt: the warm-up is superseded, not a split.
    assert not differ(prompt_rows, executed) and differ(split, executed)
    config_a, config_b = configs(prompt_rows, same)
    assert (config_a["n_ubatch"], config_b["n_ubatch"]) == (512, 64)


def test_compare_says_which_preset_and_why_and_a_named_one_wins(tiny_quant, tmp_path):
    a = capture(tiny_quant, tmp_path / "a.h5")
    b = capture(tiny_quant, tmp_path / "b.h5", n_ubatch=3, n_batch=3)
    reason = ("tolerance quant: batch splits differ with Q4_K_M weights (quantized matmul kernels differ by batch "
              "size)")
    text = cli("compare", a, b)
    assert text.returncode in (0, 1), text.stderr
    lines = text.stdout.splitlines()
    assert lines[-2] == reason and lines[-1].endswith("(tolerance quant)")
    document = json.loads(cli("compare", a, b, "--json").stdout)
    assert document["tolerance"] == {"name": "quant", "nmse": 5e-3, "atol": 0.0, "rtol": 0.0, "reason": reason}
    named = json.loads(cli("compare", a, b, "--json", "--tolerance", "f32").stdout)["tolerance"]
    assert (named["name"], named["nmse"], named["reason"]) == ("f32", 1e-7, "tolerance f32: named with --tolerance")
    custom = json.loads(cli("compare", a, b, "--json", "--nmse", "1e-3").stdout)["tolerance"]
    assert (custom["name"], custom["nmse"]) == ("quant+custom", 1e-3)
    assert custom["reason"] == reason + "; --nmse/--atol/--rtol replace its thresholds"
    report = tmp_path / "report.html"
    assert cli("report", a, b, "-o", report).returncode == 0
    html = report.read_text()
    assert reason in html and "runs differ in: n_batch: 2048 -&gt; 3, n_ubatch: 512 -&gt; 3" in html


def test_the_settings_line_names_only_what_differs_and_matters(tiny_f32, tiny_f16, warmup_client, tmp_path):
    a = capture(tiny_f32, tmp_path / "a.h5")
    ubatch = capture(tiny_f32, tmp_path / "ub4.h5", n_ubatch=4)
    lines = cli("compare", a, ubatch).stdout.splitlines()
    differ = [line for line in lines if line.startswith("runs differ in:")]
    assert differ == ["runs differ in: n_ubatch: 512 -> 4"]
    document = json.loads(cli("compare", a, ubatch, "--json").stdout)
    assert document["setting_differences"] == {"n_ubatch": [512, 4]}
    # Another model: its identity (fingerprint prefix; both are named tiny-llama) and its weights' type.
    other = capture(tiny_f16, tmp_path / "f16.h5")
    line = next(line for line in cli("compare", a, other).stdout.splitlines() if line.startswith("runs differ"))
    assert line == (f"runs differ in: model: {fingerprint(tiny_f32)[:8]} -> {fingerprint(tiny_f16)[:8]}, "
                    "weights: 'F32' -> 'F16'")
    # An exec of another program records none of these settings: nothing to say, though argv, cwd... differ.
    executed = tmp_path / "exec.h5"
    result = cli("exec", "-T", "l_out-*", "-o", executed, "--", warmup_client, tiny_f32, PROMPT, "0")
    assert result.returncode == 0, result.stderr
    compared = cli("compare", a, executed, "--json")
    document = json.loads(compared.stdout)
    assert {"argv", "n_ubatch", "runner"} <= set(document["config_differences"])
    assert document["setting_differences"] == {}
    assert not any(line.startswith("runs differ") for line in cli("compare", a, executed).stdout.splitlines())


def test_long_values_are_cut_and_unrecorded_settings_are_not_differences():
    long_prompt = "x" * 500
    line = describe({"prompt": ("short", long_prompt), "threads": (None, 4), "argv": (["a"], ["b"]),
                     "n_ctx": (64, 128)})
    prompt_a, prompt_b = "'short'", repr(long_prompt)[:MAX_VALUE_CHARS - 3] + "..."
    assert line == f"prompt: {prompt_a} -> {prompt_b}, n_ctx: 64 -> 128"
    assert choose_preset({"type_k": "f16"}, {}, splits_differ=False).name == "f32"
