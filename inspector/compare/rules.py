"""Tolerance rules: per-tensor thresholds from a TOML file (``compare --rules FILE``).

One preset judges every tensor alike, but tensors do not err alike: the
token ids a run was fed must match exactly, an embedding lookup copies
weights, and the logits of a quantized model against a float reference
differ by far more than its first layer does.  A rules file names tensors by
glob and gives each group its thresholds; the **first** rule whose pattern
matches a tensor's (A) name judges it, and the preset in use judges the
rest (``docs/compare.md``, "Tolerance rules").

    [[rule]]
    match = ["inp_tokens", "inp_pos"]   # one glob or a list
    exact = true                        # bit-identical only
    why = "the same ids must be fed"    # optional, shown in --json

    [[rule]]
    match = "l_out-*"
    nmse = { f32 = 1e-6, f16 = 5e-4, quant = 5e-2 }   # per preset in use...
    cosine = 0.999                                     # ...or one number for all

Thresholds: ``nmse`` and ``max_abs`` (upper bounds), ``cosine`` (a lower
bound), ``atol``/``rtol`` (every element ``|a-b| <= atol + rtol*|b|``).  A
threshold given as a table is looked up by the preset the comparison uses
(``exact``, ``f32``, ``f16``, ``quant``; chosen from the runs or named with
``--tolerance``), so one file serves float and quantized runs; a table
without that preset leaves the threshold to the preset (NMSE, atol, rtol) or
unchecked (``max_abs``, ``cosine``, which presets do not set).

The file is someone else's input: it is read up to ``MAX_RULES_BYTES``,
every key and value is checked, and any problem is one line naming the file
and the rule.  ``reference`` names the rules shipped in ``rules/reference.toml``.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inspector.compare.tolerance import PRESETS, Tolerance
from inspector.errors import InspectorError
from inspector.formatting import printable

MAX_RULES_BYTES = 1024 * 1024
# Enough for any hand-written file; bounds the matching work (patterns x distinct tensor names).
MAX_PATTERNS = 1000
MAX_PATTERN_CHARS = 1000
SHIPPED_DIR = Path(__file__).with_name("rules")
SHIPPED = {"reference": "reference.toml"}
# Upper bounds (nmse, max_abs, atol, rtol) and the one lower bound (cosine, in [-1, 1]).
THRESHOLDS = ("nmse", "max_abs", "cosine", "atol", "rtol")
RULE_KEYS = frozenset({"match", "name", "why", "exact", *THRESHOLDS})
TOP_KEYS = frozenset({"rule", "description"})
PRESET_PREFIX = "preset "


@dataclass(frozen=True)
class Rule:
    """One ``[[rule]]``: its patterns and thresholds, each a number or a table by preset name."""

    index: int
    patterns: tuple[str, ...]
    name: str = ""
    why: str = ""
    exact: bool = False
    thresholds: dict[str, float | dict[str, float]] = field(default_factory=dict, compare=False)
    compiled: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def matching(self, name: str) -> str | None:
        """The first of this rule's patterns that matches ``name``, if any."""
        return next((pattern for pattern, regex in zip(self.patterns, self.compiled, strict=True)
                     if regex.match(name)), None)

    def label(self, pattern: str) -> str:
        """How a row names the rule that judged it: the rule's ``name``, else the pattern that matched."""
        return self.name or pattern

    def tolerance(self, pattern: str, preset: Tolerance) -> Tolerance:
        """This rule's thresholds under ``preset`` (whose base name picks a table's value)."""
        base = preset.name.split("+")[0]
        values = {key: (value.get(base) if isinstance(value, dict) else value) for key, value in
                  self.thresholds.items()}
        nmse = None if self.exact else values.get("nmse", math.inf)
        if nmse is None and not self.exact:
            nmse = preset.nmse
        return Tolerance(
            name=self.label(pattern), nmse=nmse,
            atol=_or(values.get("atol"), preset.atol), rtol=_or(values.get("rtol"), preset.rtol),
            max_abs=values.get("max_abs"), min_cosine=values.get("cosine"),
            reason=self.why or f"rule {self.index} of the rules file")


def _or(value: float | None, fallback: float) -> float:
    return fallback if value is None else value


@dataclass(frozen=True)
class Rules:
    """A loaded rules file: ``source`` (its path, or the shipped name) and its rules in order."""

    source: str
    rules: tuple[Rule, ...]
    _chosen: dict[tuple[str, Tolerance], Tolerance] = field(default_factory=dict, compare=False, repr=False)

    def judge_with(self, name: str, preset: Tolerance) -> Tolerance:
        """The tolerance that judges tensor ``name``: the first matching rule's, else ``preset``.

        The preset comes back renamed ``preset <name>`` so that a row says
        it was judged by the preset, not by a rule.
        """
        key = (name, preset)
        if key not in self._chosen:
            found = next(((rule, pattern) for rule in self.rules if (pattern := rule.matching(name)) is not None),
                         None)
            self._chosen[key] = found[0].tolerance(found[1], preset) if found else \
                replace(preset, name=PRESET_PREFIX + preset.name)
        return self._chosen[key]

    def describe(self) -> str:
        return f"rules {printable(self.source)} ({len(self.rules)} rule{'s' if len(self.rules) != 1 else ''})"


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InspectorError(f"{where}: {key} must be a number, not {printable(repr(value))[:60]}")
    value = float(value)
    if not math.isfinite(value):
        raise InspectorError(f"{where}: {key} must be finite, not {value}")
    if key == "cosine" and not -1.0 <= value <= 1.0:
        raise InspectorError(f"{where}: cosine must be between -1 and 1, not {value:g}")
    if key != "cosine" and value < 0:
        raise InspectorError(f"{where}: {key} must be 0 or more, not {value:g}")
    return value


