"""``exec``: unmodified C programs and a child Python, captured through the preloaded native hook.

The programs in ``tests/programs/`` are compiled here with the system
compiler against the installed headers and libraries; none of them knows
about ggml-inspector.  Expected values come from a Python capture of the
same run, from what the program set, and from numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from conftest import PROMPT
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import preset
from inspector.native.build import include_directory

PROGRAMS = Path(__file__).parent / "programs"
LIBRARIES = Path(llama_cpp.__file__).parent / "lib"


def compile_program(source: str, folder: Path, *libraries: str, shared: bool = False) -> Path:
    output = folder / (Path(source).stem + (".so" if shared else ""))
    command = ["cc", "-std=c11", "-O1", f"-I{include_directory()}", str(PROGRAMS / source), "-o", str(output)]
    command += ["-shared", "-fPIC"] if shared else []
    command += [f"-L{folder}", f"-L{LIBRARIES}", f"-Wl,-rpath,{LIBRARIES}", f"-Wl,-rpath,{folder}"]
    command += [f"-l{library}" for library in libraries]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("programs")
    compile_program("llama_client.c", folder, "llama", "ggml", "ggml-base")
    compile_program("own_graph.c", folder, "ggml", "ggml-base")
    compile_program("other_ggml.c", folder, shared=True)
    (folder / "other_ggml.so").rename(folder / "libother_ggml.so")
    compile_program("other_ggml_client.c", folder, "other_ggml")
    return folder


def test_a_libllama_client_matches_a_python_capture_bit_for_bit(built, tiny_f32, tmp_path):
    python = cli("capture", tiny_f32, "-p", PROMPT, "-t", "1", "-c", "64", "-ngl", "0", "-T", "l_out-*",
                 "-o", tmp_path / "python.h5")
    assert python.returncode == 0, python.stderr
    native = cli("exec", "-T", "l_out-*", "-o", tmp_path / "native.h5", "--", built / "llama_client", tiny_f32,
                 PROMPT)
    assert native.returncode == 0, native.stderr
    with open_dump(tmp_path / "native.h5") as dump:
        assert dump.complete and dump.config["argv"][1:] == [str(tiny_f32), PROMPT]
        assert dump.result["exit_status"] == 0
        assert dump.names() == ["l_out-0", "l_out-1"]
    comparison = compare_dumps(tmp_path / "python.h5", tmp_path / "native.h5", preset("exact"))
    counts = comparison.counts()
    assert counts["identical"] == 2 and counts["missing"] == 0 and counts["diverged"] == 0, counts
    assert not comparison.different_model  # the program's model is unknown to exec, not different


def expected_own_graph() -> dict[str, np.ndarray]:
    x = (np.float32(0.25) * np.arange(12, dtype=np.float32) - np.float32(1.0)).reshape(3, 4)
    w = (np.float32(0.1) * (np.arange(20) % 7).astype(np.float32) - np.float32(0.3)).reshape(5, 4)
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    return {"x": x, "w": w, "y": y, "z": np.maximum(y, 0.0)}


def test_a_program_with_its_own_scheduler_and_input_leafs(built, tmp_path):
    out = tmp_path / "graph.h5"
    result = cli("exec", "-o", out, "--", built / "own_graph")
    assert result.returncode == 0, result.stderr
    expected = expected_own_graph()
    with open_dump(out) as dump:
        assert sorted(dump.names()) == ["w", "x", "y", "z"]
        np.testing.assert_array_equal(dump.read("x"), expected["x"])
        np.testing.assert_array_equal(dump.read("w"), expected["w"])
        for name in ("y", "z"):
            np.testing.assert_allclose(dump.read(name), expected[name], rtol=1e-6, atol=1e-6)
        assert dump.evaluations[0]["sched"] == 0 and dump.evaluations[0]["kind"] == "graph"


def test_the_programs_own_eval_callback_gets_every_call_and_is_obeyed(built, tmp_path):
    plain = subprocess.run([built / "own_graph", "y"], capture_output=True, text=True, check=True).stdout
    hooked = cli("exec", "-T", "z", "-o", tmp_path / "cb.h5", "--", built / "own_graph", "y")
    assert hooked.returncode == 0, hooked.stderr
    # The same calls, and the compute still stops after y as the program asked: z is never computed
    # (its memory holds no relu: negative values), and the hook never got to capture it.
    assert hooked.stdout == plain and plain.startswith("status 0 asked 1 observed 1 z")
    assert min(float(value) for value in plain.split()[7:]) < 0
    with open_dump(tmp_path / "cb.h5") as dump:
        assert dump.names() == []


def test_the_high_level_llama_api_in_a_child_python(tiny_f32, tmp_path):
    script = ("from llama_cpp import Llama\n"
              f"llm = Llama({str(tiny_f32)!r}, n_ctx=64, n_threads=1, verbose=False)\n"
              "llm('Hi', max_tokens=2)\n")
    out = tmp_path / "python.h5"
    result = cli("exec", "-T", "l_out-*", "-o", out, "--", sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        assert dump.complete and len(dump.evaluations) >= 2
        assert {entry.name for entry in dump} == {"l_out-0", "l_out-1"}
        assert all(np.isfinite(dump.read(entry)).all() for entry in dump)


def test_a_program_of_another_ggml_runs_unhooked_and_exec_says_so(built, tmp_path):
    result = cli("exec", "-o", tmp_path / "other.h5", "--", built / "other_ggml_client")
    assert_one_line_error(result, "uses a ggml the hook cannot read")
    assert "computed 0" in result.stdout  # it ran, unhooked
    assert not (tmp_path / "other.h5").exists()


def test_a_program_without_ggml_is_reported(tmp_path):
    assert_one_line_error(cli("exec", "-o", tmp_path / "x.h5", "--", "true"), "computed no graph")
    assert_one_line_error(cli("exec", "-o", tmp_path / "y.h5", "--", tmp_path / "nowhere"), "cannot run")


def test_exit_status_and_a_crash_are_kept(built, tmp_path):
    script = "import os, sys; os.kill(os.getpid(), 11)"
    crashed = cli("exec", "-o", tmp_path / "crash.h5", "--", sys.executable, "-c",
                  "import ctypes, os, subprocess, sys\n"
                  f"subprocess.run([{str(built / 'own_graph')!r}], check=True)\n" + script)
    # The graph ran in a child process of the program; the program then died of SIGSEGV.
    assert crashed.returncode == 128 + 11, crashed.stderr
    with open_dump(tmp_path / "crash.h5") as dump:
        assert not dump.complete and "SIGSEGV" in dump.incomplete_reason
        assert sorted(dump.names()) == ["w", "x", "y", "z"]


@pytest.mark.parametrize(("pattern", "message"), [
    ("(?:y)", "Invalid preceding regular expression"),  # Python's re takes it; POSIX has no (?:
    ("(", "Unmatched ( or \\("),
    ("l_out-\\d+", "\\d is Perl's, not POSIX's (write [0-9])"),  # glibc would read \d as a plain d
])
def test_an_invalid_extended_regex_is_refused_before_the_program_runs(tmp_path, pattern, message):
    marker, out = tmp_path / "ran", tmp_path / "re.h5"
    result = cli("exec", "--tensor-filter", pattern, "-o", out, "--", "touch", marker)
    assert_one_line_error(result, f"invalid POSIX extended regular expression {pattern!r}: {message}")
    assert not marker.exists() and not out.exists()


def test_tensor_filters_are_posix_extended_regexes(built, tmp_path):
    # As a Python regex, [[:alpha:]] is the set "[:alph" then a "]", which no name here holds.
    out = tmp_path / "classes.h5"
    result = cli("exec", "--tensor-filter", "^[[:alpha:]]$", "--tensor-filter", "^(y|q{2,})$", "-o", out, "--",
                 built / "own_graph")
    assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr
    with open_dump(out) as dump:
        assert sorted(dump.names()) == ["w", "x", "y", "z"]
        assert dump.config["select"]["regexes"] == ["^[[:alpha:]]$", "^(y|q{2,})$"]


def test_a_hook_that_stops_capturing_is_reported_in_one_line(built, tmp_path):
    # The program's environment is its own: a wrapper that hands it a pattern the hook cannot compile.
    out = tmp_path / "stopped.h5"
    result = cli("exec", "-o", out, "--", "sh", "-c", 'GGML_INSPECTOR_REGEXES="(" exec "$0"', built / "own_graph")
    assert_one_line_error(result, "the hook stopped capturing: invalid regular expression '('")
    assert result.returncode == 2 and "exit status 0" in result.stderr
    assert result.stdout.startswith("status 0 asked 0 observed 0 z 0.5")  # the program ran on, unhooked
    assert not out.exists()  # nothing was captured


def test_the_native_hook_records_sources_and_op_params_as_the_python_hook_does(built, tiny_f32, tmp_path):
    """compare's origins and replay read them: an exec dump must describe every op as a capture does."""
    assert cli("capture", tiny_f32, "-p", PROMPT, "-t", "1", "-c", "64", "-ngl", "0",
               "-o", tmp_path / "python.h5").returncode == 0
    assert cli("exec", "-o", tmp_path / "native.h5", "--", built / "llama_client", tiny_f32, PROMPT).returncode == 0

    def described(record: dict) -> tuple:
        sources = [(s["name"], s["occurrence"], s["slot"], s["type"], s["buffer_type"])
                   for s in record["source_details"]]
        return sources, record["op_code"], record["op_params"]

    with open_dump(tmp_path / "python.h5") as python, open_dump(tmp_path / "native.h5") as native:
        pairs = [(entry, python.find(entry.name, entry.eval_index, entry.occurrence)) for entry in native]
        assert len(pairs) > 50 and any(python.metadata(p)["op_params"] for _n, p in pairs)  # ROPE has some
        for entry, partner in pairs:
            assert described(native.metadata(entry)) == described(python.metadata(partner)), entry.name


def test_exec_with_the_model_named_finds_a_changed_weight_and_replays_it(built, tiny_f32, tmp_path):
    """-m records the GGUF the program loads: origins compare its weights, replay reads them."""
    from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

    changed = write_tiny_llama(tmp_path / "changed.gguf", TinyLlamaSpec(dtype="f32", seed=1, perturb=(1, 5, 0.5)))
    for name, model in (("a", tiny_f32), ("b", changed)):
        result = cli("exec", "-m", model, "-o", tmp_path / f"{name}.h5", "--", built / "llama_client", model, PROMPT)
        assert result.returncode == 0, result.stderr
    document = json.loads(cli("compare", tmp_path / "a.h5", tmp_path / "b.h5", "--json").stdout)
    first = document["origins"][0]
    assert (first["name"], first["verdict"]) == ("Qcur-1", "weight") and document["different_model"]
    replayed = json.loads(cli("replay", tmp_path / "a.h5", tmp_path / "b.h5", "--eval", "0", "--node",
                              str(first["node"]), "--json").stdout)
    assert replayed["reproduces_a"] and not replayed["reproduces_b"] and not replayed["op_differs"]
