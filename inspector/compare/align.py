"""Which evaluation of run B computed what each evaluation of run A computed: alignment, before any metric.

Two runs of the same computation do not make the same sequence of graph
evaluations: ``llama-completion`` first decodes a 2-token warm-up, a server
retries, a program decodes its own extra chunk.  Pairing tensors by
evaluation index would then compare every evaluation with its neighbour.
So evaluations are paired by what they computed, as each records it in its
info (``docs/format.md``, "Evaluation inputs"): the same tokens (or the same
embeddings digest) at the same positions, in order.  This module decides the
pairs from the evaluation lists alone; it reads no tensor and measures
nothing, so it is tested on plain lists of dicts.

Rules, in order (``docs/compare.md``, "Alignment"):

- both runs record inputs: known evaluations pair by content, a monotone
  longest matching of the two sequences of contents (``difflib``);
- between two content pairs, evaluations whose graph has no input leafs
  (``inputs_known: false``: an image encoder) pair by their order among those
  of the same kind;
- between two content pairs, known evaluations left over on both sides at the
  same positions pair as *inputs differ*; the first such pair is the verdict,
  unless what differs is embeddings an encoder of both runs computed;
- known evaluations still left on both sides there are matched row by row
  (position and token, a longest matching again): evaluations whose every
  row found its partner form a *split group*, the same rows batched
  otherwise (``-ub 512`` against ``-ub 3``), compared per token
  (``inspector.compare.rows``); where rows are left unmatched, the first of
  them is where the inputs differ;
- known evaluations still left on both sides there pair by order, counted
  from the last (a warm-up comes first), their inputs differing too;
- what is still left is in one run only (a warm-up, a retry), listed once;
- a run that records no inputs (an old dump, an unknown graph): every
  evaluation pairs by its index, as before alignment existed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

CONTENT, ORDER, POSITIONS, DIFFERING, INDEX = "content", "order", "positions", "differing", "index"
BATCHES, OUTPUTS, PREFIX = "batches", "outputs", "prefix"
RULE_WORDS = {CONTENT: "tokens and positions", ORDER: "order among evaluations of unknown inputs",
              POSITIONS: "positions (their inputs differ)", DIFFERING: "order (their inputs and positions differ)",
              INDEX: "index"}
SHOWN_TOKENS = 8
SHOWN_ONE_SIDED = 3


@dataclass(frozen=True)
class Pair:
    """Evaluation ``a`` of run A computed what evaluation ``b`` of run B computed, decided by ``rule``."""

    a: int
    b: int
    rule: str


@dataclass(frozen=True)
class OneSided:
    """An evaluation found in one run only (``side`` ``a`` or ``b``), with what it computed when known."""

    side: str
    index: int
    kind: str
    inputs: dict[str, Any] | None


@dataclass(frozen=True)
class InputsDiffer:
    """The first row at which evaluation ``eval_a`` of A and ``eval_b`` of B were fed different inputs.

    ``position`` is the row's position as fed (its row number when positions were not recorded);
    ``a``/``b`` the token id, or the embeddings digest, fed there (None: that run has no such row).
    """

    eval_a: int
    eval_b: int
    row: int
    position: int
    a: int | str | None
    b: int | str | None

    def describe(self) -> str:
        """The verdict line, which the text output puts first: the inputs decide before any tensor does."""
        def fed(value: int | str | None) -> str:
            if value is None:
                return "nothing"
            return f"token {value}" if isinstance(value, int) else f"embeddings {value}"
        where = (f"evaluation {self.eval_a}" if self.eval_a == self.eval_b
                 else f"evaluation {self.eval_a} of A, {self.eval_b} of B")
        return f"inputs differ at {where} position {self.position}: A {fed(self.a)}, B {fed(self.b)}"


@dataclass(frozen=True)
class RowPair:
    """Row ``row_a`` of A's evaluation ``eval_a`` fed what row ``row_b`` of B's ``eval_b`` fed, at ``position``."""

    position: int
    eval_a: int
    row_a: int
    eval_b: int
    row_b: int


@dataclass(frozen=True)
class SplitGroup:
    """Evaluations of A and of B that fed the same rows in other batches: their tensors compare per token.

    ``rows`` are in A's order (the order both runs fed them).
    """

    evals_a: tuple[int, ...]
    evals_b: tuple[int, ...]
    rows: tuple[RowPair, ...]
    # Why per token: the runs batched the rows otherwise (BATCHES), asked for other output rows (OUTPUTS), or
    # were fed differently from some row on and only the rows before it are compared (PREFIX).
    kind: str = "batches"

    def describe(self) -> str:
        return (f"{len(self.rows)} rows of A's evaluation{'s' if len(self.evals_a) > 1 else ''} "
                f"{_span(self.evals_a)} as B's {_span(self.evals_b)}")


def _span(indices: tuple[int, ...]) -> str:
    return str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"


@dataclass
class Alignment:
    """The evaluation pairs, the one-sided evaluations and whether the inputs differ."""

    rule: str
    pairs: list[Pair]
    one_sided: list[OneSided] = field(default_factory=list)
    inputs_differ: InputsDiffer | None = None
    # Why the index rule was used, when it was.
    reason: str = ""
    # Evaluations that fed the same rows in other batches (other -b/-ub): compared per token.
    splits: list[SplitGroup] = field(default_factory=list)
    # Where rows matched row by row were left without a partner: candidates for the verdict.
    row_differences: list[InputsDiffer] = field(default_factory=list)
    # Pairs left uncompared: every row at or after the first input the runs fed differently.
    beyond: list[Pair] = field(default_factory=list)

    @property
    def batched_otherwise(self) -> bool:
        """The runs fed some rows in other batches (another -b/-ub): kernels may round them differently."""
        return any(group.kind == BATCHES for group in self.splits)

    @property
    def split_rows(self) -> int:
        """Rows both runs fed alike but in other batches, compared per token."""
        return sum(len(group.rows) for group in self.splits)

    def b_of_a(self) -> dict[int, int]:
        """A's evaluation index to B's, for every pair: how tensors find their partner."""
        return {pair.a: pair.b for pair in self.pairs}

    def only_in(self, side: str) -> set[int]:
        """The evaluations of run ``side`` (``a``/``b``) found in that run only: their tensors are not compared."""
        return {one.index for one in self.one_sided if one.side == side}

    def uncompared(self, side: str) -> set[int]:
        """The evaluations of run ``side`` whose tensors are not compared: one-sided, or past the inputs verdict."""
        return self.only_in(side) | {pair.a if side == "a" else pair.b for pair in self.beyond}

    def summary(self) -> str:
        """One line: how many evaluations paired by which rule, and the first one-sided ones."""
        if self.rule == INDEX:
            return f"alignment: evaluations paired by index ({self.reason})"
        by_rule = {rule: sum(pair.rule == rule for pair in self.pairs) for rule in RULE_WORDS}
        paired = ", ".join(f"{count} evaluation{'s' if count != 1 else ''} paired by {RULE_WORDS[rule]}"
                           for rule, count in by_rule.items() if count) or "no evaluation paired"
        parts = [paired] + [_describe_one_sided(one) for one in self.one_sided[:SHOWN_ONE_SIDED]]
        hidden = len(self.one_sided) - SHOWN_ONE_SIDED
        if hidden > 0:
            parts.append(f"+{hidden} more evaluations in one run only (--json lists them)")
        if self.beyond:
            count = len({pair.a for pair in self.beyond})
            parts.append(f"{count} evaluation{'s' if count != 1 else ''} of A after the first differing input "
                         "not compared (--past-inputs compares them)")
        if self.splits:
            groups = len(self.splits)
            parts.append(f"{self.split_rows} rows compared per token "
                         f"({groups} group{'s' if groups != 1 else ''}: {self.splits[0].describe()}"
                         + (", ..." if groups > 1 else "") + ")")
        return "alignment: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The ``alignment`` object of ``compare --json`` (docs/compare.md)."""
        return {"rule": self.rule, "reason": self.reason, "split_rows": self.split_rows,
                "pairs": [{"a": p.a, "b": p.b, "rule": p.rule} for p in self.pairs],
                "beyond": [{"a": p.a, "b": p.b, "rule": p.rule} for p in self.beyond],
                "splits": [{"evals_a": list(g.evals_a), "evals_b": list(g.evals_b), "rows": len(g.rows), "kind": g.kind,
                            "positions": [g.rows[0].position, g.rows[-1].position]} for g in self.splits],
                "one_sided": [{"run": o.side, "eval": o.index, "kind": o.kind, "inputs": o.inputs}
                              for o in self.one_sided],
                "inputs_differ": None if self.inputs_differ is None else {
                    "eval_a": self.inputs_differ.eval_a, "eval_b": self.inputs_differ.eval_b,
                    "row": self.inputs_differ.row, "position": self.inputs_differ.position,
                    "a": self.inputs_differ.a, "b": self.inputs_differ.b,
                    "text": self.inputs_differ.describe()}}


