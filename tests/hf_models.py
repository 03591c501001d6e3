"""Tiny random transformers checkpoints, and the GGUFs llama.cpp's own converter makes of them.

A port is checked against its reference: the checkpoint is what transformers
runs, the GGUF what llama.cpp runs, and the GGUF must come from llama.cpp's
``convert_hf_to_gguf.py`` (from the pinned source, the ``vendor/llama.cpp``
tree of the installed llama-cpp-python's sdist), because the converter's
renaming, Q/K row permutation and norm shifts are part of what is compared.
Nothing is downloaded but that sdist: the models are built by transformers
from a fixed seed and the tokenizers are trained here on a small corpus.

- Llama and Gemma3 get a SentencePiece BPE model with byte fallback, trained
  by the ``sentencepiece`` package (Llama's with a dummy space prefix, Gemma's
  without, as the real ones); transformers reads ``tokenizer.model`` (which
  needs ``protobuf``) and the converter reads the same file.
- Qwen3 gets a byte-level BPE trained by the ``tokenizers`` library inside
  transformers' own ``Qwen2Tokenizer`` pipeline (NFC, Qwen2's split regex,
  byte-level).  The converter names a BPE pre-tokenizer by hashing the ids a
  fixed text encodes to, which only the real vocabularies reproduce, so it
  is told the name ("qwen2"), as ``convert_hf_to_gguf_update.py`` would
  record it for a new model with that pre-tokenizer; llama.cpp then splits
  with the same regex.

Shapes are small but real-looking: hidden 64, 4 heads of 16 with 2 KV heads
(GQA), MLP 128, a vocabulary of about 400 pieces.  Weights are drawn wider
than transformers' default (std 0.1) and every norm weight is perturbed, so
attention is not uniform and a norm that is skipped, or shifted twice, shows.
Gemma3 has 6 layers: llama.cpp's default sliding-window pattern (the
converter writes none) makes layers 0-4 local and layer 5 global, as
transformers' default ``layer_types``; the window of 4 tokens is shorter
than the test prompts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import sentencepiece
import torch
import transformers
from llama_programs import cache_root, fetch_source
from tokenizers import pre_tokenizers, trainers

ARCHITECTURES = ("llama", "qwen3", "gemma3")
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
CONVERTER_RECIPE = "1"  # changes whenever what is unpacked changes: older caches are then not reused
SEED = 22
VOCAB_SIZE = 400
INIT_STD = 0.1
NORM_NOISE = 0.1
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "max_position_embeddings": 256, "initializer_range": INIT_STD}
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, ggml world! llama.cpp runs models on CPUs and GPUs.",
    "Every tensor of a compute graph is a node: an operation and its sources.",
    "A port agrees with its reference until one operation departs from it.",
    "Numbers such as 0, 7, 42, 1999 and 3.14 are split into digits.",
    "Where does the first difference appear, and which layer grows it?",
    "Über café naïve façade: a few letters outside ASCII.",
    "Attention, normalisation, rotary embeddings, feed-forward blocks; logits at the end.",
]
# llama.cpp's converter, run with the venv's python on several checkpoints in one process: importing torch and
# transformers takes most of a conversion's time, so the process imports them first, while the checkpoints are
# being built, and then reads its jobs from stdin.  argv[1]: the script; stdin: JSON [[folder, gguf,
# pre-tokenizer], ...]; a pre-tokenizer's name ("" for none) replaces the converter's hash lookup.  Prints one
# "converted SECONDS GGUF" line per checkpoint.
CONVERTER_DRIVER = """
import json, runpy, sys, time
from pathlib import Path
script = Path(sys.argv[1])
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
from conversion.base import TextModel
from transformers import AutoConfig
AutoConfig.for_model("llama")  # the imports any configuration needs, done before the jobs come
recognise = TextModel.get_vocab_base_pre
for folder, out, pre_tokenizer in json.load(sys.stdin):
    TextModel.get_vocab_base_pre = (lambda self, tokenizer, name=pre_tokenizer: name) if pre_tokenizer else recognise
    started = time.monotonic()
    sys.argv = [str(script), folder, "--outfile", out, "--outtype", "f32"]
    runpy.run_path(str(script), run_name="__main__")
    print("converted", time.monotonic() - started, out, flush=True)
"""


class ConversionError(RuntimeError):
    """llama.cpp's converter refused a checkpoint: its exit status and output's tail."""


@dataclass(frozen=True)
class HfModel:
    """A saved checkpoint (``folder``: config, safetensors, tokenizer) and its f32 GGUF, with what each cost."""

    architecture: str
    folder: Path
    gguf: Path
    build_seconds: float
    convert_seconds: float


def converter() -> Path:
    """``convert_hf_to_gguf.py`` of the pinned source, beside its ``conversion/`` and ``gguf-py/``, unpacked once
    from the llama-cpp-python sdist into the cache that tests/llama_programs.py uses, renamed into place whole."""
    folder = cache_root().parent / "llama-converter" / f"{llama_cpp.__version__}-{CONVERTER_RECIPE}"
    script = folder / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".unpacking-") as work:
        try:
            fetch_source(Path(work), CONVERTER_PARTS).rename(folder)
        except OSError:
            if not script.is_file():  # not a concurrent unpacking's
                raise
    return script


def start_converter() -> subprocess.Popen[str]:
    """llama.cpp's converter, started offline; it imports torch and transformers, then waits for its jobs."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    return subprocess.Popen([sys.executable, "-c", CONVERTER_DRIVER, str(converter())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stop(process: subprocess.Popen[str]) -> None:
    """End a converter that will not be given its jobs (a checkpoint failed, or a timeout), and reap it."""
    process.kill()
    process.communicate()


