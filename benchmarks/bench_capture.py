"""The hook's overhead on a 240 MB f16 model, and the writer against np.save, as ratios in the same run.

Run: ``python benchmarks/bench_capture.py [--quick] [--json OUT]``.  Numbers go
into docs/performance.md.  Nothing here asserts a time: it reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from inspector.capture.hook import TensorHook
from inspector.capture.selection import Selection
from inspector.dump.background_writer import BackgroundWriter
from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter
from inspector.ggml.log import install_log
from inspector.llamacpp.config import LlamaRunConfig
from inspector.llamacpp.decode import run as run_llama
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def timed(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call)."""
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_capture_overhead(folder: Path, spec: TinyLlamaSpec, repeats: int) -> dict[str, float]:
    model = write_tiny_llama(folder / "bench.gguf", spec)
    config = LlamaRunConfig(model=str(model), prompt=PROMPT, threads=2, n_ctx=512, flash_attn="off")
    log = install_log(False)

    def run(selection: Selection | None, store: bool) -> None:
        writer = BackgroundWriter(DumpWriter(folder / "b.h5", {}, {}, overwrite=True)) if store else None
        sink = writer.write if writer else (lambda record, array: None)
        hook = TensorHook(selection, sink) if selection is not None else None
        begin = writer.begin_evaluation if writer else (lambda kind, info: 0)
        run_llama(config, hook, begin, log)
        if writer:
            writer.close(True)

    baseline = timed(lambda: run(None, False), repeats)
    results = {"no_callback_s": baseline}
    cases = {
        "ask_only_nothing_selected": (Selection(globs=("no-such-tensor",)), False),
        "l_out_copied_not_stored": (Selection(globs=("l_out-*",)), False),
        "l_out_stored": (Selection(globs=("l_out-*",)), True),
        "all_copied_not_stored": (Selection(), False),
        "all_stored": (Selection(), True),
    }
    for label, (selection, store) in cases.items():
        results[label] = timed(lambda s=selection, w=store: run(s, w), repeats) / baseline
    return results


def bench_write(folder: Path, count: int) -> dict[str, float]:
    """Writer throughput (flush after every tensor) against np.save of the same arrays."""
    arrays = [np.random.default_rng(i).standard_normal((64, 1024)).astype(np.float32) for i in range(count)]

    def dump() -> None:
        with DumpWriter(folder / "w.h5", {}, {}, overwrite=True) as writer:
            writer.begin_evaluation("prompt", {})
            for index, array in enumerate(arrays):
                writer.write(TensorRecord(f"t{index}", 0, index, 0, "ADD", "f32", (1024, 64, 1, 1),
                                          (4, 4096, 262144, 262144), "CPU", "native"), array)

    def npy() -> None:
        for index, array in enumerate(arrays):
            np.save(folder / f"t{index}.npy", array)

    dump_s, npy_s = timed(dump, 3), timed(npy, 3)
    return {"tensors": count, "bytes_per_tensor": arrays[0].nbytes, "dump_s": dump_s, "npy_s": npy_s,
            "dump_over_npy_ratio": dump_s / npy_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    spec = TinyLlamaSpec(n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=768) if args.quick else \
        TinyLlamaSpec(n_embd=1024, n_layer=8, n_head=16, n_head_kv=8, n_ff=4096, dtype="f16")
    repeats = 3 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {
            "model": {"n_embd": spec.n_embd, "n_layer": spec.n_layer, "n_ff": spec.n_ff, "dtype": spec.dtype,
                      "prompt_tokens": len(PROMPT) + 1},
            "capture_overhead_ratio_vs_no_callback": bench_capture_overhead(folder, spec, repeats),
            "writing": bench_write(folder, 200),
        }
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