def _fed(inputs: dict[str, Any]) -> list[int | str]:
    """Per row, what was fed: the token id, or the embeddings digest (rows are not told apart by it)."""
    if "tokens" in inputs:
        return [int(token) for token in inputs["tokens"]]
    return [str(inputs.get("embd_digest", ""))] * int(inputs.get("n_tokens", 0))


def _content(inputs: dict[str, Any]) -> tuple[Any, ...]:
    """What an evaluation computed, hashable: two evaluations with equal contents computed the same thing."""
    fed: tuple[Any, ...] = (("tokens", *inputs["tokens"]) if "tokens" in inputs
                            else ("embd", inputs.get("embd_digest"), inputs.get("n_embd"), inputs.get("n_tokens")))
    return fed, tuple(inputs.get("positions") or ())


def _positions(inputs: dict[str, Any]) -> list[int]:
    return [int(p) for p in inputs.get("positions") or range(int(inputs.get("n_tokens", 0)))]


def _known(evaluation: dict[str, Any]) -> bool:
    return bool(evaluation.get("inputs_known")) and isinstance(evaluation.get("inputs"), dict)


def _describe_one_sided(one: OneSided) -> str:
    run, other = ("A", "B") if one.side == "a" else ("B", "A")
    if one.inputs is None:
        what = f"{one.kind or 'graph'}, inputs unknown"
    elif "tokens" in one.inputs:
        tokens = [str(t) for t in one.inputs["tokens"]]
        what = "tokens " + ", ".join(tokens[:SHOWN_TOKENS]) + (f", ... ({len(tokens)} tokens)"
                                                              if len(tokens) > SHOWN_TOKENS else "")
    else:
        what = f"embeddings {str(one.inputs.get('embd_digest', ''))[:16]}, {one.inputs.get('n_tokens')} rows"
    return f"{run}'s evaluation {one.index} ({what}) is not in {other}"


