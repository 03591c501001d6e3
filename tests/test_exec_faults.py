"""``exec`` under real faults: Ctrl-C to the whole process group, and a full disk (tmpfs or RLIMIT_FSIZE).

The program is ``own_graph --repeat N``: the same small graph computed N
times, so every evaluation holds the same four tensors, whose values numpy
gives (``expected_own_graph``).  What arrived before the fault must be in a
valid dump marked incomplete; the program itself is never stopped by exec's
trouble.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_exec import compile_program, expected_own_graph
from test_interrupt import DEADLINE_S, ChildLines

from inspector import open_dump

NAMES = ["w", "x", "y", "z"]


@pytest.fixture(scope="module")
def own_graph(tmp_path_factory) -> Path:
    return compile_program("own_graph.c", tmp_path_factory.mktemp("faults"), "ggml", "ggml-base")


def exec_command(out: Path, *program: object) -> list[str]:
    return [sys.executable, "-m", "inspector", "exec", "-o", str(out), "--", *map(str, program)]


def environment() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "GGML_INSPECTOR_DEBUG"}, "PYTHONUNBUFFERED": "1"}


def check_every_tensor(dump) -> None:
    """Each kept tensor reads back whole, with the values of its name."""
    values = expected_own_graph()
    for entry in dump:
        array = dump.read(entry)
        if entry.name in ("x", "w"):
            np.testing.assert_array_equal(array, values[entry.name])
        else:
            np.testing.assert_allclose(array, values[entry.name], rtol=1e-6, atol=1e-6)


def test_ctrl_c_to_the_process_group_keeps_what_arrived(own_graph, tmp_path):
    out = tmp_path / "interrupted.h5"
    # Its own session, so that killpg reaches exec and the program together, as a terminal's Ctrl-C does.
    # The program's output goes to a file: only stderr is a pipe, read with a deadline on every wait.
    with open(tmp_path / "stdout", "w") as program_output:
        process = subprocess.Popen(exec_command(out, own_graph, "--repeat", 10_000_000), stdout=program_output,
                                   stderr=subprocess.PIPE, text=True, env=environment(), start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE_S
        child = ChildLines(process)
        child.wait_for(lambda line: line.startswith("evaluation 3 "), deadline)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 130, "".join(child.lines)
        rest = child.rest(deadline)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stdout = (tmp_path / "stdout").read_text()
    assert "Traceback" not in rest and stdout == ""  # the program was interrupted, not finished
    errors = [line for line in rest.splitlines() if line.startswith("ggml-inspector: error")]
    assert len(errors) == 1 and "interrupted after " in errors[0] and "marked incomplete" in errors[0], rest
    kept = int(errors[0].split(" after ")[1].split()[0])
    with open_dump(out) as dump:
        assert not dump.complete and dump.incomplete_reason == "interrupted"
        assert dump.result["signal"] == "SIGINT"
        assert len(dump) == kept and kept >= 4 * 3  # evaluations 0..2 were whole before the signal
        evaluations = len(dump.evaluations)
        assert 4 <= evaluations < 10_000_000
        # Every evaluation before the last is whole; the last may have been cut by the signal.
        for index in range(evaluations - 1):
            assert sorted(e.name for e in dump if e.eval_index == index) == NAMES
        check_every_tensor(dump)


def test_a_full_disk_stops_the_dump_and_the_program_runs_to_its_end(own_graph, small_disk):
    folder, popen = small_disk
    out = folder / "full.h5"
    repeat = 1500  # about 6 KiB of dump per evaluation: far more than 3 MiB hold
    result = subprocess.run(exec_command(out, own_graph, "--repeat", repeat), capture_output=True, text=True,
                            env=environment(), timeout=300, **popen)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "HDF5" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ggml-inspector: error")]
    assert len(errors) == 1, result.stderr
    assert ("disk full after" in errors[0] or "file size limit reached after" in errors[0]) and str(out) in errors[0]
    assert "marked incomplete" in errors[0] and "exit status 0" in errors[0]
    kept = int(errors[0].split(" after ")[1].split()[0])
    # The program computed all its graphs and printed its result, unhooked after the disk filled.
    assert result.stdout.startswith("status 0 asked 0 observed 0 z 0.5 0 0.25000003"), result.stdout
    with open_dump(out) as dump:
        assert not dump.complete and f"after {kept} tensors" in dump.incomplete_reason
        assert dump.result["exit_status"] == 0
        assert 8 <= len(dump) == kept < 4 * repeat
        check_every_tensor(dump)
    assert not list(folder.glob(".*space-reserve"))
