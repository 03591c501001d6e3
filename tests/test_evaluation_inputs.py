"""Every evaluation records what it computed: tokens (or an embeddings digest), positions, output rows.

Held against what the model's tokenizer makes of the prompt, the tokens the
captured logits chose, the ids and positions a C program set itself, and
xxh3 of the embeddings the language model was fed; a ``capture`` and an
``exec`` of the same computation must record the same inputs, one learnt
from the runner and the other read from the graph by the native hook.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import xxhash
from conftest import PROMPT
from test_cli import assert_one_line_error, cli
from test_exec import LIBRARIES, PROGRAMS, compile_program
from test_exec_linked import run_linked
from test_hostile_streams import EVAL, HELLO, frame, import_folder, stream
from test_multimodal_capture import SPEC, write_image

from inspector import open_dump
from inspector.native.build import SOURCE, include_directory
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.llava import write_tiny_llava

INPUT, BYE = 7, 6
RUN = ("-t", "1", "-c", "64", "-ngl", "0", "-fa", "off")


def tokenizer_ids(model: Path, text: str) -> list[int]:
    """The model's own tokenizer, through llama-cpp-python's high-level API (BOS added, as a prompt is)."""
    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    return vocab.tokenize(text.encode(), add_bos=True, special=True)


def inputs_of(dump_path: Path) -> list[dict]:
    with open_dump(dump_path) as dump:
        return [evaluation.get("inputs") for evaluation in dump.evaluations]


def test_capture_records_the_prompt_tokens_then_each_generated_token_at_its_position(tiny_f32, tmp_path):
    out = tmp_path / "run.h5"
    result = cli("capture", tiny_f32, "-p", PROMPT, *RUN, "-n", "4", "-ub", "5", "-b", "5", "-T", "result_output",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    prompt = tokenizer_ids(tiny_f32, PROMPT)
    with open_dump(out) as dump:
        evaluations = dump.evaluations
        n_prompt = -(-len(prompt) // 5)
        logits = [dump.read("result_output", eval_index=e["index"]) for e in evaluations[n_prompt - 1:]]
    chosen = [int(rows.reshape(-1, rows.shape[-1])[-1].argmax()) for rows in logits]
    assert [e["kind"] for e in evaluations] == ["prompt"] * n_prompt + ["generate"] * 3
    assert all(e["inputs_known"] and e["inputs"]["source"] == "runner" for e in evaluations)
    pieces = [e["inputs"] for e in evaluations[:n_prompt]]
    assert sum((piece["tokens"] for piece in pieces), []) == prompt
    assert sum((piece["positions"] for piece in pieces), []) == list(range(len(prompt)))
    # Only the prompt's last row produces logits; each generated token produces its own.
    assert [piece["outputs"] for piece in pieces] == [[]] * (n_prompt - 1) + [[len(prompt) - 1 - 5 * (n_prompt - 1)]]
    for step, evaluation in enumerate(evaluations[n_prompt:]):
        # the token the previous evaluation's logits chose, at the next position
        assert evaluation["inputs"]["tokens"] == [chosen[step]]
        assert evaluation["inputs"]["positions"] == [len(prompt) + step]
        assert evaluation["inputs"]["outputs"] == [0] and evaluation["inputs"]["seq_ids"] == [0]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("programs")
    compile_program("llama_client.c", folder, "llama", "ggml", "ggml-base")
    compile_program("own_graph.c", folder, "ggml", "ggml-base")
    return folder


def test_exec_of_a_c_client_records_what_capture_records_for_the_same_prompt(built, tiny_f32, tmp_path):
    native = cli("exec", "-T", "l_out-1", "-o", tmp_path / "native.h5", "--", built / "llama_client", tiny_f32,
                 PROMPT)
    assert native.returncode == 0, native.stderr
    python = cli("capture", tiny_f32, "-p", PROMPT, *RUN, "-n", "1", "-T", "l_out-1", "-o", tmp_path / "python.h5")
    assert python.returncode == 0, python.stderr
    (graph,), (runner,) = inputs_of(tmp_path / "native.h5"), inputs_of(tmp_path / "python.h5")
    prompt = tokenizer_ids(tiny_f32, PROMPT)
    # llama_batch_get_one asks for the last row only: llama.cpp's out_ids says so.
    assert graph == {"tokens": prompt, "n_tokens": len(prompt), "positions": list(range(len(prompt))),
                     "outputs": [len(prompt) - 1], "source": "graph"}
    assert {key: runner[key] for key in graph if key != "source"} == {k: v for k, v in graph.items() if k != "source"}
    assert runner["source"] == "runner" and runner["seq_ids"] == [0] * len(prompt)


def test_a_graph_without_llama_inputs_says_its_inputs_are_unknown(built, tmp_path):
    out = tmp_path / "graph.h5"
    result = cli("exec", "-o", out, "--", built / "own_graph")
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        (evaluation,) = dump.evaluations
    assert evaluation["inputs_known"] is False and "inputs" not in evaluation
    listing = cli("ls", "--evals", out)
    assert listing.returncode == 0 and listing.stdout.splitlines()[2].split()[2:] == ["inputs", "unknown", "unsplit"]


def test_an_image_chunk_records_the_digest_of_the_embeddings_the_language_model_was_fed(tmp_path):
    model = write_tiny_llama(tmp_path / "lm.gguf", TinyLlamaSpec(seed=6))
    projector = write_tiny_llava(tmp_path / "mmproj.gguf", SPEC)
    image = write_image(tmp_path / "photo.png", 45, 30, seed=7)
    client = compile_program("mtmd_client.c", tmp_path, "mtmd", "llama", "ggml", "ggml-base")
    prompt = "<__media__>Hi"
    native = cli("exec", "-T", "embd", "-o", tmp_path / "native.h5", "--", client, model, projector, image, prompt)
    assert native.returncode == 0, native.stderr
    python = cli("capture", "-m", model, "--mmproj", projector, "--image", image, "-p", prompt, "-t", "1",
                 "-c", "128", "-fa", "off", "-T", "embd", "-o", tmp_path / "python.h5")
    assert python.returncode == 0, python.stderr
    for path, source in ((tmp_path / "python.h5", "runner"), (tmp_path / "native.h5", "graph")):
        with open_dump(path) as dump:
            evaluations = dump.evaluations
            # BOS, the image's encoder, its embeddings (the leaf llama.cpp names "embd"), "Hi"
            fed = dump.read("embd", eval_index=2)
        assert [e["inputs_known"] for e in evaluations] == [True, False, True, True]
        image_rows = evaluations[2]["inputs"]
        assert fed.shape == (SPEC.n_patches, 64) and fed.dtype == np.float32
        assert image_rows == {**image_rows, "embd_digest": xxhash.xxh3_64_hexdigest(fed.tobytes()), "n_embd": 64,
                              "n_tokens": SPEC.n_patches, "positions": list(range(1, 1 + SPEC.n_patches)),
                              "outputs": [], "source": source}
        assert "tokens" not in image_rows
        assert evaluations[3]["inputs"]["tokens"] == tokenizer_ids(model, "Hi")[1:]
        assert evaluations[3]["inputs"]["positions"] == [1 + SPEC.n_patches, 2 + SPEC.n_patches]


@pytest.fixture(scope="module")
def linked_inputs(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("linked") / "linked_inputs"
    command = ["cc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-DGGML_INSPECTOR_LINKED",
               f"-I{include_directory()}", f"-I{SOURCE.parent}", str(PROGRAMS / "linked_inputs.c"), str(SOURCE),
               "-o", str(output), f"-L{LIBRARIES}", f"-Wl,-rpath,{LIBRARIES}", "-lggml", "-lggml-base", "-lpthread"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return output


@pytest.mark.parametrize("path", ["tokens", "embd"])
def test_a_linked_program_records_only_the_input_its_graph_computes(linked_inputs, tmp_path, path):
    folder = tmp_path / "frames"
    ran, _pid = run_linked(linked_inputs, folder, path, "2")
    assert ran.returncode == 0 and ran.stdout.splitlines() == ["compute 0 status 0", "compute 1 status 0"], ran.stderr
    out = tmp_path / "linked.h5"
    imported = cli("import", folder, "-o", out)
    assert imported.returncode == 0, imported.stderr
    recorded = inputs_of(out)
    for r, inputs in enumerate(recorded):
        # The program sets both inputs every time: the graph's select alone says which one was computed.
        fed = ({"tokens": [r + 1, 2, 5, 7]} if path == "tokens" else
               {"embd_digest": xxhash.xxh3_64_hexdigest((0.5 * np.arange(16) + r).astype(np.float32).tobytes()),
                "n_embd": 4})
        assert inputs == {**fed, "n_tokens": 4, "positions": [4 * r + i for i in range(4)], "outputs": [1, 3],
                          "source": "graph"}
    assert len(recorded) == 2


def test_ls_evals_prints_a_line_per_evaluation_and_json_every_value(tiny_f32, tmp_path):
    out = tmp_path / "run.h5"
    assert cli("capture", tiny_f32, "-p", PROMPT, *RUN, "-n", "2", "-T", "l_out-0", "-o", out).returncode == 0
    prompt = tokenizer_ids(tiny_f32, PROMPT)
    text = cli("ls", "--evals", out)
    assert text.returncode == 0, text.stderr
    header, _rule, first, second = text.stdout.splitlines()
    assert header.split() == ["eval", "source", "n", "tokens", "positions", "outputs", "taken"]
    # One tensor fits any bound: each graph computed in one piece, nothing held.
    assert first.split() == ["0", "prompt", "runner", str(len(prompt)), *map(str, prompt[:8]), "...",
                             *map(str, range(8)), "...", "1", "unsplit"]
    assert second.split()[:4] == ["1", "generate", "runner", "1"] and \
        second.split()[-3:] == [str(len(prompt)), "1", "unsplit"]
    as_json = cli("ls", "--evals", "--json", out)
    with open_dump(out) as dump:
        assert json.loads(as_json.stdout)["evaluations"] == dump.evaluations
    assert_one_line_error(cli("ls", "--evals", "--config", out), "--config and --evals")


def _input_frame(header: dict, data: bytes) -> bytes:
    return frame(INPUT, {"sched": 0, "compute": 0, "type": 26, "ne": [len(data) // 4, 1, 1, 1], **header}, data)


def test_an_input_frame_from_a_stream_file_is_recorded_and_a_forged_one_refused_in_one_line(tmp_path):
    ids = np.array([5, 6, 7], dtype=np.int32).tobytes()
    whole = (frame(HELLO, {"pid": 7, "argv0": "forged", "compatible": True}) + frame(EVAL, {"sched": 0, "compute": 0})
             + _input_frame({"name": "inp_tokens"}, ids) + _input_frame({"name": "inp_pos"}, ids)
             + frame(BYE, {"schedulers": 1, "computes": 1}))
    result, out = import_folder(tmp_path, whole)
    assert result.returncode == 0, result.stderr
    assert inputs_of(out) == [{"tokens": [5, 6, 7], "n_tokens": 3, "positions": [5, 6, 7], "outputs": [0, 1, 2],
                               "source": "graph"}]
    base = stream({"ne": [1, 1, 1, 1], "nb": [4, 4, 4, 4]}, bytes(4))
    cut = base.index(frame(BYE, {"schedulers": 1, "computes": 1}))
    for header, data, fragment in (({"name": "blk.0.weight"}, ids, "a leaf the hook does not read"),
                                   ({"name": "inp_tokens"}, ids[:5], "of type 26"),
                                   ({"name": "inp_embd"}, ids, "of type 26"),
                                   ({"name": "inp_pos", "omitted": "too large"}, ids, "bytes it says it left out")):
        forged = base[:cut] + _input_frame(header, data) + base[cut:]
        (tmp_path / header["name"]).mkdir()
        refused, _out = import_folder(tmp_path / header["name"], forged)
        assert refused.returncode == 2 and "frame 4: " in refused.stderr and fragment in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