def first_difference(eval_a: int, inputs_a: dict[str, Any], eval_b: int, inputs_b: dict[str, Any]) -> InputsDiffer:
    """The first row where two evaluations' inputs differ: what was fed, or where it was fed."""
    fed_a, fed_b = _fed(inputs_a), _fed(inputs_b)
    positions_a, positions_b = _positions(inputs_a), _positions(inputs_b)
    rows = max(len(fed_a), len(fed_b))
    for row in range(rows):
        a = fed_a[row] if row < len(fed_a) else None
        b = fed_b[row] if row < len(fed_b) else None
        pos_a = positions_a[row] if row < len(positions_a) else None
        pos_b = positions_b[row] if row < len(positions_b) else None
        if a != b or pos_a != pos_b:
            position = pos_a if pos_a is not None else pos_b
            return InputsDiffer(eval_a, eval_b, row, row if position is None else position, a, b)
    # Same rows fed, so the difference is in something else recorded (the embeddings' width).
    return InputsDiffer(eval_a, eval_b, 0, positions_a[0] if positions_a else 0,
                        fed_a[0] if fed_a else None, fed_b[0] if fed_b else None)


def align(evaluations_a: list[dict[str, Any]], evaluations_b: list[dict[str, Any]]) -> Alignment:
    """Pair the evaluations of two runs (``Dump.evaluations``: ``index``, ``kind``, ``inputs_known``, ``inputs``)."""
    known_a = [e for e in evaluations_a if _known(e)]
    known_b = [e for e in evaluations_b if _known(e)]
    if not known_a or not known_b:
        missing = [run for run, known in (("A", known_a), ("B", known_b)) if not known]
        reason = ("neither run records" if len(missing) == 2 else f"run {missing[0]} does not record") \
            + " what its evaluations computed"
        indices_b = {e["index"] for e in evaluations_b}
        return Alignment(INDEX, [Pair(e["index"], e["index"], INDEX) for e in evaluations_a
                                 if e["index"] in indices_b], reason=reason)
    matcher = difflib.SequenceMatcher(None, [_content(e["inputs"]) for e in known_a],
                                      [_content(e["inputs"]) for e in known_b], autojunk=False)
    anchors = [(known_a[block.a + k], known_b[block.b + k])
               for block in matcher.get_matching_blocks() for k in range(block.size)]
    alignment = Alignment(CONTENT, [])
    position_a = {e["index"]: n for n, e in enumerate(evaluations_a)}
    position_b = {e["index"]: n for n, e in enumerate(evaluations_b)}
    start_a = start_b = 0
    for a, b in [*anchors, (None, None)]:
        end_a = position_a[a["index"]] if a is not None else len(evaluations_a)
        end_b = position_b[b["index"]] if b is not None else len(evaluations_b)
        _align_gap(evaluations_a[start_a:end_a], evaluations_b[start_b:end_b], alignment)
        if a is not None and b is not None:
            alignment.pairs.append(Pair(a["index"], b["index"], CONTENT))
        start_a, start_b = end_a + 1, end_b + 1
    _rows_for_other_outputs(alignment, evaluations_a, evaluations_b)
    alignment.pairs.sort(key=lambda pair: pair.a)
    alignment.splits.sort(key=lambda group: group.evals_a[0])
    alignment.inputs_differ = _verdict(alignment, evaluations_a, evaluations_b)
    return alignment


