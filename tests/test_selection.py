"""Tensor selection: globs, regexes, leafs, and suggestions for patterns that match nothing."""

from __future__ import annotations

import pytest

from inspector.capture.selection import Selection
from inspector.errors import InspectorError


def test_empty_selection_selects_all_nodes_but_only_input_leafs():
    selection = Selection()
    assert selection.matches("anything")
    assert selection.matches_leaf("inp_tokens", is_graph_input=True)
    assert not selection.matches_leaf("blk.0.attn_q.weight", is_graph_input=False)


def test_globs_and_regexes():
    selection = Selection(globs=("l_out-*",), regexes=(r"^attn_norm-\d+$",))
    assert selection.matches("l_out-0") and selection.matches("l_out-31")
    assert selection.matches("attn_norm-3")
    assert not selection.matches("attn_norm-3 (view)")
    assert not selection.matches("ffn_out-0")
    assert selection.matches_leaf("l_out-x", is_graph_input=False)


def test_unmatched_patterns_get_nearest_names():
    selection = Selection(globs=("l_out-*", "attn_nrom-0"))
    for name in ("l_out-0", "attn_norm-0", "ffn_norm-0", "Qcur-0"):
        selection.matches(name)
    assert selection.unmatched_patterns() == ["attn_nrom-0"]
    assert selection.suggestions("attn_nrom-0")[0] == "attn_norm-0"


def test_invalid_regex_is_a_clear_error():
    with pytest.raises(InspectorError, match="invalid regular expression"):
        Selection(regexes=("(",))
