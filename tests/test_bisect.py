"""sweep --bisect: the smallest offload count whose logits diverge, in few logit-only captures, and why.

The planted model quantizes one layer only, with types the CPU backend
repacks; every other layer is f32, which a loopback RPC server multiplies
bit for bit like the CPU.  So the logits first change when that layer is
offloaded: at -ngl PLANTED + 1.
"""

from __future__ import annotations

import json
import math

import pytest
from test_cli import cli

from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

PLANTED = 3
N_LAYER = 6


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bisect")
    return write_tiny_llama(folder / "planted.gguf", TinyLlamaSpec(seed=4, dtype="quant", n_embd=256, n_ff=512,
                                                                    n_layer=N_LAYER, quant_layers=(PLANTED,)))


def bisect(model, out, layers: str):
    return cli("sweep", "-m", model, "-p", "Hi there", "-t", "1", "-c", "64", "--bisect", "-ngl", layers,
               "--tolerance", "exact", "-o", out)


def test_bisect_finds_the_planted_boundary_and_its_origin(planted, tmp_path):
    result = bisect(planted, tmp_path / "run", f"0..{N_LAYER}")
    assert result.returncode == 1, result.stderr
    summary = json.loads((tmp_path / "run" / "bisect.json").read_text())
    assert summary["boundary"] == PLANTED + 1
    # Logit-only captures, counted on disk: within ceil(log2(N + 1)) + 1 (N + 1 answers, plus the reference).
    logit_dumps = sorted((tmp_path / "run").glob("logits-*.h5"))
    assert len(logit_dumps) == summary["logit_captures"] <= math.ceil(math.log2(N_LAYER + 1)) + 1
    assert sorted(p.name for p in (tmp_path / "run").glob("full-*.h5")) == [f"full-ngl{PLANTED}.h5",
                                                                            f"full-ngl{PLANTED + 1}.h5"]
    origin = summary["origins"][0]
    assert (origin["name"], origin["op"], origin["verdict"]) == (f"Qcur-{PLANTED}", "MUL_MAT", "op")
    weight = next(s for s in origin["source_details"] if s["name"] == f"blk.{PLANTED}.attn_q.weight")
    assert weight["buffer_type_a"] == "CPU_REPACK" and weight["buffer_type_b"].startswith("RPC0")
    assert f"boundary: -ngl {PLANTED + 1} is the first count" in result.stdout
    assert f"first origin between -ngl {PLANTED} and {PLANTED + 1}: Qcur-{PLANTED}" in result.stdout


def test_bisect_without_a_boundary_says_so(tiny_f32, tmp_path):
    result = bisect(tiny_f32, tmp_path / "flat", "0..2")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "flat" / "bisect.json").read_text())
    assert summary["boundary"] is None and summary["origins"] == []
    assert summary["logit_captures"] <= math.ceil(math.log2(3)) + 1
    assert "no boundary" in result.stdout


def test_bisect_needs_a_range(planted, tmp_path):
    result = bisect(planted, tmp_path / "bad", "0,all")
    assert result.returncode != 0 and "LOW..HIGH" in result.stderr and "Traceback" not in result.stderr