def _rows_for_other_outputs(alignment: Alignment, evaluations_a: list[dict[str, Any]],
                            evaluations_b: list[dict[str, Any]]) -> None:
    """Content pairs whose runs asked for other output rows compare per token instead.

    After llama.cpp's ``out_ids`` selection the last layer holds only the
    output rows: one row in a run that wants the next token, every row in
    one that wants all logits (``--all-logits``, a reference
    implementation).  Whole tensors would then differ in shape; per token,
    the rows both computed compare.
    """
    by_a = {e["index"]: e for e in evaluations_a}
    by_b = {e["index"]: e for e in evaluations_b}
    kept = []
    for pair in alignment.pairs:
        inputs_a, inputs_b = by_a[pair.a].get("inputs"), by_b[pair.b].get("inputs")
        if pair.rule != CONTENT or _outputs(inputs_a) == _outputs(inputs_b):
            kept.append(pair)
            continue
        rows = tuple(RowPair(position, pair.a, row, pair.b, row)
                     for row, position in enumerate(_positions(inputs_a)[:_row_count(by_a[pair.a])]))
        alignment.splits.append(SplitGroup((pair.a,), (pair.b,), rows, OUTPUTS))
    alignment.pairs = kept


def _outputs(inputs: Any) -> list[int] | None:
    outputs = inputs.get("outputs") if isinstance(inputs, dict) else None
    return [int(row) for row in outputs] if isinstance(outputs, list) else None


def _verdict(alignment: Alignment, evaluations_a: list[dict[str, Any]], evaluations_b: list[dict[str, Any]]
             ) -> InputsDiffer | None:
    """The first pair fed different inputs from outside the runs, or None.

    Embeddings that an earlier graph of the same run computed (an image
    encoder's output, after an evaluation of unknown inputs in both runs) are
    not an input from outside: where they differ, the encoder's own tensors
    show why, so the tensor comparison decides, not this verdict.
    """
    by_a = {e["index"]: e for e in evaluations_a}
    by_b = {e["index"]: e for e in evaluations_b}
    encoder_a = min((e["index"] for e in evaluations_a if not _known(e)), default=None)
    encoder_b = min((e["index"] for e in evaluations_b if not _known(e)), default=None)
    candidates = [first_difference(pair.a, by_a[pair.a]["inputs"], pair.b, by_b[pair.b]["inputs"])
                  for pair in alignment.pairs if pair.rule in (POSITIONS, DIFFERING)]
    for difference in sorted([*candidates, *alignment.row_differences], key=lambda d: (d.eval_a, d.row)):
        computed_upstream = (isinstance(difference.a, str) and isinstance(difference.b, str)
                             and encoder_a is not None and encoder_a < difference.eval_a
                             and encoder_b is not None and encoder_b < difference.eval_b)
        if not computed_upstream:
            return difference
    return None


