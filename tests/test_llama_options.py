"""llama.cpp's command line: names, meanings and defaults, exact inputs, and the recorded configuration.

Every run goes through the CLI in a subprocess, as a llama.cpp user would
type it; expected token ids come from the generated vocabulary's byte rule
(``byte_token_ids``), never from the tokenizer under test.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPT
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.ggml.rpc import LoopbackServer
from inspector.tiny_models import TinyLlamaSpec, byte_token_ids, write_tiny_llama
from inspector.tiny_models.llama import BOS_ID, EOS_ID

ISSUE_COMMAND = ("-n", "3", "-c", "128", "-b", "32", "-ub", "16", "-ngl", "0", "-t", "1", "-fa", "off",
                 "-ctk", "f16", "-ctv", "f16", "--tensor", "l_out-*")
OLD_SPELLINGS = ("--n-predict", "3", "--ctx", "128", "--batch", "32", "--ubatch", "16", "--n-gpu-layers", "0",
                 "--threads", "1", "--flash-attn", "off", "--cache-type-k", "f16", "--cache-type-v", "f16",
                 "--tensor", "l_out-*")


def capture(*args: object) -> subprocess.CompletedProcess[str]:
    result = cli("capture", *args)
    assert result.returncode == 0, result.stderr
    return result


def logits(path: Path) -> np.ndarray:
    with open_dump(path) as dump:
        return dump.read("result_output")


def test_llama_cpp_spellings_are_recorded_under_llama_cpp_names(tiny_f32, tmp_path):
    out = tmp_path / "run.h5"
    capture("-m", tiny_f32, "-p", PROMPT, *ISSUE_COMMAND, "-o", out)
    with open_dump(out) as dump:
        config, result = dump.config, dump.result
        names = {entry.name for entry in dump}
    assert {key: config[key] for key in ("n_predict", "n_ctx", "n_batch", "n_ubatch", "n_gpu_layers", "threads",
                                         "flash_attn", "type_k", "type_v")} == {
        "n_predict": 3, "n_ctx": 128, "n_batch": 32, "n_ubatch": 16, "n_gpu_layers": 0, "threads": 1,
        "flash_attn": "off", "type_k": "f16", "type_v": "f16"}
    assert config["model"] == str(tiny_f32) and config["prompt"] == PROMPT
    assert names == {"l_out-0", "l_out-1"}
    assert result["n_ctx"] == 256  # llama.cpp pads the context to a multiple of 256 (llama-context.cpp)
    # 3 generated tokens: the prompt's evaluation, then one per generated token but the last.
    assert len(result["generated_ids"]) == 3 and result["evaluations"] == 3


def test_older_long_options_make_the_same_configuration(tiny_f32, tmp_path):
    capture(tiny_f32, "-p", PROMPT, *ISSUE_COMMAND, "-o", tmp_path / "new.h5")
    capture(tiny_f32, "-p", PROMPT, *OLD_SPELLINGS, "-o", tmp_path / "old.h5")
    with open_dump(tmp_path / "new.h5") as new, open_dump(tmp_path / "old.h5") as old:
        assert new.config == old.config


def test_t_is_threads_wherever_a_model_runs(tiny_f32, tmp_path):
    capture(tiny_f32, "-p", "x", "-t", "1", "-T", "l_out-0", "-o", tmp_path / "c.h5")
    with open_dump(tmp_path / "c.h5") as dump:
        assert dump.config["threads"] == 1 and dump.names() == ["l_out-0"]
    result = cli("sweep", tiny_f32, "-p", "x", "-t", "1", "-ngl", "0", "-T", "l_out-0", "-o", tmp_path / "s")
    assert result.returncode == 0, result.stderr
    with open_dump(next((tmp_path / "s").glob("*.h5"))) as dump:
        assert dump.config["threads"] == 1 and dump.names() == ["l_out-0"]


def test_sweep_takes_the_batch_and_generation_options(tiny_f32, tmp_path):
    result = cli("sweep", "-m", tiny_f32, "-p", PROMPT, "-t", "1", "-ngl", "0", "-b", "4", "-ub", "4", "-fa", "on",
                 "-n", "2", "-c", "64", "-o", tmp_path / "s")
    assert result.returncode == 0, result.stderr
    with open_dump(next((tmp_path / "s").glob("*.h5"))) as dump:
        config = dump.config
        evaluations = len(dump.evaluations)
    assert (config["n_batch"], config["n_ubatch"], config["flash_attn"], config["n_predict"]) == (4, 4, "on", 2)
    # 10 prompt tokens in ubatches of 4, then one more evaluation for the second generated token.
    assert evaluations == 3 + 1 == -(-len(byte_token_ids(PROMPT)) // 4) + 1


def test_token_ids_and_prompt_file_reproduce_the_prompt_run(tiny_f32, tmp_path):
    common = ("-t", "1", "-c", "64", "-fa", "off", "--all-logits", "-T", "result_output")
    capture(tiny_f32, "-p", PROMPT, *common, "-o", tmp_path / "p.h5")
    ids = byte_token_ids(PROMPT)
    capture(tiny_f32, "--token-ids", ",".join(map(str, ids)), *common, "-o", tmp_path / "ids.h5")
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT + "\n")  # llama.cpp drops one trailing newline
    capture(tiny_f32, "-f", prompt_file, *common, "-o", tmp_path / "f.h5")
    reference = logits(tmp_path / "p.h5")
    assert reference.shape[0] == len(ids)
    np.testing.assert_array_equal(logits(tmp_path / "ids.h5"), reference)
    np.testing.assert_array_equal(logits(tmp_path / "f.h5"), reference)
    for name in ("p", "ids", "f"):
        with open_dump(tmp_path / f"{name}.h5") as dump:
            assert dump.result["token_ids"] == ids
    with open_dump(tmp_path / "ids.h5") as dump:
        assert dump.config["token_ids"] == ids
    with open_dump(tmp_path / "f.h5") as dump:
        assert dump.config["prompt_file"] == str(prompt_file) and dump.config["prompt"] == PROMPT


def test_special_tokens_in_the_prompt_are_parsed(tiny_f32, tmp_path):
    capture(tiny_f32, "-p", "a</s>b", "-t", "1", "-c", "64", "-T", "l_out-0", "-o", tmp_path / "s.h5")
    with open_dump(tmp_path / "s.h5") as dump:
        # </s> is one control token, not the 4 bytes it is spelled with.
        assert dump.result["token_ids"] == [BOS_ID, *byte_token_ids("a", False), EOS_ID, *byte_token_ids("b", False)]


def test_builtin_chat_template_formats_one_user_turn(tiny_f32, tmp_path):
    capture(tiny_f32, "-p", "hi", "--chat-template", "chatml", "-t", "1", "-c", "128", "-T", "l_out-0",
            "-o", tmp_path / "c.h5")
    expected = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with open_dump(tmp_path / "c.h5") as dump:
        assert dump.config["conversation"] is True
        assert dump.result["formatted_prompt"] == expected
        assert dump.result["token_ids"] == byte_token_ids(expected)


@pytest.fixture(scope="module")
def templated_model(tmp_path_factory) -> Path:
    template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant] {% endif %}")
    return write_tiny_llama(tmp_path_factory.mktemp("chat") / "chat.gguf",
                            TinyLlamaSpec(seed=3, chat_template=template))


def test_jinja_renders_the_models_template_with_llama_cpp_variables(templated_model, tmp_path):
    capture(templated_model, "-p", "hi", "-sys", "be brief", "--jinja", "-t", "1", "-c", "128", "-T", "l_out-0",
            "-o", tmp_path / "j.h5")
    # The template's own BOS text is dropped, because the tokenizer adds BOS (as llama.cpp does).
    expected = "[system] be brief\n[user] hi\n[assistant] "
    with open_dump(tmp_path / "j.h5") as dump:
        assert dump.result["formatted_prompt"] == expected
        assert dump.result["token_ids"] == byte_token_ids(expected)


def test_the_prompt_recorded_is_the_one_rendering_that_was_tokenized(tiny_f32, tmp_path):
    """A template that reads the clock renders differently each time: the run renders it once, and records that text."""
    template = "{{ strftime_now('%S.%f') }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    capture(tiny_f32, "-p", "hi", "--jinja", "--chat-template", template, "-t", "1", "-c", "128", "-T", "l_out-0",
            "-o", tmp_path / "t.h5")
    with open_dump(tmp_path / "t.h5") as dump:
        recorded = dump.result["formatted_prompt"]
        assert re.fullmatch(r"\d{2}\.\d{6}hi", recorded)
        assert dump.result["token_ids"] == byte_token_ids(recorded)


def test_unknown_template_without_jinja_says_to_use_jinja(templated_model, tmp_path):
    result = cli("capture", templated_model, "-p", "hi", "-cnv", "-t", "1", "-o", tmp_path / "x.h5")
    assert_one_line_error(result, "pass --jinja")
    assert not (tmp_path / "x.h5").exists()


def test_a_template_cannot_reach_out_of_its_sandbox(tiny_f32, tmp_path):
    result = cli("capture", tiny_f32, "-p", "hi", "--jinja", "--chat-template",
                 "{{ messages.__class__.__mro__[1].__subclasses__() }}", "-t", "1", "-o", tmp_path / "x.h5")
    assert_one_line_error(result, "unsafe")


@pytest.mark.parametrize(("arguments", "fragment"), [
    (("--token-ids", "1,99999"), "99999 is outside the vocabulary"),
    (("--token-ids", "1,x"), "is not a comma-separated list"),
    (("-p", "hi", "--token-ids", "1"), "exactly one of -p/--prompt, -f/--file and --token-ids"),
    (("-p", "hi", "-f", "nowhere.txt"), "one of -p/--prompt and -f/--file"),
    (("-f", "nowhere.txt"), "no such file"),
    (("-p", "hi", "-ngl", "some"), "is not a number, 'auto' or 'all'"),
    (("-p", "hi", "-fa", "maybe"), "is not on, off or auto"),
    (("-p", "hi", "-dev", "GPU9"), "invalid device 'GPU9'"),
    (("-p", "hi", "-ot", "blk=NOWHERE"), "unknown buffer type 'NOWHERE'"),
    (("-p", "hi", "-ot", "blk[=CPU"), "is not a regular expression"),
    (("-p", "hi", "-c", "128", "-n", "1000"), "needs -c/--ctx-size 1003 or more (it is 256)"),
])
def test_bad_llama_options_fail_in_one_line(tiny_f32, tmp_path, arguments, fragment):
    result = cli("capture", tiny_f32, *arguments, "-t", "1", "-o", tmp_path / "x.h5")
    assert_one_line_error(result, fragment)


def test_two_models_or_none_fail_in_one_line(tiny_f32, tiny_f16, tmp_path):
    assert_one_line_error(cli("capture", tiny_f32, "-m", tiny_f16, "-p", "x"), "two models given")
    assert_one_line_error(cli("capture", "-p", "x"), "give the model with -m/--model")


def test_rpc_takes_a_comma_separated_list(tiny_f32, tmp_path):
    with LoopbackServer(threads=1) as server:
        # The first server answers; the second is checked on its own, not as part of one host "a,b".
        result = cli("capture", tiny_f32, "-p", "x", "-t", "1", "--rpc", f"{server.endpoint},127.0.0.1:1")
    assert_one_line_error(result, "RPC server 127.0.0.1:1 is unreachable")


def test_context_zero_is_the_models_training_context(tiny_f32, tmp_path):
    capture(tiny_f32, "-p", "x", "-t", "1", "-c", "0", "-T", "l_out-0", "-o", tmp_path / "c.h5")
    with open_dump(tmp_path / "c.h5") as dump:
        assert dump.config["n_ctx"] == 0 and dump.result["n_ctx"] == TinyLlamaSpec().n_ctx_train


def test_n_predict_minus_two_fills_the_context(tiny_f32, tmp_path):
    capture(tiny_f32, "-p", PROMPT, "-t", "1", "-n", "-2", "-T", "l_out-0", "-o", tmp_path / "g.h5")
    context = TinyLlamaSpec().n_ctx_train
    with open_dump(tmp_path / "g.h5") as dump:
        prompt_tokens = len(byte_token_ids(PROMPT))
        assert len(dump.result["generated_ids"]) == context - prompt_tokens
        # the last generated token is not decoded, so the context holds every token but it.
        assert dump.result["evaluations"] == 1 + context - prompt_tokens - 1


def buffers_of_weights(path: Path) -> dict[str, str]:
    with open_dump(path) as dump:
        return {entry.name: entry.buffer for entry in dump if entry.name.endswith(".weight")}


def test_offload_placement_options_put_weights_where_llama_cpp_would(tiny_f32, tmp_path):
    common = ("-p", "x", "-t", "1", "-c", "64", "-T", "blk.*.weight", "-T", "output.weight")
    with LoopbackServer(threads=1) as server:
        capture(tiny_f32, *common, "--rpc", server.endpoint, "-ngl", "all", "-o", tmp_path / "all.h5")
        capture(tiny_f32, *common, "--rpc", server.endpoint, "-ngl", "all", "-ot", r"blk\.1\.=CPU",
                "-o", tmp_path / "override.h5")
        capture(tiny_f32, *common, "--rpc", server.endpoint, "-ngl", "all", "-dev", "none",
                "-o", tmp_path / "none.h5")
    capture(tiny_f32, *common, "--no-mmap", "-o", tmp_path / "no-mmap.h5")
    capture(tiny_f32, *common, "-lm", "none", "-o", tmp_path / "none-mode.h5")
    capture(tiny_f32, *common, "-o", tmp_path / "mmap.h5")

    offloaded = buffers_of_weights(tmp_path / "all.h5")
    assert offloaded and all(buffer.startswith("RPC0[") for buffer in offloaded.values()), offloaded
    overridden = buffers_of_weights(tmp_path / "override.h5")
    assert {n for n, b in overridden.items() if not b.startswith("RPC")} == {n for n in overridden if "blk.1." in n}
    # Mapped from the file, as every CPU weight is with mmap on.
    assert all(b == "CPU_Mapped" for n, b in overridden.items() if "blk.1." in n), overridden
    assert all(not b.startswith("RPC") for b in buffers_of_weights(tmp_path / "none.h5").values())
    assert set(buffers_of_weights(tmp_path / "mmap.h5").values()) == {"CPU_Mapped"}
    assert set(buffers_of_weights(tmp_path / "no-mmap.h5").values()) == {"CPU"}
    assert set(buffers_of_weights(tmp_path / "none-mode.h5").values()) == {"CPU"}


def test_ls_config_prints_a_command_line_that_reproduces_the_run(tiny_f32, tmp_path):
    first = tmp_path / "first.h5"
    capture("-m", tiny_f32, "-p", "it's \"quoted\"", "-n", "2", "-c", "96", "-b", "8", "-ub", "4", "-t", "1",
            "-fa", "on", "-ctk", "f32", "--no-mmap", "-s", "7", "--all-logits", "-T", "l_out-*",
            "--tensor-filter", "^attn_norm", "--compression", "gzip:3", "-o", first)
    listed = cli("ls", "--config", "--json", first)
    assert listed.returncode == 0, listed.stderr
    line = json.loads(listed.stdout)["command_line"]
    words = shlex.split(line)
    assert words[:2] == ["ggml-inspector", "capture"]
    second = tmp_path / "second.h5"
    result = subprocess.run([sys.executable, "-m", "inspector", *words[1:], "-o", str(second)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open_dump(first) as a, open_dump(second) as b:
        assert a.config == b.config
        assert [(e.name, e.digest) for e in a] == [(e.name, e.digest) for e in b]
    text = cli("ls", "--config", first)
    assert text.returncode == 0 and line in text.stdout and "n_ctx = 96" in text.stdout


def test_help_does_not_import_heavy_libraries():
    """``--help`` and command parsing stay fast: llama.cpp, numpy, h5py, PIL and matplotlib load only when used."""
    probe = ("import sys\nfrom inspector.cli import main\n"
             "for args in (['--help'], ['capture', '--help'], ['ls', '--help'], ['plot', 'stats', '--help']):\n"
             "    try:\n        main(args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('numpy', 'h5py', 'PIL', 'matplotlib', 'llama_cpp', 'jinja2') "
             "if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
