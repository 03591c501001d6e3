"""A real full disk: a small tmpfs (as root) and RLIMIT_FSIZE, never a monkeypatched write.

The capture must stop with one line, exit non-zero, and leave a dump that
``ls``, ``show`` and ``compare`` open, holding every tensor written before
the disk filled, marked incomplete.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_cli import cli

from inspector import open_dump
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.mllama import TinyMllamaSpec, write_tiny_mllama

# Wide enough that a capture-all is several MiB: 3 MiB fill up mid-run.
SPEC = TinyLlamaSpec(n_embd=256, n_ff=512, n_layer=4, seed=9)
LONG_PROMPT = "Hello there, this is a longer prompt for a fuller graph"


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("wide") / "wide.gguf", SPEC)


@pytest.fixture(scope="module")
def mllama_files(tmp_path_factory) -> dict[str, Path]:
    """A whole Llama 3.2 Vision GGUF (transformers' tiny model, converted), a wider vision tower, and an image.

    Capturing everything, ``generate -n 20`` writes about 7 MiB and the wider
    tower's ``encode`` about 3.5 MiB: both fill a 3 MiB disk mid-run.
    """
    from PIL import Image
    from tiny_mllama_hf import convert_with_cli, make_model, save

    folder = tmp_path_factory.mktemp("mllama")
    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 50, 3), dtype=np.uint8)).save(image)
    return {"whole": convert_with_cli(save(make_model(seed=0), folder / "hf"), folder / "whole.gguf"),
            "vision": write_tiny_mllama(folder / "vision.gguf", TinyMllamaSpec(hidden=64, ffn=128)),
            "image": image}


def run_cli(*args: object, **popen: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GGML_INSPECTOR_DEBUG"}
    return subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **popen)


def test_capture_to_a_full_disk_keeps_everything_written(wide_model, small_disk, tmp_path):
    folder, popen = small_disk
    out = folder / "run.h5"
    result = run_cli("capture", wide_model, "-p", LONG_PROMPT, "--threads", "1", "-o", out, **popen)
    assert result.returncode == 2, result.stderr
    assert result.returncode != -11 and "Traceback" not in result.stderr and "HDF5" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ggml-inspector: error")]
    assert len(errors) == 1, result.stderr
    assert ("disk full after" in errors[0] or "file size limit reached after" in errors[0]) and str(out) in errors[0]
    assert "marked incomplete" in errors[0]
    kept = int(errors[0].split(" after ")[1].split()[0])
    assert kept > 10
    with open_dump(out) as dump:
        assert not dump.complete and "after" in dump.incomplete_reason
        assert len(dump) == kept
        for entry in dump:
            dump.read(entry)  # every kept tensor reads back whole
    assert not list(folder.glob(".*space-reserve"))
    # The other commands open it too.
    listing = cli("ls", out)
    assert listing.returncode == 0 and "is incomplete" in listing.stderr
    shown = cli("show", out, "inp_tokens")
    assert shown.returncode == 0, shown.stderr
    reference = tmp_path / "ref.h5"
    assert cli("capture", wide_model, "-p", LONG_PROMPT, "--threads", "1", "-o", reference).returncode == 0
    compared = cli("compare", reference, out, "--json")
    assert compared.returncode == 1, compared.stderr
    counts = json.loads(compared.stdout)["counts"]
    assert counts["identical"] == kept and counts["diverged"] == 0 and counts["missing"] > 0


def test_hdf5s_own_full_disk_error_leaves_a_valid_dump(small_disk):
    """Without the writer's space check, HDF5 itself hits ENOSPC (tmpfs) or EFBIG (RLIMIT_FSIZE).

    The reserve (a file on the disk, room under the size limit) lets the dump close cleanly.
    """
    folder, popen = small_disk
    script = textwrap.dedent(f"""
        import numpy as np
        from inspector.files.disk_space import DiskFull
        from inspector.dump.record import TensorRecord
        from inspector.dump.writer import DumpWriter
        written = 0
        with DumpWriter({str(folder / "fb.h5")!r}, {{}}, {{}}, check_space=False) as writer:
            writer.begin_evaluation("prompt", {{}})
            try:
                for i in range(1000):
                    array = np.full(40000, i, dtype=np.float32)
                    writer.write(TensorRecord.for_array(f"t{{i}}", array, 0, i, "ADD"), array)
                    writer.flush()  # as at an evaluation boundary: this tensor is now durable
                    written += 1
            except DiskFull as full:
                print(written, full)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            **popen)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    written, reason = result.stdout.split(maxsplit=1)
    assert reason.strip() == full_disk_reason(popen) and int(written) > 5
    listing = cli("ls", folder / "fb.h5")
    assert listing.returncode == 0, listing.stderr
    with open_dump(folder / "fb.h5") as dump:
        dropped = dump.dropped_bytes
    assert f"incomplete ({full_disk_reason(popen)})" in listing.stderr
    assert dropped == 0 or f"dropped {dropped} bytes" in listing.stderr
    with open_dump(folder / "fb.h5") as dump:
        assert not dump.complete and dump.incomplete_reason == full_disk_reason(popen)
        assert [e.name for e in dump] == [f"t{i}" for i in range(int(written))]
        for i, entry in enumerate(dump):
            assert (dump.read(entry) == i).all()


