"""Runners: each loads one kind of ggml graph, attaches a TensorHook and computes it."""
