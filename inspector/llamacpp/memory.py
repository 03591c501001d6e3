"""Whether a context's KV cache can fit this machine, judged before llama.cpp allocates it.

llama.cpp allocates the cache with ``new``: a ``-c`` too large for the
machine ends in ``std::bad_alloc`` and an abort, not an error it returns.
"""

from __future__ import annotations

import os
from typing import Any

import llama_cpp

from inspector.errors import SetupError
from inspector.formatting import human_bytes
from inspector.ggml.library import load
from inspector.ggml.system import ggml_devices
from inspector.ggml.types import sizes, type_number
from inspector.llamacpp.config import LlamaRunConfig

# llama.cpp pads the context to a multiple of this (llama-context.cpp: GGML_PAD(n_ctx, 256)).
CONTEXT_PADDING = 256


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
        block, size = sizes(type_number(type_name)) or (1, 0)
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
