"""replay on records crafted by someone else: refused in one line by its own checks, never a signal or a hang.

The dumps are real captures; the crafted ones rewrite one JSON record of a
copy's /records (the op code, ne, nb, type, slot or op_params word of the
node or of a captured source), or the model path the dump names.  The
mutations run the real CLI in a forked child (``main`` of the package, as the
console script runs it), so a crash is seen as the signal it is and a hundred
runs fit in seconds; the custom-op case runs as its own process too.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import h5py
import pytest
from test_cli import assert_one_line_error, cli
from test_replay import capture, node_of

from inspector import open_dump
from inspector.ggml import load

# A function pointer and user data that ggml would call: 0x0000414141414141.
POINTER_PARAMS = [0x41414141, 0x4141, 1, 0, 0x41414141, 0x4141]
CUSTOM_OP_CODES = {"MAP_CUSTOM1": 92, "MAP_CUSTOM2": 93, "MAP_CUSTOM3": 94, "CUSTOM": 95}
OP_COUNT = 101  # GGML_OP_COUNT in the vendored ggml.h
FORKED_TIMEOUT_S = 60


def run_forked(*args: object) -> tuple[int, str]:
    """``ggml-inspector ARGS`` in a forked child: (exit status, or -signal; its stderr)."""
    from inspector.cli.app import main

    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.dup2(err.fileno(), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                # pytest replaced sys.stderr and sys.stdout; the child writes to the real descriptors.
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                main.main(args=[str(a) for a in args], prog_name="ggml-inspector", standalone_mode=True)
                code = 0
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + FORKED_TIMEOUT_S
        while True:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"replay {args} hung")
            time.sleep(0.01)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), text


@pytest.fixture(scope="module")
def dumps(tiny_f32: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A capture of every tensor, and one of two named nodes only (its weights then come from the model file)."""
    folder = tmp_path_factory.mktemp("hostile")
    load()  # the forked children share the parent's loaded ggml
    everything = capture(tiny_f32, folder / "all.h5", "-fa", "off")
    selected = capture(tiny_f32, folder / "sel.h5", "-T", "Qcur-0", "-T", "attn_norm-0")
    return everything, selected


class Crafted:
    """A copy of a dump whose records are rewritten one at a time, and put back after each run."""

    def __init__(self, original: Path, folder: Path) -> None:
        self.path = folder / f"crafted-{original.name}"
        shutil.copyfile(original, self.path)
        with open_dump(self.path) as dump:
            self.seq = {(e.eval_index, e.name, e.occurrence): e.seq for e in dump}
        with h5py.File(self.path, "r") as file:
            self.records = [json.loads(text) for text in file["records"][:]]

    def write(self, seq: int, record: dict) -> None:
        with h5py.File(self.path, "r+") as file:
            file["records"][seq] = json.dumps(record)

    def set_model(self, model: str) -> None:
        with h5py.File(self.path, "r+") as file:
            config = json.loads(file.attrs["config"])
            file.attrs["config"] = json.dumps({**config, "model": model})


def replay_args(path: Path, node: int) -> list[object]:
    return ["replay", path, path, "--eval", "0", "--node", node]


def assert_refused(code: int, stderr: str, fragment: str) -> None:
    assert code == 2, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr


def node_record(crafted: Crafted, op: str) -> tuple[int, int]:
    """(node index, seq) of the first node of evaluation 0 computing ``op`` (ggml's op name)."""
    for seq, record in enumerate(crafted.records):
        if record["eval_index"] == 0 and not record["is_leaf"] and record["op"] == op:
            return record["node_index"], seq
    raise AssertionError(f"no {op} node")


def test_a_custom_op_with_a_function_pointer_is_refused_before_ggml_sees_it(dumps, tmp_path):
    crafted = Crafted(dumps[0], tmp_path)
    node, seq = node_record(crafted, "MUL_MAT")
    original = crafted.records[seq]
    crafted.write(seq, {**original, "op_code": CUSTOM_OP_CODES["MAP_CUSTOM1"], "op_params": POINTER_PARAMS})
    assert_one_line_error(cli(*replay_args(crafted.path, node)), "MAP_CUSTOM1, a custom op")
    for name, code in CUSTOM_OP_CODES.items():
        crafted.write(seq, {**original, "op_code": code, "op_params": POINTER_PARAMS})
        assert_refused(*run_forked(*replay_args(crafted.path, node)), f"its op is {name}, a custom op")


