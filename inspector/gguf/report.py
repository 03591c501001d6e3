"""How a GGUF header reads: metadata key by key, the tensor table, or JSON."""

from __future__ import annotations

from typing import Any

from inspector.formatting import shape_text, table
from inspector.gguf.header import GgufHeader


def header_json(path: str, header: GgufHeader, with_tensors: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"path": path, "version": header.version, "metadata": header.metadata}
    if with_tensors:
        payload["tensors"] = [{"name": t.name, "ggml_type": t.type_name, "ne": list(t.shape), "n_bytes": t.n_bytes,
                               "offset": t.offset} for t in header.tensors.values()]
    return payload


def header_text(header: GgufHeader, with_tensors: bool) -> str:
    text = table(["key", "value"], [[key, str(value)] for key, value in header.metadata.items()])
    if with_tensors:
        text += "\n\n" + table(["name", "type", "ne", "bytes"],
                               [[t.name, t.type_name, shape_text(t.shape), str(t.n_bytes)]
                                for t in header.tensors.values()], right_align={3})
    return text
