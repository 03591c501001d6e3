"""Hostile GGUF files: real generated models with one header field rewritten at its byte offset.

Each crafted file goes to ``gguf``, ``mllama encode`` and ``capture`` as a
real subprocess under a 1 GiB address-space cap.  Before the fixes an array
count of 2^63 or a nested array made gguf-py allocate without end, a tensor
offset of 2^64-32 wrapped around to the header (exit 0), a zero dimension
aborted ggml, and ggml's own parser messages (one with invalid UTF-8 that
crashed llama-cpp-python's log callback) came before ours.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from capped_cli import assert_refused, digest, run_capped
from PIL import Image

from inspector.tiny_models.mllama import write_tiny_mllama

# The GGUF value types' sizes (gguf-py's GGUFValueType), for this independent walker.
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9


@dataclass
class KeyValue:
    key: str
    key_length_at: int
    type_at: int
    value_type: int
    element_type_at: int | None = None
    count_at: int | None = None


@dataclass
class TensorRow:
    name: str
    dims_at: list[int] = field(default_factory=list)
    offset_at: int = 0


@dataclass
class Layout:
    kvs: list[KeyValue]
    tensors: list[TensorRow]


def walk(data: bytes) -> Layout:
    """Where each header field of a GGUF lies, read by hand from the format (not by the code under test)."""
    assert data[:4] == b"GGUF"
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    at = 24

    def string() -> str:
        nonlocal at
        (length,) = struct.unpack_from("<Q", data, at)
        text = data[at + 8:at + 8 + length].decode()
        at += 8 + length
        return text

    def value(value_type: int) -> None:
        nonlocal at
        if value_type == STRING:
            string()
        else:
            at += SCALAR_SIZES[value_type]

    kvs = []
    for _ in range(n_kv):
        key_at = at
        key = string()
        (value_type,) = struct.unpack_from("<I", data, at)
        entry = KeyValue(key, key_at, at, value_type)
        at += 4
        if value_type == ARRAY:
            entry.element_type_at, entry.count_at = at, at + 4
            element, count = struct.unpack_from("<IQ", data, at)
            at += 12
            for _ in range(count):
                value(element)
        else:
            value(value_type)
        kvs.append(entry)
    tensors = []
    for _ in range(n_tensors):
        row = TensorRow(string())
        (n_dims,) = struct.unpack_from("<I", data, at)
        at += 4
        row.dims_at = [at + 8 * i for i in range(n_dims)]
        at += 8 * n_dims + 4
        row.offset_at = at
        at += 8
        tensors.append(row)
    return Layout(kvs, tensors)


def mutated(source: Path, folder: Path, name: str, edits: list[tuple[int, bytes]]) -> Path:
    data = bytearray(source.read_bytes())
    for offset, raw in edits:
        data[offset:offset + len(raw)] = raw
    path = folder / f"{name}.gguf"
    path.write_bytes(bytes(data))
    return path


def first_array(layout: Layout) -> KeyValue:
    return next(kv for kv in layout.kvs if kv.value_type == ARRAY)


def crafted(source: Path, folder: Path) -> dict[str, Path]:
    """Every hostile variant of ``source`` that ggml's parser must refuse."""
    layout = walk(source.read_bytes())
    array = first_array(layout)
    first = layout.kvs[0]
    return {
        "array-count-2^63": mutated(source, folder, "count", [(array.count_at, struct.pack("<Q", 2**63))]),
        "nested-array": mutated(source, folder, "nested", [(array.element_type_at, struct.pack("<I", ARRAY))]),
        "key-length-2^63": mutated(source, folder, "keylen", [(first.key_length_at, struct.pack("<Q", 2**63))]),
        "tensor-offset-wraps": mutated(source, folder, "offset",
                                       [(layout.tensors[1].offset_at, struct.pack("<Q", 2**64 - 32))]),
        # A key of invalid UTF-8 with an invalid type: ggml logs the key in its complaint.
        "invalid-utf8-key": mutated(source, folder, "utf8", [(first.key_length_at + 8, b"\xff\xfe"),
                                                             (first.type_at, struct.pack("<I", 99))]),
    }


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("hostile-gguf")
    image = folder / "photo.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(image)
    return write_tiny_mllama(folder / "vision.gguf"), image


def in_parallel(calls):
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_the_walker_reads_the_generated_files(vision, tiny_f32):
    for source in (vision[0], tiny_f32):
        layout = walk(source.read_bytes())
        assert layout.tensors and first_array(layout).count_at
        (offset,) = struct.unpack_from("<Q", source.read_bytes(), layout.tensors[0].offset_at)
        assert offset == 0


