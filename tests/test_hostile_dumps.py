"""Dumps from someone else: sizes that lie, HDF5 links, odd members; memory bounded whatever a file declares.

Every dump here is made by the real writer (``write_arrays``) and then
altered with h5py the way a hostile sender would: a `/tensors` stream of
gzip'd zeros declaring 3 GiB, index rows whose fields disagree, soft and
external links, a group where a dataset belongs. Each command runs as a
real CLI subprocess under a 1 GiB address-space cap (RLIMIT_AS, set in the
child before it starts Python), and must answer one line and exit 2, or a
correct result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from capped_cli import assert_refused, limit_memory, run_capped

from inspector.dump.format import CHUNK_BYTES, Compression
from inspector.dump.raw_import import write_arrays
from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter

BOMB_BYTES = 3 << 30


def small_dump(path: Path, values: dict[str, np.ndarray] | None = None) -> Path:
    values = values or {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.ones(5, dtype=np.float32)}
    write_arrays(path, values, "import", {}, {"runner": "import"}, overwrite=True)
    return path


def set_row(path: Path, name: str, **fields: object) -> None:
    """Rewrite fields of one index row in place."""
    with h5py.File(path, "r+") as file:
        rows = file["index"][()]
        for i in range(len(rows)):
            if rows["name"][i].decode() == name:
                for field, value in fields.items():
                    rows[field][i] = value
        file["index"][...] = rows


def gzip_zeros_bomb(path: Path) -> Path:
    """The issue's bomb: a 3 GiB /tensors stream of gzip'd zeros (a few MB) and a row declaring all of it.

    The chunks are written compressed as they are, once compressed, so making
    the file costs what it weighs, not 3 GiB.
    """
    small_dump(path)
    zeros = zlib.compress(bytes(CHUNK_BYTES), 9)
    with h5py.File(path, "r+") as file:
        del file["tensors"]
        stream = file.create_dataset("tensors", shape=(BOMB_BYTES,), dtype=np.uint8, chunks=(CHUNK_BYTES,),
                                     compression="gzip", compression_opts=9)
        for chunk in range(BOMB_BYTES // CHUNK_BYTES):
            stream.id.write_direct_chunk((chunk * CHUNK_BYTES,), zeros)
        rows = file["index"][()]
        rows["shape"][0] = [BOMB_BYTES // 4, 0, 0, 0]
        rows["ndim"][0] = 1
        rows["nbytes"][0] = BOMB_BYTES
        rows["offset"][0] = 0
        rows["offset"][1] = 0
        rows["min"][0] = rows["max"][0] = rows["mean"][0] = rows["std"][0] = 0.0
        rows["digest"][0] = "0"
        file["index"][...] = rows
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return gzip_zeros_bomb(tmp_path_factory.mktemp("bomb") / "bomb.h5")


def test_the_cap_leaves_room_for_a_normal_listing(tmp_path):
    result = run_capped("ls", small_dump(tmp_path / "fine.h5"))
    assert result.returncode == 0, result.stderr
    assert "2 tensors" in result.stderr


def test_the_bomb_is_small_and_declares_gigabytes(bomb):
    assert bomb.stat().st_size < 8 << 20
    with h5py.File(bomb) as file:
        assert file["tensors"].shape[0] == BOMB_BYTES
        assert file["index"]["nbytes"][0] == BOMB_BYTES


@pytest.mark.parametrize("command", [
    ("ls", "{bomb}"),
    ("show", "{bomb}", "x"),
    ("export", "{bomb}", "x", "-o", "{out}/x.npy"),
    ("plot", "hist", "{bomb}", "x", "-o", "{out}/h.png"),
    ("plot", "heatmap", "{bomb}", "x", "-o", "{out}/m.png"),
    ("compare", "{bomb}", "{bomb}"),
])
def test_a_gzip_zeros_bomb_is_refused_in_one_line_under_a_1_gib_cap(bomb, tmp_path, command):
    result = run_capped(*(part.format(bomb=bomb, out=tmp_path) for part in command))
    assert_refused(result, "compressed bytes, a ratio over 64:1")
    assert list(tmp_path.iterdir()) == []  # no .npy, no picture, no temporary file left behind


def test_a_stream_of_chunks_never_written_is_refused(tmp_path):
    """HDF5 reads a chunk never written as zeros at no cost: an uncompressed stream must store what it declares."""
    path = small_dump(tmp_path / "holes.h5")
    with h5py.File(path, "r+") as file:
        del file["tensors"]
        file.create_dataset("tensors", shape=(1 << 30,), dtype=np.uint8, chunks=(CHUNK_BYTES,))
    set_row(path, "x", shape=[1 << 28, 0, 0, 0], ndim=1, nbytes=1 << 30, offset=0)
    set_row(path, "y", offset=0)
    assert_refused(run_capped("show", path, "x"), "declares 1073741824 bytes, but the file stores 0 of them")


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"stored": "weird"}, "has stored='weird'; a dump stores 'full' or 'stats'"),
    ({"dtype": ">f4"}, "is ggml type 'f32' stored as dtype '>f4'"),
    ({"dtype": "O"}, "stored as dtype 'O'"),
    ({"ggml_type": "i32"}, "is ggml type 'i32' stored as dtype '<f4'"),
    ({"nbytes": 40}, "declares 40 bytes, but 12 values"),
    ({"ndim": 7}, "has 7 dimensions; ggml has at most 4"),
    ({"offset": -4}, "points outside the stored data"),
    ({"offset": 1 << 62}, "points outside the stored data"),
    ({"shape": [3, -4, 0, 0]}, "impossible shape"),
])
def test_an_index_row_whose_fields_disagree_is_refused_naming_the_tensor(tmp_path, fields, fragment):
    path = small_dump(tmp_path / "row.h5")
    set_row(path, "x", **fields)
    for command in (("ls", path), ("show", path, "y")):
        result = run_capped(*command)
        assert_refused(result, fragment)
        assert "'x'" in result.stderr


def test_a_stats_only_row_must_hold_its_sample(tmp_path):
    path = tmp_path / "stats.h5"
    with DumpWriter(path, {"runner": "import"}, {}, stats_only=True) as writer:
        writer.begin_evaluation("import", {})
        array = np.arange(100, dtype=np.float32)
        writer.write(TensorRecord.for_array("x", array, 0, 0, "IMPORT"), array)
    assert run_capped("ls", path).returncode == 0
    set_row(path, "x", nbytes=32)
    assert_refused(run_capped("ls", path), "declares 32 bytes, but 16 values")


@pytest.mark.parametrize("member", ["index", "records", "tensors"])
@pytest.mark.parametrize(("target", "fragment"), [
    ("self", "is a soft link to '/{member}'; a dump holds its members themselves"),
    ("/nowhere", "is a soft link to '/nowhere'"),
])
def test_a_soft_link_member_is_refused(tmp_path, member, target, fragment):
    path = small_dump(tmp_path / "soft.h5")
    with h5py.File(path, "r+") as file:
        del file[member]
        file[member] = h5py.SoftLink(f"/{member}" if target == "self" else target)
    assert_refused(run_capped("ls", path), f"/{member} " + fragment.format(member=member))


def test_an_external_link_is_never_followed(tmp_path):
    other = small_dump(tmp_path / "other.h5")
    path = small_dump(tmp_path / "external.h5")
    with h5py.File(path, "r+") as file:
        del file["tensors"]
        file["tensors"] = h5py.ExternalLink(str(other), "/tensors")
    os.chmod(other, 0)  # had the reader opened it, the message would be about permissions
    assert_refused(run_capped("show", path, "x"), f"/tensors is an external link to {other}:/tensors")


def test_an_evaluation_that_links_to_another_file_is_refused(tmp_path):
    other = small_dump(tmp_path / "other.h5")
    path = small_dump(tmp_path / "external.h5")
    with h5py.File(path, "r+") as file:
        file["evals"]["000001"] = h5py.ExternalLink(str(other), "/evals/000000")
    assert_refused(run_capped("ls", path), "/evals/000001 is an external link")


def test_external_storage_is_refused(tmp_path):
    path = small_dump(tmp_path / "storage.h5")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(64))
    with h5py.File(path, "r+") as file:
        del file["tensors"]
        file.create_dataset("tensors", shape=(64,), dtype=np.uint8, external=[(str(raw), 0, 64)])
    assert_refused(run_capped("show", path, "x"), "/tensors keeps its data in external files")


@pytest.mark.parametrize(("member", "fragment"), [
    ("index", "/index is a group, where a dump holds a dataset"),
    ("tensors", "/tensors is a group, where a dump holds a dataset"),
])
def test_a_group_where_a_dataset_belongs_is_refused(tmp_path, member, fragment):
    path = small_dump(tmp_path / "group.h5")
    with h5py.File(path, "r+") as file:
        del file[member]
        file.create_group(member)
    assert_refused(run_capped("ls", path), fragment)


def test_wrong_member_types_are_refused(tmp_path):
    path = small_dump(tmp_path / "types.h5")
    with h5py.File(path, "r+") as file:
        rows = file["index"][()]
        del file["index"]
        columns = [(name, "<f8" if name == "name" else "S8" if rows.dtype.fields[name][0].kind == "O"
                    else rows.dtype.fields[name][0]) for name in rows.dtype.names]
        retyped = np.zeros(len(rows), dtype=columns)
        file["index"] = retyped
    assert_refused(run_capped("ls", path), "/index column 'name' is float64")
    path = small_dump(tmp_path / "records.h5")
    with h5py.File(path, "r+") as file:
        del file["records"]
        file["records"] = np.zeros(2, dtype=np.int64)
    assert_refused(run_capped("ls", path), "/records holds int64, where a dump holds JSON strings")
    path = small_dump(tmp_path / "filter.h5")
    with h5py.File(path, "r+") as file:
        data = file["tensors"][()]
        del file["tensors"]
        file.create_dataset("tensors", data=data, chunks=(16,), scaleoffset=0)
    assert_refused(run_capped("ls", path), "uses the HDF5 filter 6 (scaleoffset)")


def test_a_large_tensor_streams_with_numpys_values_and_bounded_memory(tmp_path):
    """64 MB of float32, gzip-compressed: export, show, hist and compare hold a few pieces, not the tensor."""
    rng = np.random.default_rng(19)
    values = rng.standard_normal(16 << 20, dtype=np.float32).reshape(4096, 4096)
    path = tmp_path / "large.h5"
    with DumpWriter(path, {"runner": "import"}, {}, compression=Compression.parse("lzf")) as writer:
        writer.begin_evaluation("import", {})
        writer.write(TensorRecord.for_array("big", values, 0, 0, "IMPORT"), values)
    del values
    # VmHWM, the peak resident set of this program's memory since exec (ru_maxrss would include the
    # parent's at fork, which preexec_fn forces).
    peak = ("import re, runpy, sys; sys.argv = ['ggml-inspector', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('inspector', run_name='__main__')\n"
            "finally:\n    status = open('/proc/self/status').read()\n"
            "    print('peak', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)")

    def run(*args: object) -> tuple[subprocess.CompletedProcess, int]:
        result = subprocess.run([sys.executable, "-c", peak, *map(str, args)], capture_output=True, text=True,
                                preexec_fn=limit_memory, timeout=120)
        return result, int(result.stderr.rsplit("peak ", 1)[1]) * 1024

    _, baseline = run("ls", path)
    out = tmp_path / "big.npy"
    exported, peak_export = run("export", path, "big", "-o", out)
    assert exported.returncode == 0, exported.stderr
    expected = np.random.default_rng(19).standard_normal(16 << 20, dtype=np.float32).reshape(4096, 4096)
    np.testing.assert_array_equal(np.load(out), expected)
    assert peak_export - baseline < 32 << 20, (peak_export, baseline)
    shown, peak_show = run("show", path, "big", "-n", "3")
    assert shown.returncode == 0, shown.stderr
    total = float(np.sum(expected, dtype=np.float64))
    assert f"last:  {' '.join(f'{v:.6g}' for v in expected.reshape(-1)[-3:])}" in shown.stdout
    assert abs(float(shown.stdout.split(" sum ")[1].split()[0]) - total) <= 1e-5 * max(1.0, abs(total))
    assert peak_show - baseline < 32 << 20, (peak_show, baseline)
    _, plot_baseline = run("plot", "hist", small_dump(tmp_path / "small.h5"), "x", "-o", tmp_path / "s.png")
    histogram, peak_hist = run("plot", "hist", path, "big", "-o", tmp_path / "h.png")
    assert histogram.returncode == 0, histogram.stderr
    assert peak_hist - plot_baseline < 48 << 20, (peak_hist, plot_baseline)
    twin = tmp_path / "twin.h5"  # the same values under another digest: compare must read both, not trust them
    twin.write_bytes(path.read_bytes())
    set_row(twin, "big", digest="0")
    compared, peak_compare = run("compare", path, twin)
    assert compared.returncode == 0, compared.stderr
    assert peak_compare - baseline < 48 << 20, (peak_compare, baseline)
