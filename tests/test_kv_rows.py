"""A KV-cache write is stored as the rows it wrote: a dump grows with the tokens, not with the context.

The expectations come from the graph itself: the rows a write stored are
the ones its row-index input (``attn_inp_k_idxs``, captured as a leaf)
names, and their values are the K it was handed (``Kcur-N`` after RoPE, the
write's source) rounded to the cache's f16, computed here with numpy.
"""

from __future__ import annotations

import numpy as np
from conftest import run_capture

from inspector import open_dump
from inspector.dump.record import rows_written_of

N_PREDICT = 3


def test_writes_store_the_rows_their_indices_name_with_the_values_they_were_given(tiny_f32, tmp_path):
    run_capture(tiny_f32, tmp_path / "run.h5", n_ctx=512, n_predict=N_PREDICT)
    with open_dump(tmp_path / "run.h5") as dump:
        writes = [e for e in dump.entries() if e.name.startswith("cache_k_l") and e.op == "SET_ROWS"]
        # The prompt, then one decode per generated token but the last (sampled, never decoded).
        assert writes and len({e.eval_index for e in writes}) == N_PREDICT
        for write in writes:
            record = dump.metadata(write)
            rows = rows_written_of(record)
            indices = dump.read(dump.find("attn_inp_k_idxs", write.eval_index)).reshape(-1)
            assert rows == indices.tolist()
            assert record["written_of_ne"][1] == 512 and write.shape == (len(rows), record["written_of_ne"][0])
            layer = write.name.split("_l", 1)[1].split(" ", 1)[0]
            given = dump.read(dump.find(f"Kcur-{layer}", write.eval_index, 2)).reshape(len(rows), -1)
            np.testing.assert_array_equal(dump.read(write), given.astype(np.float16))


def test_a_long_context_costs_no_more_than_a_short_one(tiny_f32, tmp_path):
    sizes = {}
    for n_ctx in (256, 8192):
        out = tmp_path / f"c{n_ctx}.h5"
        run_capture(tiny_f32, out, n_ctx=n_ctx, n_predict=N_PREDICT)
        sizes[n_ctx] = out.stat().st_size
        with open_dump(out) as dump:
            # The largest stored tensor: a per-token one, never a whole cache of n_ctx rows.
            assert max(e.nbytes for e in dump.entries()) < 64 * 1024
    assert sizes[8192] <= 1.1 * sizes[256], sizes


def test_the_cache_rebuilt_from_the_writes_is_what_attention_read(tiny_f32, tmp_path):
    """export of a cache rebuilds it as of an evaluation; attention's own view of it, read at compute time, agrees."""
    from test_cli import cli

    run_capture(tiny_f32, tmp_path / "run.h5", n_ctx=512, n_predict=N_PREDICT, flash_attn="on")
    last = N_PREDICT - 1
    result = cli("export", tmp_path / "run.h5", "cache_k_l1", "--eval", str(last), "-o", tmp_path / "k.npy")
    assert result.returncode == 0, result.stderr
    rebuilt = np.load(tmp_path / "k.npy")
    with open_dump(tmp_path / "run.h5") as dump:
        view = dump.read(dump.find("cache_k_l1 (view)", last, 1))  # (n_kv cells, KV heads, head_dim)
        written = sum(len(rows_written_of(dump.metadata(e))) for e in dump.entries()
                      if e.name == "cache_k_l1 (view)" and e.op == "SET_ROWS")
    assert rebuilt.shape == (512, view.shape[1] * view.shape[2])
    np.testing.assert_array_equal(rebuilt[:view.shape[0]], view.reshape(view.shape[0], -1))
    assert written and not rebuilt[written:].any()  # cells never written stay cleared