def test_legitimate_files_work_under_the_cap(vision, tiny_f32, tmp_path):
    model, image = vision
    shown, encoded = in_parallel([
        lambda: run_capped("gguf", tiny_f32, "--tensors"),
        lambda: run_capped("mllama", "encode", model, "--image", image, "-t", "1", "-o", tmp_path / "ok.h5"),
    ])
    assert shown.returncode == 0, shown.stderr
    assert encoded.returncode == 0, encoded.stderr
    assert (tmp_path / "ok.h5").exists()


def test_gguf_command_refuses_each_crafted_file_in_one_line(vision, tiny_f32, tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "vision").mkdir()
    files = {f"llama {k}": v for k, v in crafted(tiny_f32, tmp_path / "llama").items()}
    files |= {f"vision {k}": v for k, v in crafted(vision[0], tmp_path / "vision").items()}
    before = {name: digest(path) for name, path in files.items()}
    outcomes = in_parallel([lambda path=path: run_capped("gguf", path) for path in files.values()])
    for (name, path), outcome in zip(files.items(), outcomes, strict=True):
        line = assert_refused(outcome, "is not a valid GGUF file (ggml's parser rejected it")
        assert "Traceback" not in outcome.stderr, name
        assert digest(path) == before[name], name
        if "utf8" in name:
            assert "invalid GGUF type 99" in line


def test_mllama_encode_refuses_crafted_files_before_reading_weights(vision, tmp_path):
    model, image = vision
    files = crafted(model, tmp_path)
    layout = walk(model.read_bytes())
    last = layout.tensors[-1]
    # A zero dimension in the last tensor keeps every offset valid: ggml's parser accepts it, ggml's ops abort.
    files["zero-dimension"] = mutated(model, tmp_path, "zero", [(last.dims_at[0], struct.pack("<Q", 0))])
    outcomes = in_parallel([lambda path=path: run_capped("mllama", "encode", path, "--image", image, "-t", "1",
                                                         "-o", tmp_path / f"{path.stem}.h5")
                            for path in files.values()])
    for (name, path), outcome in zip(files.items(), outcomes, strict=True):
        if name == "zero-dimension":
            assert_refused(outcome, f"tensor {last.name!r} has a zero dimension")
        else:
            assert_refused(outcome, "ggml's parser rejected it")
        assert not (tmp_path / f"{path.stem}.h5").exists(), name


def test_mllama_encode_refuses_a_tensor_shape_the_hyperparameters_do_not_give(vision, tmp_path):
    model, image = vision
    layout = walk(model.read_bytes())
    row = next(t for t in layout.tensors if t.name == "v.patch_embd.weight")
    data = model.read_bytes()
    # Swap the kernel's two last dimensions (3 channels, 32 outputs): same size, so every offset stays valid.
    first, second = (struct.unpack_from("<Q", data, at)[0] for at in row.dims_at[2:4])
    swapped = mutated(model, tmp_path, "swapped", [(row.dims_at[2], struct.pack("<Q", second)),
                                                   (row.dims_at[3], struct.pack("<Q", first))])
    outcome = run_capped("mllama", "encode", swapped, "--image", image, "-t", "1", "-o", tmp_path / "out.h5")
    assert_refused(outcome, "tensor 'v.patch_embd.weight' has ne", "the hyperparameters need")


def test_capture_refuses_a_crafted_model_in_one_line(tiny_f32, tmp_path):
    files = crafted(tiny_f32, tmp_path)
    chosen = [files["array-count-2^63"], files["invalid-utf8-key"]]
    outcomes = in_parallel([lambda path=path: run_capped("capture", "-m", path, "--token-ids", "1,2,3", "-t", "1",
                                                         "-c", "64", "-o", tmp_path / f"{path.stem}.h5")
                            for path in chosen])
    for path, outcome in zip(chosen, outcomes, strict=True):
        assert_refused(outcome, "llama.cpp could not load")
        assert "Traceback" not in outcome.stderr
        assert not (tmp_path / f"{path.stem}.h5").exists()


def test_a_fifo_given_as_a_model_is_refused_at_once(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    outcome = run_capped("gguf", fifo, timeout=60)
    assert_refused(outcome, "is a FIFO, not a GGUF file")


def test_the_log_callback_survives_invalid_utf8_and_null():
    from inspector.ggml.log import LOG_THUNK, captured_log

    with captured_log() as log:
        LOG_THUNK(3, b"gguf_init: key '\xff\xfe' has invalid GGUF type 99\n", None)
        LOG_THUNK(3, None, None)
    assert list(log.lines) == ["gguf_init: key '\ufffd\ufffd' has invalid GGUF type 99"]
