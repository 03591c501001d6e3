"""Offload sweeps: capture at several GPU-layer counts, summarise, and bisect the first bad count."""
