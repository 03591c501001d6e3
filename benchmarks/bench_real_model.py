"""Capture, metadata and compare costs on a model shaped like a real one, as ratios to a plain run.

Run: ``python benchmarks/bench_real_model.py [--repeats N] [--json OUT]``.  It
generates (once, cached in benchmarks/results/) a llama with a 262,144-token
vocabulary, 16 layers and weights mixed as llama.cpp's Q4_K_M conversion mixes
them (Q4_K, Q6_K, Q8_0; ~345 MB), then times whole processes, each the median
of ``--repeats`` runs:

- ``plain``: llama-cpp-python's ``Llama(...)`` on the prompt, 8 tokens generated;
- ``one_tensor``: ``capture -t result_output`` of the same run;
- ``capture_all``: ``capture`` of every tensor;
- ``stats_only``: ``capture --stats-only`` of every tensor;
- ``floor``: every node asked for and copied out, then discarded (the hook's floor);

then capture-all under each ``--compression``, the metadata reads, compare of
identical and of fully diverged dumps, ``ls`` of a 10,000-tensor dump, and a
multimodal prompt (``--mmproj``: a generated 224-pixel LLaVA-style projector,
256 image tokens, a 640x480 JPEG) captured against the same prompt run without
a hook.  ``context`` repeats the captures at ``-c 512``, ``-c 0`` and
``-c 32768``, in process and under ``exec`` of llama.cpp's own
``llama-completion`` (both capture modes).  ``--only SECTION`` runs one section.

Capture times are reported as ratios to ``plain`` measured in the same run.
Nothing here asserts a time: it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from bench_capture import timed  # the in-process median timer both benchmarks share
from timing import emit, paired_ratio, wall

from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama
from inspector.tiny_models.llava import TinyLlavaSpec, write_tiny_llava

RESULTS = Path(__file__).resolve().parent / "results"
SPEC = TinyLlamaSpec(dtype="q4_k_m", n_embd=768, n_ff=2048, n_layer=16, n_head=12, n_head_kv=4,
                     n_vocab=262_144, n_ctx_train=4096, name="realistic-q4_k_m", seed=7)
# About 100 tokens with the byte-level vocabulary (one token per byte, plus BOS).
PROMPT = "The quick brown fox jumps over the lazy dog; " * 2 + "then it sleeps."
N_PREDICT = 8
THREADS = 2
# A CLIP-ViT-B-like projector at a sixth of the depth: 224-pixel images in 14-pixel patches.
PROJECTOR = TinyLlavaSpec(text_n_embd=SPEC.n_embd, image_size=224, patch_size=14, n_embd=256, n_ff=1024, n_head=8,
                          n_layer=6, projector_hidden=SPEC.n_embd, seed=7)
MULTIMODAL_PROMPT = "Describe <__media__> in one line."

PLAIN = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx={n_ctx}, n_batch=512, n_ubatch=512, n_threads={threads},
                      n_threads_batch={threads}, verbose=False, flash_attn=False)
llm(sys.argv[2], max_tokens={n_predict}, temperature=0.0)
"""

# The multimodal prompt through the same runner with no eval callback: the baseline of a multimodal capture.
MULTIMODAL_PLAIN = """
import sys
from inspector.ggml.log import install_log
from inspector.llamacpp.config import LlamaRunConfig
from inspector.llamacpp.decode import run
config = LlamaRunConfig(model=sys.argv[1], prompt=sys.argv[2], mmproj=sys.argv[3] or None, images=sys.argv[4:],
                        threads={threads}, n_ctx=512, flash_attn="off", n_predict={n_predict})
indices = iter(range(10**6))
run(config, None, lambda kind, info: next(indices), install_log(False))
"""

