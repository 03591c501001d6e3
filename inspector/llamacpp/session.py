"""Run a GGUF model through llama.cpp (llama-cpp-python's low-level API) with a TensorHook.

Each ``llama_decode`` call is one graph evaluation.  The runner splits the
prompt into ubatches itself, so one decode computes exactly one graph and
the hook's evaluation boundaries are exact; llama.cpp would compute the same
ubatches if handed the whole batch.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES

from inspector.capture.hook import TensorHook
from inspector.constants import (
    DEFAULT_N_BATCH,
    DEFAULT_N_CTX,
    DEFAULT_N_UBATCH,
    DEFAULT_SEED,
    KV_CACHE_TYPES,
    LLAMA_MAX_INT32,
    LOAD_MODES,
)
from inspector.errors import CaptureInterrupted, InspectorError, ModelError, SetupError
from inspector.formatting import human_bytes
from inspector.ggml import load, rpc
from inspector.ggml.log import LOG_THUNK, LogBuffer
from inspector.ggml.log import install_log as install_log  # re-exported for capture and replay
from inspector.ggml.system import ggml_devices, max_threads
from inspector.gguf.header import cached_sha256, check_gguf_file, fingerprint, read_leading_metadata
from inspector.llamacpp.multimodal import VisionProjector, decode_multimodal_prompt
from inspector.llamacpp.placement import placement
from inspector.llamacpp.prompt import formatted_prompt, prompt_token_ids

FLASH_ATTN_MODES = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}

# llama.cpp pads the context to a multiple of this (llama-context.cpp: GGML_PAD(n_ctx, 256)).
CONTEXT_PADDING = 256

# Called before each llama_decode with the evaluation's kind and facts; returns its index.
BeginEvaluation = Callable[[str, dict[str, Any]], int]


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


@dataclass
class LlamaRunResult:
    """What the run produced; ``prompt_logits`` has a row per prompt token with ``all_logits``, else one."""

    token_ids: list[int]
    generated_ids: list[int]
    generated_text: str
    prompt_logits: np.ndarray
    evaluations: int
    seconds: float
    # The context size llama.cpp made (-c 0 becomes the model's training context).
    n_ctx: int = 0
    # The text a chat template made of the prompt (-cnv), which was then tokenized.
    formatted_prompt: str | None = None
    # With --mmproj: the prompt's text and image chunks, and the images read.
    chunks: list[dict[str, Any]] | None = None
    images: list[dict[str, Any]] | None = None


# The log buffer and its one C thunk live in inspector.ggml.log; these names are kept for the callers.
_LlamaLog = LogBuffer
_LOG_THUNK = LOG_THUNK


def _route_mtmd_log() -> None:
    """libmtmd logs through its own callback (the projector's loader, clip's graph): into the same buffer."""
    from llama_cpp import mtmd_cpp

    mtmd_cpp.mtmd_helper_log_set(_LOG_THUNK, ctypes.c_void_p(0))


def model_facts(path: str, sha256: bool = False) -> dict[str, Any]:
    """Path, size, fingerprint, name and architecture of a GGUF file, in bounded reads.

    O(1) in the vocabulary and the file size: no metadata array is walked and
    the data section is not hashed, unless ``sha256`` asks for the full hash
    (cached by path, size and mtime).
    """
    model = check_gguf_file(path)
    leading = read_leading_metadata(model, ("general.name", "general.architecture"))
    facts = {
        "path": str(model.resolve()),
        "size": model.stat().st_size,
        "fingerprint": fingerprint(path),
        "name": leading.get("general.name"),
        "architecture": leading.get("general.architecture"),
    }
    if sha256:
        facts["sha256"] = cached_sha256(model)
    return facts


def _ggml_type_id(name: str) -> int:
    return int(GGMLQuantizationType[name.upper()])


class LlamaSession:
    """A loaded model and context with ``hook`` as its eval callback; free with ``close``."""

    def __init__(self, config: LlamaRunConfig, hook: TensorHook | None, log: _LlamaLog) -> None:
        config.validate()
        self.config = config
        self.hook = hook
        self.log = log
        if config.mmproj:
            check_gguf_file(config.mmproj)  # a FIFO would hang llama.cpp's loader
        llama_cpp.llama_backend_init()
        own_rpc_devices = rpc.add_servers(config.rpc) if config.rpc else []
        self.offload_devices = self._device_names(own_rpc_devices)
        # Kept alive for the model's life: llama.cpp reads these arrays while loading.
        self.placement = placement(load(), self.offload_devices, config.override_tensor)
        self.projector: VisionProjector | None = None
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = config.library_gpu_layers
        model_params.load_mode = LOAD_MODES[config.load_mode]
        model_params.devices = self.placement.devices_address
        model_params.tensor_buft_overrides = self.placement.overrides_address
        self.model = llama_cpp.llama_model_load_from_file(config.model.encode(), model_params)
        if not self.model:
            raise ModelError(f"llama.cpp could not load {config.model}: {log.last_error() or 'unknown error'}")
        try:
            check_context_memory(self.model, config)
        except BaseException:
            llama_cpp.llama_model_free(self.model)
            self.model = None
            raise
        self._abort = llama_cpp.ggml_abort_callback(lambda _data: hook is not None and hook.should_abort())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_ubatch
        params.n_seq_max = 1
        params.n_threads = config.threads
        params.n_threads_batch = config.threads_batch or config.threads
        self.flash_attn_type = params.flash_attn_type = FLASH_ATTN_MODES[config.flash_attn]
        params.op_offload = config.op_offload
        params.type_k = _ggml_type_id(config.type_k)
        params.type_v = _ggml_type_id(config.type_v)
        if hook is not None:
            params.cb_eval = ctypes.cast(hook.callback, llama_cpp.ggml_backend_sched_eval_callback)
            params.cb_eval_user_data = None
        params.abort_callback = self._abort
        params.abort_callback_data = None
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            self.model = None
            raise SetupError(f"llama.cpp could not create a context: {log.last_error() or 'unknown error'}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        # What llama.cpp made of -b and -ub (n_batch is at most n_ctx): a decode of more tokens aborts.
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.n_ubatch = llama_cpp.llama_n_ubatch(self.ctx)
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.adds_eos = bool(llama_cpp.llama_vocab_get_add_eos(self.vocab))
        if config.mmproj:
            _route_mtmd_log()
            try:
                self.projector = VisionProjector.load(self, config, hook, self.offload_devices)
            except BaseException:
                self.close()
                raise

    def _device_names(self, own_rpc_devices: list[str]) -> list[str] | None:
        """The devices llama.cpp would see if this run were its own process.

        RPC servers stay registered for the life of the process; a run that
        did not ask for one must not offload to it (llama.cpp's default is
        "every device").  ``-dev`` given: exactly those.
        """
        if self.config.devices is not None:
            return self.config.devices
        others = set(rpc.registered_devices()) - set(own_rpc_devices)
        if not others:
            return None
        devices = [d for d in ggml_devices(load()) if d["name"] not in others]
        # llama.cpp's default: every GPU (RPC devices are GPUs), integrated GPUs only when there is none.
        offload = ([d["name"] for d in devices if d["type"] == "GPU"]
                   or [d["name"] for d in devices if d["type"] == "IGPU"])
        return offload or ["none"]

    def special_text(self, which: str) -> str:
        """The text of the BOS or EOS token ("" when the vocabulary has none), special tokens rendered."""
        token = (llama_cpp.llama_vocab_bos if which == "bos" else llama_cpp.llama_vocab_eos)(self.vocab)
        return "" if token < 0 else self.detokenize([token], special=True)

    def model_metadata(self, key: str) -> str:
        buffer = ctypes.create_string_buffer(512)
        length = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        return buffer.value.decode(errors="replace") if length >= 0 else ""

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _attempt in range(2):
            tokens = (llama_cpp.llama_token * capacity)()
            # add_special and parse_special, as llama-cli tokenizes a prompt.
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, True, True)
            if count >= 0:
                return list(tokens[:count])
            capacity = -count  # too small: llama.cpp says how many it needs
        raise SetupError("the prompt does not tokenize")

    def detokenize(self, token_ids: list[int], special: bool = False) -> str:
        pieces = []
        buffer = ctypes.create_string_buffer(256)
        for token in token_ids:
            length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
            pieces.append(buffer.raw[: max(length, 0)])
        return b"".join(pieces).decode("utf-8", errors="replace")

    def decode(self, token_ids: list[int], pos0: int, logit_rows: int) -> np.ndarray:
        """Decode one ubatch (one graph evaluation); return the logits of its last ``logit_rows`` tokens.

        Like llama.cpp, output rows cost a vocabulary-wide matmul each: with
        a 262k vocabulary, logits for every prompt token dominate the run.
        """
        def put_tokens(batch: llama_cpp.llama_batch) -> None:
            for i, token in enumerate(token_ids):
                batch.token[i] = token

        return self._decode_batch(len(token_ids), 0, put_tokens, pos0, logit_rows)

    def decode_embeddings(self, embeddings: np.ndarray, pos0: int, logit_rows: int) -> np.ndarray:
        """Decode one ubatch of input embeddings (an image's, from the projector), as :meth:`decode` does tokens."""
        data = np.ascontiguousarray(embeddings, dtype=np.float32)

        def put_embeddings(batch: llama_cpp.llama_batch) -> None:
            ctypes.memmove(batch.embd, data.ctypes.data, data.nbytes)

        return self._decode_batch(len(data), data.shape[1], put_embeddings, pos0, logit_rows)

    def _decode_batch(self, n: int, embd_width: int, put_inputs: Callable[[llama_cpp.llama_batch], None], pos0: int,
                      logit_rows: int) -> np.ndarray:
        """One llama_decode of ``n`` positions from ``pos0`` (tokens, or embeddings ``embd_width`` wide)."""
        batch = llama_cpp.llama_batch_init(n, embd_width, 1)
        try:
            put_inputs(batch)
            for i in range(n):
                batch.pos[i] = pos0 + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i >= n - logit_rows
            batch.n_tokens = n
            status = llama_cpp.llama_decode(self.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        if self.hook is not None and self.hook.interrupted:
            raise CaptureInterrupted("capture interrupted")
        if status != 0:
            raise InspectorError(f"llama_decode failed with status {status}: {self.log.last_error()}")
        if not logit_rows:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        logits = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(logits, shape=(logit_rows, self.n_vocab)).copy()

    def close(self) -> None:
        if self.projector is not None:
            self.projector.close()
            self.projector = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(config: LlamaRunConfig, hook: TensorHook | None, begin_evaluation: BeginEvaluation,
        log: _LlamaLog) -> LlamaRunResult:
    """Decode the prompt in ubatches, then generate ``n_predict`` tokens greedily.

    With ``hook=None`` no eval callback is installed: the baseline that
    benchmarks compare capture overhead against.
    """
    started = time.perf_counter()

    def start_evaluation(kind: str, info: dict[str, Any]) -> int:
        index = begin_evaluation(kind, info)
        if hook is not None:
            hook.begin_evaluation(index)
        return index

    with LlamaSession(config, hook, log) as session:
        step = min(session.n_batch, session.n_ubatch)
        multimodal = None
        if session.projector is not None:
            multimodal = decode_multimodal_prompt(session, session.projector, formatted_prompt(session, config),
                                                  config.images, start_evaluation, step, config.all_logits)
            token_ids, n_past, evaluations = multimodal.token_ids, multimodal.n_past, multimodal.evaluations
            prompt_logits = multimodal.logits
            room = session.n_ctx - n_past
            _check_room(room, n_past, config, session.n_ctx)
        else:
            token_ids = prompt_token_ids(session, config)
            if not token_ids:
                raise SetupError("the prompt is empty after tokenization")
            n_past = len(token_ids)
            if config.n_ctx and n_past > config.n_ctx:
                raise SetupError(f"the prompt is {n_past} tokens: -c/--ctx-size {config.n_ctx} cannot hold it "
                                 f"(give -c {n_past} or more, or -c 0 for the model's training context)")
            room = session.n_ctx - n_past
            _check_room(room, n_past, config, session.n_ctx)
            logit_rows = []
            evaluations = 0
            for start in range(0, len(token_ids), step):
                chunk = token_ids[start:start + step]
                start_evaluation("prompt", {"token_ids": chunk, "pos0": start, "n_tokens": len(chunk)})
                is_last = start + step >= len(token_ids)
                rows = len(chunk) if config.all_logits else int(is_last)
                logit_rows.append(session.decode(chunk, start, rows))
                evaluations += 1
            prompt_logits = np.concatenate(logit_rows)
        generated: list[int] = []
        last = prompt_logits[-1]
        # -1: until an end-of-generation token or a full context; -2: until a full context (llama.cpp's meanings).
        limit = config.n_predict if config.n_predict >= 0 else room
        for step_index in range(limit):
            token = int(np.argmax(last))
            generated.append(token)
            end_of_generation = config.n_predict != -2 and llama_cpp.llama_vocab_is_eog(session.vocab, token)
            if end_of_generation or step_index == limit - 1:
                break
            pos = n_past + step_index
            start_evaluation("generate", {"token_ids": [token], "pos0": pos, "n_tokens": 1})
            last = session.decode([token], pos, 1)[-1]
            evaluations += 1
        return LlamaRunResult(
            token_ids=token_ids,
            generated_ids=generated,
            generated_text=session.detokenize(generated),
            prompt_logits=prompt_logits,
            evaluations=evaluations,
            seconds=time.perf_counter() - started,
            n_ctx=session.n_ctx,
            formatted_prompt=(multimodal.text if multimodal is not None
                              else formatted_prompt(session, config) if config.conversation else None),
            chunks=multimodal.chunks if multimodal is not None else None,
            images=multimodal.images if multimodal is not None else None,
        )


def _check_room(room: int, n_past: int, config: LlamaRunConfig, n_ctx: int) -> None:
    if room < 0 or (config.n_predict > 0 and config.n_predict > room):
        raise SetupError(f"the prompt ({n_past} positions) plus -n/--n-predict needs -c/--ctx-size "
                         f"{n_past + max(config.n_predict, 0)} or more (it is {n_ctx})")


def _address_space_left() -> int | None:
    """Bytes this process may still map under its RLIMIT_AS, or None when unlimited."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        used = 0
    return max(limit - used, 0)


def memory_budget(offload: bool) -> tuple[int, str]:
    """Bytes a KV cache may take on this machine, and how they were counted.

    The host's physical memory (or what RLIMIT_AS leaves, if less) plus the
    free memory of the local offload devices when the run offloads.
    """
    host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    left = _address_space_left()
    if left is not None and left < host:
        host, host_text = left, f"{human_bytes(left)} of address space left (RLIMIT_AS)"
    else:
        host_text = f"{human_bytes(host)} of RAM"
    devices = 0
    if offload:
        devices = sum(d["memory_free"] for d in ggml_devices(load()) if d["type"] in ("GPU", "IGPU"))
    if devices:
        return host + devices, f"{host_text} and {human_bytes(devices)} free on devices"
    return host, host_text


def kv_cache_bytes(model: Any, config: LlamaRunConfig) -> tuple[int, int]:
    """(context, bytes): the context llama.cpp would make and a lower estimate of its KV cache.

    Every layer keeps n_ctx keys and values of n_head_kv heads, each
    n_embd / n_head wide, in the cache types' sizes; sliding-window or
    recurrent layers keep less, and the estimate then errs high only for those.
    """
    n_ctx = config.n_ctx or llama_cpp.llama_model_n_ctx_train(model)
    n_ctx = -(-max(n_ctx, 1) // CONTEXT_PADDING) * CONTEXT_PADDING
    n_head = llama_cpp.llama_model_n_head(model)
    head_dim = llama_cpp.llama_model_n_embd(model) // n_head if n_head > 0 else 0
    width = llama_cpp.llama_model_n_layer(model) * max(llama_cpp.llama_model_n_head_kv(model), 0) * head_dim

    def row_bytes(type_name: str) -> float:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
        return size / block

    return n_ctx, int(n_ctx * width * (row_bytes(config.type_k) + row_bytes(config.type_v)))


def check_context_memory(model: Any, config: LlamaRunConfig) -> None:
    """Refuse a context whose KV cache cannot fit this machine, before llama.cpp tries (std::bad_alloc aborts).

    Runs that offload to RPC servers are not checked: their memory is not known here.
    """
    if config.rpc:
        return
    n_ctx, needed = kv_cache_bytes(model, config)
    budget, counted = memory_budget(offload=config.devices != ["none"])
    if needed > budget:
        raise SetupError(f"-c/--ctx-size {config.n_ctx or n_ctx} needs a KV cache of {human_bytes(needed)}, more "
                         f"than this machine has ({counted}); give a smaller -c")


def describe_config(config: LlamaRunConfig) -> dict[str, Any]:
    return {"runner": "llama", **asdict(config)}
