"""Deterministic generators of small GGUF models for tests, demos and benchmarks."""

from inspector.tiny_models.llama import TinyLlamaSpec, byte_token_ids, write_tiny_llama

__all__ = ["TinyLlamaSpec", "byte_token_ids", "write_tiny_llama"]
