"""Where capture-all's time goes with the native hook in process: each stage of the pipeline taken away in turn.

Run: ``python benchmarks/bench_native_pipeline.py [--repeats N] [--ctx N] [--json OUT]``.  On the generated
262,144-token model of ``bench_real_model.py``, every tensor of the same run (a ~100-token prompt and 8 tokens),
each a whole process, as ratios to the plain llama-cpp-python run measured in the same call:

- ``frames``: the hook computes each graph unsplit and writes every tensor into the socket; the reader parses the
  frame heads and JSON headers and drops the data (the hook and the transport);
- ``records``: and makes each frame the record and array the dump would store (``record_of``), then drops them;
- ``stats``: and computes each tensor's statistics (in C, as the command line's writer does) and digest;
- ``full``: ``capture`` as shipped (the writer thread writes HDF5).

The differences between consecutive stages are what each costs; ``frames`` over ``plain`` is the copy's floor for
this design.  Each ratio is the median of pairs, the stage and the plain run in turn (``timing.paired_ratio``).
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench_real_model import N_PREDICT, PROMPT, THREADS, model_path, plain_command
from timing import emit, paired_ratio, wall

STAGES = ("frames", "records", "stats", "full")

# Runs one stage in a child started with the hook preloaded, as the command line starts capture.
STAGE = """
import sys
from inspector.capture.mode import CaptureMode
from inspector.capture.selection import Selection
from inspector.dump.format import digest_of
from inspector.llamacpp.capture import capture_llama
from inspector.llamacpp.config import LlamaRunConfig
from inspector.native import inprocess
from inspector.native.stream import record_of
from inspector.native.tensor_stats import stats_function

stage, model, prompt, out, n_ctx = sys.argv[1:6]
stats_of = stats_function()


class Sink(inprocess._InProcessSink):
    def _tensor(self, kind, header, owner, data, report):
        if stage == "frames" or kind != 3:
            return
        record, array = record_of(header, owner, data)
        if stage == "stats":
            stats_of(array)
            digest_of(array)


if stage != "full":
    inprocess._InProcessSink = Sink
selection, mode = Selection(), CaptureMode()
factory, recorded = inprocess.native_capture([model], selection, mode)
assert factory is not None, recorded
config = LlamaRunConfig(model=model, prompt=prompt, threads={threads}, n_ctx=int(n_ctx), flash_attn="off",
                        n_predict={n_predict})
capture_llama(config, selection, out, overwrite=True, hook_factory=factory, capture_mode=recorded, stats_of=stats_of)
"""


def stage_command(stage: str, model: Path, out: Path, n_ctx: int) -> list[str]:
    return [sys.executable, "-c", STAGE.format(threads=THREADS, n_predict=N_PREDICT), stage, str(model), PROMPT,
            str(out), str(n_ctx)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = model_path()
    from inspector.native.build import library_path
    from inspector.native.preload import PRELOADED, USER_PRELOAD

    hook = str(library_path())
    preloaded = {**os.environ, PRELOADED: hook, USER_PRELOAD: os.environ.get("LD_PRELOAD", ""),
                 "LD_PRELOAD": hook, "OPENBLAS_NUM_THREADS": "1"}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stage.h5"
        results["plain_s"] = wall(plain_command(model, args.ctx), args.repeats)
        for stage in STAGES:
            ratio = paired_ratio(stage_command(stage, model, out, args.ctx), plain_command(model, args.ctx),
                                 args.repeats, env=preloaded)
            results[f"{stage}_ratio"] = ratio
            print(f"{stage}: {ratio:.2f}x", file=sys.stderr, flush=True)
    emit(results, args.json)


if __name__ == "__main__":
    main()
