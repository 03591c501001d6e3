"""Runs through llama.cpp (libllama, libmtmd): configuration, session, prompt, multimodal, placement."""