def full_disk_reason(popen: dict) -> str:
    """What stops the dump on this variant of ``small_disk``: the tmpfs fills, or the file-size limit is hit."""
    return "file size limit reached" if "preexec_fn" in popen else "disk full"


def assert_kept_as_far_as_the_disk_held(result: subprocess.CompletedProcess[str], out: Path, reference: Path,
                                        reason: str) -> None:
    """The one uniform line, exit 2, and a dump that ``ls`` opens: the reference run's first tensors, unchanged."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "HDF5" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ggml-inspector: error")]
    assert len(errors) == 1, result.stderr
    line = re.fullmatch(rf"ggml-inspector: error: {reason} after (\d+) tensors; kept in {re.escape(str(out))}, "
                        "marked incomplete", errors[0])
    assert line is not None, errors[0]
    kept = int(line.group(1))
    listing = cli("ls", out)
    assert listing.returncode == 0 and f"is incomplete ({reason} after {kept} tensors)" in listing.stderr, listing
    with open_dump(reference) as whole, open_dump(out) as dump:
        assert dump.complete is False and dump.incomplete_reason == f"{reason} after {kept} tensors"
        assert 0 < kept == len(dump) < len(whole)
        # What the disk held is the start of the run, as the same run on a roomy disk wrote it.
        assert [(e.eval_index, e.name, e.digest) for e in dump] == [(e.eval_index, e.name, e.digest)
                                                                   for e in list(whole)[:kept]]
        for entry in dump:
            dump.read(entry)
    assert not list(out.parent.glob(".*space-reserve"))


def test_mllama_generate_on_a_full_disk_says_so_in_the_uniform_line(mllama_files, small_disk, tmp_path):
    folder, popen = small_disk
    command = ("mllama", "generate", mllama_files["whole"], "--image", mllama_files["image"], "--token-ids",
               "1,17,33,300,50,61", "-n", "20", "-t", "1")
    reference = tmp_path / "whole.h5"
    assert run_cli(*command, "-o", reference).returncode == 0
    result = run_cli(*command, "-o", folder / "g.h5", **popen)
    assert_kept_as_far_as_the_disk_held(result, folder / "g.h5", reference, full_disk_reason(popen))


def test_mllama_encode_on_a_full_disk_says_so_in_the_uniform_line(mllama_files, small_disk, tmp_path):
    folder, popen = small_disk
    command = ("mllama", "encode", mllama_files["vision"], "--image", mllama_files["image"], "-t", "1")
    reference = tmp_path / "whole.h5"
    assert run_cli(*command, "-o", reference).returncode == 0
    result = run_cli(*command, "-o", folder / "e.h5", **popen)
    assert_kept_as_far_as_the_disk_held(result, folder / "e.h5", reference, full_disk_reason(popen))
