"""``exec`` on an unmodified libmtmd client: the image encoder and the language model, on two schedulers.

The original mllama port was a C++ program whose vision graph had to be
edited to ``fwrite`` its ``inp_raw``.  ``tests/programs/mtmd_client.c`` is
such a program, untouched: under ``exec`` its encoder's graph (libmtmd's
scheduler) and its language model's (llama's) are captured and told apart,
and both equal a Python ``capture --mmproj`` of the same input bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import cli
from test_exec import compile_program
from test_multimodal_capture import SPEC, write_image

from inspector import open_dump
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import preset
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.llava import write_tiny_llava

SELECTED = ("-T", "inp_raw", "-T", "patch_bias", "-T", "embd", "-T", "l_out-*", "-T", "result_output")


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mtmd-client")
    return compile_program("mtmd_client.c", folder, "mtmd", "llama", "ggml", "ggml-base")


def test_an_unmodified_libmtmd_client_matches_capture_bit_for_bit(client, tmp_path):
    model = write_tiny_llama(tmp_path / "lm.gguf", TinyLlamaSpec(seed=6))
    projector = write_tiny_llava(tmp_path / "mmproj.gguf", SPEC)
    image = write_image(tmp_path / "photo.png", 45, 30, seed=7)
    prompt = "<__media__>Hi"
    native = cli("exec", *SELECTED, "-o", tmp_path / "native.h5", "--", client, model, projector, image, prompt)
    assert native.returncode == 0, native.stderr
    python = cli("capture", "-m", model, "--mmproj", projector, "--image", image, "-p", prompt, "-t", "1",
                 "-c", "128", "-fa", "off", *SELECTED, "-o", tmp_path / "python.h5")
    assert python.returncode == 0, python.stderr
    with open_dump(tmp_path / "native.h5") as dump:
        # BOS on llama's scheduler, the image on libmtmd's (created second), its embeddings and "Hi" on llama's;
        # the library that created each scheduler names the kind.
        assert [(e["kind"], e["sched"]) for e in dump.evaluations] == [
            ("decode", 0), ("encode", 1), ("decode", 0), ("decode", 0)]
        assert {e.name for e in dump if e.eval_index == 1} == {"inp_raw", "patch_bias"}
    comparison = compare_dumps(tmp_path / "python.h5", tmp_path / "native.h5", preset("exact"))
    counts = comparison.counts()
    assert counts["identical"] == len(comparison.rows) > 8 and comparison.first_divergence is None, counts
    # The program's own view agrees with the dump: BOS + the image's tokens + "Hi", and the logits' argmax.
    with open_dump(tmp_path / "python.h5") as dump:
        argmax = int(dump.read("result_output", eval_index=3).reshape(-1).argmax())
    assert native.stdout.split() == ["positions", str(1 + SPEC.n_patches + 2), "argmax", str(argmax)]
