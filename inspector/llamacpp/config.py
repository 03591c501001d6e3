"""The run configuration of a llama.cpp run, under llama.cpp's own names, and its checks.

A dump records this configuration as it is (``describe_config``), so it reads
like the command that made it; ``inspector.cli.llama_options`` maps each
field to its llama.cpp option and back (``ls --config``).  Every check that
needs no model runs here, before anything is loaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import llama_cpp

from inspector.constants import (
    DEFAULT_N_BATCH,
    DEFAULT_N_CTX,
    DEFAULT_N_UBATCH,
    DEFAULT_SEED,
    KV_CACHE_TYPES,
    LLAMA_MAX_INT32,
    LOAD_MODES,
)
from inspector.errors import InspectorError
from inspector.ggml.system import max_threads

FLASH_ATTN_MODES = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


@dataclass
class LlamaRunConfig:
    """Everything that determines a llama.cpp run, recorded in the dump under llama.cpp's names.

    The field names are ``common_params``' (``n_ctx``, ``n_batch``, ...) so a
    dump reads like the command that made it; ``inspector.cli.llama_options``
    maps each to its llama.cpp option and back (``ls --config``).
    """

    model: str
    prompt: str = ""
    # The file -f read the prompt from (the prompt itself is recorded too).
    prompt_file: str | None = None
    # Exact input tokens (--token-ids): the tokenizer is not run.
    token_ids: list[int] | None = None
    # Format the prompt as one user turn with a chat template (llama-cli's conversation mode).
    conversation: bool = False
    # A built-in template name or a template text; None: the model's own.
    chat_template: str | None = None
    jinja: bool = False
    system_prompt: str = ""
    # An int, or llama.cpp's "auto"/"all": every layer on the offload devices (libllama has no memory fitting).
    n_gpu_layers: int | str = "auto"
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    # None: the same as threads, as in llama.cpp.
    threads_batch: int | None = None
    # 0: the model's training context, as in llama.cpp.
    n_ctx: int = DEFAULT_N_CTX
    n_batch: int = DEFAULT_N_BATCH
    n_ubatch: int = DEFAULT_N_UBATCH
    flash_attn: str = "auto"
    type_k: str = "f16"
    type_v: str = "f16"
    # Tokens generated greedily after the prompt; -1: until end of generation, -2: until the context is full.
    n_predict: int = 0
    seed: int = DEFAULT_SEED
    rpc: list[str] = field(default_factory=list)
    # None: every available device; ["none"]: no offload.
    devices: list[str] | None = None
    # llama.cpp's -ot: "regex=BUFFER_TYPE" pairs.
    override_tensor: list[str] = field(default_factory=list)
    # llama.cpp's -lm: auto (mmap unless a device cannot), none (read into memory), mmap, mlock, ...
    load_mode: str = "auto"
    op_offload: bool = True
    # Logits (result_output rows) for every prompt token, not only the last (llama.cpp's --all-logits).
    all_logits: bool = False
    # Record the model file's full sha256 (cached per path, size, mtime) besides its fingerprint.
    sha256: bool = False
    # libmtmd's projector (llama-mtmd-cli's --mmproj) and the images the prompt's media markers stand for.
    mmproj: str | None = None
    images: list[str] = field(default_factory=list)
    # The projector on the first offload device (llama.cpp's --mmproj-offload, the default).
    mmproj_offload: bool = True

    def validate(self) -> None:
        if self.flash_attn not in FLASH_ATTN_MODES:
            raise InspectorError(f"-fa/--flash-attn must be one of {', '.join(FLASH_ATTN_MODES)}")
        for label, value in (("-ctk/--cache-type-k", self.type_k), ("-ctv/--cache-type-v", self.type_v)):
            if value not in KV_CACHE_TYPES:
                raise InspectorError(f"{label} must be one of {', '.join(KV_CACHE_TYPES)}, not {value!r}")
        for label, value in (("-b/--batch-size", self.n_batch), ("-ub/--ubatch-size", self.n_ubatch),
                             ("-t/--threads", self.threads), ("-tb/--threads-batch", self.threads_batch or 1)):
            if value < 1:
                raise InspectorError(f"{label} must be at least 1")
        for label, value in (("-t/--threads", self.threads), ("-tb/--threads-batch", self.threads_batch or 1)):
            if value > max_threads():
                raise InspectorError(f"{label} {value} is more than {max_threads()} threads on this machine")
        for label, value in (("-c/--ctx-size", self.n_ctx), ("-b/--batch-size", self.n_batch),
                             ("-ub/--ubatch-size", self.n_ubatch), ("-n/--n-predict", self.n_predict)):
            if value > LLAMA_MAX_INT32:
                raise InspectorError(f"{label} {value} is more than llama.cpp's limit {LLAMA_MAX_INT32}")
        if self.n_ctx < 0:
            raise InspectorError("-c/--ctx-size must not be negative (0: the model's training context)")
        if self.n_predict < -2:
            raise InspectorError("-n/--n-predict must be at least -2 (-1: until end of generation, -2: until the "
                                 "context is full)")
        if self.load_mode not in LOAD_MODES:
            raise InspectorError(f"-lm/--load-mode must be one of {', '.join(LOAD_MODES)}, not {self.load_mode!r}")
        if isinstance(self.n_gpu_layers, str) and self.n_gpu_layers not in ("auto", "all"):
            raise InspectorError(f"-ngl takes a number, 'auto' or 'all', not {self.n_gpu_layers!r}")
        if isinstance(self.n_gpu_layers, int) and self.n_gpu_layers < 0:
            raise InspectorError("-ngl must not be negative (use 'all')")
        given = [name for name, present in (("-p/-f", bool(self.prompt) or self.prompt_file is not None),
                                            ("--token-ids", self.token_ids is not None)) if present]
        if len(given) != 1:
            raise InspectorError("give the input with exactly one of -p/--prompt, -f/--file and --token-ids")
        if self.token_ids is not None and (self.conversation or self.chat_template or self.jinja):
            raise InspectorError("--token-ids are the exact input: a chat template cannot apply to them")
        if self.images and not self.mmproj:
            raise InspectorError("--image needs the projector that encodes it: --mmproj FILE")
        if self.mmproj and self.token_ids is not None:
            raise InspectorError("--token-ids cannot place images: give the prompt as text with --mmproj")

    @property
    def library_gpu_layers(self) -> int:
        """The value libllama takes: a negative count means every layer."""
        return -1 if isinstance(self.n_gpu_layers, str) else self.n_gpu_layers


def describe_config(config: LlamaRunConfig) -> dict[str, Any]:
    """The configuration as a dump records it."""
    return {"runner": "llama", **asdict(config)}