def stop_at_inputs_difference(alignment: Alignment, evaluations_a: list[dict[str, Any]],
                              evaluations_b: list[dict[str, Any]]) -> None:
    """Leave uncompared every row at or after the first position the runs fed differently.

    Each such row attended to the differing input, so its tensors differ
    for that reason alone; the verdict already says where.  Evaluations
    wholly past it move to ``beyond``; one that straddles it becomes a split
    group of its rows before it (compared per token); earlier evaluations
    and graphs of unknown inputs stay.  ``compare --past-inputs`` skips this.
    """
    difference = alignment.inputs_differ
    if difference is None:
        return
    by_a = {e["index"]: e for e in evaluations_a}
    by_b = {e["index"]: e for e in evaluations_b}
    kept = []
    for pair in alignment.pairs:
        a, b = by_a[pair.a], by_b[pair.b]
        if pair.a < difference.eval_a or not (_known(a) and _known(b)):
            kept.append(pair)
            continue
        positions_a, positions_b = _positions(a["inputs"]), _positions(b["inputs"])
        fed_a, fed_b = _fed(a["inputs"]), _fed(b["inputs"])
        rows = []
        for row, (position, position_b) in enumerate(zip(positions_a, positions_b, strict=False)):
            if position != position_b or position >= difference.position or fed_a[row] != fed_b[row]:
                break
            rows.append(RowPair(position, pair.a, row, pair.b, row))
        if len(rows) == len(positions_a) == len(positions_b):
            kept.append(pair)
        elif rows:
            alignment.splits.append(SplitGroup((pair.a,), (pair.b,), tuple(rows), PREFIX))
        else:
            alignment.beyond.append(pair)
    alignment.pairs = kept
    groups = []
    for group in alignment.splits:
        rows = tuple(r for r in group.rows if r.eval_a < difference.eval_a or r.position < difference.position)
        if rows:
            groups.append(SplitGroup(group.evals_a, group.evals_b, rows, group.kind))
        else:  # every row of it is past the difference: its evaluations are left uncompared, as pairs are
            alignment.beyond.extend([Pair(a, group.evals_b[0], DIFFERING) for a in group.evals_a]
                                    + [Pair(group.evals_a[0], b, DIFFERING) for b in group.evals_b[1:]])
    alignment.splits = sorted(groups, key=lambda group: group.evals_a[0])


def _align_gap(gap_a: list[dict[str, Any]], gap_b: list[dict[str, Any]], alignment: Alignment) -> None:
    """Pair what lies between two content pairs: unknown evaluations by order, known ones at equal positions."""
    left_a: list[dict[str, Any]] = []
    left_b = list(gap_b)
    for evaluation in gap_a:
        partner = next((b for b in left_b if _gap_partners(evaluation, b)), None)
        if partner is None:
            left_a.append(evaluation)
            continue
        # Monotone: B's evaluations before the partner can no longer pair with a later evaluation of A.
        cut = left_b.index(partner)
        alignment.one_sided.extend(_one_sided("b", b) for b in left_b[:cut])
        left_b = left_b[cut + 1:]
        if _known(evaluation):
            alignment.pairs.append(Pair(evaluation["index"], partner["index"], POSITIONS))
        else:
            alignment.pairs.append(Pair(evaluation["index"], partner["index"], ORDER))
    known_a, known_b = [a for a in left_a if _known(a)], [b for b in left_b if _known(b)]
    grouped = _match_rows(known_a, known_b, alignment)
    known_a = [a for a in known_a if a["index"] not in grouped["a"]]
    known_b = [b for b in known_b if b["index"] not in grouped["b"]]
    count = min(len(known_a), len(known_b))
    differing = list(zip(known_a[len(known_a) - count:], known_b[len(known_b) - count:], strict=True))
    alignment.pairs.extend(Pair(a["index"], b["index"], DIFFERING) for a, b in differing)
    paired = {id(e) for pair in differing for e in pair}
    left_a = [a for a in left_a if id(a) not in paired and a["index"] not in grouped["a"]]
    left_b = [b for b in left_b if id(b) not in paired and b["index"] not in grouped["b"]]
    alignment.one_sided.extend(_one_sided("a", a) for a in left_a)
    alignment.one_sided.extend(_one_sided("b", b) for b in left_b)