def test_shapes_that_break_an_ops_rules_are_refused_by_replays_own_checks(dumps, tmp_path):
    crafted = Crafted(dumps[0], tmp_path)
    node, seq = node_record(crafted, "MUL_MAT")
    original = crafted.records[seq]
    # The product of these sources has ne[0] = the weight's rows; one more is not what MUL_MAT makes.
    crafted.write(seq, {**original, "ne": [original["ne"][0] + 1, *original["ne"][1:]]})
    assert_refused(*run_forked(*replay_args(crafted.path, node)), "MUL_MAT of these sources gives ne")
    crafted.write(seq, {**original, "ne": [2**40, *original["ne"][1:]]})
    assert_refused(*run_forked(*replay_args(crafted.path, node)), "past replay's bound")
    crafted.write(seq, {**original, "op_code": 52, "op_params": [0, 1, 0, 0, 1, 1, 1]})  # IM2COL, 2-D, stride 0
    assert_refused(*run_forked(*replay_args(crafted.path, node)), "IM2COL's strides and dilations")
    crafted.write(seq, original)
    node, seq = node_record(crafted, "GET_ROWS")
    rows = crafted.records[seq]["source_details"][1]
    rows_seq = crafted.seq[(0, rows["name"], rows["occurrence"])]
    index = crafted.records[rows_seq]
    # The token ids are a captured input: a longer declared shape than the values stored is refused.
    crafted.write(rows_seq, {**index, "ne": [index["ne"][0] + 1, *index["ne"][1:]]})
    assert_refused(*run_forked(*replay_args(crafted.path, node)), "values for ne")


def mutations(record: dict, label: str) -> list[tuple[str, dict]]:
    """Single-field mutations of one record: each ne/nb word, the type, each slot, each op_params word."""
    found = []
    for field in ("ne", "nb"):
        for i, value in enumerate(record.get(field, [])):
            for new in (0, -1, 2**40, 2**63, value + 1, value - 1):
                changed = list(record[field])
                changed[i] = new
                found.append((f"{label} {field}[{i}]={new}", {**record, field: changed}))
    for new in ("q8_0", "f16", "i32", "i64", "f32", "bogus", 5):
        found.append((f"{label} type={new}", {**record, "ggml_type": new}))
    for j, detail in enumerate(record.get("source_details", [])):
        for new_slot in (-1, 10, 2**40, (detail["slot"] + 1) % 4):
            details = [dict(d) for d in record["source_details"]]
            details[j]["slot"] = new_slot
            found.append((f"{label} slot[{j}]={new_slot}", {**record, "source_details": details}))
        for new_type in ("q4_0", "i64", "f32"):
            details = [dict(d) for d in record["source_details"]]
            details[j]["type"] = new_type
            found.append((f"{label} source type[{j}]={new_type}", {**record, "source_details": details}))
    words = list(record.get("op_params", [])) + [0] * 4
    for i in range(min(len(words), 16)):
        for new in (0, -1, 2**31 - 1, 0x41414141, words[i] + 1):
            changed = words[:]
            changed[i] = new
            found.append((f"{label} op_params[{i}]={new}", {**record, "op_params": changed}))
    return found


def test_seeded_single_field_mutations_never_crash_replay(dumps, tmp_path):
    crafted = Crafted(dumps[0], tmp_path)
    cases: list[tuple[int, int, str, dict]] = []
    node, seq = node_record(crafted, "MUL_MAT")
    for code in [*range(-1, OP_COUNT + 1), 2**31, 2**63]:
        cases.append((node, seq, f"op_code={code}", {**crafted.records[seq], "op_code": code}))
    sampled = []
    for op in ("MUL_MAT", "ROPE", "GET_ROWS", "SOFT_MAX", "RMS_NORM", "SWIGLU", "SET_ROWS", "ADD", "CPY", "CONT"):
        try:
            node, seq = node_record(crafted, op)
        except AssertionError:
            continue
        record = crafted.records[seq]
        sampled += [(node, seq, f"{op}: {what}", changed) for what, changed in mutations(record, "node")]
        for detail in record["source_details"]:
            source_seq = crafted.seq.get((0, detail["name"], detail["occurrence"]))
            if source_seq is not None:
                sampled += [(node, source_seq, f"{op}: {what}", changed)
                            for what, changed in mutations(crafted.records[source_seq], detail["name"])
                            if "slot" not in what and "op_params" not in what]
    cases += random.Random(19).sample(sampled, min(len(sampled), 160))
    outcomes: dict[int, int] = {}
    for node, seq, what, changed in cases:
        crafted.write(seq, changed)
        code, stderr = run_forked(*replay_args(crafted.path, node))
        crafted.write(seq, crafted.records[seq])
        lines = stderr.strip().splitlines()
        assert code in (0, 1, 2), (what, code, stderr)
        assert len(lines) <= 1, (what, stderr)
        assert "unexpected" not in stderr, (what, stderr)
        outcomes[code] = outcomes.get(code, 0) + 1
    assert outcomes.get(2, 0) > len(cases) // 2, outcomes  # most mutations are refused, by a message of their own


def test_a_model_path_that_is_no_regular_file_is_refused_promptly(dumps, tmp_path):
    crafted = Crafted(dumps[1], tmp_path)
    with open_dump(crafted.path) as dump:
        assert not any(e.name == "blk.0.attn_q.weight" for e in dump)  # the weight must come from the model
    node = node_of(crafted.path, "Qcur-0")
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    for model, fragment in ((fifo, "is not a regular file"), (tmp_path, "is not a regular file"),
                            ("/dev/zero", "is not a regular file"), (tmp_path / "gone.gguf", "cannot be read")):
        crafted.set_model(str(model))
        started = time.monotonic()
        assert_refused(*run_forked(*replay_args(crafted.path, node)), fragment)
        assert time.monotonic() - started < 10
