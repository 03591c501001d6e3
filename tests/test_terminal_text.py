"""Text from files reaches the terminal escaped: one name, one line, no control sequence.

A dump is written by the real writer, then its index, records and
attributes are rewritten with h5py as someone crafting a hostile file would:
a tensor name that holds an OSC sequence (which retitles a terminal), a BEL,
a newline followed by a forged line and a right-to-left override. ``ls``,
``show``, ``compare`` (text and CSV) and error messages must print none of
those bytes and no forged line; ``--json`` must keep the exact name. A dump
full of NaN and infinities must not make numpy or matplotlib print warnings.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter
from inspector.formatting import printable

EVIL = "evil\x1b]0;pwned\x07\nforged line\u202e"
# The same text as printable must show it, written out by hand.
EVIL_SHOWN = "evil\\x1b]0;pwned\\x07\\x0aforged line\\u202e"
EVIL_REASON = "disk \x1b[31mfull\r\nforged reason"
EVIL_KIND = "prompt\x1b[2J"
CONTROL_BYTES = ("\x1b", "\x07", "\x9b", "\u202e")


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    env.pop("GGML_INSPECTOR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def assert_clean(text: str) -> None:
    for byte in CONTROL_BYTES:
        assert byte not in text, f"{byte!r} reached the terminal: {text!r}"
    assert not any(line.startswith("forged") for line in text.splitlines()), text


def write_dump(path: Path, arrays: dict[str, np.ndarray], config: dict | None = None) -> Path:
    with DumpWriter(path, config or {"runner": "test"}, {}) as writer:
        index = writer.begin_evaluation("prompt", {})
        for node, (name, array) in enumerate(arrays.items()):
            writer.write(TensorRecord.for_array(name, array, index, node, "ADD"), array)
    return path


def rename(path: Path, old: str, new: str, reason: str | None = None, kind: str | None = None) -> None:
    """Rename tensor ``old`` in the index row and its record, as a crafted file would; optionally mark the dump
    incomplete with ``reason`` and give evaluation 0 the kind ``kind``."""
    with h5py.File(path, "r+") as handle:
        index = handle["index"][()]
        rows = [i for i, name in enumerate(index["name"]) if name.decode() == old]
        assert rows
        for i in rows:
            index["name"][i] = new.encode()
            record = json.loads(handle["records"][i])
            record["name"] = new
            handle["records"][i] = json.dumps(record)
        handle["index"][...] = index
        if reason is not None:
            handle.attrs["complete"] = False
            handle.attrs["incomplete_reason"] = reason
        if kind is not None:
            handle["evals/000000"].attrs["kind"] = kind


ARRAYS = {"first": np.arange(6, dtype=np.float32), "middle": np.linspace(-2, 2, 12, dtype=np.float32),
          "last": np.ones((2, 3), dtype=np.float32)}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run A and run B: the same three tensors, the middle one named EVIL, B's middle values changed."""
    folder = tmp_path_factory.mktemp("hostile-text")
    a = write_dump(folder / "a.h5", ARRAYS, {"runner": "test", "prompt": "same"})
    b = write_dump(folder / "b.h5", {**ARRAYS, "middle": ARRAYS["middle"] * 3},
                   {"runner": "test", "prompt": "other\x1b[2J\nforged config", "key\nforged": 1})
    rename(a, "middle", EVIL, reason=EVIL_REASON, kind=EVIL_KIND)
    rename(b, "middle", EVIL)
    return a, b


def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("l_out-0") == "l_out-0"
    assert printable(EVIL) == EVIL_SHOWN
    assert printable("a\tb\x7fc\x85d\x9be") == "a\\x09b\\x7fc\\x85d\\x9be"
    assert printable("\u2066x\u2069\u202a\u2028") == "\\u2066x\\u2069\\u202a\\u2028"
    assert printable("caf\u00e9 \u65e5\u672c \\x41") == "caf\u00e9 \u65e5\u672c \\x41"  # text and backslashes kept
    assert printable(b"\xffname".decode("utf-8", "surrogateescape")) == "\\xffname"


def test_ls_prints_one_row_per_tensor_and_escapes_names_and_reason(dumps):
    a, _ = dumps
    result = cli("ls", a)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout)
    assert_clean(result.stderr)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + len(ARRAYS)  # header, rule, one line per tensor
    assert EVIL_SHOWN in lines[3] and "prompt\\x1b[2J" in lines[3]
    assert result.stderr.splitlines() == [
        f"warning: {a} is incomplete (disk \\x1b[31mfull\\x0d\\x0aforged reason)", f"{len(ARRAYS)} tensors"]


def test_ls_json_keeps_the_exact_text(dumps):
    a, _ = dumps
    listing = json.loads(cli("ls", a, "--json").stdout)
    assert [row["name"] for row in listing["tensors"]] == ["first", EVIL, "last"]
    assert listing["incomplete_reason"] == EVIL_REASON


def test_show_escapes_the_name(dumps):
    a, _ = dumps
    result = cli("show", a, EVIL, "-n", "0")
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout)
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith(EVIL_SHOWN + "  (eval 0, node 1")


def test_config_of_a_hostile_dump_is_one_line_per_key(dumps):
    _, b = dumps
    result = cli("ls", b, "--config")
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout)
    assert "prompt = other\\x1b[2J\\x0aforged config" in result.stdout.splitlines()
    assert "key\\x0aforged = 1" in result.stdout.splitlines()


