"""Benchmarks: engine compute, end-to-end latency against the blueprint baseline, capacity."""
