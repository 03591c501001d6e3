"""Fuzz: every reading command on crafted dumps, frames, GGUFs, images and options (issue 19).

Files and options from other people are hostile. Each case runs the real
command line (``inspector.cli.main``, forked from a server that imported it
once: ``tests/fuzz_runner.py``) under an address-space cap and a deadline,
and must end the way the project promises:

- no signal, no hang: the child exits by itself before its deadline;
- an exit status of 0, 1 or 2;
- on failure exactly one stderr line, ``ggml-inspector: error: ...``, that is
  not the catch-all ``unexpected ...`` (kept for bugs), and never a traceback
  or a warning;
- memory under the cap: no MemoryError, ``std::bad_alloc`` or numpy
  "Unable to allocate" (an allocation that failed under the cap is one
  that would have taken more);
- every input file byte for byte unchanged (sha256 before and after), and no
  output file left behind by a failure (unless the error says it kept a dump
  marked incomplete, as a full disk does);
- no control character from a file printed raw (ESC, BEL, a forged line);
- for a corrupt file or an impossible option marked so (``must_fail``), exit
  2: accepting it would read corrupt data as if it were whole.

Time is bounded three ways: a fixed seed and a fixed number of mutations, a
deadline per case (a hang is killed and reported), and a budget per family
after which the cases not yet run are reported as failures, so a run that
hangs everywhere still ends in a few minutes. About two minutes on 2 cores.

The inputs are made from real ones (``tests/fuzz_inputs.py``): a dump
captured from a generated llama model, a frame stream made of its tensors, the
generated llama and mllama GGUFs, a generated PNG and JPEG. The mutations are
named and seeded (``fuzz_inputs.SEED``); one test per family collects every
failing case before failing, so a run shows all of them at once.

The cap is 1 GiB of address space for every command, the bound the issue
sets. Measured with the real inputs (``test_real_inputs_pass_every_command``):
the fork server holds ~225 MiB of address space before a case starts, and a
legitimate run peaks at 70-140 MiB resident (capture, mllama encode and
replay included, which load llama.cpp and ggml's CPU backend), so the cap
leaves room for real work and none for the bombs of the issue (3 to 14 GB).
A command that loads a model gets a longer deadline, not more memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz_inputs import (
    FORGED_MARK,
    DumpTarget,
    Frame,
    Mutation,
    dump_row_mutations,
    dump_rows,
    dump_structure_mutations,
    encode_stream,
    frame_mutations,
    frames_from_dump,
    ggml_enums,
    gguf_layout,
    gguf_mutations,
    image_mutations,
    materialise,
    npy_mutations,
    record_mutations,
    replay_streams,
    sweep_summaries,
    zero_bomb,
)
from fuzz_runner import ForkServer
from PIL import Image

from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.llava import TinyLlavaSpec, write_tiny_llava
from inspector.tiny_models.mllama import write_tiny_mllama

CAP = 1 << 30
READ_TIMEOUT = 15.0
LLAMA_TIMEOUT = 30.0
PARALLEL = 2
# Per family: a hanging case costs its whole deadline, so a family that has spent this much stops
# and reports the cases it could not run as failures.
FAMILY_BUDGET_SECONDS = 90.0
BATCH = 8
PROMPT = "Hi there"
CONTROL_CHARACTERS = {chr(c) for c in range(32) if chr(c) not in "\t\n"} | {"\x7f"}
PROGRESS_LINE = re.compile(r"^evaluation \d+ \([^\x00-\x1f]*\); \d+ tensors so far$")
NOT_IN_OUTPUT = ("Traceback", "Warning:", "warnings.warn")
# What a process says when an allocation failed: under the cap, that means it tried to take more than the cap.
OUT_OF_MEMORY = ("MemoryError", "bad_alloc", "Unable to allocate", "Cannot allocate memory", "out of memory")


@dataclass
class Case:
    """One command line on crafted inputs."""

    name: str
    argv: list[str]
    inputs: list[Path]
    outputs: list[Path] = field(default_factory=list)
    cap: int = CAP
    timeout: float = READ_TIMEOUT
    # The input is corrupt or the option impossible: exit 2 is the only right answer.
    must_fail: bool = False
    # Commands to run on this case's first output when it succeeded (a dump import wrote, read back).
    then: list[Callable[[Path], Case]] = field(default_factory=list)


@dataclass
class Outcome:
    case: Case
    result: dict[str, Any]
    stdout: str
    stderr: str


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprints(paths: list[Path]) -> dict[Path, str]:
    """sha256 of every regular file among ``paths`` and in the folders among them (FIFOs are not read)."""
    found: dict[Path, str] = {}
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            found.update(fingerprints(sorted(path.iterdir())))
        elif os.path.lexists(path) and not path.is_symlink() and stat.S_ISREG(path.lstat().st_mode):
            found[path] = sha256(path)
    return found


class Fuzzer:
    """Runs cases through the fork server and collects what each broke, as one line per failure."""

    def __init__(self, server: ForkServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.counter = 0

    def shown(self, case: Case) -> str:
        """The command line, shortened to the fuzz folder and with control characters escaped for the terminal."""
        words = [str(arg).replace(str(self.root) + "/", "") for arg in case.argv]
        line = "ggml-inspector " + " ".join(shlex.quote(word) for word in words)
        return "".join(c if c not in CONTROL_CHARACTERS else f"\\x{ord(c):02x}" for c in line)

    def run(self, cases: list[Case], budget: float = FAMILY_BUDGET_SECONDS) -> tuple[list[str], list[Outcome]]:
        failures: list[str] = []
        outcomes: list[Outcome] = []
        started = time.monotonic()
        pending = list(cases)
        while pending:
            batch, pending = pending[:BATCH], pending[BATCH:]
            if time.monotonic() - started > budget:
                failures += [f"{case.name}: {self.shown(case)}: not run, the family's {budget:.0f} s budget was spent"
                             for case in batch + pending]
                break
            done = self._run_batch(batch)
            outcomes += done
            self._log(done)
            for outcome in done:
                problem = self.problem(outcome)
                if problem:
                    failures.append(f"{outcome.case.name}: {self.shown(outcome.case)}: {problem}")
                elif outcome.result["code"] == 0 and outcome.case.then and outcome.case.outputs:
                    pending += [make(outcome.case.outputs[0]) for make in outcome.case.then]
        return failures, outcomes

    @staticmethod
    def _log(outcomes: list[Outcome]) -> None:
        """With FUZZ_LOG=path, one JSON line per case (its time, peak memory and how it ended) for measuring."""
        target = os.environ.get("FUZZ_LOG")
        if not target:
            return
        with open(target, "a") as log:
            for outcome in outcomes:
                log.write(json.dumps({"name": outcome.case.name, "must_fail": outcome.case.must_fail, **outcome.result,
                                      "stderr": outcome.stderr[-3000:]}) + "\n")

    def _run_batch(self, cases: list[Case]) -> list[Outcome]:
        before = [fingerprints(case.inputs) for case in cases]
        existed = [[path for path in case.outputs if os.path.lexists(path)] for case in cases]
        requests = []
        for case in cases:
            self.counter += 1
            runs = self.root / "runs"
            runs.mkdir(exist_ok=True)
            out = Path(tempfile.mkdtemp(prefix=f"{self.counter}-", dir=runs))
            case_dir = out / "cwd"
            case_dir.mkdir()
            requests.append({"argv": [str(arg) for arg in case.argv], "cwd": str(case_dir), "cap": case.cap,
                             "timeout": case.timeout, "out": str(out)})
        results = self.server.run(requests)
        outcomes = []
        for case, request, result, hashes, kept in zip(cases, requests, results, before, existed, strict=True):
            out = Path(request["out"])
            stdout = (out / "stdout").read_bytes()[:4 << 20].decode("utf-8", "replace")
            stderr = (out / "stderr").read_bytes()[:1 << 20].decode("utf-8", "replace")
            outcome = Outcome(case, result, stdout, stderr)
            changed = [path for path, digest in hashes.items()
                       if not path.exists() or not stat.S_ISREG(path.stat().st_mode) or sha256(path) != digest]
            left = [path for path in case.outputs if path not in kept and os.path.lexists(path)]
            result["changed"] = [str(path) for path in changed]
            # A dump a failed capture or import keeps on purpose says so (a full disk, a hook that stopped).
            kept_on_purpose = "marked incomplete" in stderr
            result["left"] = [str(path) for path in left] if result["code"] not in (0, 1) and not kept_on_purpose \
                else []
            outcomes.append(outcome)
        return outcomes

    @staticmethod
    def problem(outcome: Outcome) -> str:
        """What the case broke, or ""."""
        result, stderr, stdout = outcome.result, outcome.stderr, outcome.stdout
        tail = " | ".join(stderr.strip().splitlines()[-3:])[-400:]
        if result["status"] == "timeout":
            return f"hung: still running after {outcome.case.timeout:.0f} s (killed); stderr: {tail!r}"
        if result["status"] == "signal":
            return f"killed by {signal.Signals(result['signal']).name}; stderr: {tail!r}"
        problems = []
        code = result["code"]
        # A run that got under way (an import whose stream ends in a hook's notice) has printed its own
        # progress lines first; the error itself must still be one line.
        lines = [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
        if code not in (0, 1, 2):
            problems.append(f"exit status {code}")
        if outcome.case.must_fail and code in (0, 1):
            problems.append("accepted a corrupt input or an impossible option instead of refusing it")
        if code not in (0, 1):
            if len(lines) != 1 or not lines[0].startswith("ggml-inspector: error: "):
                problems.append(f"{len(lines)} stderr lines on failure")
            elif "unexpected " in lines[0]:
                problems.append("reached the catch-all")
        for marker in NOT_IN_OUTPUT:
            if marker in stderr or marker in stdout:
                problems.append(f"printed {marker!r}")
        if any(marker in stderr for marker in OUT_OF_MEMORY):
            problems.append(f"ran out of memory under the {outcome.case.cap >> 20} MiB cap")
        raw = sorted({repr(c) for c in stdout + stderr if c in CONTROL_CHARACTERS})
        if raw or any(line.lstrip().startswith(FORGED_MARK) for line in (stdout + "\n" + stderr).splitlines()):
            problems.append(f"printed raw control characters {' '.join(raw)} from a file")
        if result["maxrss_kib"] is not None and result["maxrss_kib"] * 1024 > outcome.case.cap:
            problems.append(f"peak memory {result['maxrss_kib'] // 1024} MiB over the cap")
        if result["changed"]:
            problems.append(f"changed its input {', '.join(result['changed'])}")
        if result["left"]:
            problems.append(f"left {', '.join(result['left'])} behind after failing")
        if not problems:
            return ""
        return f"exit {code}: " + "; ".join(problems) + f"; stderr: {tail!r}"


def assert_no_failures(failures: list[str], total: int) -> None:
    assert not failures, f"{len(failures)} of {total} cases failed:\n" + "\n".join(failures)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    home = tmp_path_factory.mktemp("fuzz-home")
    env = {key: value for key, value in os.environ.items() if key != "GGML_INSPECTOR_DEBUG"}
    env.update(MPLBACKEND="Agg", HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]))
    forked = ForkServer(PARALLEL, env)
    yield forked
    forked.close()


@dataclass
class Corpus:
    """The real base inputs every family mutates."""

    root: Path
    model: Path
    vision: Path
    dump: Path
    preprocessed: Path
    png: Path
    jpeg: Path
    fifo: Path
    folder: Path
    node: DumpTarget
    tensor: DumpTarget
    frames: list[Frame]


def capture_case(model: Path, output: Path, *extra: str) -> Case:
    return Case("capture", ["capture", "-m", model, "-p", PROMPT, "-t", "1", "-c", "64", "-o", output, *extra],
                [model], [output], timeout=LLAMA_TIMEOUT)


@pytest.fixture(scope="module")
def corpus(server: ForkServer, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("fuzz")
    base = root / "base"
    base.mkdir()
    model = write_tiny_llama(base / "model.gguf", TinyLlamaSpec(dtype="f32", seed=1))
    vision = write_tiny_mllama(base / "vision.gguf")
    rng = np.random.default_rng(19)
    png, jpeg = base / "photo.png", base / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(png)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(jpeg, quality=90)
    fifo = base / "fifo"
    os.mkfifo(fifo)
    folder = base / "a-folder"
    folder.mkdir()
    fuzzer = Fuzzer(server, root)
    dump, preprocessed = base / "run.h5", base / "pre.h5"
    failures, _ = fuzzer.run([capture_case(model, dump, "-n", "1"),
                              Case("preprocess", ["preprocess", png, "-o", preprocessed], [png], [preprocessed])])
    assert_no_failures(failures, 2)
    rows = dump_rows(dump)
    text = [{key: value.decode() if isinstance(value, bytes) else value for key, value in row.items()} for row in rows]
    node = next(r for r in text if r["eval"] == 0 and r["name"] == "Qcur-0" and r["op"] == "MUL_MAT")
    tensor = next(r for r in text if r["eval"] == 0 and r["name"] == "l_out-0")
    return Corpus(root, model, vision, dump, preprocessed, png, jpeg, fifo, folder,
                  DumpTarget(node["seq"], node["name"], node["eval"], node["node"]),
                  DumpTarget(tensor["seq"], tensor["name"], tensor["eval"]), frames_from_dump(dump, limit=40))


@pytest.fixture(scope="module")
def fuzzer(server: ForkServer, corpus: Corpus) -> Fuzzer:
    return Fuzzer(server, corpus.root)


# ------------------------------------------------------------------------------------------------ commands


def reading_commands(dump: Path, aim: tuple[str, int] | None, other: Path, out: Path, which: set[str]
                     ) -> list[tuple[str, list[Any], list[Path]]]:
    """(label, argv, outputs) of every command that reads one dump, restricted to ``which``."""
    name, eval_index = aim or ("l_out-0", 0)
    at = ["--eval", str(eval_index)]
    commands = {
        "ls": (["ls", dump], []),
        "ls-config": (["ls", "--config", dump], []),
        "ls-json": (["ls", "--json", dump], []),
        "show": (["show", dump, name, *at], []),
        "show-json": (["show", "--json", dump, name, *at], []),
        "export": (["export", dump, name, *at, "-o", out / "t.npy"], [out / "t.npy"]),
        "compare": (["compare", dump, other], []),
        "compare-json": (["compare", "--json", dump, other], []),
        "plot-hist": (["plot", "hist", dump, name, *at, "-o", out / "hist.png"], [out / "hist.png"]),
        "plot-heatmap": (["plot", "heatmap", dump, name, *at, "-o", out / "heat.png"], [out / "heat.png"]),
        "plot-stats": (["plot", "stats", dump, "-o", out / "stats.png"], [out / "stats.png"]),
        "plot-diff": (["plot", "diff", dump, other, "-o", out / "diff.png"], [out / "diff.png"]),
        "plot-image": (["plot", "image", dump, "-o", out / "image.png"], [out / "image.png"]),
        "report": (["report", dump, "-o", out / "report.html"], [out / "report.html"]),
        "replay": (["replay", dump, dump, "--eval", str(eval_index), "--node", "-1"], []),
    }
    return [(label, argv, outputs) for label, (argv, outputs) in commands.items() if label in which]


DUMP_COMMANDS_BY_TAG = {
    "bomb": {"ls", "show", "export", "compare-json", "plot-hist", "plot-heatmap", "report"},
    "text": {"ls", "ls-config", "show", "compare"},
    "link": {"ls", "show", "compare-json"},
    "plots": {"plot-stats", "report"},
    "report": {"report"},
    "model": {"ls-config", "replay"},
    "truncated": {"ls", "show"},
    "attr": {"ls", "ls-config", "compare-json"},
    "seeded": {"ls", "show", "export", "compare-json"},
    "record": {"show-json", "replay"},
    "custom": {"compare-json"},
    "values": {"show", "compare", "plot-hist", "plot-heatmap", "plot-diff"},
}
DEFAULT_DUMP_COMMANDS = {"ls", "show", "export", "compare-json"}
ADDED_DUMP_COMMANDS = {"plots", "report"}


def dump_cases(corpus: Corpus, mutations: list[Mutation], folder: str) -> list[Case]:
    cases = []
    for mutation in mutations:
        path = materialise(corpus.dump, corpus.root / folder, mutation)
        out = corpus.root / "out" / path.stem
        out.mkdir(parents=True, exist_ok=True)
        # "plots" and "report" add to a mutation's commands; alone they add to the default ones.
        primary = [DUMP_COMMANDS_BY_TAG.get(tag, set()) for tag in mutation.tags if tag not in ADDED_DUMP_COMMANDS]
        which = set().union(*primary) if primary else set(DEFAULT_DUMP_COMMANDS)
        which |= set().union(*(DUMP_COMMANDS_BY_TAG[tag] for tag in mutation.tags & ADDED_DUMP_COMMANDS))
        for label, argv, outputs in reading_commands(path, mutation.target, corpus.dump, out, which):
            if label == "replay":
                argv[argv.index("--eval") + 1] = str(corpus.node.eval_index)
                argv[argv.index("--node") + 1] = str(corpus.node.node)
            inputs = [path, corpus.dump, corpus.model]
            cases.append(Case(f"{mutation.name} [{label}]", argv, inputs, outputs,
                              timeout=LLAMA_TIMEOUT if label == "replay" else READ_TIMEOUT,
                              must_fail=label in mutation.refuse))
    return cases


# ------------------------------------------------------------------------------------------------ the harness


def test_the_runner_reports_a_crash_a_hang_and_an_exit_status(server: ForkServer, tmp_path: Path) -> None:
    """The harness itself: a SIGSEGV is a signal, a deadline passed is a hang, an exit status comes through."""
    def request(label: str, argv: list[str], timeout: float = 20.0, **extra: Any) -> dict[str, Any]:
        out = tmp_path / label
        out.mkdir()
        return {"argv": argv, "cwd": str(out), "cap": CAP, "timeout": timeout, "out": str(out), **extra}

    segv, hang, usage, fine = server.run([request("segv", ["--help"], self_test="segv"),
                                          request("hang", ["--help"], timeout=1.0, self_test="hang"),
                                          request("usage", ["ls"]), request("help", ["--help"])])
    assert segv["status"] == "signal" and segv["signal"] == signal.SIGSEGV
    assert hang["status"] == "timeout" and 1.0 <= hang["seconds"] < 5.0
    assert usage["status"] == "exit" and usage["code"] == 2
    assert (tmp_path / "usage" / "stderr").read_text().startswith("ggml-inspector: error: ")
    assert fine["status"] == "exit" and fine["code"] == 0 and "Usage:" in (tmp_path / "help" / "stdout").read_text()
    # And the checks see each of them as a failure.
    case = Case("self-test", ["--help"], [])
    assert "SIGSEGV" in Fuzzer.problem(Outcome(case, {**segv, "changed": [], "left": []}, "", ""))
    assert "hung" in Fuzzer.problem(Outcome(case, {**hang, "changed": [], "left": []}, "", ""))
    two_lines = "ggml-inspector: error: a\nggml-inspector: error: b\n"
    assert "2 stderr lines" in Fuzzer.problem(Outcome(case, {**usage, "changed": [], "left": []}, "", two_lines))


def test_real_inputs_pass_every_command(fuzzer: Fuzzer, corpus: Corpus, server: ForkServer) -> None:
    """Every command succeeds on the real inputs under its cap: the caps fit a legitimate run."""
    out = corpus.root / "out" / "real"
    out.mkdir(parents=True)
    cases = []
    for label, argv, outputs in reading_commands(corpus.dump, (corpus.tensor.name, corpus.tensor.eval_index),
                                                 corpus.dump, out, set(DUMP_COMMANDS_BY_TAG["bomb"]) | {
                                                     "ls-config", "ls-json", "show-json", "compare", "plot-stats"}):
        cases.append(Case(f"real dump [{label}]", argv, [corpus.dump], outputs))
    cases += [
        Case("real dump [replay]", ["replay", corpus.dump, corpus.dump, "--eval", str(corpus.node.eval_index),
                                    "--node", str(corpus.node.node)], [corpus.dump, corpus.model], [], CAP,
             timeout=LLAMA_TIMEOUT),
        Case("real dump [plot image]", ["plot", "image", corpus.preprocessed, "-o", out / "image.png"],
             [corpus.preprocessed], [out / "image.png"]),
        Case("real gguf [gguf]", ["gguf", corpus.model], [corpus.model]),
        Case("real gguf [gguf --json --tensors]", ["gguf", "--json", "--tensors", corpus.vision], [corpus.vision]),
        Case("real png [preprocess]", ["preprocess", corpus.png, "-o", out / "p.h5"], [corpus.png], [out / "p.h5"]),
        Case("real jpeg [preprocess]", ["preprocess", corpus.jpeg, "-o", out / "j.h5"], [corpus.jpeg],
             [out / "j.h5"]),
        Case("real png [diff-preprocess]", ["diff-preprocess", corpus.png, "--against", corpus.preprocessed],
             [corpus.png, corpus.preprocessed]),
        Case("real gguf [mllama encode]", ["mllama", "encode", corpus.vision, "--image", corpus.png, "-t", "1", "-o",
                                           out / "enc.h5"], [corpus.vision, corpus.png], [out / "enc.h5"],
             timeout=LLAMA_TIMEOUT),
    ]
    frames = stream_folder(corpus.root / "real-frames", encode_stream(corpus.frames))
    cases.append(import_case("real frames", frames, corpus.root / "out" / "real-import.h5",
                             then=["ls", "show"], tensor=_first_tensor(corpus.frames)))
    enums = ggml_enums()
    add_stream = stream_folder(corpus.root / "real-add", replay_streams(enums, 0)[0][1])
    cases.append(import_case("real ADD stream", add_stream, corpus.root / "out" / "real-add.h5", then=["replay"]))
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))
    refused = [f"{o.case.name}: {fuzzer.shown(o.case)}: exit {o.result['code']}: {o.stderr.strip()[-300:]!r}"
               for o in outcomes if o.result["code"] != 0]
    assert not refused, "a real input was refused:\n" + "\n".join(refused)
    assert len(outcomes) == len(cases) + 3  # the imports' follow-ups ran too
    assert server.vm_kib * 1024 < CAP // 2


def _first_tensor(frames: list[Frame]) -> str:
    return next(frame.header["name"] for frame in frames if frame.kind == 3 and isinstance(frame.header, dict)
                and isinstance(frame.header.get("name"), str))


def stream_folder(folder: Path, stream: bytes, name: str = "4242.frames") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(stream)
    return folder


def import_case(label: str, folder: Path, output: Path, then: list[str], tensor: str = "c",
                replay_must_fail: bool = False) -> Case:
    """``import FOLDER -o OUTPUT``, then the given readers on the dump it wrote."""
    follow: dict[str, Callable[[Path], Case]] = {
        "ls": lambda dump: Case(f"{label} [ls of the import]", ["ls", dump], [dump]),
        "show": lambda dump: Case(f"{label} [show of the import]", ["show", dump, tensor], [dump]),
        "export": lambda dump: Case(f"{label} [export of the import]",
                                    ["export", dump, tensor, "-o", dump.with_suffix(".npy")], [dump],
                                    [dump.with_suffix(".npy")]),
        "replay": lambda dump: Case(f"{label} [replay of the import]",
                                    ["replay", dump, dump, "--eval", "0", "--node", "0"], [dump], [], CAP,
                                    timeout=LLAMA_TIMEOUT, must_fail=replay_must_fail),
    }
    return Case(f"{label} [import]", ["import", folder, "-o", output], [folder], [output],
                then=[follow[step] for step in then])


# ------------------------------------------------------------------------------------------------ the families


def test_crafted_dump_structure(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """Attributes, links, tables and the /tensors stream: bombs, soft links, control characters, model paths."""
    mutations = dump_structure_mutations(corpus.dump, corpus.tensor, corpus.model, corpus.fifo, corpus.folder)
    cases = dump_cases(corpus, mutations, "dump-structure")
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_index_rows(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """Seeded single-field mutations of /index rows, read by every command that reads a tensor."""
    cases = dump_cases(corpus, dump_row_mutations(corpus.dump, count=24), "dump-rows")
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_records_reach_replay(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """The replayed node's record: custom ops with a function pointer, then seeded op codes, shapes, types, slots."""
    mutations = record_mutations(corpus.dump, corpus.node, ggml_enums(), count=36)
    cases = dump_cases(corpus, mutations, "dump-records")
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_frame_streams(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """import of crafted .frames streams (heads, JSON headers, data), then the readers on what it wrote."""
    root = corpus.root / "frames"
    cases = []
    tensor = _first_tensor(corpus.frames)
    for number, (name, stream, tags) in enumerate(frame_mutations(corpus.frames, count=20)):
        folder = stream_folder(root / f"{number:03d}", stream)
        then = ["ls", "show", "export"] if tags & {"bomb", "text"} else ["ls"] if "seeded" in tags else []
        cases.append(import_case(name, folder, root / f"{number:03d}.h5", then, tensor))
    special = {"fifo": lambda p: os.mkfifo(p), "dev-zero": lambda p: p.symlink_to("/dev/zero"),
               "folder": lambda p: p.mkdir(), "empty": lambda p: p.write_bytes(b""),
               "symlink-loop": lambda p: p.symlink_to(p)}
    for label, make in special.items():
        folder = root / f"special-{label}"
        folder.mkdir()
        make(folder / "1.frames")
        (folder / "2.frames").write_bytes(encode_stream(corpus.frames))
        cases.append(import_case(f"frames/{label}-as-a-stream", folder, root / f"special-{label}.h5", ["ls"]))
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_streams_reach_replay(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """A stream's op code and op_params travel through import into a dump that replay rebuilds."""
    root = corpus.root / "replay-streams"
    cases = [import_case(name, stream_folder(root / f"{number:03d}", stream), root / f"{number:03d}.h5", ["replay"],
                         replay_must_fail="CUSTOM" in name or "IM2COL" in name)
             for number, (name, stream) in enumerate(replay_streams(ggml_enums(), count=25))]
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_gguf_headers(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """gguf (and --tensors, --json) on crafted key/value headers and tensor infos of both models."""
    cases = []
    for base, count in ((corpus.model, 15), (corpus.vision, 6)):
        for mutation in gguf_mutations(base, count, seed=19 + count):
            if base == corpus.vision and not mutation.tags & {"tensors", "seeded"}:
                continue  # the header's own fields are the same in both files
            path = materialise(base, corpus.root / f"gguf-{base.stem}", mutation)
            variants = [["--tensors"], ["--json", "--tensors"]] if mutation.tags & {"text", "seeded"} \
                else [["--tensors"]]
            for extra in variants:
                cases.append(Case(f"{base.stem}:{mutation.name} [gguf {' '.join(extra)}]", ["gguf", *extra, path],
                                  [path], must_fail="gguf" in mutation.refuse))
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_gguf_loaded(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """capture, capture --mmproj and mllama encode load crafted GGUFs: zero dimensions, wrapped offsets, bombs."""
    root = corpus.root / "gguf-loaded"
    (root / "base").mkdir(parents=True)
    projector = write_tiny_llava(root / "base" / "mmproj.gguf", TinyLlavaSpec(text_n_embd=TinyLlamaSpec().n_embd))
    cases = []
    for base, command in ((corpus.model, "capture"), (corpus.vision, "encode"), (projector, "mmproj")):
        first = gguf_layout(base.read_bytes()).tensors[0].name
        for mutation in gguf_mutations(base, 0 if command == "mmproj" else 6, seed=29):
            if not ("seeded" in mutation.tags or "array" in mutation.name or f"[{first}]" in mutation.name
                    or mutation.name.endswith(("ne0=0", "offset=18446744073709551584", "invalid-utf8"))):
                continue
            path = materialise(base, root / base.stem, mutation)
            out = root / f"{path.stem}-{command}.h5"
            if command == "capture":
                case = capture_case(path, out, "-n", "0", "-T", "result_output")
            elif command == "mmproj":
                case = Case("mmproj", ["capture", "-m", corpus.model, "--mmproj", path, "--image", corpus.png, "-p",
                                       "<__media__> hi", "-t", "1", "-c", "128", "-n", "0", "-T", "result_output",
                                       "-o", out], [corpus.model, path, corpus.png], [out], timeout=LLAMA_TIMEOUT)
            else:
                case = Case("encode", ["mllama", "encode", path, "--image", corpus.png, "-t", "1", "-T", "inp_raw",
                                       "-o", out], [path, corpus.png], [out], timeout=LLAMA_TIMEOUT)
            case.name = f"{base.stem}:{mutation.name} [{command}]"
            # libmtmd reads clip.* keys only: a projector's general.architecture may be anything.
            case.must_fail = (command in mutation.refuse if command != "mmproj"
                              else "capture" in mutation.refuse and "general.architecture" not in mutation.name)
            cases.append(case)
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_images(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """preprocess, diff-preprocess and mllama encode on image bombs, lying headers, truncations and non-files."""
    root = corpus.root / "images"
    root.mkdir()
    images: list[tuple[str, Path]] = []
    for number, (name, data, suffix) in enumerate(image_mutations(corpus.png, corpus.jpeg)):
        path = root / f"{number:03d}{suffix}"
        path.write_bytes(data)
        images.append((name, path))
    loop = root / "loop.png"
    loop.symlink_to(loop)
    images += [("image/fifo", corpus.fifo), ("image/dev-zero", Path("/dev/zero")), ("image/folder", corpus.folder),
               ("image/symlink-loop", loop)]
    cases = []
    for name, path in images:
        out = root / f"{path.name}.h5"
        cases += [Case(f"{name} [preprocess]", ["preprocess", path, "-o", out], [path], [out], must_fail=True),
                  Case(f"{name} [diff-preprocess]", ["diff-preprocess", path, "--against", corpus.preprocessed],
                       [path, corpus.preprocessed], must_fail=True)]
        if "bomb" in name or "20000" in name or name in ("image/fifo", "image/dev-zero"):
            encoded = root / f"{path.name}-enc.h5"
            cases.append(Case(f"{name} [mllama encode]", ["mllama", "encode", corpus.vision, "--image", path, "-t",
                                                          "1", "-o", encoded], [path, corpus.vision], [encoded],
                              timeout=LLAMA_TIMEOUT, must_fail=True))
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_crafted_side_files(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """The other files commands read: .npy headers, sweep summaries, a preprocessed dump, models that are no files."""
    root = corpus.root / "side-files"
    root.mkdir()
    png = corpus.png
    cases = []
    for number, (name, data) in enumerate(npy_mutations()):
        path = root / f"{number:03d}.npy"
        path.write_bytes(data)
        out = root / f"{number:03d}.h5"
        valid = name in ("npy/descr=big-endian", "npy/fortran-order")  # unusual, but real arrays
        cases += [Case(f"{name} [import-raw]", ["import-raw", path, "--name", "x", "-o", out], [path], [out],
                       must_fail=not valid),
                  Case(f"{name} [diff-preprocess --against]", ["diff-preprocess", png, "--against", path],
                       [path, png], must_fail=True)]
    for number, (name, text) in enumerate(sweep_summaries()):
        path = root / f"summary-{number}.json"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        out = root / f"sweep-{number}.png"
        cases.append(Case(f"{name} [plot sweep]", ["plot", "sweep", path, "-o", out], [path], [out], must_fail=True))
    fifo_summary = root / "fifo-summary"
    fifo_summary.mkdir()
    os.mkfifo(fifo_summary / "summary.json")
    cases.append(Case("summary/fifo [plot sweep]", ["plot", "sweep", fifo_summary, "-o", root / "f.png"],
                      [], [root / "f.png"], must_fail=True))
    # inp_raw of a preprocessed dump made a bomb: plot image and diff-preprocess --against read it.
    seq = next(int(row["seq"]) for row in dump_rows(corpus.preprocessed) if row["name"] in (b"inp_raw", "inp_raw"))
    for label, written in (("gzip-zeros", True), ("unwritten-chunks", False)):
        path = materialise(corpus.preprocessed, root, Mutation(f"pre/inp_raw={label}-3GiB", lambda p, w=written:
                                                               zero_bomb(p, seq, 3 << 30, (4, 3, 8192, 8192), w)))
        out = root / f"{path.stem}.png"
        cases += [Case(f"pre/inp_raw={label}-3GiB [plot image]", ["plot", "image", path, "-o", out], [path], [out]),
                  Case(f"pre/inp_raw={label}-3GiB [diff-preprocess --against]",
                       ["diff-preprocess", png, "--against", path], [path, png])]
    # A model that is not a file.
    empty, short, loop = root / "empty.gguf", root / "short.gguf", root / "loop.gguf"
    empty.write_bytes(b"")
    short.write_bytes(b"GGU")
    loop.symlink_to(loop)
    for model in (corpus.fifo, Path("/dev/zero"), corpus.folder, empty, short, loop):
        out = root / f"model-{model.name}.h5"
        cases += [Case(f"model/{model.name} [gguf]", ["gguf", "--tensors", model], [model], must_fail=True),
                  Case(f"model/{model.name} [capture]", ["capture", "-m", model, "-p", PROMPT, "-t", "1", "-o", out],
                       [model], [out], timeout=LLAMA_TIMEOUT, must_fail=True),
                  Case(f"model/{model.name} [mllama encode]", ["mllama", "encode", model, "--image", png, "-t", "1",
                                                               "-o", out], [model, png], [out],
                       timeout=LLAMA_TIMEOUT, must_fail=True)]
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def test_hostile_options(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """Option values llama.cpp, ggml or this machine cannot honour: refused in one line, never a crash or a hang."""
    root = corpus.root / "options"
    root.mkdir()
    model, vision, png, dump = corpus.model, corpus.vision, corpus.png, corpus.dump
    capture_sets: list[list[tuple[str, str | None]]] = [
        [("-c", "2147483648")], [("-c", "1"), ("-p", "Hi there, ggml!")], [("-t", "100000")], [("-t", "0")],
        [("-t", "-1")], [("-b", "0")], [("-ub", "0")], [("-b", "2147483648")], [("-ub", "2147483648")],
        [("-n", "2147483647")], [("-n", "-5")], [("-ngl", "2147483647")],
        [("--jinja", None), ("--chat-template", '{{ "a" * 9999999999 }}')],
        [("--jinja", None), ("--chat-template", "{% for i in range(99999999999) %}x{% endfor %}")],
        [("--jinja", None), ("--chat-template", "{{ ''.__class__.__mro__[1].__subclasses__() }}")],
        [("--jinja", None), ("--chat-template", "{% for m in messages %}" * 300)],
        [("-f", str(corpus.fifo))], [("-f", "/dev/zero")], [("-f", str(corpus.folder))],
        [("--token-ids", "999999999")], [("--token-ids", "-5")], [("--token-ids", ",".join(["1"] * 5000))],
    ]
    cases = []
    for number, options in enumerate(capture_sets):
        out = root / f"capture-{number}.h5"
        argv: list[Any] = ["capture", "-m", model, "-p", PROMPT, "-t", "1", "-c", "64", "-n", "0", "-T",
                           "result_output", "-o", out]
        for option, value in options:
            if value is None:
                argv.append(option)
            elif option in argv:  # the hostile value replaces the base one
                argv[argv.index(option) + 1] = value
            elif option == "--token-ids" or option == "-f":
                argv[argv.index("-p"):argv.index("-p") + 2] = [option, value]
            else:
                argv += [option, value]
        label = " ".join(f"{o} {v if v is None or len(v) < 40 else v[:37] + '...'}" for o, v in options)
        honourable = options[0][0] in ("-ngl",) or options in ([("-t", "0")], [("-t", "-1")])
        cases.append(Case(f"options/capture {label}", argv, [model], [out], timeout=LLAMA_TIMEOUT,
                          must_fail=not honourable))
    for options in (["-t", "100000"], ["-ngl", "2147483647"], ["-t", "0"]):
        out = root / f"encode-{options[0]}{options[1]}.h5"
        cases.append(Case(f"options/mllama encode {' '.join(options)}",
                          ["mllama", "encode", vision, "--image", png, *options, "-o", out], [vision, png], [out],
                          timeout=LLAMA_TIMEOUT, must_fail=options == ["-t", "100000"]))
    out = root / "generate.h5"
    cases.append(Case("options/mllama generate of a vision-only GGUF -c 2^31",
                      ["mllama", "generate", vision, "--image", png, "-p", "hi", "-c", "2147483648", "-o", out],
                      [vision, png], [out], timeout=LLAMA_TIMEOUT, must_fail=True))
    for options in (["--max-tiles", "100000"], ["--max-tiles", "0"], ["--max-tiles", "-1"], ["--tile-size", "0"],
                    ["--tile-size", "1"], ["--tile-size", "100000"], ["--tile-size", "-5"],
                    ["--convention", "ollama", "--max-tiles", "100000"], ["--loader", "nope"]):
        out = root / f"pre-{'-'.join(options)}.h5"
        cases.append(Case(f"options/preprocess {' '.join(options)}", ["preprocess", png, *options, "-o", out], [png],
                          [out], must_fail=True))
    cases.append(Case("options/diff-preprocess --max-tiles 100000",
                      ["diff-preprocess", png, "--against", corpus.preprocessed, "--max-tiles", "100000"],
                      [png, corpus.preprocessed], must_fail=True))
    for options in (["-p", "99999"], ["-p", "-1"], ["-p", "65536"], ["-p", "99999", "-t", "100000"]):
        cases.append(Case(f"options/rpc-server {' '.join(options)}", ["rpc-server", *options], [], [], CAP,
                          must_fail=True))
    name = corpus.tensor.name
    for argv in (["show", dump, name, "-n", str(2**62)], ["show", dump, name, "-n", "1000000000"],
                 ["plot", "heatmap", dump, name, "--slice", "0,0,0,0,0,0,0,0", "-o", root / "s1.png"],
                 ["plot", "heatmap", dump, name, "--slice", "99999999999,:", "-o", root / "s2.png"],
                 ["plot", "heatmap", dump, name, "--slice", "a,b", "-o", root / "s3.png"],
                 ["plot", "heatmap", dump, name, "--slice", ":" * 10000, "-o", root / "s4.png"],
                 ["ls", dump, "-T", "*" * 5000 + "x"], ["ls", dump, "-T", "["],
                 ["compare", dump, dump, "--atol", "-1"], ["compare", dump, dump, "--preset", "nope"],
                 ["import-raw", "/dev/zero", "--name", "x", "--ne", "1099511627776", "-o", root / "raw1.h5"],
                 ["import-raw", corpus.fifo, "--name", "x", "--ne", "4", "-o", root / "raw2.h5"],
                 ["import-raw", png, "--name", "x", "--ne", "-1", "-o", root / "raw3.h5"],
                 ["import-raw", png, "--name", "x", "--shape", "99999999999,99999999999", "-o", root / "raw4.h5"]):
        outputs = [Path(arg) for arg in argv if isinstance(arg, Path) and arg.parent == root]
        inputs = [arg for arg in argv if isinstance(arg, Path) and arg not in outputs]
        refused = argv[0] == "import-raw" or "--slice" in argv
        cases.append(Case(f"options/{' '.join(str(a) for a in argv[:1] + argv[2:5])[:70]}", argv, inputs, outputs,
                          must_fail=refused))
    hf = root / "hf-deep"
    hf.mkdir()
    (hf / "config.json").write_text("[" * 100000 + "]" * 100000)
    hf_fifo = root / "hf-fifo"
    hf_fifo.mkdir()
    os.mkfifo(hf_fifo / "config.json")
    hf_header = root / "hf-safetensors-deep"
    hf_header.mkdir()
    (hf_header / "config.json").write_text('{"model_type": "mllama"}')
    deep = b"[" * 50000 + b"]" * 50000
    (hf_header / "model.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    for folder in (hf, hf_fifo, hf_header):
        out = root / f"{folder.name}.gguf"
        cases.append(Case(f"options/mllama convert {folder.name}", ["mllama", "convert", folder, "-o", out],
                          [folder], [out], must_fail=True))
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))


def test_an_output_is_never_an_input(fuzzer: Fuzzer, corpus: Corpus) -> None:
    """-o naming an input (the same path, a hard link, a symbolic link), with --overwrite: the input survives."""
    root = corpus.root / "same-file"
    cases = []
    for how in ("same", "hardlink", "symlink"):
        folder = root / how
        model = _copy(corpus.model, folder / "model.gguf")
        vision = _copy(corpus.vision, folder / "vision.gguf")
        png = _copy(corpus.png, folder / "photo.png")
        dump = _copy(corpus.dump, folder / "run.npy")  # export writes .npy: a dump given that name
        raw = folder / "raw.h5"
        raw.write_bytes(bytes(16))
        frames = stream_folder(folder / "frames", encode_stream(corpus.frames))

        def alias(path: Path, how: str = how) -> Path:
            if how == "same":
                return path
            link = path.with_name(f"{how}-{len(list(path.parent.iterdir()))}-{path.name}")
            if how == "hardlink":
                os.link(path, link)
            else:
                link.symlink_to(path)
            return link

        cases += [
            Case(f"same-file/{how} capture -o model", ["capture", "-m", model, "-p", PROMPT, "-t", "1", "-c", "64",
                                                       "-n", "0", "-o", alias(model), "--overwrite"], [model], [],
                 timeout=LLAMA_TIMEOUT),
            Case(f"same-file/{how} mllama encode -o model", ["mllama", "encode", vision, "--image", png, "-t", "1",
                                                             "-o", alias(vision), "--overwrite"], [vision, png], [],
                 timeout=LLAMA_TIMEOUT),
            Case(f"same-file/{how} mllama encode -o image", ["mllama", "encode", vision, "--image", png, "-t", "1",
                                                             "-o", alias(png), "--overwrite"], [vision, png], [],
                 timeout=LLAMA_TIMEOUT),
            Case(f"same-file/{how} preprocess -o image", ["preprocess", png, "-o", alias(png), "--overwrite"], [png]),
            Case(f"same-file/{how} export -o dump", ["export", dump, corpus.tensor.name, "-o", alias(dump),
                                                     "--overwrite"], [dump]),
            Case(f"same-file/{how} import -o stream", ["import", frames, "-o", alias(frames / "4242.frames"),
                                                       "--overwrite"], [frames]),
            Case(f"same-file/{how} import-raw -o raw", ["import-raw", raw, "--name", "x", "--ne", "4", "-o",
                                                        alias(raw), "--overwrite"], [raw]),
            Case(f"same-file/{how} report -o dump", ["report", dump, "-o", alias(dump)], [dump]),
            Case(f"same-file/{how} plot hist -o dump", ["plot", "hist", dump, corpus.tensor.name, "-o", alias(dump)],
                 [dump]),
        ]
    for case in cases:
        case.must_fail = True
    failures, outcomes = fuzzer.run(cases)
    assert_no_failures(failures, len(outcomes))
