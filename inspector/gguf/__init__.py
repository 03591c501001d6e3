"""GGUF files: the header read through ggml's own parser, gguf-py reads of checked files, weights."""
