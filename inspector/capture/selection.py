"""Which tensors to capture: glob patterns, regular expressions, or everything.

Matching runs once per distinct name (results are cached), because the
scheduler asks about every node of every evaluation and names repeat.

A dump records its selection under ``config["select"]``; that record is
written and read back only through :class:`SelectionDescription`, so every
runner records it alike and every reader (replay, origins, the command line
that reproduces a run) reads it alike.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inspector.errors import InspectorError

# The key of a dump's config that records its selection.
SELECT_KEY = "select"


def _patterns(value: object) -> tuple[str, ...]:
    """A recorded pattern list; anything else a (hand-edited) dump holds is one pattern, never "none"."""
    if isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value)
    return (str(value),) if value else ()


@dataclass(frozen=True)
class SelectionDescription:
    """The patterns a capture was asked for, as recorded: what was selected, not a matcher.

    Why not a :class:`Selection`: ``exec`` records POSIX extended regular
    expressions, which Python's ``re`` may refuse or read differently; a
    reader needs only the patterns and whether there were any.
    """

    globs: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()

    @property
    def selects_all(self) -> bool:
        """True when no pattern was given: every computed node (and the graph inputs) was captured."""
        return not (self.globs or self.regexes)

    def describe(self) -> dict[str, list[str]]:
        """The value recorded as ``config["select"]``."""
        return {"globs": list(self.globs), "regexes": list(self.regexes)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SelectionDescription:
        """What a dump's config records; a dump without a record (``import``) reads as "everything"."""
        recorded = config.get(SELECT_KEY)
        if not isinstance(recorded, Mapping):
            return cls(regexes=_patterns(recorded))
        return cls(_patterns(recorded.get("globs")), _patterns(recorded.get("regexes")))


@dataclass
class Selection:
    """Glob patterns and regexes over tensor names; empty means "select all"."""

    globs: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    _compiled: list[re.Pattern[str]] = field(default_factory=list, init=False, repr=False)
    _cache: dict[str, bool] = field(default_factory=dict, init=False, repr=False)
    _hits: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for pattern in self.regexes:
            try:
                self._compiled.append(re.compile(pattern))
            except re.error as error:
                raise InspectorError(f"invalid regular expression {pattern!r}: {error}") from None
        self._hits = {pattern: 0 for pattern in self.patterns}

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.globs + self.regexes

    @property
    def selects_all(self) -> bool:
        return not self.patterns

    def describe(self) -> dict[str, list[str]]:
        """The value a dump records as ``config["select"]`` (:class:`SelectionDescription`)."""
        return SelectionDescription(self.globs, self.regexes).describe()

    def matches(self, name: str) -> bool:
        """True when ``name`` matches any pattern (or when there are none)."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        matched = self.selects_all
        for glob in self.globs:
            if fnmatch.fnmatchcase(name, glob):
                self._hits[glob] += 1
                matched = True
        for pattern, compiled in zip(self.regexes, self._compiled, strict=True):
            if compiled.search(name):
                self._hits[pattern] += 1
                matched = True
        self._cache[name] = matched
        return matched

    def matches_leaf(self, name: str, is_graph_input: bool) -> bool:
        """Leafs are weights, caches and inputs; "select all" takes only the graph inputs.

        Capturing every weight and the whole KV cache at every evaluation would
        dwarf the activations, so those leafs are captured only when a pattern
        names them.
        """
        if self.selects_all:
            return is_graph_input
        return self.matches(name)

    def unmatched_patterns(self) -> list[str]:
        """Patterns that matched no name seen so far."""
        return [pattern for pattern, hits in self._hits.items() if hits == 0]

    def seen_names(self) -> list[str]:
        return list(self._cache)

    def suggestions(self, pattern: str, limit: int = 5) -> list[str]:
        """Seen names closest to a pattern that matched nothing, for the warning."""
        names = self.seen_names()
        stripped = pattern.replace("*", "").replace("?", "")
        close = difflib.get_close_matches(stripped, names, n=limit, cutoff=0.3)
        return close or names[:limit]
