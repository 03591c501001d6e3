"""llama.cpp's own programs under ``exec``, against ``capture`` and against each other.

``llama-simple``, ``llama-completion`` and ``llama-mtmd-cli`` are built from
the pinned source (tests/llama_programs.py) and run unmodified on generated
models.  Each comparison is held against what the programs must have done,
worked out without them: the warm-up ``common_init_from_params`` decodes is
the model's BOS and EOS ids, read from the GGUF metadata with gguf-py; a
prompt's tokens are its bytes looked up in the GGUF's own vocabulary; an
image chunk sits after the chat template's text before the media marker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROMPT
from gguf import GGUFReader
from llama_programs import BuildError, Unit, compile_unit
from test_cli import cli
from test_multimodal_capture import MARKER, SPEC, write_image

from inspector import open_dump
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.llava import write_tiny_llava

# llama-completion as a plain completion (no chat template), greedy (temperature 0 keeps only the top logit,
# as capture chooses), on one thread, as capture is run here.
COMPLETION = ("-no-cnv", "--temp", "0", "-t", "1")
N_PREDICT = 8


def special_ids(model: Path) -> tuple[int, int]:
    """BOS and EOS as the GGUF metadata names them: the tokens llama.cpp's common warm-up decodes."""
    fields = GGUFReader(model).fields
    return fields["tokenizer.ggml.bos_token_id"].contents(), fields["tokenizer.ggml.eos_token_id"].contents()


def vocabulary_ids(model: Path, text: str) -> list[int]:
    """``text`` through the GGUF's byte-level SentencePiece vocabulary: BOS, then one ``<0xNN>`` per byte of the
    text with its spaces escaped to U+2581 (the vocabulary has no merges and no space prefix)."""
    tokens = GGUFReader(model).fields["tokenizer.ggml.tokens"].contents()
    by_text = {token: index for index, token in enumerate(tokens)}
    return [special_ids(model)[0]] + [by_text[f"<0x{byte:02X}>"] for byte in text.replace(" ", "\u2581").encode()]


def run(*args: object) -> None:
    """``ggml-inspector ARGS``, which must succeed; undecodable bytes replaced, as the programs print the tokens of
    a random model (bytes that are no UTF-8)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GGML_INSPECTOR_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True, text=True,
                            errors="replace", env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def completion(programs: Path, model: Path, prompt: str, out: Path, *extra: str) -> Path:
    run("exec", "-o", out, "--", programs / "llama-completion", "-m", model, "-p", prompt, *COMPLETION, *extra)
    return out


def tensors_and_evaluations(dump_path: Path) -> tuple[int, list[dict]]:
    with open_dump(dump_path) as dump:
        return len(dump.entries()), dump.evaluations


def compared(a: Path, b: Path) -> tuple[list[str], dict]:
    """``compare``'s text lines (it must pass) and its JSON document."""
    text = cli("compare", a, b)
    assert text.returncode == 0, text.stdout + text.stderr
    return text.stdout.splitlines(), json.loads(cli("compare", a, b, "--json").stdout)


def test_capture_and_llama_completion_agree_after_its_warm_up(llama_programs, tiny_f32, tmp_path):
    captured = tmp_path / "capture.h5"
    run("capture", "-m", tiny_f32, "-p", PROMPT, "-n", N_PREDICT, "-c", "512", "-t", "1", "-o", captured)
    executed = completion(llama_programs, tiny_f32, PROMPT, tmp_path / "completion.h5", "-n", str(N_PREDICT),
                          "-c", "512")
    bos, eos = special_ids(tiny_f32)
    n_tensors, evaluations = tensors_and_evaluations(captured)
    # The prompt, then N-1 generated tokens decoded: the N-th is chosen, never decoded, by both programs.
    assert len(evaluations) == N_PREDICT
    lines, document = compared(captured, executed)
    warm_up = f"B's evaluation 0 (tokens {bos}, {eos}) is not in A"
    assert f"alignment: {N_PREDICT} evaluations paired by tokens and positions; {warm_up}" in lines
    assert "\n".join(lines).count("is not in") == 1  # the warm-up, once: not as hundreds of missing tensors
    assert lines[-1].startswith(f"PASS: {n_tensors} tensors: {n_tensors} identical")
    assert document["alignment"]["pairs"] == [{"a": n, "b": n + 1, "rule": "content"} for n in range(N_PREDICT)]
    assert [(o["run"], o["eval"], o["inputs"]["tokens"]) for o in document["alignment"]["one_sided"]] == \
        [("b", 0, [bos, eos])]


