"""capture --observer-check: the same run without the hook, and whether observing changed its logits.

Asking the scheduler for a node splits the graph there; on a backend that
fuses ops this can change the numbers being observed.  The check reruns the
configuration with no eval callback and records the verdict; compare and the
report warn about a run whose check failed.
"""

from __future__ import annotations

import json

import h5py
from conftest import PROMPT
from test_cli import cli

from inspector import open_dump


def test_capturing_everything_on_the_cpu_leaves_the_logits_bit_identical(tiny_f32, tmp_path):
    out = tmp_path / "checked.h5"
    result = cli("capture", "-m", tiny_f32, "-p", PROMPT, "-t", "1", "-c", "64", "-n", "3", "--observer-check",
                 "-o", out)
    assert result.returncode == 0, result.stderr
    with open_dump(out) as dump:
        check = dump.result["observer_check"]
        assert check["identical"] and check["logits_identical"] and check["max_abs_diff"] == 0.0
        assert check["plain_generated_ids"] == dump.result["generated_ids"]
        assert len(dump.result["generated_ids"]) == 3


def test_compare_warns_about_a_run_whose_observer_check_failed(tiny_f32, tmp_path):
    for name in ("a", "b"):
        assert cli("capture", "-m", tiny_f32, "-p", PROMPT, "-t", "1", "-c", "64", "--observer-check",
                   "-T", "l_out-*", "-o", tmp_path / f"{name}.h5").returncode == 0
    # As a GPU run whose fused kernels observation split would have recorded it.
    with h5py.File(tmp_path / "b.h5", "r+") as file:
        result = json.loads(file.attrs["result"])
        result["observer_check"].update(identical=False, logits_identical=False, max_abs_diff=0.03)
        file.attrs["result"] = json.dumps(result)
    text = cli("compare", tmp_path / "a.h5", tmp_path / "b.h5").stdout
    assert "warning: run B's observer check failed" in text and "run A's" not in text
    document = json.loads(cli("compare", tmp_path / "a.h5", tmp_path / "b.h5", "--json").stdout)
    assert document["observer_check_failed"] == ["B"]
