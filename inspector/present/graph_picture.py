"""The report's picture of the graph around the first origin: DOT laid out by Graphviz's ``dot``, inline SVG.

The layout is Graphviz's (Debian's ``graphviz`` package, installed by
README's set-up line), never ours.  Every name in the picture comes from a
dump, which may come from anyone: names enter DOT only inside HTML-like labels,
escaped (control characters as ``\\xNN``, markup as entities) and shortened,
node identifiers are our own (``n0``, ``n1``), and the SVG that ``dot`` returns
is parsed and refused if it holds anything that could run in a browser before
it is written into the report.  Without ``dot``, the report says so in one line.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree

from inspector.compare.neighbourhood import (
    KV_CACHE,
    NOT_CAPTURED,
    NOT_COMPARED,
    WEIGHT,
    GraphNode,
    Neighbourhood,
    find_neighbourhood,
)
from inspector.compare.report import STATUS_COLOURS
from inspector.compare.runs import Comparison
from inspector.dump.reader import Dump
from inspector.errors import DumpError
from inspector.formatting import evaluation_label, number, printable

DOT_TIMEOUT_S = 60
# Longer names are cut: a picture node is not the place to read a 4 KB name.
MAX_LABEL_CHARS = 48
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
XLINK_NAMESPACE = "http://www.w3.org/1999/xlink"
# Light fills for the statuses' colours (compare's terminal colours), dark enough to tell apart on paper.
FILL_OF_COLOUR = {"green": "#c8e6c9", "cyan": "#b2ebf2", "red": "#ffcdd2", "yellow": "#fff59d",
                  "magenta": "#e1bee7", "blue": "#bbdefb"}
UNKNOWN_FILL = "#ffffff"
STATUS_FILLS = {status: FILL_OF_COLOUR.get(colour, UNKNOWN_FILL) for status, colour in STATUS_COLOURS.items()}
# States of nodes no comparison row covers (a source's state is decided by compare's origins).
STATUS_FILLS.update({"differs": FILL_OF_COLOUR["red"], "weight differs": "#ffab91", "same weight": "#eeeeee",
                     "same content": "#eeeeee", WEIGHT: "#eeeeee", KV_CACHE: "#eeeeee", NOT_CAPTURED: "#ffffff",
                     NOT_COMPARED: "#ffffff"})
ORIGIN_COLOUR = "#b00000"
# Elements and attributes that could run or fetch something once the SVG is in a page.
_UNSAFE_ELEMENTS = {"script", "foreignobject", "iframe", "object", "embed", "style", "a", "use", "image"}
# Characters XML 1.0 does not allow even escaped; printable() takes the others.
_NOT_XML = re.compile("[\ufffe\uffff]")


class PictureUnavailable(Exception):
    """Why there is no picture, in one line for the report."""


def label_text(value: object) -> str:
    """``value`` as text inside a DOT HTML-like label: printable, at most MAX_LABEL_CHARS, entity-escaped."""
    text = _NOT_XML.sub(lambda match: f"\\u{ord(match.group()):04x}", printable(value))
    if len(text) > MAX_LABEL_CHARS:
        text = text[:MAX_LABEL_CHARS - 1] + "\u2026"
    return html.escape(text, quote=True)


def _placement(node: GraphNode) -> str:
    """Where the node lived: one buffer when both runs agree, else A's and B's (with a buffer type it names)."""
    def where(buffer: str, buffer_type: str, ggml_type: str) -> str:
        kind = f" ({buffer_type})" if buffer_type and buffer_type != buffer else ""
        return " ".join(part for part in (f"{buffer}{kind}", ggml_type) if part)

    a = where(node.buffer_a, node.buffer_type_a, node.type_a)
    b = where(node.buffer_b, node.buffer_type_b, node.type_b)
    if a == b or not b:
        return label_text(a)
    return f"A {label_text(a)}<BR/>B {label_text(b)}"


def _node_line(index: int, node: GraphNode) -> str:
    name = label_text(node.name) + (f" #{node.occurrence}" if node.occurrence else "")
    status = label_text(node.status) + (f", nmse {label_text(number(node.nmse))}" if node.nmse else "")
    lines = [f"<B>{name}</B>", label_text(node.op) if node.op else "", _placement(node), f"<I>{status}</I>"]
    if node.level == 0:
        lines.insert(0, f'<FONT COLOR="{ORIGIN_COLOUR}"><B>FIRST ORIGIN</B></FONT>')
    label = "<BR/>".join(line for line in lines if line)
    style = "rounded,filled" if node.captured else "rounded,filled,dashed"
    mark = f' penwidth=3 color="{ORIGIN_COLOUR}"' if node.level == 0 else ""
    return (f'  n{index} [id="node{index}" label=<{label}> style="{style}" '
            f'fillcolor="{STATUS_FILLS.get(node.status, UNKNOWN_FILL)}"{mark}];')


def to_dot(neighbourhood: Neighbourhood) -> str:
    """The neighbourhood as a DOT digraph: sources above their consumers, identifiers of our own."""
    lines = ["digraph neighbourhood {",
             '  graph [rankdir=TB nodesep=0.25 ranksep=0.35 fontname="Helvetica"];',
             '  node [shape=box fontname="Helvetica" fontsize=10 margin="0.1,0.05"];',
             '  edge [color="#666666" arrowsize=0.6];']
    lines += [_node_line(index, node) for index, node in enumerate(neighbourhood.nodes)]
    lines += [f"  n{source} -> n{consumer};" for source, consumer in neighbourhood.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def safe_svg(document: str) -> str:
    """The ``<svg>`` element of ``dot``'s output, re-serialised; PictureUnavailable if it could run anything.

    Re-serialising what was parsed drops the XML prolog, DOCTYPE and comments,
    and writes exactly what was checked.
    """
    start = document.find("<svg")
    try:
        root = ElementTree.fromstring(document[start:] if start >= 0 else document)
    except ElementTree.ParseError as error:
        raise PictureUnavailable(f"dot wrote SVG that does not parse ({error})") from None
    for element in root.iter():
        tag = str(element.tag).rsplit("}", 1)[-1].lower()
        attributes = [str(key).rsplit("}", 1)[-1].lower() for key in element.attrib]
        if tag in _UNSAFE_ELEMENTS or any(key.startswith("on") or key == "href" for key in attributes):
            raise PictureUnavailable(f"the SVG held a <{tag}> or an attribute that is not safe to embed")
    ElementTree.register_namespace("", SVG_NAMESPACE)
    ElementTree.register_namespace("xlink", XLINK_NAMESPACE)
    return ElementTree.tostring(root, encoding="unicode")


def render_svg(dot_source: str, timeout: float = DOT_TIMEOUT_S) -> str:
    """Lay ``dot_source`` out with Graphviz's ``dot -Tsvg``; PictureUnavailable (one line) if it cannot."""
    executable = shutil.which("dot")
    if executable is None:
        raise PictureUnavailable("Graphviz's dot is not installed (apt-get install graphviz)")
    try:
        run = subprocess.run([executable, "-Tsvg"], input=dot_source.encode("utf-8"), capture_output=True,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PictureUnavailable(f"dot took longer than {timeout:g} s") from None
    except OSError as error:
        raise PictureUnavailable(f"dot could not run: {error.strerror or error}") from None
    if run.returncode != 0:
        reason = run.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PictureUnavailable(f"dot failed: {reason[0] if reason else f'exit status {run.returncode}'}")
    return safe_svg(run.stdout.decode("utf-8", "replace"))


def _legend(neighbourhood: Neighbourhood) -> str:
    statuses = list(dict.fromkeys(node.status for node in neighbourhood.nodes))
    keys = "".join(f"<span class='swatch' style='background:{STATUS_FILLS.get(status, UNKNOWN_FILL)}'>"
                   f"{html.escape(status)}</span> " for status in statuses)
    more = f"; {neighbourhood.left_out} more nodes within reach are not drawn" if neighbourhood.left_out else ""
    return (f"<figcaption>Evaluation {html.escape(evaluation_label(neighbourhood.eval_index, neighbourhood.eval_kind))}"
            f" of run A: the first origin (red border), its sources above it, its consumers below; dashed: "
            f"not captured; each node's buffer and type (A and B where they differ){more}.<br>{keys}</figcaption>")


def picture_html(comparison: Comparison, dump_a: Dump, dump_b: Dump) -> str:
    """The report's part about the graph around the first origin: heading, inline SVG and legend; one line in
    the picture's place when it cannot be drawn (a record the reader refuses must not cost the whole report)."""
    try:
        neighbourhood = find_neighbourhood(comparison, dump_a, dump_b)
    except DumpError as error:
        return f"<h3>Graph around the first origin</h3><p class='missing'>no picture: {html.escape(str(error))}</p>"
    if neighbourhood is None:
        return ""
    heading = "<h3>Graph around the first origin</h3>"
    try:
        svg = render_svg(to_dot(neighbourhood))
    except PictureUnavailable as reason:
        return f"{heading}<p class='missing'>no picture: {html.escape(str(reason))}</p>"
    return f"{heading}<figure class='graph'>{svg}{_legend(neighbourhood)}</figure>"
