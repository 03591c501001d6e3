"""The native hook stores a KV-cache write as the rows it wrote: a dump grows with the tokens, not with n_ctx.

``kv_client.c`` is an unmodified libllama program that decodes a prompt and
then generates, in a context of its choosing, with flash attention on (K and
V written as rows of a head's values) or off (V transposed: one-value rows).
Expected rows come from what the program fed (the positions recorded with
each evaluation, and the captured ``attn_inp_*_idxs`` leafs); expected
values from the tensors each write consumed, captured in the same run.
Hostile frames are the wire format of ``inspector/native/README.md`` built
byte for byte.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPT
from test_cli import cli
from test_exec import compile_program
from test_hostile_streams import assert_refused, import_folder, stream

from inspector import open_dump
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import preset
from inspector.dump.record import rows_written_of
from inspector.native.build import library_path
from inspector.tiny_models import TinyLlamaSpec

N_GENERATED = 3
SPEC = TinyLlamaSpec()  # tiny_f32's shape: n_embd 64, 4 heads, 2 KV heads, 2 layers
N_EMBD_GQA = SPEC.n_embd // SPEC.n_head * SPEC.n_head_kv
WRITES = {"on": ("cache_k_l{} (view)", "cache_v_l{} (view)"),
          "off": ("cache_k_l{} (view)", "cache_v_l{} (reshaped) (view)")}


@pytest.fixture(scope="module")
def kv_client(tmp_path_factory) -> Path:
    return compile_program("kv_client.c", tmp_path_factory.mktemp("kv"), "llama", "ggml", "ggml-base")


def executed(kv_client: Path, model: Path, out: Path, n_ctx: int, flash_attn: str) -> Path:
    result = cli("exec", "-o", out, "--", kv_client, model, PROMPT, n_ctx, N_GENERATED, flash_attn)
    assert result.returncode == 0, result.stderr
    return out


def expected_rows(positions: list[int], n_ctx: int, transposed: bool) -> list[int]:
    """The cache rows llama.cpp writes for one sequence from an empty cache: its cells are its positions, and a
    transposed V cache ([n_ctx, n_embd_gqa] as one column) takes value j of token t at row j * n_ctx + cell."""
    if not transposed:
        return positions
    return [j * n_ctx + cell for cell in positions for j in range(N_EMBD_GQA)]


@pytest.mark.parametrize("flash_attn", ["on", "off"])
def test_each_kv_write_stores_the_rows_it_wrote_and_their_values(kv_client, tiny_f32, tmp_path, flash_attn):
    n_ctx = 256
    out = executed(kv_client, tiny_f32, tmp_path / "kv.h5", n_ctx, flash_attn)
    with open_dump(out) as dump:
        assert dump.complete and len(dump.evaluations) == 1 + N_GENERATED
        n_prompt = len(dump.evaluations[0]["inputs"]["positions"])
        for evaluation in dump.evaluations:
            e, positions = evaluation["index"], evaluation["inputs"]["positions"]
            assert positions == (list(range(n_prompt)) if e == 0 else [n_prompt + e - 1])
            for layer in range(SPEC.n_layer):
                for kind, name in zip("kv", WRITES[flash_attn], strict=True):
                    transposed = kind == "v" and flash_attn == "off"
                    record = dump.metadata(dump.find(name.format(layer), e, 0))
                    rows = rows_written_of(record)
                    fed = dump.read(dump.find(f"attn_inp_{kind}_idxs", e, 0)).ravel().tolist()
                    assert rows == fed == expected_rows(positions, n_ctx, transposed), (name, e)
                    assert record["op"] == "SET_ROWS" and record["written_of_ne"] == (
                        [1, N_EMBD_GQA * n_ctx, 1, 1] if transposed else [N_EMBD_GQA, n_ctx, 1, 1])
                    stored = dump.read(dump.find(name.format(layer), e, 0))
                    assert stored.shape == (len(rows), 1 if transposed else N_EMBD_GQA)
                    source = record["source_details"][0]  # what the write copied into the cache, as f16
                    written = dump.read(dump.find(source["name"], e, source["occurrence"]))
                    np.testing.assert_array_equal(stored.ravel(), written.astype(np.float16).ravel())


def stored_bytes(path: Path) -> int:
    with open_dump(path) as dump:
        return sum(entry.nbytes for entry in dump)


@pytest.mark.parametrize("flash_attn", ["on", "off"])
def test_a_dump_is_the_same_size_at_sixteen_times_the_context(kv_client, tiny_f32, tmp_path, flash_attn):
    small = executed(kv_client, tiny_f32, tmp_path / "256.h5", 256, flash_attn)
    large = executed(kv_client, tiny_f32, tmp_path / "4096.h5", 4096, flash_attn)
    with open_dump(large) as dump:
        writes = [dump.metadata(entry) for entry in dump if entry.op == "SET_ROWS"]
        whole = sum(int(np.prod(record["written_of_ne"])) * 2 for record in writes)  # f16 caches
        # What storing each write's whole destination would have added: far more than the 10% allowed.
        assert len(writes) == 2 * SPEC.n_layer * (1 + N_GENERATED) and whole > stored_bytes(large)
    assert stored_bytes(large) <= 1.1 * stored_bytes(small)
    assert large.stat().st_size <= 1.1 * small.stat().st_size


@pytest.mark.parametrize("flash_attn", ["on", "off"])
def test_capture_and_exec_store_identical_kv_writes(kv_client, tiny_f32, tmp_path, flash_attn):
    captured = tmp_path / "capture.h5"
    result = cli("capture", "-m", tiny_f32, "-p", PROMPT, "-n", 1 + N_GENERATED, "-c", "256", "-t", "1",
                 "-fa", flash_attn, "-o", captured)
    assert result.returncode == 0, result.stderr
    native = executed(kv_client, tiny_f32, tmp_path / "exec.h5", 256, flash_attn)
    comparison = compare_dumps(captured, native, preset("exact"))
    counts = comparison.counts()
    assert counts["identical"] > 200 and counts["identical"] == sum(counts.values()), counts
    # Both runs hold the writes by their rows, so compare pairs rows with rows (not a whole view cut down).
    for path in (captured, native):
        with open_dump(path) as dump:
            writes = [dump.metadata(entry) for entry in dump if entry.op == "SET_ROWS"]
            assert len(writes) == 2 * SPEC.n_layer * (1 + N_GENERATED)
            assert all(rows_written_of(record) for record in writes)
    kv = [row for row in comparison.rows if row.op_a == "SET_ROWS"]
    assert len(kv) == 2 * SPEC.n_layer * (1 + N_GENERATED) and {row.status for row in kv} == {"identical"}


def test_a_dump_folder_imports_the_same_rows(kv_client, tiny_f32, tmp_path):
    """import reads the frames exec reads: a program writing a dump folder gives the same KV writes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGML_INSPECTOR")}
    env.update(GGML_INSPECTOR_DIR=str(tmp_path / "run"), LD_PRELOAD=str(library_path()))
    subprocess.run([kv_client, tiny_f32, PROMPT, "256", str(N_GENERATED), "on"], env=env, check=True,
                   capture_output=True)
    assert cli("import", tmp_path / "run", "-o", tmp_path / "imported.h5").returncode == 0
    native = executed(kv_client, tiny_f32, tmp_path / "exec.h5", 256, "on")
    comparison = compare_dumps(native, tmp_path / "imported.h5", preset("exact"))
    assert comparison.counts()["identical"] == sum(comparison.counts().values())
    with open_dump(tmp_path / "imported.h5") as dump:
        writes = [dump.metadata(entry) for entry in dump if entry.op == "SET_ROWS"]
        assert writes and all(record["rows_written"] for record in writes)


