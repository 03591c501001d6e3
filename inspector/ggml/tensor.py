"""Read-only accessors over a live ``struct ggml_tensor``.

The struct itself is mirrored in :mod:`inspector.ggml.abi`;
``tests/test_ggml_binding.py`` checks ``sizeof`` and every field we read
against values the C API reports for tensors it created itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from inspector.constants import GGML_OP_NONE, TENSOR_FLAG_NAMES
from inspector.ggml.abi import GgmlBackendBufferStruct, GgmlTensorStruct
from inspector.ggml.library import GgmlLibraries

# Why ggml_backend_tensor_get cannot read a tensor, in the words the native hook uses for the same
# three checks (inspector/native/ggml_inspector_hook.c, capture(); tests/test_c_python_mirrors.py).
NOT_ALLOCATED = "not allocated (no buffer or no data)"
UNKNOWN_BUFFER_LAYOUT = "unknown ggml_backend_buffer layout"
NO_GET_TENSOR = "its buffer type {buffer_type} cannot be read back"


def decode_name(raw: bytes) -> str:
    """Tensor names are C strings of arbitrary bytes; keep undecodable bytes visible."""
    return raw.decode("utf-8", errors="backslashreplace")


def flag_names(flags: int) -> list[str]:
    """Names of the ``GGML_TENSOR_FLAG_*`` bits set in ``flags``."""
    return list(_flag_names(flags))


@functools.lru_cache(maxsize=256)
def _flag_names(flags: int) -> tuple[str, ...]:
    # A capture names the flags of thousands of tensors, which carry a handful of distinct values.
    return tuple(name for bit, name in TENSOR_FLAG_NAMES.items() if flags & bit)


@dataclass(frozen=True)
class Tensor:
    """A borrowed pointer to a live ``ggml_tensor`` with the accessors the hook needs.

    Valid only while ggml keeps the tensor alive (inside an eval callback, or
    while its context exists); nothing here copies tensor data.
    """

    lib: GgmlLibraries
    address: int

    @property
    def struct(self) -> GgmlTensorStruct:
        return GgmlTensorStruct.from_address(self.address)

    @property
    def name(self) -> str:
        return decode_name(self.struct.name)

    @property
    def ggml_type(self) -> int:
        return self.struct.type

    @property
    def type_name(self) -> str:
        return self.lib.base.ggml_type_name(self.ggml_type).decode()

    @property
    def op(self) -> int:
        return self.struct.op

    @property
    def op_desc(self) -> str:
        """Op name, or the unary/glu sub-op (``SILU``) where ggml has one."""
        return self.lib.base.ggml_op_desc(self.address).decode()

    @property
    def is_leaf_like(self) -> bool:
        """True for tensors no op computes: graph inputs, weights, constants."""
        return self.op == GGML_OP_NONE

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(self.struct.ne)

    @property
    def nb(self) -> tuple[int, ...]:
        return tuple(self.struct.nb)

    @property
    def n_dims(self) -> int:
        return self.lib.base.ggml_n_dims(self.address)

    @property
    def nbytes(self) -> int:
        return self.lib.base.ggml_nbytes(self.address)

    @property
    def is_contiguous(self) -> bool:
        return self.lib.base.ggml_is_contiguous(self.address)

    @property
    def is_quantized(self) -> bool:
        return self.lib.base.ggml_is_quantized(self.ggml_type)

    @property
    def block_size(self) -> int:
        return self.lib.base.ggml_blck_size(self.ggml_type)

    @property
    def type_size(self) -> int:
        return self.lib.base.ggml_type_size(self.ggml_type)

    @property
    def flags(self) -> int:
        return self.struct.flags

    @property
    def buffer(self) -> int | None:
        return self.struct.buffer

    @property
    def buffer_name(self) -> str:
        """Name of the backend buffer holding the data (``CPU``, ``RPC0[...]``, ``CUDA0``)."""
        buffer = self.buffer
        if not buffer:
            return ""
        return self.lib.base.ggml_backend_buffer_name(buffer).decode(errors="replace")

    @property
    def buffer_type_name(self) -> str:
        """Name of the buffer's *type*: ``CPU_REPACK`` where ``buffer_name`` says ``CPU``."""
        buffer = self.buffer
        if not buffer:
            return ""
        buft = self.lib.base.ggml_backend_buffer_get_type(buffer)
        return self.lib.base.ggml_backend_buft_name(buft).decode(errors="replace") if buft else ""

    def unreadable_reason(self) -> str:
        """Why ``ggml_backend_tensor_get`` cannot read this tensor, or "" when it can.

        The interface is read from the buffer itself; its ``buft`` field must
        equal what ``ggml_backend_buffer_get_type`` returns, which proves the
        mirrored layout before we trust the ``get_tensor`` slot.
        """
        buffer = self.buffer
        if not buffer or not self.data:
            return NOT_ALLOCATED
        head = GgmlBackendBufferStruct.from_address(buffer)
        if head.buft != self.lib.base.ggml_backend_buffer_get_type(buffer):
            return UNKNOWN_BUFFER_LAYOUT
        if not head.get_tensor:
            return NO_GET_TENSOR.format(buffer_type=self.buffer_type_name)
        return ""

    @property
    def sources(self) -> list[Tensor]:
        return [Tensor(self.lib, address) for address in self.struct.src if address]

    @property
    def view_source(self) -> Tensor | None:
        address = self.struct.view_src
        return Tensor(self.lib, address) if address else None

    @property
    def view_offset(self) -> int:
        return self.struct.view_offs

    @property
    def data(self) -> int | None:
        return self.struct.data
