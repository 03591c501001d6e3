"""The report's picture of the graph around the first origin: Graphviz's layout of real captures, read back.

Each picture is checked against the dumps read independently with h5py: the
origin's sources as its record lists them, its consumers as theirs list it,
and each node's colour against whether its bytes agree in the two runs.  Names
come from other people's dumps, so a dump is renamed to hostile names and the
report is read back by an XML parser and by a real browser.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import PROMPT
from test_cli import cli
from test_report import CHROMIUM_FLAGS, _Assets, chromium

from inspector.ggml.rpc import LoopbackServer
from inspector.present.graph_picture import PictureUnavailable, safe_svg
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

SVG = "{http://www.w3.org/2000/svg}"
ORIGIN_RED = "#b00000"
# The fills the report promises for each status (docs/plots.md).
FILLS = {"identical": "#c8e6c9", "diverged": "#ffcdd2", "weight differs": "#ffab91"}
F32_NMSE = 1e-7
HOSTILE = 'evil"<script>alert(1)</script>\n\\x'
HOSTILE_SHOWN = 'evil"<script>alert(1)</script>\\x0a\\x'  # the newline as \x0a, the backslash kept
INJECTION = '"];\nn0 -> n1 [label="pwn&amp;' + "y" * 80


@dataclass
class Drawn:
    """One node of the SVG as a reader sees it."""

    node_id: str
    label: str  # name, with " #occurrence" after the first
    lines: list[str]
    status: str
    fill: str
    stroke: str
    stroke_width: str
    dashed: bool


def _picture(report: Path) -> tuple[dict[str, Drawn], set[tuple[str, str]]]:
    """The drawn nodes by label, and the edges as (source label, consumer label)."""
    text = report.read_text()
    svg = ElementTree.fromstring(text[text.index("<svg"):text.index("</svg>") + len("</svg>")])
    nodes: dict[str, Drawn] = {}
    by_id: dict[str, str] = {}
    edges = []
    for group in svg.iter(f"{SVG}g"):
        title = group.findtext(f"{SVG}title") or ""
        if group.get("class") == "edge":
            edges.append(tuple(title.split("->")))
        if group.get("class") != "node":
            continue
        texts = group.findall(f"{SVG}text")
        bold = [t.text or "" for t in texts if t.get("font-weight") == "bold" and t.text != "FIRST ORIGIN"]
        shape = group.find(f"{SVG}path")
        shape = shape if shape is not None else group.find(f"{SVG}polygon")
        drawn = Drawn(title, bold[0], [t.text or "" for t in texts],
                      next(t.text or "" for t in texts if t.get("font-style") == "italic").split(",")[0],
                      shape.get("fill", ""), shape.get("stroke", ""), shape.get("stroke-width", "1"),
                      shape.get("stroke-dasharray") is not None)
        nodes[drawn.label] = drawn
        by_id[title] = drawn.label
    return nodes, {(by_id[source], by_id[consumer]) for source, consumer in edges}


def _records(path: Path, eval_index: int = 0) -> dict[str, dict]:
    """The records of one evaluation by label, read with h5py and json alone."""
    with h5py.File(path, "r") as file:
        records = [json.loads(text) for text in file["records"].asstr()[:]]
    return {_label(r["name"], r["occurrence"]): r for r in records if r["eval_index"] == eval_index}


def _label(name: str, occurrence: int) -> str:
    return name if occurrence == 0 else f"{name} #{occurrence}"


def _values(path: Path, record: dict) -> np.ndarray:
    with h5py.File(path, "r") as file:
        row = file["index"][record["seq"]]
        raw = file["tensors"][int(row["offset"]):int(row["offset"]) + int(row["nbytes"])]
    return raw.view(np.dtype(row["dtype"].decode())).astype(np.float64)


def _expected_status(a: Path, b: Path, record_a: dict, record_b: dict) -> str:
    values_a, values_b = _values(a, record_a), _values(b, record_b)
    if values_a.tobytes() == values_b.tobytes():
        return "identical"
    nmse = float(np.sum((values_a - values_b) ** 2) / np.sum(values_a ** 2))
    return "diverged" if nmse > F32_NMSE else "within"


def _capture(model: Path, out: Path, *extra: object) -> None:
    result = cli("capture", "-m", model, "-p", PROMPT, "-t", "1", "-c", "64", "-o", out, *extra)
    assert result.returncode == 0, result.stderr


def _report(a: Path, b: Path, out: Path) -> Path:
    result = cli("report", a, b, "-o", out)
    assert result.returncode == 0, result.stderr
    return out


def _rename(path: Path, renames: dict[str, str]) -> None:
    """Rename tensors everywhere a dump names them, as a hostile writer could have named them."""
    with h5py.File(path, "r+") as file:
        index = file["index"][:]
        for row in range(len(index)):
            name = index["name"][row].decode()
            index["name"][row] = renames.get(name, name).encode()
        file["index"][...] = index
        records = file["records"]
        for row in range(len(records)):
            record = json.loads(records[row])
            record["name"] = renames.get(record["name"], record["name"])
            record["sources"] = [renames.get(s, s) for s in record.get("sources", [])]
            for detail in record.get("source_details", []):
                detail["name"] = renames.get(detail["name"], detail["name"])
            records[row] = json.dumps(record)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two captures of everything whose models differ in one weight: blk.1.attn_q.weight."""
    folder = tmp_path_factory.mktemp("graph_picture")
    write_tiny_llama(folder / "base.gguf", TinyLlamaSpec(seed=1))
    write_tiny_llama(folder / "changed.gguf", TinyLlamaSpec(seed=1, perturb=(1, 5, 0.5)))
    _capture(folder / "base.gguf", folder / "a.h5")
    _capture(folder / "changed.gguf", folder / "b.h5")
    return folder