def test_capture_and_llama_simple_compute_identical_tensors(llama_programs, tiny_f32, tmp_path):
    # llama-simple sizes its context to the prompt plus -n, which llama.cpp pads to 256 cache cells: the
    # model's training context (capture's default -c 0) makes the same cache.
    captured, executed = tmp_path / "capture.h5", tmp_path / "simple.h5"
    run("capture", "-m", tiny_f32, "-p", PROMPT, "-n", N_PREDICT, "-t", "1", "-o", captured)
    run("exec", "-o", executed, "--", llama_programs / "llama-simple", "-m", tiny_f32, "-n", N_PREDICT, PROMPT)
    n_tensors, _ = tensors_and_evaluations(captured)
    _, evaluations = tensors_and_evaluations(executed)
    prompt = vocabulary_ids(tiny_f32, PROMPT)
    assert evaluations[0]["inputs"]["tokens"] == prompt
    assert evaluations[0]["inputs"]["positions"] == list(range(len(prompt)))
    lines, document = compared(captured, executed)
    assert f"alignment: {N_PREDICT} evaluations paired by tokens and positions" in lines
    assert lines[-1] == (f"PASS: {n_tensors} tensors: {n_tensors} identical, 0 within, 0 diverged, 0 missing, "
                         f"0 mismatched (tolerance f32)")
    assert document["alignment"]["one_sided"] == []
    assert document["alignment"]["pairs"] == [{"a": n, "b": n, "rule": "content"} for n in range(N_PREDICT)]


def test_llama_completion_and_llama_simple_agree_but_for_the_warm_up(llama_programs, tiny_f32, tmp_path):
    simple = tmp_path / "simple.h5"
    run("exec", "-o", simple, "--", llama_programs / "llama-simple", "-m", tiny_f32, "-n", N_PREDICT, PROMPT)
    # No -c: both make the training context's 256 cells (see the test above).
    executed = completion(llama_programs, tiny_f32, PROMPT, tmp_path / "completion.h5", "-n", str(N_PREDICT))
    bos, eos = special_ids(tiny_f32)
    n_tensors, _ = tensors_and_evaluations(simple)
    lines, document = compared(executed, simple)
    assert (f"alignment: {N_PREDICT} evaluations paired by tokens and positions; A's evaluation 0 "
            f"(tokens {bos}, {eos}) is not in B") in lines
    assert lines[-1].startswith(f"PASS: {n_tensors} tensors: {n_tensors} identical")
    assert [(o["run"], o["eval"], o["inputs"]["tokens"]) for o in document["alignment"]["one_sided"]] == \
        [("a", 0, [bos, eos])]


def test_llama_completion_prompts_differing_in_one_token_give_the_inputs_verdict(llama_programs, tiny_f32,
                                                                                  tmp_path):
    other = PROMPT.replace("Hi", "Ho")
    ids_a, ids_b = vocabulary_ids(tiny_f32, PROMPT), vocabulary_ids(tiny_f32, other)
    (row,) = [n for n, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x != y]
    a = completion(llama_programs, tiny_f32, PROMPT, tmp_path / "a.h5", "-n", "1")
    b = completion(llama_programs, tiny_f32, other, tmp_path / "b.h5", "-n", "1")
    result = cli("compare", a, b)
    assert result.returncode == 1, result.stdout + result.stderr
    # Both warmed up alike (evaluation 0); the prompts are each one's evaluation 1.
    verdict = rf"inputs differ at evaluation 1 position {row}: A token {ids_a[row]}\b.*, B token {ids_b[row]}\b"
    assert re.match(verdict, result.stdout.splitlines()[0]), result.stdout