def _rows(evaluations: list[dict[str, Any]]) -> list[tuple[int, int | str, int, int]]:
    """Every row the evaluations fed, as (position, token or digest, evaluation, row), in order."""
    return [(position, fed, e["index"], row) for e in evaluations
            for row, (position, fed) in enumerate(zip(_positions(e["inputs"]), _fed(e["inputs"]), strict=False))]


def _match_rows(known_a: list[dict[str, Any]], known_b: list[dict[str, Any]], alignment: Alignment
                ) -> dict[str, set[int]]:
    """Match the rows of the evaluations left in a gap; connected evaluations become split groups.

    Returns the evaluations of each side now in a split group.  Evaluations
    are connected by their matched rows (A's 0..5 fed as B's 0..2 and 3..5).
    A group with a row left unmatched fed different inputs: its first such
    row is a candidate for the verdict (``stop_at_inputs_difference`` then
    keeps only the rows before it).  One evaluation in each run, fed
    differently, is no group: it pairs as such, after this.
    """
    grouped: dict[str, set[int]] = {"a": set(), "b": set()}
    rows_a, rows_b = _rows(known_a), _rows(known_b)
    if not rows_a or not rows_b:
        return grouped
    matcher = difflib.SequenceMatcher(None, [r[:2] for r in rows_a], [r[:2] for r in rows_b], autojunk=False)
    matched = [(rows_a[block.a + k], rows_b[block.b + k])
               for block in matcher.get_matching_blocks() for k in range(block.size)]
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def root(node: tuple[str, int]) -> tuple[str, int]:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for row_a, row_b in matched:
        parent[root(("a", row_a[2]))] = root(("b", row_b[2]))
    components: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for node in list(parent):
        components.setdefault(root(node), set()).add(node)
    matched_a = {row_a[2:] for row_a, _ in matched}
    matched_b = {row_b[2:] for _, row_b in matched}
    for members in components.values():
        evals_a = sorted(index for side, index in members if side == "a")
        evals_b = sorted(index for side, index in members if side == "b")
        loose_a = [r for r in rows_a if r[2] in evals_a and r[2:] not in matched_a]
        loose_b = [r for r in rows_b if r[2] in evals_b and r[2:] not in matched_b]
        if (loose_a or loose_b) and len(evals_a) == len(evals_b) == 1:
            continue  # one evaluation each, fed differently: they pair as such (the verdict is theirs)
        if loose_a or loose_b:
            # What the other run fed at that position may sit in an evaluation with no matched row at all.
            alignment.row_differences.append(_row_difference(
                loose_a[0] if loose_a else loose_b[0], [r for r in rows_a if r[2:] not in matched_a],
                [r for r in rows_b if r[2:] not in matched_b], evals_a, evals_b))
        alignment.splits.append(SplitGroup(tuple(evals_a), tuple(evals_b), tuple(
            RowPair(row_a[0], row_a[2], row_a[3], row_b[2], row_b[3]) for row_a, row_b in matched
            if ("a", row_a[2]) in members)))
        grouped["a"].update(evals_a)
        grouped["b"].update(evals_b)
    return grouped


def _row_difference(first: tuple[int, int | str, int, int], loose_a: list[tuple[int, int | str, int, int]],
                    loose_b: list[tuple[int, int | str, int, int]], evals_a: list[int], evals_b: list[int]
                    ) -> InputsDiffer:
    """The verdict for the first unmatched row of a group: what each run fed at that position."""
    position = first[0]
    at_a = next((r for r in loose_a if r[0] == position), None)
    at_b = next((r for r in loose_b if r[0] == position), None)
    row = (at_a or at_b or first)[3]
    return InputsDiffer(at_a[2] if at_a else evals_a[0], at_b[2] if at_b else evals_b[0], row, position,
                        at_a[1] if at_a else None, at_b[1] if at_b else None)


def _row_count(evaluation: dict[str, Any]) -> int:
    return len(_fed(evaluation["inputs"]))


def _gap_partners(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if _known(a) != _known(b):
        return False
    if not _known(a):
        return a.get("kind") == b.get("kind")
    return ("tokens" in a["inputs"]) == ("tokens" in b["inputs"]) and _positions(a["inputs"]) == _positions(b["inputs"])


def _one_sided(side: str, evaluation: dict[str, Any]) -> OneSided:
    return OneSided(side, evaluation["index"], str(evaluation.get("kind", "")),
                    evaluation["inputs"] if _known(evaluation) else None)
