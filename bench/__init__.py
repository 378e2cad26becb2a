"""Benchmarks: sidecar and the real tools side by side, in one run, on the same work."""