FLOOR = """
import sys
from inspector.capture.hook import TensorHook
from inspector.ggml.log import install_log
from inspector.llamacpp.config import LlamaRunConfig
from inspector.llamacpp.decode import run
from inspector.capture.selection import Selection
config = LlamaRunConfig(model=sys.argv[1], prompt=sys.argv[2], threads={threads}, n_ctx=512,
                        flash_attn="off", n_predict={n_predict})
hook = TensorHook(Selection(), lambda record, array: None)
indices = iter(range(10**6))
run(config, hook, lambda kind, info: next(indices), install_log(False))
"""


def plain_command(model: Path, n_ctx: int = 512) -> list[str]:
    """The baseline: llama-cpp-python's ``Llama(...)`` on PROMPT, N_PREDICT tokens, at context ``n_ctx``."""
    return [sys.executable, "-c", PLAIN.format(threads=THREADS, n_predict=N_PREDICT, n_ctx=n_ctx), str(model), PROMPT]


def model_path() -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{SPEC.name}-{SPEC.n_vocab}-{SPEC.n_layer}l-{SPEC.seed}.gguf"
    if not path.exists():
        write_tiny_llama(path.with_suffix(".partial"), SPEC).rename(path)
    return path


def capture_command(model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inspector", "capture", str(model), "-p", PROMPT, "--n-predict", str(N_PREDICT),
            "--threads", str(THREADS), "--ctx", "512", "--flash-attn", "off", "-o", str(out), "--overwrite", *extra]


def bench_capture(model: Path, folder: Path, repeats: int) -> dict[str, float]:
    plain = wall(plain_command(model), repeats)
    floor = wall([sys.executable, "-c", FLOOR.format(threads=THREADS, n_predict=N_PREDICT), str(model), PROMPT],
                 repeats)
    one = wall(capture_command(model, folder / "one.h5", "-T", "result_output"), repeats)
    everything = wall(capture_command(model, folder / "all.h5"), repeats)
    stats_only = wall(capture_command(model, folder / "stats.h5", "--stats-only"), repeats)
    return {"plain_s": plain, "floor_ratio": floor / plain, "one_tensor_ratio": one / plain,
            "capture_all_ratio": everything / plain, "stats_only_ratio": stats_only / plain}