def test_llama_mtmd_cli_aligns_its_image_chunk_with_capture_mmproj(llama_programs, tmp_path):
    model = write_tiny_llama(tmp_path / "lm.gguf", TinyLlamaSpec(seed=6))
    projector = write_tiny_llava(tmp_path / "mmproj.gguf", SPEC)
    image = write_image(tmp_path / "photo.png", 45, 30, seed=7)
    prompt, captured, executed = MARKER + "Hi", tmp_path / "capture.h5", tmp_path / "mtmd.h5"
    # llama-mtmd-cli formats the prompt as one user turn with a chat template (the model has none: chatml, named
    # on both sides), and decodes every token it chooses: its -n 4 decodes what capture's -n 5 does.
    run("exec", "-o", executed, "--", llama_programs / "llama-mtmd-cli", "-m", model, "--mmproj", projector,
        "--image", image, "-p", prompt, "-n", "4", "-t", "1", "--temp", "0", "--chat-template", "chatml")
    run("capture", "-m", model, "--mmproj", projector, "--image", image, "-p", prompt, "-n", "5", "-t", "1",
        "--chat-template", "chatml", "-o", captured)
    before_image = len(vocabulary_ids(model, "<|im_start|>user\n"))
    image_rows = list(range(before_image, before_image + SPEC.n_patches))
    chunks = []
    for path in (captured, executed):
        _, evaluations = tensors_and_evaluations(path)
        (chunk,) = [e for e in evaluations if e.get("inputs_known") and "embd_digest" in e["inputs"]]
        (encoder,) = [e for e in evaluations if e["kind"] == "encode"]
        assert chunk["inputs"]["positions"] == image_rows
        chunks.append((encoder["index"], chunk["index"], chunk["inputs"]["embd_digest"]))
    (encoder_a, chunk_a, digest_a), (encoder_b, chunk_b, digest_b) = chunks
    assert digest_a == digest_b
    n_tensors, _ = tensors_and_evaluations(captured)
    lines, document = compared(captured, executed)
    assert {"a": encoder_a, "b": encoder_b, "rule": "order"} in document["alignment"]["pairs"]
    assert {"a": chunk_a, "b": chunk_b, "rule": "content"} in document["alignment"]["pairs"]
    bos, eos = special_ids(model)
    assert [(o["run"], o["eval"], o["inputs"]["tokens"]) for o in document["alignment"]["one_sided"]] == \
        [("b", 0, [bos, eos])]
    assert lines[-1].startswith(f"PASS: {n_tensors} tensors: {n_tensors} identical")


def test_a_unity_unit_that_does_not_compile_is_compiled_file_by_file_and_a_failure_names_its_file(tmp_path):
    # Two sources that each define a static twice(): fine apart, a redefinition in one translation unit.
    (tmp_path / "a.cpp").write_text("static int twice(int x) { return 2 * x; }\nint a() { return twice(1); }\n")
    (tmp_path / "b.cpp").write_text("static int twice(int x) { return x + x; }\nint b() { return twice(2); }\n")
    (tmp_path / "c.cpp").write_text("int c() { return undeclared; }\n")
    objects = tmp_path / "objects"
    objects.mkdir()
    made = compile_unit(tmp_path, objects, Unit("both", ("a.cpp", "b.cpp")))
    assert made == [objects / "both-0.o", objects / "both-1.o"] and all(path.stat().st_size for path in made)
    failure = r"(?s)^compiling c\.cpp failed \(exit 1\): .*c\.cpp:1:\d+: error: .undeclared. was not declared"
    with pytest.raises(BuildError, match=failure):
        compile_unit(tmp_path, objects, Unit("c", ("c.cpp",)))
