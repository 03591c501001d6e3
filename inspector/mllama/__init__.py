"""Llama 3.2 Vision ("mllama"): image preprocessing references and diagnosis."""