def convert(jobs: list[tuple[Path, Path, str]], started: subprocess.Popen[str] | None = None) -> dict[Path, float]:
    """Write each job's f32 GGUF of a checkpoint (folder, gguf, BPE pre-tokenizer name or ""), with llama.cpp's
    converter (``started``, or one started now) run offline; the seconds each conversion took, by GGUF."""
    process = started or start_converter()
    try:
        stdout, stderr = process.communicate(json.dumps([[str(folder), str(out), pre] for folder, out, pre in jobs]),
                                             timeout=600)
    except BaseException:
        stop(process)
        raise
    if process.returncode != 0:
        raise ConversionError(f"convert_hf_to_gguf.py failed (exit {process.returncode}):\n{(stdout + stderr)[-4000:]}")
    return {Path(out): float(seconds) for _, seconds, out in
            (line.split(" ", 2) for line in stdout.splitlines() if line.startswith("converted "))}


def train_sentencepiece(folder: Path, dummy_prefix: bool, specials: dict[str, tuple[int, str]]) -> None:
    """``folder/tokenizer.model``: a SentencePiece BPE with byte fallback (as Llama's and Gemma's), digits split,
    ``specials`` mapping sentencepiece's pad/unk/bos/eos to their (id, piece)."""
    model = io.BytesIO()
    options = {f"{kind}_id": index for kind, (index, _) in specials.items()}
    options.update({f"{kind}_piece": piece for kind, (_, piece) in specials.items()})
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, split_digits=True, character_coverage=1.0, add_dummy_prefix=dummy_prefix,
        remove_extra_whitespaces=False, normalization_rule_name="identity", num_threads=1, minloglevel=2,
        **options)
    (folder / "tokenizer.model").write_bytes(model.getvalue())


def llama_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    train_sentencepiece(folder, True, {"unk": (0, "<unk>"), "bos": (1, "<s>"), "eos": (2, "</s>")})
    return transformers.LlamaTokenizer.from_pretrained(folder, add_bos_token=True)


def gemma_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    train_sentencepiece(folder, False, {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"),
                                        "unk": (3, "<unk>")})
    return transformers.GemmaTokenizer.from_pretrained(folder, add_bos_token=True)


def qwen_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    """A byte-level BPE trained inside transformers' Qwen2 pipeline, rebuilt from its vocabulary and merges."""
    backend = transformers.Qwen2Tokenizer().backend_tokenizer
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    trained = json.loads(backend.to_str())["model"]
    return transformers.Qwen2Tokenizer(vocab=trained["vocab"], merges=[tuple(merge) for merge in trained["merges"]])


def llama_model(vocab: int) -> transformers.PreTrainedModel:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab, num_hidden_layers=2, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, **SHAPE))


def qwen_model(vocab: int) -> transformers.PreTrainedModel:
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=vocab, num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, eos_token_id=0, **SHAPE))


def gemma_model(vocab: int) -> transformers.PreTrainedModel:
    return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=vocab, num_hidden_layers=6, sliding_window=4, query_pre_attn_scalar=SHAPE["head_dim"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2, **SHAPE))


@dataclass(frozen=True)
class Recipe:
    """How one architecture's checkpoint is made, and what its converter must be told."""

    tokenizer: Callable[[Path], transformers.PreTrainedTokenizerBase]
    model: Callable[[int], transformers.PreTrainedModel]
    pre_tokenizer: str = ""


RECIPES = {"llama": Recipe(llama_tokenizer, llama_model),
           "qwen3": Recipe(qwen_tokenizer, qwen_model, "qwen2"),
           "gemma3": Recipe(gemma_tokenizer, gemma_model)}


def save_checkpoint(architecture: str, folder: Path) -> None:
    """Train the tokenizer, build the model from SEED (norm weights perturbed) and save both into ``folder``."""
    folder.mkdir(parents=True)
    recipe = RECIPES[architecture]
    tokenizer = recipe.tokenizer(folder)
    torch.manual_seed(SEED)
    model = recipe.model(len(tokenizer)).to(torch.float32)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * NORM_NOISE)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_hf_models(root: Path) -> dict[str, HfModel]:
    """Every architecture's checkpoint, saved under ``root/<architecture>`` and converted to
    ``root/<architecture>.gguf`` (all in one converter process, started first)."""
    process = start_converter()
    built = {}
    try:
        for architecture in ARCHITECTURES:
            started = time.monotonic()
            save_checkpoint(architecture, root / architecture)
            built[architecture] = time.monotonic() - started
    except BaseException:
        stop(process)
        raise
    ggufs = {architecture: root / f"{architecture}.gguf" for architecture in ARCHITECTURES}
    seconds = convert([(root / name, ggufs[name], RECIPES[name].pre_tokenizer) for name in ARCHITECTURES], process)
    return {name: HfModel(name, root / name, ggufs[name], built[name], seconds[ggufs[name]]) for name in ARCHITECTURES}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        began = time.monotonic()
        for made in build_hf_models(Path(scratch)).values():
            print(f"{made.architecture}: built {made.build_seconds:.1f} s, converted {made.convert_seconds:.1f} s, "
                  f"{made.gguf.stat().st_size} bytes")
        print(f"all: {time.monotonic() - began:.1f} s")