def test_the_picture_shows_the_origin_its_sources_and_consumers_coloured_by_status(runs, tmp_path):
    a, b = runs / "a.h5", runs / "b.h5"
    nodes, edges = _picture(_report(a, b, tmp_path / "report.html"))
    # The planted change is in blk.1.attn_q.weight: the first op that reads it is the origin.
    origin = nodes["Qcur-1"]
    assert origin.lines[0] == "FIRST ORIGIN" and origin.stroke == ORIGIN_RED and float(origin.stroke_width) >= 3
    assert [n.label for n in nodes.values() if n.stroke == ORIGIN_RED] == ["Qcur-1"]
    records_a, records_b = _records(a), _records(b)
    # Its sources as its record lists them, and theirs: drawn, with an edge into their consumer.
    sources = [_label(d["name"], d["occurrence"]) for d in records_a["Qcur-1"]["source_details"]]
    assert sorted(sources) == ["attn_norm-1", "blk.1.attn_q.weight"]
    second = [_label(d["name"], d["occurrence"]) for d in records_a["attn_norm-1"]["source_details"]]
    for source, consumer in [(s, "Qcur-1") for s in sources] + [(s, "attn_norm-1") for s in second]:
        assert (source, consumer) in edges, (source, consumer)
    # Its consumers: every captured node of the evaluation whose record lists it as a source.
    consumers = [label for label, r in records_a.items()
                 if any((d["name"], d["occurrence"]) == ("Qcur-1", 0) for d in r.get("source_details", []))]
    assert consumers and all((("Qcur-1", c) in edges) for c in consumers)
    # Colours: a captured node's by whether its values agree; the weight by the model files' bytes.
    for label, drawn in nodes.items():
        if label in records_a:
            expected = _expected_status(a, b, records_a[label], records_b[label])
            assert (drawn.status, drawn.fill, drawn.dashed) == (expected, FILLS[expected], False), label
    weight = nodes["blk.1.attn_q.weight"]
    assert (weight.status, weight.fill, weight.dashed) == ("weight differs", FILLS["weight differs"], True)
    detail = next(d for d in records_a["Qcur-1"]["source_details"] if d["name"] == "blk.1.attn_q.weight")
    assert f"{detail['buffer']} {detail['type']}" in weight.lines
    assert {nodes[s].status for s in ("attn_norm-1", "norm-1")} == {"identical"}


def test_the_picture_labels_each_runs_backend_where_they_differ(tmp_path):
    model = write_tiny_llama(tmp_path / "quant.gguf", TinyLlamaSpec(seed=3, dtype="quant", n_embd=256, n_ff=512))
    with LoopbackServer() as server:
        _capture(model, tmp_path / "cpu.h5", "-ngl", "0")
        _capture(model, tmp_path / "rpc.h5", "-ngl", "all", "--rpc", server.endpoint)
    nodes, edges = _picture(_report(tmp_path / "cpu.h5", tmp_path / "rpc.h5", tmp_path / "report.html"))
    origin = nodes["Qcur-0"]
    assert origin.stroke == ORIGIN_RED
    records_a, records_b = _records(tmp_path / "cpu.h5"), _records(tmp_path / "rpc.h5")
    weight_a = next(d for d in records_a["Qcur-0"]["source_details"] if d["name"] == "blk.0.attn_q.weight")
    weight_b = next(d for d in records_b["Qcur-0"]["source_details"] if d["name"] == "blk.0.attn_q.weight")
    assert weight_a["buffer_type"] == "CPU_REPACK" and weight_b["buffer"].startswith("RPC0[")
    lines = nodes["blk.0.attn_q.weight"].lines
    assert f"A {weight_a['buffer']} {weight_a['type']}" in lines
    assert f"B {weight_b['buffer']} {weight_b['type']}" in lines
    for side, records in (("A", records_a), ("B", records_b)):
        assert f"{side} {records['Qcur-0']['buffer']} {records['Qcur-0']['ggml_type']}" in origin.lines
    assert ("blk.0.attn_q.weight", "Qcur-0") in edges


