"""``ggml-inspector report``: one self-contained HTML file about one run or a comparison of two.

Images are embedded as base64 PNG data URIs and there is no script or
external asset, so the file opens offline and can be attached to an issue.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inspector.compare import settings
from inspector.compare.reference import attach_reference, layer_errors
from inspector.compare.report import STATUS_COLOURS, describe_origin, row_note
from inspector.compare.rules import Rules
from inspector.compare.runs import Comparison, flatten_config
from inspector.compare.tolerance import Tolerance, ToleranceRequest
from inspector.constants import TOOL_VERSION
from inspector.dump.reader import Dump, open_dump
from inspector.errors import InspectorError
from inspector.files.outputs import check_output, write_text
from inspector.formatting import number, shape_text
from inspector.present import graph_picture, plots

MAX_TABLE_ROWS = 2000
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ddd; padding: 2px 6px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-family: monospace; }
tr.first { outline: 3px solid #d00; background: #fee; } tr.differs td { background: #fff6d5; }
.identical { color: #080; } .within { color: #088; } .diverged { color: #c00; font-weight: bold; }
.missing { color: #a70; } .mismatched { color: #a0a; font-weight: bold; } .incomparable { color: #36c; }
img { max-width: 100%; border: 1px solid #eee; } .answer { font-size: 1.1em; padding: 0.6em; background: #f7f7ff; }
figure.graph { margin: 1em 0; } figure.graph svg { max-width: 100%; height: auto; }
.swatch { border: 1px solid #999; padding: 0 4px; font-size: 0.85em; }
"""


