"""The reference side of a comparison: a transformers model run under llama.cpp's tensor names and ggml's layout."""