def test_compare_text_escapes_every_name(dumps):
    a, b = dumps
    result = cli("compare", a, b)
    assert result.returncode == 1, result.stderr
    assert_clean(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"first divergence: {EVIL_SHOWN} (eval 0 prompt\\x1b[2J, node 1")
    # The first divergence line and its table row name the tensor; nothing else does, nothing is forged.
    assert sum("evil" in line for line in lines) == 2
    assert sum("forged" in line for line in lines) == 3  # those two, and the changed prompt in "runs differ"
    differ = next(line for line in lines if line.startswith("runs differ in: "))
    # Values are shown as Python literals (their repr), escaped; a key only B records is no difference there.
    assert differ == "runs differ in: prompt: 'same' -> 'other\\x1b[2J\\nforged config'"
    assert json.loads(cli("compare", a, b, "--json").stdout)["config_differences"]["key\nforged"] == [None, 1]


def test_compare_csv_is_one_line_per_row(dumps):
    a, b = dumps
    result = cli("compare", a, b, "--csv")
    assert result.returncode == 1, result.stderr
    assert_clean(result.stdout)
    assert len(result.stdout.splitlines()) == 1 + len(ARRAYS)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["name"] for row in rows] == ["first", EVIL_SHOWN, "last"]
    assert rows[1]["status"] == "diverged"


def test_compare_json_round_trips_the_exact_name(dumps):
    a, b = dumps
    result = cli("compare", a, b, "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert [row["name"] for row in document["tensors"]] == ["first", EVIL, "last"]
    assert document["first_divergence"]["name"] == EVIL


def test_an_error_naming_a_hostile_tensor_or_path_is_one_line(dumps, tmp_path):
    a, _ = dumps
    for args in (["show", a, EVIL + "-missing"], ["export", a, EVIL + "-missing", "-o", tmp_path / "x.npy"],
                 ["ls", tmp_path / "no\nsuch\x1b]0;x\x07.h5"], ["compare", a, tmp_path / "gone\n.h5"]):
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("ggml-inspector: error: ")
        assert_clean(result.stderr)
    assert not (tmp_path / "x.npy").exists()


def test_gguf_keys_and_values_are_escaped(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "hostile.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_string("general.name", EVIL)
    writer.add_uint32("evil.key\x1b]0;x\x07\nforged.key", 7)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    result = cli("gguf", path)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout)
    lines = result.stdout.splitlines()
    assert any(line.startswith("general.name") and EVIL_SHOWN in line for line in lines)
    assert any(line.startswith("evil.key\\x1b]0;x\\x07\\x0aforged.key") for line in lines)
    exact = json.loads(cli("gguf", path, "--json").stdout)["metadata"]
    assert exact["general.name"] == EVIL


@pytest.fixture(scope="module")
def non_finite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tensors of NaN, infinities and extremes whose sums, squares and ranges overflow float64, and an index row
    whose statistics are ±1e308: the statistics of hostile (or broken) data."""
    folder = tmp_path_factory.mktemp("non-finite")
    big32, big64 = np.finfo(np.float32).max, np.finfo(np.float64).max
    mixed = np.array([np.nan, np.inf, -np.inf, big32, -big32, 0, 1, np.nan] * 8, dtype=np.float32).reshape(8, 8)
    arrays = {"all_nan": np.full((4, 4), np.nan, dtype=np.float32), "mixed": mixed,
              "huge": np.array([big64, -big64, 1.0, np.nan, 0.0, big64 / 2] * 4).reshape(4, 6),
              "all_inf": np.full(16, np.inf, dtype=np.float16)}
    a = write_dump(folder / "a.h5", arrays)
    b = write_dump(folder / "b.h5", {k: -v for k, v in arrays.items()})
    with h5py.File(a, "r+") as handle:
        index = handle["index"][()]
        for field, value in (("min", -1e308), ("max", 1e308), ("mean", 1e308), ("std", 1e308)):
            index[field][1] = value
        handle["index"][...] = index
    return a, b


def test_non_finite_tensors_print_no_warnings(non_finite, tmp_path):
    a, b = non_finite
    runs: list[tuple[list[object], int, str]] = [(["ls", a], 0, "4 tensors"), (["compare", a, b], 1, "")]
    for name in ("all_nan", "mixed", "huge", "all_inf"):
        runs += [(["show", a, name], 0, ""), (["plot", "hist", a, name, "-o", tmp_path / f"{name}.png"], 0, "wrote"),
                 (["plot", "heatmap", a, name, "-o", tmp_path / f"{name}-heat.png"], 0, "wrote"),
                 (["plot", "diff", a, b, name, "-o", tmp_path / f"{name}-diff.png"], 0, "wrote")]
    runs += [(["plot", "stats", a, "-o", tmp_path / "stats.png"], 0, "wrote"),
             (["plot", "diff", a, b, "-o", tmp_path / "diff.png"], 0, "wrote"),
             (["report", a, b, "-o", tmp_path / "report.html"], 0, "wrote")]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda run: cli(*run[0]), runs))
    for (args, code, start), result in zip(runs, results, strict=True):
        assert result.returncode == code, (args, result.stderr)
        # Nothing on stderr but the command's own closing line: no warning, no second line.
        assert result.stderr == "" if not start else (
            len(result.stderr.splitlines()) == 1 and result.stderr.startswith(start)), (args, result.stderr)


def test_html_report_keeps_its_escaping(dumps, tmp_path):
    a, b = dumps
    for path in (a, b):
        shutil.copy(path, tmp_path / path.name)
        rename(tmp_path / path.name, EVIL, "<script>alert(1)</script>")
    output = tmp_path / "report.html"
    result = cli("report", tmp_path / a.name, tmp_path / b.name, "-o", output)
    assert result.returncode == 0, result.stderr
    document = output.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "<script" not in document