def _png(plot: plots.Plot) -> str:
    buffer = io.BytesIO()
    plot.figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plots.plt.close(plot.figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _e(value: Any) -> str:
    return html.escape(str(value))


def _config_table(dumps: list[Dump]) -> str:
    flats = [flatten_config({"config": d.config, "system": {k: v for k, v in d.system.items() if k != "ggml_devices"}})
             for d in dumps]
    keys = sorted(set().union(*flats))
    head = "".join(f"<th>{_e(d.path.name)}</th>" for d in dumps)
    rows = []
    for key in keys:
        values = [flat.get(key, "") for flat in flats]
        differs = len(dumps) > 1 and len({repr(v) for v in values}) > 1
        cells = "".join(f"<td>{_e(v)}</td>" for v in values)
        rows.append(f"<tr class='{'differs' if differs else ''}'><td>{_e(key)}</td>{cells}</tr>")
    return f"<table><tr><th>setting</th>{head}</tr>{''.join(rows)}</table>"


def _compare_section(path_a: Path, path_b: Path, request: Tolerance | ToleranceRequest, dumps: list[Dump],
                     rules: Rules | None, reference: Path | None) -> tuple[str, str]:
    diff_plot = plots.difference_along_execution(path_a, path_b, request, rules=rules)
    comparison = diff_plot.data["comparison"]
    tolerance = comparison.tolerance
    if reference is not None:
        attach_reference(comparison, reference, request, rules=rules)
    first = comparison.first_divergence
    answer = "no divergence: every compared tensor is within tolerance" if first is None else (
        f"first divergence: <b>{_e(comparison.rows[first].name)}</b> "
        f"(eval {_e(comparison.rows[first].evaluation_label)}, "
        f"{_e(comparison.rows[first].status)}, buffers {_e(comparison.rows[first].buffer_a)} / "
        f"{_e(comparison.rows[first].buffer_b)})")
    if comparison.origins:
        answer = f"first origin: {_e(describe_origin(comparison.origins[0]))}<br>{answer}"
    alignment = comparison.alignment
    if alignment is not None and alignment.inputs_differ is not None:
        answer = f"<span class='diverged'>{_e(alignment.inputs_differ.describe())}</span><br>{answer}"
    for side in comparison.observer_failed:
        answer += f"<br>warning: run {side}'s observer check failed: capturing changed its logits"
    rows = []
    for index, row in enumerate(comparison.rows[:MAX_TABLE_ROWS]):
        m = row.metrics
        css = "first" if index == first else ""
        rows.append(
            f"<tr class='{css}'><td class='num'>{_e(row.evaluation_label)}</td><td>{_e(row.name)}"
            f"{'' if not row.occurrence else ' #' + str(row.occurrence)}</td>"
            f"<td class='{row.status}'>{row.status}</td><td>{_e(shape_text(row.shape_a or row.shape_b or ()))}</td>"
            f"<td class='num'>{number(m.nmse) if m else ''}</td><td class='num'>{number(m.max_abs_diff) if m else ''}"
            f"</td><td class='num'>{number(m.cosine) if m else ''}</td><td>{_e(row.buffer_a)}</td>"
            f"<td>{_e(row.buffer_b)}</td><td>{_e(row_note(row, rules is not None))}</td></tr>")
    counts = comparison.counts()
    summary = ", ".join(f"<span class='{s}'>{counts[s]} {s}</span>" for s in STATUS_COLOURS)
    more = f"<p>(first {MAX_TABLE_ROWS} of {len(comparison.rows)} rows)</p>" if len(comparison.rows) > \
        MAX_TABLE_ROWS else ""
    picture = graph_picture.picture_html(comparison, dumps[0], dumps[1])
    changes = settings.describe(comparison.config_differences)
    notes = "".join(f"<p>{_e(note)}</p>" for note in (
        alignment.summary() if alignment else "", tolerance.reason, rules.describe() if rules else "",
        comparison.reference.summary() if comparison.reference else "", changes and f"runs differ in: {changes}")
        if note)
    section = (f"<p class='answer'>{answer}</p><p>{summary} (tolerance {tolerance.name})</p>{notes}"
               f"<img alt='difference along execution' src='{_png(diff_plot)}'>{picture}"
               f"{_growth_section(comparison, _layer_patterns(dumps[0]))}"
               "<table><tr><th>eval</th><th>tensor</th><th>status</th><th>shape</th><th>NMSE</th><th>max |a-b|</th>"
               f"<th>cosine</th><th>buffer A</th><th>buffer B</th><th>note</th></tr>{''.join(rows)}</table>{more}")
    verdict = "PASS" if comparison.passed else "FAIL"
    return section, verdict


def _first_out(label: str, comparison: Comparison) -> str:
    """``A vs R: first out of tolerance: l_out-3 (eval 0 prompt); first origin: ...``, escaped."""
    index = comparison.first_divergence
    text = f"{label}: " + ("every compared tensor within tolerance" if index is None else
                           f"first out of tolerance: <b>{_e(comparison.rows[index].name)}</b> "
                           f"(eval {_e(comparison.rows[index].evaluation_label)})")
    if comparison.origins:
        text += f"; first origin: {_e(describe_origin(comparison.origins[0]))}"
    return text


def _growth_section(comparison: Comparison, patterns: list[str]) -> str:
    """Error growth layer by layer with the tolerance band: against R for A and B when a reference is given."""
    if not patterns:
        return ""
    finding = comparison.reference
    compared = {"A vs R": finding.against_a, "B vs R": finding.against_b} if finding is not None \
        else {"A vs B": comparison}
    series = {label: layer_errors(c, patterns) for label, c in compared.items()}
    if not any(series.values()):
        return ""
    plot = plots.error_growth(series)
    lines = "<br>".join(_first_out(label, c) for label, c in compared.items())
    return (f"<h3>Error growth by layer ({_e(', '.join(patterns))})</h3><p>{lines}</p>"
            f"<img alt='error growth by layer' data-layers='{len(plot.data['series'][next(iter(series))]['layers'])}'"
            f" src='{_png(plot)}'>")


def _layer_patterns(dump: Dump) -> list[str]:
    """The tensors worth a per-layer plot: layer outputs if captured, else everything of eval 0."""
    for pattern in ("l_out-*", "layer_out-*", "global_layer_out-*"):
        if dump.entries([pattern]):
            return [pattern]
    return []


def write_report(path_a: str | Path, path_b: str | Path | None, output: str | Path,
                 tolerance: Tolerance | ToleranceRequest, rules: Rules | None = None,
                 reference: str | Path | None = None) -> Path:
    """Write the report of A (or A against B) to ``output``, replacing an older report there.

    ``rules`` judge the tensors they match (``--rules``); with a ``reference``
    run, each differing tensor says which run is closer to it and the error
    growth is plotted against it (B itself may be a reference: ``report A R``).

    The file appears only once the report is whole (a failure leaves the old
    one, or none), and never over one of the dumps it reports on.
    """
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise InspectorError(f"{output}: the report is HTML; give a name ending in .html")
    paths = [Path(path_a)] + ([Path(path_b)] if path_b else [])
    if reference is not None and path_b is None:
        raise InspectorError("--reference needs two runs to judge: report A B --reference R")
    inputs = paths + ([Path(reference)] if reference is not None else [])
    check_output(output, overwrite=True, inputs=inputs)
    dumps = [open_dump(p) for p in paths]
    try:
        parts = [f"<h1>ggml-inspector report</h1><p>{_e(', '.join(str(p) for p in paths))}<br>"
                 f"generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by ggml-inspector {TOOL_VERSION}</p>"]
        for dump in dumps:
            if not dump.complete:
                parts.append(f"<p class='diverged'>{_e(dump.path.name)} is incomplete: "
                             f"{_e(dump.incomplete_reason)}</p>")
        if len(dumps) == 2:
            section, verdict = _compare_section(paths[0], paths[1], tolerance, dumps, rules,
                                                Path(reference) if reference is not None else None)
            parts.append(f"<h2>Comparison: {verdict}</h2>{section}")
        parts.append(f"<h2>Run configuration{'s' if len(dumps) > 1 else ''}</h2>{_config_table(dumps)}")
        for dump in dumps:
            patterns = _layer_patterns(dump)
            if not dump.entries(patterns or None):
                continue
            plot = plots.stats(dump, patterns, eval_index=dump.entries(patterns or None)[0].eval_index)
            parts.append(f"<h2>Per-layer statistics: {_e(dump.path.name)}</h2>"
                         f"<img alt='statistics' src='{_png(plot)}'>")
        with_tiles = [d for d in dumps if d.entries(["inp_raw"]) and d.find("inp_raw").shape[1:2] == (3,)]
        if with_tiles:
            plot = plots.image(with_tiles)
            parts.append(f"<h2>inp_raw tiles</h2><img alt='inp_raw tiles' src='{_png(plot)}'>")
        document = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ggml-inspector report"
                    f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    finally:
        for dump in dumps:
            dump.close()
    return write_text(output, document, overwrite=True, inputs=inputs)