# A write of rows 2 and 5 of a destination of 8 rows of 4 f32 values, sent as the hook sends it.
ROWS = {"op": "SET_ROWS", "ne": [4, 2, 1, 1], "nb": [4, 16, 32, 32], "n_dims": 2, "rows_written": [[5, 1], [2, 1]],
        "written_of_ne": [4, 8, 1, 1]}


def test_a_write_sent_by_its_rows_is_imported_with_them(tmp_path):
    values = np.arange(8, dtype=np.float32)
    result, out = import_folder(tmp_path, stream(ROWS, values.tobytes()))
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        record = dump.metadata(dump.find("t", 0, 0))
        assert rows_written_of(record) == [5, 2] and record["written_of_ne"] == [4, 8, 1, 1]
        np.testing.assert_array_equal(dump.read("t"), values.reshape(2, 4))


def test_a_stream_without_rows_written_still_imports_the_tensor_whole(tmp_path):
    """Streams written before writes were sent by rows: the same SET_ROWS frame, whole, imports as it did."""
    values = np.arange(32, dtype=np.float32)
    whole = {key: value for key, value in ROWS.items() if key not in ("rows_written", "written_of_ne")}
    result, out = import_folder(tmp_path, stream({**whole, "ne": [4, 8, 1, 1], "nb": [4, 16, 128, 128]},
                                                 values.tobytes()))
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        record = dump.metadata(dump.find("t", 0, 0))
        assert rows_written_of(record) == [] and record["ne"] == [4, 8, 1, 1]
        np.testing.assert_array_equal(dump.read("t"), values.reshape(8, 4))


@pytest.mark.parametrize(("change", "data_rows", "fragment"), [
    ({"rows_written": [[7, 2]]}, 2, "its rows_written run [7, 2] is outside its 8 rows"),
    ({"rows_written": [[-1, 1], [2, 1]]}, 2, "its rows_written run [-1, 1] is outside its 8 rows"),
    ({"rows_written": [[2, 3]]}, 2, "stores [2] rows but records 3 written"),
    ({"rows_written": [[0, 1 << 40]], "written_of_ne": [4, 1 << 41, 1, 1]}, 2, "is outside its"),
    ({}, 3, "a KV-cache write of 2 rows of 16 bytes sent as 48 bytes"),
    ({"ne": [4, 3, 1, 1], "nb": [4, 16, 48, 48]}, 3, "stores [3] rows but records 2 written"),
    ({"written_of_ne": [4, 8, 2, 1]}, 2, "into a destination of ne [4, 8, 2, 1]: not its rows"),
    ({"written_of_ne": [4, 1 << 40, 1, 1]}, 2, "more than the 8 GiB the hook reads"),
    ({"written_of_ne": None}, 2, "written_of_ne is not four positive integers"),
    ({"rows_written": []}, 2, "not a list of 1 to 16384 runs"),
    ({"rows_written": [[0, 1]] * 16385}, 2, "not a list of 1 to 16384 runs"),
])
def test_a_forged_write_is_refused_in_one_line(tmp_path, change, data_rows, fragment):
    result, out = import_folder(tmp_path, stream({**ROWS, **change}, bytes(16 * data_rows)))
    assert_refused(result, fragment)
    assert not out.exists()
