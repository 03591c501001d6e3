"""A real full disk: a small tmpfs (as root) and RLIMIT_FSIZE, never a monkeypatched write.

The capture must stop with one line, exit non-zero, and leave a dump that
``ls``, ``show`` and ``compare`` open, holding every tensor written before
the disk filled, marked incomplete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import mount_tmpfs
from test_cli import cli

from inspector import open_dump
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

# Wide enough that a capture-all is several MiB: 3 MiB fill up mid-run.
SPEC = TinyLlamaSpec(n_embd=256, n_ff=512, n_layer=4, seed=9)
LONG_PROMPT = "Hello there, this is a longer prompt for a fuller graph"


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("wide") / "wide.gguf", SPEC)




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


def test_hdf5s_own_full_disk_error_leaves_a_valid_dump(tmp_path):
    """Without the writer's space check, HDF5 itself hits ENOSPC: the reserve lets it close cleanly."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not mount_tmpfs(folder):
        pytest.xfail("mounting a tmpfs needs root")
    try:
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
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        written, reason = result.stdout.split(maxsplit=1)
        assert reason.strip() == "disk full" and int(written) > 5
        listing = cli("ls", folder / "fb.h5")
        assert listing.returncode == 0, listing.stderr
        with open_dump(folder / "fb.h5") as dump:
            dropped = dump.dropped_bytes
        assert "incomplete (disk full)" in listing.stderr
        assert dropped == 0 or f"dropped {dropped} bytes" in listing.stderr
        with open_dump(folder / "fb.h5") as dump:
            assert not dump.complete and dump.incomplete_reason == "disk full"
            assert [e.name for e in dump] == [f"t{i}" for i in range(int(written))]
            for i, entry in enumerate(dump):
                assert (dump.read(entry) == i).all()
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
