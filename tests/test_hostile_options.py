"""Options llama.cpp would abort on, and chat templates that would never finish: refused in one line.

Before the fixes ``-c 2147483648`` took 8.4 GB then std::bad_alloc,
``-t 100000`` died with SIGSEGV (ggml's pool holds 512 threads), ``-c 1``
with a 3-token prompt aborted in ``llama_decode``, ``rpc-server -p 99999``
was accepted, and ``{{ "a" * 9999999999 }}`` took 3.9 GB then hung.  Every
case runs the real command line under a 1 GiB address-space cap.
"""

from __future__ import annotations

import os

import pytest
from capped_cli import assert_refused, run_capped
from jinja2.sandbox import ImmutableSandboxedEnvironment
from PIL import Image

from inspector import open_dump
from inspector.errors import InspectorError
from inspector.llamacpp.config import LlamaRunConfig
from inspector.llamacpp.prompt import render_template
from inspector.tiny_models.mllama import write_tiny_mllama

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOO_MANY_THREADS = str(4 * (os.cpu_count() or 1) + 1)


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("hostile-options")
    image = folder / "photo.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(image)
    return write_tiny_mllama(folder / "vision.gguf"), image


def capture(model, tmp_path, *args: str):
    return run_capped("capture", "-m", model, "-t", "1", "-o", tmp_path / "out.h5", *args)


@pytest.mark.parametrize(("args", "fragment"), [
    (("--token-ids", "1,2", "-c", "2147483648"), "2147483648 is not in the range 0<=x<=2147483647"),
    (("--token-ids", "1,2", "-b", "2147483648"), "2147483648 is not in the range 1<=x<=2147483647"),
    (("--token-ids", "1,2", "-ub", "4294967296"), "4294967296 is not in the range 1<=x<=2147483647"),
    (("--token-ids", "1,2", "-n", "2147483648"), "2147483648 is not in the range -2<=x<=2147483647"),
    (("--token-ids", "1,2", "-t", "100000"), "100000 threads is more than"),
    (("--token-ids", "1,2", "-tb", TOO_MANY_THREADS), f"{TOO_MANY_THREADS} threads is more than"),
])
def test_capture_options_beyond_what_llama_cpp_honours(tiny_f32, tmp_path, args, fragment):
    assert_refused(capture(tiny_f32, tmp_path, *args), fragment)
    assert not (tmp_path / "out.h5").exists()


def test_a_context_whose_kv_cache_cannot_fit_is_refused_before_llama_cpp_allocates(tiny_f32, tmp_path):
    # 2 layers x 2 KV heads x 16 wide x (2 + 2 bytes) = 256 bytes a position: 25.6 GB for 10^8 positions.
    outcome = capture(tiny_f32, tmp_path, "--token-ids", "1,2", "-c", "100000000")
    assert_refused(outcome, "-c/--ctx-size 100000000 needs a KV cache of", "give a smaller -c")


def test_a_context_smaller_than_the_prompt_is_refused_with_the_token_count(tiny_f32, tmp_path):
    outcome = capture(tiny_f32, tmp_path, "--token-ids", "1,2,3", "-c", "1")
    assert_refused(outcome, "the prompt is 3 tokens: -c/--ctx-size 1 cannot hold it")


def test_a_context_just_large_enough_runs(tiny_f32, tmp_path):
    outcome = capture(tiny_f32, tmp_path, "--token-ids", "1,2,3", "-c", "3")
    assert outcome.returncode == 0, outcome.stderr
    with open_dump(tmp_path / "out.h5") as dump:
        tokens = dump.read("inp_tokens", eval_index=0)
    assert tokens.tolist() == [1, 2, 3]


def test_mllama_encode_threads_are_bounded(vision, tmp_path):
    model, image = vision
    outcome = run_capped("mllama", "encode", model, "--image", image, "-t", "100000", "-o", tmp_path / "out.h5")
    assert_refused(outcome, "100000 threads is more than")


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_rpc_server_refuses_a_port_outside_1_to_65535(port):
    outcome = run_capped("rpc-server", "-p", port, timeout=60)
    assert_refused(outcome, f"{port} is not in the range 1<=x<=65535")


def test_run_configs_made_in_python_are_bounded_too(tiny_f32):
    with pytest.raises(InspectorError, match="threads on this machine"):
        LlamaRunConfig(model=str(tiny_f32), prompt="hi", threads=100000).validate()
    with pytest.raises(InspectorError, match="llama.cpp's limit"):
        LlamaRunConfig(model=str(tiny_f32), prompt="hi", n_ctx=2**31).validate()


@pytest.mark.parametrize(("template", "fragment"), [
    ('{{ "a" * 9999999999 }}', "repeats a str 9999999999 times"),
    ("{{ 2 ** 100000000 }}", "a number too large"),
    ('{{ "%0999999999d" % 1 }}', "the chat template"),
    ('{{ "a" | center(2000000000) }}', "the chat template needed more than"),
    ('{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}', "did not render within 5"),
    ('{% for i in range(99999) %}{{ messages }}{% endfor %}', "the chat template's output passed"),
])
def test_jinja_templates_run_within_size_time_and_memory_limits(tiny_f32, tmp_path, template, fragment):
    outcome = capture(tiny_f32, tmp_path, "-p", "hi", "--jinja", "--chat-template", template)
    assert_refused(outcome, fragment)
    assert outcome.seconds < 60


def test_a_normal_template_renders_as_jinja_does(tiny_f32, tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, ggml!"}]
    variables = {"messages": messages, "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": True}
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHATML).render(**variables)
    assert render_template(CHATML, variables, 18) == plain
    outcome = capture(tiny_f32, tmp_path, "-p", "Hi, ggml!", "--jinja", "--chat-template", CHATML, "-c", "256")
    assert outcome.returncode == 0, outcome.stderr
