"""Link-time use: the hook compiled into a program, a dump folder written without exec, and ``import``.

``linked_graph.c`` calls ``ggml_inspector_attach`` and ``ggml_inspector_begin``
itself and is built together with ``inspector/native/ggml_inspector_hook.c`` under
``-DGGML_INSPECTOR_LINKED``; it runs with no LD_PRELOAD and no parent, with
``GGML_INSPECTOR_DIR`` naming the folder.  Expected values are computed
here with numpy from what the program sets; frame boundaries for cutting a
stream are found by walking the wire format of ``inspector/native/README.md``.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli
from test_exec import LIBRARIES, PROGRAMS

from inspector import open_dump
from inspector.native.build import SOURCE, include_directory

HEAD = struct.Struct("<IIIIQ")  # magic, kind, header length, reserved, data length
MAGIC = 0x48494747
KIND = {1: "HELLO", 2: "EVAL", 3: "TENSOR", 4: "SKIP", 5: "NOTICE", 6: "BYE"}
NAMES = ["w", "x", "y", "z"]


@pytest.fixture(scope="module")
def linked_graph(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("linked") / "linked_graph"
    command = ["cc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-DGGML_INSPECTOR_LINKED",
               f"-I{include_directory()}", f"-I{SOURCE.parent}", str(PROGRAMS / "linked_graph.c"), str(SOURCE),
               "-o", str(output),
               f"-L{LIBRARIES}", f"-Wl,-rpath,{LIBRARIES}", "-lggml", "-lggml-base", "-lpthread"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Linked, not interposing: the program defines none of ggml's scheduler functions itself.
    symbols = subprocess.run(["nm", "--defined-only", str(output)], capture_output=True, text=True, check=True)
    assert "ggml_inspector_begin" in symbols.stdout and "ggml_backend_sched_new" not in symbols.stdout
    return output


def run_linked(program: Path, folder: Path | str | None, *args: str, limit: int | None = None,
               cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], int]:
    """The program run directly: no exec, no preload, no socket; the hook's folder (GGML_INSPECTOR_DIR) if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGML_INSPECTOR") and k != "LD_PRELOAD"}
    if folder is not None:
        env["GGML_INSPECTOR_DIR"] = str(folder)

    def limit_file_size() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = subprocess.Popen([str(program), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=limit_file_size, cwd=cwd)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), process.pid


def expected(compute: int) -> dict[str, np.ndarray]:
    """What linked_graph.c sets and computes in compute ``compute``: z = relu(w x), x shifted by the compute."""
    x = (np.float32(0.25) * np.arange(12, dtype=np.float32) - np.float32(1.0) + np.float32(compute)).reshape(3, 4)
    w = (np.float32(0.1) * (np.arange(20) % 7).astype(np.float32) - np.float32(0.3)).reshape(5, 4)
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    return {"x": x, "w": w, "y": y, "z": np.maximum(y, 0.0)}


def check_values(dump, eval_index: int, names: list[str]) -> None:
    values = expected(eval_index)
    for name in names:
        array = dump.read(name, eval_index=eval_index)
        if name in ("x", "w"):
            np.testing.assert_array_equal(array, values[name])
        else:
            np.testing.assert_allclose(array, values[name], rtol=1e-6, atol=1e-6)


def frames(path: Path) -> list[tuple[int, str, int]]:
    """(offset, kind, end) of every whole frame in a stream file."""
    data, found, offset = path.read_bytes(), [], 0
    while offset + HEAD.size <= len(data):
        magic, kind, header_length, _, data_length = HEAD.unpack_from(data, offset)
        assert magic == MAGIC
        end = offset + HEAD.size + header_length + data_length
        if end > len(data):
            break
        found.append((offset, KIND[kind], end))
        offset = end
    return found


