"""The native hook: its C source and header, building it, its frame stream, exec and import."""
