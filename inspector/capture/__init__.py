"""Capturing a computing graph: which tensors (selection), the eval-callback hook, capture summaries."""
