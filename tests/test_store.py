"""The HDF5 dump format: round trips, crash safety and untrusted input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from inspector import open_dump
from inspector.dump.format import SMALL_STATS, STATS_CHUNK, TensorStats
from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter
from inspector.errors import DumpError, InspectorError


def record(name: str, eval_index: int = 0, node: int = 0, occurrence: int = 0) -> TensorRecord:
    return TensorRecord(name=name, eval_index=eval_index, node_index=node, occurrence=occurrence, op="ADD",
                        ggml_type="f32", ne=(3, 2, 1, 1), nb=(4, 12, 24, 24), buffer="CPU", storage="native",
                        sources=["a", "b"], flags=["output"])


def test_round_trip_of_awkward_names_and_metadata(tmp_path):
    path = tmp_path / "d.h5"
    names = ["a/b", "with space", "ünïcödé-名前", "CUDA0#inp_embd#0", "Qcur-0 (view) (permuted)"]
    arrays = {}
    with DumpWriter(path, {"runner": "test"}, {"python": "x"}) as writer:
        writer.begin_evaluation("prompt", {"n_tokens": 2})
        for node, name in enumerate(names):
            arrays[name] = np.arange(6, dtype=np.float32).reshape(2, 3) * (node + 1)
            writer.write(record(name, node=node), arrays[name])
        writer.write(record("a/b", node=9, occurrence=1), np.zeros((2, 3), np.float32))
    with open_dump(path) as dump:
        assert dump.complete and dump.config["runner"] == "test"
        assert [e.name for e in dump.entries()] == names + ["a/b"]
        for name in names:
            np.testing.assert_array_equal(dump.read(name), arrays[name])
        np.testing.assert_array_equal(dump.read("a/b", occurrence=1), np.zeros((2, 3)))
        meta = dump.metadata(dump.find("a/b"))
        assert meta["sources"] == ["a", "b"] and meta["ne"] == [3, 2, 1, 1] and meta["flags"] == ["output"]
        assert dump.evaluations == [{"index": 0, "kind": "prompt", "n_tokens": 2}]
        assert dump.entries(["*view*"])[0].name == "Qcur-0 (view) (permuted)"


def test_stats_count_nan_and_inf_and_ignore_them():
    stats = TensorStats.of(np.array([1.0, np.nan, 3.0, np.inf, -np.inf], dtype=np.float32))
    assert (stats.n_nan, stats.n_inf) == (1, 2)
    assert (stats.min, stats.max, stats.mean) == (1.0, 3.0, 2.0)
    assert stats.std == pytest.approx(1.0)


def test_interrupted_writer_leaves_a_readable_incomplete_dump(tmp_path):
    path = tmp_path / "d.h5"
    with pytest.raises(KeyboardInterrupt):
        with DumpWriter(path, {}, {}) as writer:
            writer.begin_evaluation("prompt", {})
            writer.write(record("x"), np.ones((2, 3), np.float32))
            raise KeyboardInterrupt
    with open_dump(path) as dump:
        assert not dump.complete and dump.incomplete_reason == "interrupted"
        np.testing.assert_array_equal(dump.read("x"), np.ones((2, 3)))


def test_dump_left_open_by_a_crash_holds_everything_up_to_the_last_flush(tmp_path):
    """A writer that never closes (os._exit): the file opens with every tensor flushed before the end."""
    import subprocess
    import sys

    path = tmp_path / "crash.h5"
    script = (
        "import os, numpy as np\n"
        "from inspector.dump.writer import DumpWriter\n"
        "from inspector.dump.record import TensorRecord\n"
        f"w = DumpWriter({str(path)!r}, {{}}, {{}})\n"
        "w.begin_evaluation('prompt', {})\n"
        "for i in range(3):\n"
        "    w.write(TensorRecord(f't{i}', 0, i, 0, 'ADD', 'f32', (2,1,1,1), (4,8,8,8), 'CPU', 'native'),"
        " np.full(2, i, np.float32))\n"
        "w.flush()\n"
        "w.write(TensorRecord('late', 0, 3, 0, 'ADD', 'f32', (2,1,1,1), (4,8,8,8), 'CPU', 'native'),"
        " np.full(2, 3, np.float32))\n"
        "os._exit(1)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    with open_dump(path) as dump:
        assert not dump.complete
        assert [e.name for e in dump.entries()] == ["t0", "t1", "t2"]
        np.testing.assert_array_equal(dump.read("t2"), [2, 2])


def test_bytes_past_the_last_indexed_tensor_are_dropped_and_counted(tmp_path):
    """The index is written after the data: bytes it does not cover are not trusted, only counted."""
    import h5py

    path = tmp_path / "d.h5"
    with DumpWriter(path, {}, {}) as writer:
        writer.begin_evaluation("prompt", {})
        writer.write(record("kept"), np.ones((2, 3), np.float32))
    with h5py.File(path, "r+") as handle:  # as if a later tensor's bytes landed but not its row
        handle["tensors"].resize((24 + 40,))
    with open_dump(path) as dump:
        assert [e.name for e in dump.entries()] == ["kept"] and dump.dropped_bytes == 40


def test_existing_output_needs_overwrite(tmp_path):
    path = tmp_path / "d.h5"
    path.write_bytes(b"keep me")
    with pytest.raises(InspectorError, match="--overwrite"):
        DumpWriter(path, {}, {})
    assert path.read_bytes() == b"keep me"


@pytest.mark.parametrize("content,message", [
    (b"", "not an HDF5 file"),
    (b"GGUF" + b"\0" * 100, "not an HDF5 file"),
])
def test_files_that_are_not_dumps(tmp_path, content, message):
    path = tmp_path / "x.h5"
    path.write_bytes(content)
    with pytest.raises(DumpError, match=message):
        open_dump(path)


def test_foreign_hdf5_and_future_versions_are_refused(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(DumpError, match="not a ggml-inspector dump"):
        open_dump(foreign)
    future = tmp_path / "future.h5"
    with DumpWriter(future, {}, {}):
        pass
    with h5py.File(future, "a") as handle:
        handle.attrs["format_version"] = 99
    with pytest.raises(DumpError, match="format version 99"):
        open_dump(future)


def test_truncated_dump_is_a_clear_error(tmp_path):
    path = tmp_path / "d.h5"
    with DumpWriter(path, {}, {}) as writer:
        writer.begin_evaluation("prompt", {})
        writer.write(record("x"), np.ones((200, 300), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DumpError):
        with open_dump(path) as dump:
            dump.read("x")


def test_read_limit_bounds_untrusted_datasets(tmp_path):
    path = tmp_path / "d.h5"
    with DumpWriter(path, {}, {}) as writer:
        writer.begin_evaluation("prompt", {})
        writer.write(record("big"), np.ones((100, 100), np.float32))
    with open_dump(path) as dump, pytest.raises(DumpError, match="read limit"):
        dump.read("big", max_bytes=1000)


@pytest.mark.parametrize("tamper", ["dtype-v0", "subarray-dtype", "negative-shape", "config-list", "huge-index",
                                    "nested-json", "record-mismatch"])
def test_crafted_dumps_are_refused_in_one_line(tmp_path, tamper):
    """Dumps are untrusted: a crafted field gives DumpError (one CLI line), never another exception."""
    import h5py

    from inspector.errors import DumpError

    path = tmp_path / "crafted.h5"
    with DumpWriter(path, {}, {}) as writer:
        writer.begin_evaluation("prompt", {})
        writer.write(record("x"), np.ones((2, 3), np.float32))
        writer.write(record("y", node=1), np.ones((2, 3), np.float32))
    with h5py.File(path, "r+") as handle:
        index = handle["index"][()]
        if tamper == "dtype-v0":
            index["dtype"][0] = "V0"
        elif tamper == "subarray-dtype":
            index["dtype"][0] = "(2,)<f2"
        elif tamper == "negative-shape":
            index["shape"][0] = [-2, -3, 0, 0]
        elif tamper == "config-list":
            handle.attrs["config"] = "[]"
        elif tamper == "nested-json":
            handle.attrs["result"] = "[" * 100_000
        elif tamper == "huge-index":
            del handle["index"]
            handle.create_dataset("index", shape=(10**9,), maxshape=(None,), dtype=index.dtype, chunks=(1024,))
        elif tamper == "record-mismatch":
            index["seq"][0] = 1
        if "index" in handle and tamper != "huge-index":
            handle["index"][...] = index
    with pytest.raises(DumpError):
        with open_dump(path) as dump:
            for entry in dump:
                dump.read(entry)
                dump.metadata(entry)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("size", [1, 768, SMALL_STATS, SMALL_STATS + 1, 3 * STATS_CHUNK + 5])
def test_statistics_of_every_size_match_float64_numpy(dtype, size):
    """Small tensors take a short path, large ones the chunked pass: both as exact as float64 numpy, with an offset
    that would cancel in a naive sum of squares."""
    values = (1000.0 + np.random.default_rng(size).standard_normal(size)).astype(dtype)
    reference = values.astype(np.float64)
    stats = TensorStats.of(values)
    assert (stats.min, stats.max) == (reference.min(), reference.max())
    assert stats.mean == pytest.approx(reference.mean(), rel=1e-13)
    assert stats.std == pytest.approx(reference.std(), rel=1e-9, abs=1e-12)
    assert (stats.n_nan, stats.n_inf) == (0, 0)
    with_nan = values.copy()
    with_nan[size // 2] = np.nan
    counted = TensorStats.of(with_nan)
    kept = np.delete(reference, size // 2)
    assert counted.n_nan == 1 and (size == 1 or counted.mean == pytest.approx(kept.mean(), rel=1e-13))
