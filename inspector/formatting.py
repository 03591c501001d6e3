"""Plain-text presentation: tables, sizes and numbers for the terminal.

Kept apart from the commands so that every command prints the same way and
JSON output never passes through here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def evaluation_label(index: int, kind: str) -> str:
    """``3 prompt``, ``1 encode``: how listings, comparisons and plots name an evaluation (the index alone
    when the kind is unknown)."""
    return f"{index} {kind}".rstrip()


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
    """A fixed-width table; columns in ``right_align`` (by index) are right-aligned."""
    right_align = right_align or set()
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [cell.rjust(widths[i]) if i in right_align else cell.ljust(widths[i]) for i, cell in enumerate(cells)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])