def _stored_bytes(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def bench_context(model: Path, folder: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Capture at llama.cpp's context sizes: in-process ``capture`` and ``exec -- llama-completion``.

    ``-c 0`` means the training context, 4,096 for this model; 32,768 is
    what a real model of this shape trains with (Gemma 3 270M), so it is
    measured explicitly.  Each capture is a ratio to the plain run of the
    same program at the same context, and each dump's size is recorded.
    exec is timed in both capture modes (unsplit, the default, and the
    per-node callback).  Ratios are medians of pairs run in turn
    (:func:`timing.paired_ratio`); the plain times are medians of their own.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from llama_programs import llama_programs

    completion = llama_programs() / "llama-completion"
    results: dict[str, dict[str, float]] = {}
    for n_ctx in (512, 0, 32768):
        row: dict[str, float] = {}
        plain = wall(plain_command(model, n_ctx), repeats)
        row["plain_s"] = plain
        for key, extra in (("one_tensor", ("-T", "result_output")), ("stats_only", ("--stats-only",)),
                           ("capture_all", ())):
            out = folder / f"ctx-{key}.h5"
            command = capture_command(model, out, *extra)
            command[command.index("--ctx") + 1] = str(n_ctx)
            row[f"{key}_ratio"] = paired_ratio(command, plain_command(model, n_ctx), repeats)
            row[f"{key}_mib"] = _stored_bytes(out) / 2**20
        program = [str(completion), "-m", str(model), "-p", PROMPT, "-n", str(N_PREDICT), "-c", str(n_ctx),
                   "-t", str(THREADS), "--temp", "0", "-no-cnv", "-fa", "off"]
        program_plain = wall(program, repeats)
        row["completion_plain_s"] = program_plain
        for key, extra in (("exec_one_tensor", ("-T", "result_output")), ("exec_stats_only", ("--stats-only",)),
                           ("exec_all", ()), ("exec_all_callback", ("--mode", "callback"))):
            out = folder / f"ctx-{key}.h5"
            command = [sys.executable, "-m", "inspector", "exec", "-o", str(out), "--overwrite", *extra, "--",
                       *program]
            row[f"{key}_ratio"] = paired_ratio(command, program, repeats)
            row[f"{key}_mib"] = _stored_bytes(out) / 2**20
        results[f"c{n_ctx}"] = row
        print(f"context {n_ctx}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return results


def bench_multimodal(model: Path, folder: Path, repeats: int) -> dict[str, float]:
    """Encoder + language model: capture costs as ratios to the same multimodal run without a hook."""
    from PIL import Image

    projector = RESULTS / f"llava-mlp-{PROJECTOR.image_size}-{PROJECTOR.n_layer}l-{PROJECTOR.seed}.gguf"
    if not projector.exists():
        write_tiny_llava(projector.with_suffix(".partial"), PROJECTOR).rename(projector)
    image = folder / "photo.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image, quality=90)
    plain = wall([sys.executable, "-c", MULTIMODAL_PLAIN.format(threads=THREADS, n_predict=N_PREDICT), str(model),
                  MULTIMODAL_PROMPT, str(projector), str(image)], repeats)
    text_only = wall([sys.executable, "-c", MULTIMODAL_PLAIN.format(threads=THREADS, n_predict=N_PREDICT), str(model),
                      "Describe it in one line.", ""], repeats)

    def capture(out: str, *extra: str) -> list[str]:
        command = capture_command(model, folder / out, "--mmproj", str(projector), "--image", str(image), *extra)
        command[command.index(PROMPT)] = MULTIMODAL_PROMPT
        return command

    inp_raw = wall(capture("inp_raw.h5", "-T", "inp_raw"), repeats)
    one = wall(capture("mm-one.h5", "-T", "result_output"), repeats)
    everything = wall(capture("mm-all.h5"), repeats)
    return {"plain_s": plain, "text_only_plain_s": text_only, "image_tokens": PROJECTOR.n_patches,
            "projector_bytes": projector.stat().st_size, "inp_raw_ratio": inp_raw / plain,
            "one_tensor_ratio": one / plain, "capture_all_ratio": everything / plain,
            "capture_all_bytes": (folder / "mm-all.h5").stat().st_size}


def bench_storage(model: Path, folder: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Capture-all under each compression: time relative to uncompressed, and file size."""
    results = {}
    for compression in ("none", "lzf", "gzip:1", "gzip:4"):
        out = folder / f"storage-{compression.replace(':', '-')}.h5"
        seconds = wall(capture_command(model, out, "--compression", compression), repeats)
        results[compression] = {"seconds": seconds, "bytes": out.stat().st_size}
    for values in results.values():
        values["time_vs_none"] = values["seconds"] / results["none"]["seconds"]
        values["size_vs_none"] = values["bytes"] / results["none"]["bytes"]
    return results


def bench_metadata(model: Path, repeats: int) -> dict[str, float]:
    from inspector.llamacpp.facts import model_facts

    return {
        "model_facts_s": timed(lambda: model_facts(str(model)), repeats),
        "gguf_command_s": wall([sys.executable, "-m", "inspector", "gguf", str(model)], repeats),
    }


def bench_compare(model: Path, folder: Path, repeats: int) -> dict[str, float]:
    """Two identical capture-all dumps; and fully diverged pairs against reading the same data with h5py."""
    a, b = folder / "cmp-a.h5", folder / "cmp-b.h5"
    for out in (a, b):
        subprocess.run(capture_command(model, out), check=True, capture_output=True)
    identical = wall([sys.executable, "-m", "inspector", "compare", str(a), str(b)], repeats)
    diverged = folder / "cmp-d.h5"
    _perturbed_copy(b, diverged)
    compare_diverged = _wall_allow(1, [sys.executable, "-m", "inspector", "compare", str(a), str(diverged)], repeats)
    read_both = wall([sys.executable, "-c", READ_ALL, str(a), str(diverged)], repeats)
    with h5py.File(a, "r") as handle:
        tensors = len(handle["index"])
    return {"tensors": tensors, "identical_dumps_s": identical, "diverged_dumps_s": compare_diverged,
            "read_both_with_h5py_s": read_both, "diverged_throughput_vs_h5py": read_both / compare_diverged}


READ_ALL = """
import sys, h5py
for path in sys.argv[1:]:
    with h5py.File(path, "r") as handle:
        stream = handle["tensors"]
        for row in handle["index"][()]:
            stream[int(row["offset"]):int(row["offset"]) + int(row["nbytes"])]
"""


def _perturbed_copy(source: Path, target: Path) -> None:
    """The same dump with every float tensor changed (data and digest): nothing can be decided by digest."""
    import shutil

    from inspector.dump.format import digest_of

    shutil.copy(source, target)
    with h5py.File(target, "r+") as handle:
        index = handle["index"][()]
        data = handle["tensors"][()]
        for row in index:
            dtype = np.dtype(row["dtype"].decode() if isinstance(row["dtype"], bytes) else row["dtype"])
            start, stop = int(row["offset"]), int(row["offset"]) + int(row["nbytes"])
            if dtype.kind == "f" and stop > start:
                changed = data[start:stop].view(dtype) + np.asarray(1, dtype=dtype)
                data[start:stop] = changed.view(np.uint8)
                row["digest"] = digest_of(changed)
        handle["tensors"][...] = data
        handle["index"][...] = index


def _wall_allow(expected_code: int, command: list[str], repeats: int) -> float:
    samples = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True)
        samples.append(time.perf_counter() - started)
        if result.returncode != expected_code:
            raise RuntimeError(f"{command[3]} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return statistics.median(samples[1:])


def bench_listing(folder: Path, count: int, repeats: int) -> dict[str, float]:
    from inspector.dump.record import TensorRecord
    from inspector.dump.writer import DumpWriter

    path = folder / "many.h5"
    with DumpWriter(path, {}, {}, overwrite=True) as writer:
        writer.begin_evaluation("prompt", {})
        small = np.zeros((4, 8), np.float32)
        for index in range(count):
            writer.write(TensorRecord.for_array(f"t-{index}", small, 0, index, "ADD"), small)
    return {"tensors": count, "ls_s": wall([sys.executable, "-m", "inspector", "ls", str(path)], repeats)}


SECTIONS = ("capture", "storage", "metadata", "compare", "listing", "multimodal", "context")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", choices=SECTIONS, help="run this section only")
    args = parser.parse_args()
    model = model_path()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {
            "model": {"path": model.name, "bytes": model.stat().st_size, "n_vocab": SPEC.n_vocab,
                      "n_layer": SPEC.n_layer, "n_embd": SPEC.n_embd, "n_ff": SPEC.n_ff, "dtype": SPEC.dtype,
                      "prompt_tokens": len(PROMPT.encode()) + 1, "n_predict": N_PREDICT, "threads": THREADS},
        }
        for key, bench in (("capture", lambda: bench_capture(model, folder, args.repeats)),
                           ("storage", lambda: bench_storage(model, folder, args.repeats)),
                           ("metadata", lambda: bench_metadata(model, args.repeats)),
                           ("compare", lambda: bench_compare(model, folder, args.repeats)),
                           ("listing", lambda: bench_listing(folder, 10_000, args.repeats)),
                           ("multimodal", lambda: bench_multimodal(model, folder, args.repeats)),
                           ("context", lambda: bench_context(model, folder, args.repeats))):
            if args.only not in (None, key):
                continue
            results[key] = bench()
            print(f"{key}: {json.dumps(results[key])}", file=sys.stderr, flush=True)
    emit(results, args.json)


if __name__ == "__main__":
    main()
