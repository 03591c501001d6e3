"""Plain-text presentation: tables, sizes and numbers for the terminal.

Kept apart from the commands so that every command prints the same way and
JSON output never passes through here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# What a terminal would act on rather than show: C0 controls (newline included, so that one
# name can never forge a second line), DEL, C1 controls, the bidirectional overrides,
# embeddings and isolates (which reorder what follows them on screen), the invisible
# direction marks, the Unicode line and paragraph separators, and lone surrogates (an
# undecodable byte of a file name, which a UTF-8 terminal could not even be sent).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte Python's surrogateescape stood in for
    return f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with every character a terminal would act on written as ``\\xNN`` or ``\\uNNNN``.

    Names, reasons and values read from a dump, a stream or a GGUF come from
    other people: printed raw, ``\\x1b]0;...\\x07`` retitles the terminal and a
    newline forges a line of output. Everything shown as text passes through
    here, field by field; JSON output does not (``json.dumps`` escapes exactly).
    A backslash is left alone, so ordinary text is unchanged.
    """
    text = str(text)
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


def evaluation_label(index: int, kind: str) -> str:
    """``3 prompt``, ``1 encode``: how listings, comparisons and plots name an evaluation (the index alone
    when the kind is unknown)."""
    return f"{index} {printable(kind)}".rstrip()


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def number(value: float) -> str:
    """Compact, sign-aligned rendering that keeps NaN and infinities readable."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}"


def shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_align: set[int] | None = None) -> str:
    """A fixed-width table; columns in ``right_align`` (by index) are right-aligned.

    Every header and cell is passed through :func:`printable`: a cell holds one line.
    """
    right_align = right_align or set()
    headers = [printable(h) for h in headers]
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [cell.rjust(widths[i]) if i in right_align else cell.ljust(widths[i]) for i, cell in enumerate(cells)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])