def _threshold(value: Any, where: str, key: str) -> float | dict[str, float]:
    """A number, or a table from preset names to numbers."""
    if not isinstance(value, dict):
        return _number(value, where, key)
    unknown = [k for k in value if k not in PRESETS]
    if unknown:
        raise InspectorError(f"{where}: {key} names unknown preset '{printable(unknown[0])[:60]}' "
                             f"(presets: {', '.join(PRESETS)})")
    if not value:
        raise InspectorError(f"{where}: {key} is an empty table")
    return {preset: _number(number, where, f"{key}.{preset}") for preset, number in value.items()}


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns:
        raise InspectorError(f"{where}: match must be a glob or a non-empty list of globs")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise InspectorError(f"{where}: match must hold non-empty strings, not {printable(repr(pattern))[:60]}")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise InspectorError(f"{where}: a pattern of {len(pattern)} characters (at most {MAX_PATTERN_CHARS})")
    return tuple(patterns)


def _rule(index: int, table: Any, source: str) -> Rule:
    where = f"{source}: rule {index}"
    if not isinstance(table, dict):
        raise InspectorError(f"{where}: a rule is a table ([[rule]]), not {type(table).__name__}")
    unknown = sorted(set(table) - RULE_KEYS)
    if unknown:
        raise InspectorError(f"{where}: unknown key '{printable(unknown[0])[:60]}' "
                             f"(keys: {', '.join(sorted(RULE_KEYS))})")
    if "match" not in table:
        raise InspectorError(f"{where}: no match (the tensor-name globs it applies to)")
    for key in ("name", "why"):
        if not isinstance(table.get(key, ""), str):
            raise InspectorError(f"{where}: {key} must be a string")
    exact = table.get("exact", False)
    if not isinstance(exact, bool):
        raise InspectorError(f"{where}: exact must be true or false")
    thresholds = {key: _threshold(table[key], where, key) for key in THRESHOLDS if key in table}
    if exact and thresholds:
        raise InspectorError(f"{where}: exact = true takes no thresholds ({', '.join(thresholds)})")
    if not exact and not thresholds:
        raise InspectorError(f"{where}: sets no threshold ({', '.join(THRESHOLDS)} or exact = true)")
    patterns = _patterns(table["match"], where)
    return Rule(index=index, patterns=patterns, name=table.get("name", ""), why=table.get("why", ""), exact=exact,
                thresholds=thresholds, compiled=tuple(re.compile(fnmatch.translate(p)) for p in patterns))


def parse_rules(text: str, source: str) -> Rules:
    """Rules from TOML ``text``; ``source`` names it in errors and in the output."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InspectorError(f"{source}: not a valid TOML rules file: {printable(error)}") from None
    unknown = sorted(set(document) - TOP_KEYS)
    if unknown:
        raise InspectorError(f"{source}: unknown key '{printable(unknown[0])[:60]}' (a rules file holds [[rule]] "
                             "tables and an optional description)")
    tables = document.get("rule")
    if not isinstance(tables, list) or not tables:
        raise InspectorError(f"{source}: no [[rule]] table")
    if len(tables) > MAX_PATTERNS:
        raise InspectorError(f"{source}: {len(tables)} rules (at most {MAX_PATTERNS})")
    rules = tuple(_rule(index, table, source) for index, table in enumerate(tables, start=1))
    patterns = sum(len(rule.patterns) for rule in rules)
    if patterns > MAX_PATTERNS:
        raise InspectorError(f"{source}: {patterns} patterns in all (at most {MAX_PATTERNS})")
    return Rules(source, rules)


def load_rules(spec: str | Path) -> Rules:
    """A rules file by path, or a shipped one by name (``reference``)."""
    if str(spec) in SHIPPED:
        path, source = SHIPPED_DIR / SHIPPED[str(spec)], str(spec)
    else:
        path, source = Path(spec), printable(spec)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RULES_BYTES + 1)
    except FileNotFoundError:
        raise InspectorError(f"{source}: no such rules file (shipped: {', '.join(SHIPPED)})") from None
    except OSError as error:
        raise InspectorError(f"{source}: cannot read the rules file: {printable(error.strerror or error)}") from None
    if len(data) > MAX_RULES_BYTES:
        raise InspectorError(f"{source}: a rules file is at most {MAX_RULES_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InspectorError(f"{source}: not UTF-8 text") from None
    return parse_rules(text, source)
