"""Comparing runs: pairing, metrics, tolerances, verdicts, origins, op replay, and their report."""
