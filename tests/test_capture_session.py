"""The one record of a dump's selection: written by every runner alike, read back alike, hostile values included.

The full-disk and signal endings of the CaptureSession are tested on real
runs in test_full_disk.py and test_interrupt.py.
"""

from __future__ import annotations

import pytest
from conftest import run_capture
from test_cli import cli

from inspector import open_dump
from inspector.capture.selection import Selection, SelectionDescription


def test_a_selection_reads_back_as_it_was_recorded():
    recorded = {"select": Selection(globs=("l_out-*", "inp_tokens"), regexes=(r"^attn_norm-\d$",)).describe()}
    assert recorded == {"select": {"globs": ["l_out-*", "inp_tokens"], "regexes": [r"^attn_norm-\d$"]}}
    description = SelectionDescription.from_config(recorded)
    assert description == SelectionDescription(("l_out-*", "inp_tokens"), (r"^attn_norm-\d$",))
    assert not description.selects_all
    assert SelectionDescription.from_config({"select": Selection().describe()}).selects_all


@pytest.mark.parametrize(("recorded", "globs", "regexes"), [
    ({}, (), ()),  # import records no selection: everything the hook sent
    ({"select": None}, (), ()),
    ({"select": {"globs": "l_out-*"}}, ("l_out-*",), ()),  # a string, not a list: one pattern, not its letters
    ({"select": {"globs": [1, "x"], "regexes": {"a": 1}}}, ("1", "x"), ("{'a': 1}",)),
    ({"select": "l_out-*"}, (), ("l_out-*",)),  # no mapping at all: still "something was selected"
], ids=["absent", "null", "string", "odd-items", "not-a-mapping"])
def test_a_hand_edited_record_never_reads_as_select_everything_by_mistake(recorded, globs, regexes):
    description = SelectionDescription.from_config(recorded)
    assert (description.globs, description.regexes) == (globs, regexes)
    assert description.selects_all == (not globs and not regexes)


def test_the_recorded_selection_reproduces_the_run(tiny_f32, tmp_path):
    out = tmp_path / "run.h5"
    run_capture(tiny_f32, out, globs=("l_out-*",))
    with open_dump(out) as dump:
        assert SelectionDescription.from_config(dump.config) == SelectionDescription(("l_out-*",), ())
    listed = cli("ls", out, "--config")
    assert listed.returncode == 0, listed.stderr
    assert "--tensor 'l_out-*'" in listed.stdout, listed.stdout
