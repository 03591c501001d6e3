"""A model and a context loaded by llama.cpp (llama-cpp-python's low-level API), with a TensorHook as eval callback.

Each :meth:`LlamaSession.decode` is one ``llama_decode`` call, so one graph
evaluation: the decode loop (:mod:`inspector.llamacpp.decode`) splits the
prompt into ubatches itself, so the hook's evaluation boundaries are exact.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import llama_cpp
import numpy as np

from inspector.capture.hook import TensorHook
from inspector.constants import LOAD_MODES
from inspector.errors import CaptureInterrupted, InspectorError, ModelError, SetupError
from inspector.ggml import rpc
from inspector.ggml.devices import list_devices
from inspector.ggml.library import load
from inspector.ggml.log import LogBuffer
from inspector.ggml.types import type_number
from inspector.llamacpp.config import FLASH_ATTN_MODES, LlamaRunConfig
from inspector.llamacpp.memory import check_context_memory
from inspector.llamacpp.placement import placement


class LlamaSession:
    """A loaded model and context with ``hook`` as its eval callback; free with ``close``."""

    def __init__(self, config: LlamaRunConfig, hook: TensorHook | None, log: LogBuffer) -> None:
        config.validate()
        self.config = config
        self.hook = hook
        self.log = log
        llama_cpp.llama_backend_init()
        own_rpc_devices = rpc.add_servers(config.rpc) if config.rpc else []
        self.offload_devices = self._device_names(own_rpc_devices)
        # Kept alive for the model's life: llama.cpp reads these arrays while loading.
        self.placement = placement(load(), self.offload_devices, config.override_tensor)
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
        params.type_k = type_number(config.type_k)
        params.type_v = type_number(config.type_v)
        if hook is not None and hook.callback is not None:
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
        devices = [device for device in list_devices(load()) if device.name not in others]
        # llama.cpp's default: every GPU (RPC devices are GPUs), integrated GPUs only when there is none.
        offload = ([device.name for device in devices if device.kind == "GPU"]
                   or [device.name for device in devices if device.kind == "IGPU"])
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