def test_a_linked_program_writes_a_dump_folder_that_import_turns_into_a_dump(linked_graph, tmp_path):
    plain, _ = run_linked(linked_graph, None, "2", "count")
    folder = tmp_path / "frames"
    hooked, pid = run_linked(linked_graph, folder, "2", "count")
    assert hooked.returncode == 0 and hooked.stderr == "", hooked.stderr
    # The program's own callback, set through ggml_inspector_set_eval_callback, still gets every call:
    # two nodes (y, z) asked and observed per compute, as unhooked.
    assert hooked.stdout == plain.stdout == "compute 0 status 0\ncompute 1 status 0\nasked 4 observed 4\n"
    stream = folder / f"{pid}.frames"
    assert [path.name for path in folder.iterdir()] == [stream.name]
    assert stat.S_IMODE(stream.stat().st_mode) == 0o600
    assert [kind for _, kind, _ in frames(stream)] == ["HELLO"] + (["EVAL"] + ["TENSOR"] * 4) * 2 + ["BYE"]

    out = tmp_path / "linked.h5"
    result = cli("import", folder, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "imported 8 tensors" in result.stderr and "incomplete" not in result.stderr
    with open_dump(out) as dump:
        assert dump.complete
        assert dump.config["runner"] == "import" and dump.config["pids"] == [pid]
        assert dump.config["folder"] == str(folder.resolve())
        assert [(e["index"], e["pid"], e["sched"], e["compute"]) for e in dump.evaluations] == [
            (0, pid, 0, 0), (1, pid, 0, 1)]
        assert sorted((e.eval_index, e.name) for e in dump) == [(i, n) for i in (0, 1) for n in NAMES]
        for eval_index in (0, 1):
            check_values(dump, eval_index, NAMES)
        assert dump.result["processes"][0]["computes"] == 2
    assert_one_line_error(cli("import", folder, "-o", out), "exists")


@pytest.mark.parametrize("folder", [None, ""], ids=["unset", "empty"])
def test_without_a_folder_or_a_socket_the_linked_hook_stays_off(linked_graph, tmp_path, folder):
    """Run in ``tmp_path``: a hook that wrote anyway would put its stream in the working folder.

    The control run names that same folder as ``.``, so the check below is shown to see a stream that lands
    there; unset and empty (as a shell's ``GGML_INSPECTOR_DIR= prog`` gives) must leave it empty.
    """
    result, _ = run_linked(linked_graph, folder, "1", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("compute 0 status 0")
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []
    control, pid = run_linked(linked_graph, ".", "1", cwd=tmp_path)
    assert control.returncode == 0, control.stderr
    assert [path.name for path in tmp_path.iterdir()] == [f"{pid}.frames"]


@pytest.mark.parametrize("cut", ["inside a frame", "before BYE"])
def test_a_stream_cut_short_keeps_every_whole_frame(linked_graph, tmp_path, cut):
    folder = tmp_path / "frames"
    result, pid = run_linked(linked_graph, folder, "3")
    assert result.returncode == 0, result.stderr
    stream = folder / f"{pid}.frames"
    layout = frames(stream)
    last_eval = max(index for index, (_, kind, _) in enumerate(layout) if kind == "EVAL")
    if cut == "inside a frame":
        # Halfway through the second tensor of the last evaluation: eval 2 keeps its first tensor only.
        offset, kind, end = layout[last_eval + 2]
        assert kind == "TENSOR"
        size, whole = (offset + end) // 2, {0: 4, 1: 4, 2: 1}
    else:
        size, whole = layout[-1][0], {0: 4, 1: 4, 2: 4}
        assert layout[-1][1] == "BYE"
    with open(stream, "r+b") as handle:
        handle.truncate(size)
    out = tmp_path / "cut.h5"
    imported = cli("import", folder, "-o", out)
    assert imported.returncode == 0, imported.stderr
    assert "warning: the dump is incomplete" in imported.stderr and "Traceback" not in imported.stderr
    with open_dump(out) as dump:
        assert not dump.complete
        reason = "ends inside a frame" if cut == "inside a frame" else "ends without BYE"
        assert reason in dump.incomplete_reason and stream.name in dump.incomplete_reason
        assert {i: len([e for e in dump if e.eval_index == i]) for i in whole} == whole
        for eval_index, count in whole.items():
            names = [e.name for e in dump if e.eval_index == eval_index]
            assert len(names) == count
            check_values(dump, eval_index, names)


def test_the_hook_stops_before_a_file_size_limit_instead_of_killing_the_program(linked_graph, tmp_path):
    folder = tmp_path / "frames"
    limit = 1500  # room for HELLO, EVAL and a few tensors, not for three evaluations
    result, pid = run_linked(linked_graph, folder, "3", limit=limit)
    # Past RLIMIT_FSIZE a write raises SIGXFSZ, which would have killed the program.
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [f"compute {r} status 0" for r in range(3)]
    stream = folder / f"{pid}.frames"
    assert 0 < stream.stat().st_size <= limit
    layout = frames(stream)
    assert layout[-1][2] == stream.stat().st_size  # the hook stopped between frames
    tensors = [kind for _, kind, _ in layout].count("TENSOR")
    assert 0 < tensors < 12
    out = tmp_path / "limited.h5"
    imported = cli("import", folder, "-o", out)
    assert imported.returncode == 0, imported.stderr
    with open_dump(out) as dump:
        assert not dump.complete and "ends without BYE" in dump.incomplete_reason
        assert len(dump) == tensors
        check_values(dump, 0, [e.name for e in dump if e.eval_index == 0])


def forged_stream(ne: list[int], data: bytes) -> bytes:
    """HELLO, EVAL and one f32 TENSOR whose header claims ``ne`` (contiguous strides) over ``data``."""
    def frame(kind: int, header: dict, payload: bytes = b"") -> bytes:
        text = json.dumps(header).encode()
        return HEAD.pack(MAGIC, kind, len(text), 0, len(payload)) + text + payload

    tensor = {"sched": 0, "compute": 0, "name": "t", "node_index": 0, "occurrence": 0, "op": "NONE", "type": 0,
              "type_name": "f32", "ne": ne, "nb": [4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]],
              "n_dims": 4, "block_size": 1, "type_size": 4}
    return (frame(1, {"pid": 7, "argv0": "forged", "compatible": True}) + frame(2, {"sched": 0, "compute": 0})
            + frame(3, tensor, data) + frame(6, {"schedulers": 1, "computes": 1}))


def test_a_forged_tensor_layout_is_refused_not_read_out_of_bounds(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "7.frames").write_bytes(forged_stream([1 << 20, 1 << 10, 1, 1], b"\0" * 16))
    imported = cli("import", folder, "-o", tmp_path / "forged.h5")
    assert_one_line_error(imported, "7.frames: frame 3: a tensor whose layout reaches byte")
    assert not (tmp_path / "forged.h5").exists()  # refused before the dump is created
    # The same stream with a layout that fits: its values, as written.
    values = np.arange(6, dtype=np.float32)
    (folder / "7.frames").write_bytes(forged_stream([3, 2, 1, 1], values.tobytes()))
    imported = cli("import", folder, "-o", tmp_path / "fits.h5")
    assert imported.returncode == 0, imported.stderr
    with open_dump(tmp_path / "fits.h5") as dump:
        assert dump.complete
        np.testing.assert_array_equal(dump.read("t"), values.reshape(1, 1, 2, 3))


@pytest.mark.parametrize(("content", "fragment"), [
    (b"PK\x03\x04 not a stream at all", "magic GGIH"),
    (b"GGI!", "magic GGIH"),  # shorter than a frame head
    (HEAD.pack(MAGIC, 1, (1 << 20) + 1, 0, 0), "impossible size"),
    (HEAD.pack(MAGIC, 3, 2, 0, 0) + b"{}", "does not begin with HELLO"),
])
def test_a_file_that_is_not_a_stream_is_refused_in_one_line(tmp_path, content, fragment):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "123.frames").write_bytes(content)
    out = tmp_path / "garbage.h5"
    result = cli("import", folder, "-o", out)
    assert_one_line_error(result, "123.frames is not a stream of the ggml-inspector hook")
    assert fragment in result.stderr
    assert not out.exists()


def test_a_folder_without_streams_is_refused_in_one_line(tmp_path):
    assert_one_line_error(cli("import", tmp_path, "-o", tmp_path / "x.h5"), "holds no .frames file")
    assert_one_line_error(cli("import", tmp_path / "missing", "-o", tmp_path / "x.h5"), "is not a folder")