def test_hostile_names_are_shown_escaped_and_cannot_script_the_report(runs, tmp_path):
    clean_nodes, clean_edges = _picture(_report(runs / "a.h5", runs / "b.h5", tmp_path / "clean.html"))
    renames = {"attn_norm-1": HOSTILE, "norm-1": INJECTION}
    for side in ("a", "b"):
        (tmp_path / f"{side}.h5").write_bytes((runs / f"{side}.h5").read_bytes())
        _rename(tmp_path / f"{side}.h5", renames)
    report = _report(tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "hostile.html")
    nodes, edges = _picture(report)
    shown_injection = '"];\\x0an0 -> n1 [label="pwn&amp;'
    shown_injection += "y" * (47 - len(shown_injection)) + "\u2026"
    assert HOSTILE_SHOWN in nodes and shown_injection in nodes
    # The same picture as with the real names: nothing injected a node or an edge.
    assert (len(nodes), len(edges)) == (len(clean_nodes), len(clean_edges))
    assert (HOSTILE_SHOWN, "Qcur-1") in edges and (shown_injection, HOSTILE_SHOWN) in edges
    text = report.read_text()
    assert "<script" not in text.lower()
    parser = _Assets()
    parser.feed(text)
    assert "script" not in parser.tags
    assert all(source.startswith("data:image/png;base64,") for source in parser.sources)
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          report.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<svg" in dom.stdout and "FIRST ORIGIN" in dom.stdout
    assert "<script" not in dom.stdout.lower() and "&lt;script&gt;alert(1)" in dom.stdout


def test_svg_that_could_run_anything_is_refused():
    for unsafe in ('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
                   '<svg xmlns="http://www.w3.org/2000/svg"><g onload="alert(1)"/></svg>',
                   '<svg xmlns="http://www.w3.org/2000/svg" xmlns:x="http://www.w3.org/1999/xlink">'
                   '<a x:href="javascript:alert(1)"><text>t</text></a></svg>',
                   '<svg xmlns="http://www.w3.org/2000/svg"><foreignObject><p>x</p></foreignObject></svg>'):
        with pytest.raises(PictureUnavailable):
            safe_svg(unsafe)
    kept = safe_svg('<?xml version="1.0"?><!-- comment --><svg xmlns="http://www.w3.org/2000/svg">'
                    '<text>a &lt;b&gt;</text></svg>')
    assert kept.startswith("<svg") and "comment" not in kept and "a &lt;b&gt;" in kept


def test_without_dot_the_report_says_so_in_one_line(runs, tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    out = tmp_path / "report.html"
    result = subprocess.run([sys.executable, "-m", "inspector", "report", runs / "a.h5", runs / "b.h5", "-o", out],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": str(bare)})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    text = out.read_text()
    assert "<svg" not in text
    assert "<p class='missing'>no picture: Graphviz&#x27;s dot is not installed (apt-get install graphviz)</p>" in text


def test_a_record_the_reader_refuses_costs_the_picture_not_the_report(runs, tmp_path):
    for side in ("a", "b"):
        (tmp_path / f"{side}.h5").write_bytes((runs / f"{side}.h5").read_bytes())
    with h5py.File(tmp_path / "a.h5", "r+") as file:  # l_out-0 is identical, three levels above the origin
        records = file["records"]
        row = next(row for row in range(len(records)) if json.loads(records[row])["name"] == "l_out-0")
        records[row] = json.dumps({**json.loads(records[row]), "source_details": ["not an object"]})
    text = _report(tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "report.html").read_text()
    assert "<svg" not in text and "Comparison: FAIL" in text
    assert "no picture: " in text and "the record of &#x27;l_out-0&#x27; has a malformed &#x27;source_details&#x27;" \
        in text

