"""Tolerance rules (compare --rules), the reference run (--reference) and the error-growth plot of the report.

Real captures of generated llamas: A runs F32 weights, B the same weights
stored as F16 (the same seed), R the F32 model again at ``-ub 1``, so R
agrees with A up to float32 summation order by construction and B carries
the f16 rounding of every weight: A must be the run closer to R wherever
A and B differ, and B when they are swapped.  Expected NMSE, max |a-b| and
cosine are recomputed here with numpy from the stored tensors, and R's
per-token rows are stacked by hand, independently of compare's alignment.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_capture
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.compare.reference import attach_reference, layer_errors
from inspector.compare.rules import MAX_RULES_BYTES, load_rules
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import ToleranceRequest
from inspector.present import plots
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

N_LAYER = 4
TENSORS = ("l_out-*", "attn_norm-*", "ffn_out-*", "inp_pos", "result_output")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rules")
    f32 = write_tiny_llama(folder / "f32.gguf", TinyLlamaSpec(dtype="f32", seed=22, n_layer=N_LAYER))
    f16 = write_tiny_llama(folder / "f16.gguf", TinyLlamaSpec(dtype="f16", seed=22, n_layer=N_LAYER))
    paths = {"a": folder / "a.h5", "b": folder / "b.h5", "r": folder / "r.h5"}
    run_capture(f32, paths["a"], TENSORS)
    run_capture(f16, paths["b"], TENSORS)
    run_capture(f32, paths["r"], TENSORS, n_ubatch=1, n_batch=1)
    return paths


def tokens_of(path: Path, name: str) -> np.ndarray:
    """Every token row of ``name`` in a run, in position order, stacked from its evaluations (float64)."""
    with open_dump(path) as dump:
        rows = [dump.read(entry).astype(np.float64).reshape(-1, entry.shape[-1])
                for entry in sorted(dump.entries([name]), key=lambda e: e.eval_index)]
    return np.concatenate(rows)


def nmse(reference: np.ndarray, other: np.ndarray) -> float:
    return float(((other - reference) ** 2).sum() / (reference ** 2).sum())


def compare_json(*args: object) -> dict:
    result = cli("compare", *args, "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def by_name(document: dict) -> dict[str, dict]:
    return {t["name"]: t for t in document["tensors"]}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_each_differing_tensor_names_the_run_closer_to_the_reference(runs):
    a, b, r = (tokens_of(runs[k], "l_out-0") for k in "abr")
    expected_a, expected_b = nmse(a, r), nmse(b, r)
    assert expected_a < expected_b / 100, "R was built to agree with A"
    document = compare_json(runs["a"], runs["b"], "--tolerance", "f32", "--reference", runs["r"])
    differing = [t for t in document["tensors"] if t["status"] in ("diverged", "within")]
    judged = [t for t in differing if t["reference"] is not None]
    assert len(judged) >= N_LAYER * 3 and all(t["reference"]["closer"] == "A" for t in judged)
    assert all(t["reference"]["nmse_a"] < t["reference"]["nmse_b"] for t in judged)
    first = by_name(document)["l_out-0"]["reference"]
    assert math.isclose(first["nmse_a"], expected_a, rel_tol=1e-6)
    assert math.isclose(first["nmse_b"], expected_b, rel_tol=1e-6)
    diverged = sum(t["status"] == "diverged" for t in judged)
    counts = document["reference"]["counts"]["diverged"]
    assert counts.get("A") == diverged and not counts.get("B") and diverged > 0
    text = cli("compare", runs["a"], runs["b"], "--tolerance", "f32", "--reference", runs["r"]).stdout
    assert f"of {sum(counts.values())} diverged tensors, A is closer to R for {diverged}, B for 0" in text
    assert "closer: A (nmse " in text

    swapped = compare_json(runs["b"], runs["a"], "--tolerance", "f32", "--reference", runs["r"])
    judged = [t for t in swapped["tensors"] if t["reference"] is not None]
    assert judged and all(t["reference"]["closer"] == "B" for t in judged)
    # Without a reference the output keeps its shape: no verdict anywhere.
    plain = compare_json(runs["a"], runs["b"], "--tolerance", "f32")
    assert plain["reference"] is None and all(t["reference"] is None and t["rule"] is None for t in plain["tensors"])


def test_a_rule_loosening_the_layer_outputs_passes_them_while_others_still_fail(runs, tmp_path):
    a, b = tokens_of(runs["a"], "l_out-1"), tokens_of(runs["b"], "l_out-1")
    measured = nmse(a, b)
    assert 1e-7 < measured < 1e-4, "F16 weights put the layer outputs over the f32 preset, well under 1e-4"
    loose = write(tmp_path, "loose.toml", '[[rule]]\nmatch = "l_out-*"\nnmse = 1e-4\n')
    document = compare_json(runs["a"], runs["b"], "--tolerance", "f32", "--rules", loose)
    rows = by_name(document)
    for layer in range(N_LAYER):
        assert rows[f"l_out-{layer}"]["status"] == "within" and rows[f"l_out-{layer}"]["rule"] == "l_out-*"
    assert rows["attn_norm-1"]["status"] == "diverged" and rows["attn_norm-1"]["rule"] == "preset f32"
    assert rows["result_output"]["status"] == "diverged"
    assert document["rules"] == {"source": str(loose), "count": 1}
    text = cli("compare", runs["a"], runs["b"], "--tolerance", "f32", "--rules", loose).stdout
    assert "rule l_out-*" in text and f"rules {loose} (1 rule): {N_LAYER} tensors judged by a rule" in text

    # The first matching rule wins: a strict rule for l_out-1 before the loose one holds it to bit identity.
    ordered = write(tmp_path, "ordered.toml", '[[rule]]\nname = "strict"\nmatch = ["l_out-1"]\nexact = true\n'
                                              '[[rule]]\nmatch = "l_out-*"\nnmse = 1e-4\n')
    rows = by_name(compare_json(runs["a"], runs["b"], "--tolerance", "f32", "--rules", ordered))
    assert (rows["l_out-1"]["status"], rows["l_out-1"]["rule"]) == ("diverged", "strict")
    assert (rows["l_out-2"]["status"], rows["l_out-2"]["rule"]) == ("within", "l_out-*")
    reversed_order = write(tmp_path, "reversed.toml", '[[rule]]\nmatch = "l_out-*"\nnmse = 1e-4\n'
                                                      '[[rule]]\nmatch = "l_out-1"\nexact = true\n')
    rows = by_name(compare_json(runs["a"], runs["b"], "--tolerance", "f32", "--rules", reversed_order))
    assert (rows["l_out-1"]["status"], rows["l_out-1"]["rule"]) == ("within", "l_out-*")


def test_max_abs_cosine_and_thresholds_per_preset(runs, tmp_path):
    a, b = tokens_of(runs["a"], "l_out-1"), tokens_of(runs["b"], "l_out-1")
    max_abs = float(np.abs(a - b).max())
    cosine = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    def status(rule: str, *options: str) -> str:
        path = write(tmp_path, "rule.toml", f'[[rule]]\nmatch = "l_out-1"\n{rule}\n')
        return by_name(compare_json(runs["a"], runs["b"], "--rules", path, *options))["l_out-1"]["status"]

    assert status(f"max_abs = {max_abs * 1.01!r}") == "within"
    assert status(f"max_abs = {max_abs * 0.99!r}") == "diverged"
    assert status(f"cosine = {cosine - (1 - cosine)!r}") == "within"
    assert status("cosine = 1.0") == ("diverged" if cosine < 1.0 else "within")
    assert status(f"atol = {max_abs * 1.01!r}") == "within" and status(f"atol = {max_abs * 0.5!r}") == "diverged"
    # A table is read for the preset in use: f16 here (F32 vs F16 weights), f32 when named.
    assert status("nmse = { f16 = 1e-12, f32 = 1.0 }") == "diverged"
    assert status("nmse = { f16 = 1e-12, f32 = 1.0 }", "--tolerance", "f32") == "within"
    # A table without the preset in use leaves the NMSE to the preset (f16's 5e-4 passes these rows).
    assert status("nmse = { quant = 1e-12 }") == "within"


def test_rules_judge_rows_compared_per_token(runs, tmp_path):
    """B against R (-ub 1) goes through the per-token path (compare/rows.py): rules judge it too."""
    loose = write(tmp_path, "loose.toml", '[[rule]]\nmatch = "l_out-*"\nnmse = 1e-4\n')
    rows = by_name(compare_json(runs["b"], runs["r"], "--tolerance", "f32", "--rules", loose))
    assert "compared per token" in rows["l_out-0"]["note"]
    assert (rows["l_out-0"]["status"], rows["l_out-0"]["rule"]) == ("within", "l_out-*")
    assert (rows["ffn_out-0"]["status"], rows["ffn_out-0"]["rule"]) == ("diverged", "preset f32")


def test_the_shipped_reference_rules(runs):
    rules = load_rules("reference")
    assert [rule.name for rule in rules.rules] == ["inputs", "embeddings", "activations"]
    document = compare_json(runs["a"], runs["b"], "--rules", "reference")
    assert document["tolerance"]["name"] == "f16" and document["passed"]
    rows = by_name(document)
    assert rows["inp_pos"]["rule"] == "inputs" and rows["l_out-3"]["rule"] == "activations"
    assert {t["rule"] for t in document["tensors"] if t["metrics"]} == {"inputs", "activations"}


HOSTILE = {
    "bad.toml": ("[[rule]\nmatch = 'x'", "not a valid TOML rules file"),
    "top.toml": ("[[rules]]\nmatch = 'x'\nnmse = 1\n", "unknown key 'rules'"),
    "key.toml": ("[[rule]]\nmatch = 'x'\nnmse = 1\nnsme = 2\n", "rule 1: unknown key 'nsme'"),
    "type.toml": ("[[rule]]\nmatch = 'x'\nnmse = 'small'\n", "nmse must be a number"),
    "bool.toml": ("[[rule]]\nmatch = 'x'\nmax_abs = true\n", "max_abs must be a number"),
    "negative.toml": ("[[rule]]\nmatch = 'x'\nnmse = -1e-3\n", "nmse must be 0 or more"),
    "nan.toml": ("[[rule]]\nmatch = 'x'\nnmse = nan\n", "nmse must be finite"),
    "inf.toml": ("[[rule]]\nmatch = 'x'\natol = inf\n", "atol must be finite"),
    "cosine.toml": ("[[rule]]\nmatch = 'x'\ncosine = 1.5\n", "cosine must be between -1 and 1"),
    "preset.toml": ("[[rule]]\nmatch = 'x'\nnmse = { f64 = 1 }\n", "names unknown preset 'f64'"),
    "empty.toml": ("description = 'nothing'\n", "no [[rule]] table"),
    "nomatch.toml": ("[[rule]]\nnmse = 1\n", "rule 1: no match"),
    "matchtype.toml": ("[[rule]]\nmatch = []\nnmse = 1\n", "match must be a glob"),
    "nothreshold.toml": ("[[rule]]\nmatch = 'x'\n", "sets no threshold"),
    "exact.toml": ("[[rule]]\nmatch = 'x'\nexact = true\nnmse = 1\n", "exact = true takes no thresholds"),
    "second.toml": ("[[rule]]\nmatch = 'x'\nnmse = 1\n[[rule]]\nmatch = 'y'\nrtol = 'z'\n", "rule 2: rtol"),
    "escape.toml": ('[[rule]]\nmatch = "x"\nnmse = 1\n"\\u001b]0;title\\u0007" = 1\n', "unknown key '\\x1b]0;title"),
    "patterns.toml": ("[[rule]]\nmatch = [" + ", ".join(f"'p{i}'" for i in range(1001)) + "]\nnmse = 1\n",
                      "1001 patterns in all (at most 1000)"),
    "huge.toml": ("# " + "x" * MAX_RULES_BYTES + "\n[[rule]]\nmatch = 'x'\nnmse = 1\n", "at most 1024 KiB"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_rules_files_are_refused_in_one_line(runs, tmp_path, name):
    text, fragment = HOSTILE[name]
    path = write(tmp_path, name, text)
    result = cli("compare", runs["a"], runs["b"], "--rules", path)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_line_error(result, fragment)
    assert result.stderr.startswith("ggml-inspector: error: ") and "\x1b" not in result.stderr


def test_unreadable_rules_files_are_refused_in_one_line(runs, tmp_path):
    (tmp_path / "binary.toml").write_bytes(b"[[rule]]\nmatch = '\xff'\n")
    for path, fragment in ((tmp_path / "missing.toml", "no such rules file"), (tmp_path, "cannot read"),
                           (tmp_path / "binary.toml", "not UTF-8")):
        for command in (("compare", runs["a"], runs["b"]), ("report", runs["a"], runs["b"], "-o", tmp_path / "r.html"),
                        ("plot", "diff", runs["a"], runs["b"], "-o", tmp_path / "d.png")):
            result = cli(*command, "--rules", path)
            assert result.returncode == 2
            assert_one_line_error(result, fragment)


def test_error_growth_against_the_reference(runs, tmp_path):
    comparison = compare_dumps(runs["a"], runs["b"], ToleranceRequest("f32"))
    finding = attach_reference(comparison, runs["r"], ToleranceRequest("f32"))
    series = {"A vs R": layer_errors(finding.against_a, ["l_out-*"]),
              "B vs R": layer_errors(finding.against_b, ["l_out-*"])}
    plot = plots.error_growth(series)
    first_out = {}
    for label, run in (("A vs R", "a"), ("B vs R", "b")):
        drawn = plot.data["series"][label]
        assert drawn["layers"] == list(range(N_LAYER)) and drawn["limits"] == [1e-7] * N_LAYER
        expected = []
        for layer in range(N_LAYER - 1):  # the last layer keeps only the output rows
            own, reference = tokens_of(runs[run], f"l_out-{layer}"), tokens_of(runs["r"], f"l_out-{layer}")
            expected.append(nmse(own, reference))
            assert math.isclose(drawn["nmse"][layer], expected[-1], rel_tol=1e-6)
        first_out[label] = next((f"l_out-{layer}" for layer, value in enumerate(expected) if value > 1e-7), None)
    assert first_out["A vs R"] is None and first_out["B vs R"] is not None
    assert plot.data["first_out"] == first_out

    out = tmp_path / "report.html"
    result = cli("report", runs["a"], runs["b"], "--tolerance", "f32", "--reference", runs["r"], "-o", out)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert f"alt='error growth by layer' data-layers='{N_LAYER}'" in text
    first_b = compare_json(runs["b"], runs["r"], "--tolerance", "f32")["first_divergence"]["name"]
    assert "A vs R: every compared tensor within tolerance" in text
    assert f"B vs R: first out of tolerance: <b>{first_b}</b>" in text and "closer: A (nmse" in text
    # report A R: R in B's place, the growth of A's error against it.
    result = cli("report", runs["b"], runs["r"], "--tolerance", "f32", "-o", out)
    assert result.returncode == 0, result.stderr
    assert f"data-layers='{N_LAYER}'" in out.read_text() and "A vs B: first out of tolerance" in out.read_text()
    assert_one_line_error(cli("report", runs["a"], "--reference", runs["r"], "-o", out), "needs two runs")
