"""``.frames`` streams from someone else: a frame's layout may not expand a few bytes into gigabytes.

The frames are the hook's wire format (inspector/native/README.md), built byte for
byte here; ``import`` runs as a real CLI subprocess under a 1 GiB
address-space cap and must refuse a forged frame in one line, exit 2,
before it writes a dump.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import capped_cli
import numpy as np
import pytest
from capped_cli import Outcome, run_capped

from inspector import open_dump

HEAD = struct.Struct("<IIIIQ")  # magic, kind, header length, reserved, data length
MAGIC = 0x48494747
HELLO, EVAL, TENSOR, BYE = 1, 2, 3, 6

def frame(kind: int, header: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return HEAD.pack(MAGIC, kind, len(text), 0, len(payload)) + text + payload


def stream(tensor: dict, data: bytes) -> bytes:
    base = {"sched": 0, "compute": 0, "name": "t", "node_index": 0, "occurrence": 0, "op": "NONE", "type": 0,
            "type_name": "f32", "n_dims": 4, "block_size": 1, "type_size": 4}
    return (frame(HELLO, {"pid": 7, "argv0": "forged", "compatible": True}) + frame(EVAL, {"sched": 0, "compute": 0})
            + frame(TENSOR, {**base, **tensor}, data) + frame(BYE, {"schedulers": 1, "computes": 1}))


def import_folder(tmp_path: Path, content: bytes) -> tuple[Outcome, Path]:
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    (folder / "7.frames").write_bytes(content)
    out = tmp_path / "imported.h5"
    return run_capped("import", folder, "-o", out), out


def assert_refused(result: Outcome, fragment: str) -> None:
    line = capped_cli.assert_refused(result, fragment)
    prefix = "ggml-inspector: error: 7.frames: frame 3"
    assert line.startswith((f"{prefix}: ", f"{prefix} (TENSOR): ")), line


def test_the_zero_stride_bomb_of_a_few_hundred_bytes_is_refused_in_one_line(tmp_path):
    """ne = [2^29, 3, 1, 1] over 16 bytes with zero strides would materialise 6 GiB."""
    content = stream({"ne": [1 << 29, 3, 1, 1], "nb": [0, 0, 0, 0]}, bytes(16))
    assert len(content) < 512
    result, out = import_folder(tmp_path, content)
    assert_refused(result, "strides repeat its 16 bytes into 6442450944 bytes")
    assert not out.exists()


@pytest.mark.parametrize(("tensor", "data", "fragment"), [
    # A layout that reaches past the bytes sent.
    ({"ne": [1 << 20, 1 << 10, 1, 1], "nb": [4, 1 << 22, 1 << 32, 1 << 32]}, bytes(16), "layout reaches byte"),
    # q8_0 (type 8) whose header claims 1-byte blocks of 256 values: 256x more values than bytes.
    ({"type": 8, "type_name": "q8_0", "block_size": 256, "type_size": 1, "ne": [1 << 20, 1, 1, 1],
      "nb": [1, 1 << 12, 1 << 12, 1 << 12]}, bytes(1 << 12), "ggml's are 32 and 34"),
    # f32 claimed with a type size of 1.
    ({"type_size": 1, "ne": [4, 1, 1, 1], "nb": [1, 4, 4, 4]}, bytes(16), "ggml's are 1 and 4"),
    ({"ne": [4, 1, 1, 1], "nb": [4, 16, 16, 16], "flags": [1]}, bytes(16), "a field of the wrong kind"),
    # A number past float64's range is refused as it is parsed (it would otherwise be an infinity).
    ({"ne": [4, 1, 1, 1], "nb": [4, 16, 16, 16], "flags": 1e400}, bytes(16), "a header that is not JSON"),
    ({"ne": [4, 1, 1, 1], "nb": [4, 16, 16, 16], "source_details": [{"name": 1}]}, bytes(16),
     "malformed source detail"),
    ({"ne": [-4, 1, 1, 1], "nb": [4, 16, 16, 16]}, bytes(16), "impossible layout"),
])
def test_a_forged_tensor_frame_is_refused_before_anything_is_written(tmp_path, tensor, data, fragment):
    result, out = import_folder(tmp_path, stream(tensor, data))
    assert_refused(result, fragment)
    assert not out.exists()


def test_overlapping_strides_ggml_allows_are_imported_with_their_real_extent(tmp_path):
    """A view reading rows that overlap (stride of one element for rows of three): ggml lets a view do this."""
    values = np.arange(6, dtype=np.float32)
    result, out = import_folder(tmp_path, stream({"ne": [3, 4, 1, 1], "nb": [4, 4, 16, 16]}, values.tobytes()))
    assert result.returncode == 0, result.stderr
    expected = np.stack([values[row:row + 3] for row in range(4)]).reshape(1, 1, 4, 3)
    with open_dump(out) as dump:
        np.testing.assert_array_equal(dump.read("t"), expected)


def test_a_stream_cut_inside_a_frame_is_still_imported(tmp_path):
    """Truncation is a crashed process, not a forged frame: whole frames are kept, the dump marked incomplete."""
    values = np.arange(6, dtype=np.float32)
    content = stream({"ne": [3, 2, 1, 1], "nb": [4, 12, 24, 24]}, values.tobytes())
    result, out = import_folder(tmp_path, content[:-10])
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        assert not dump.complete
        np.testing.assert_array_equal(dump.read("t"), values.reshape(1, 1, 2, 3))


# A view of 2 values out of rows 1,000 values long (nb[1] = 4,000 bytes), 3 rows: sent packed as 6 values.
SPARSE = {"ne": [2, 3, 1, 1], "nb": [4, 4000, 12000, 12000], "sent_nb": [4, 8, 24, 24], "n_dims": 2}


def test_a_sparse_view_sent_as_its_rows_keeps_the_graphs_strides(tmp_path):
    values = np.arange(6, dtype=np.float32)
    result, out = import_folder(tmp_path, stream(SPARSE, values.tobytes()))
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        assert dump.metadata(dump.find("t", 0, 0))["nb"] == [4, 4000, 12000, 12000]
        np.testing.assert_array_equal(dump.read("t"), values.reshape(3, 2))


@pytest.mark.parametrize(("change", "data_values", "fragment"), [
    ({"sent_nb": [4, 8, 24, 48]}, 6, "not its rows packed"),        # strides that are not the packed rows
    ({}, 5, "not its rows packed"),                                  # fewer bytes than the rows
    ({"sent_nb": [4, 8, 24]}, 6, "a tensor sent as"),                # three strides
    ({"sent_nb": ["x", 8, 24, 24]}, 6, "sent_nb is not four numbers"),
    ({"ne": [2, 3, 1 << 40, 1]}, 6, "not its rows packed"),          # a huge count of rows over six values
])
def test_a_forged_sparse_view_is_refused_in_one_line(tmp_path, change, data_values, fragment):
    result, out = import_folder(tmp_path, stream({**SPARSE, **change}, bytes(4 * data_values)))
    assert_refused(result, fragment)
    assert not out.exists()
