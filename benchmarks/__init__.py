"""Benchmarks: each claim of speed or memory measured against a baseline in the same run."""
