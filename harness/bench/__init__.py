"""Benchmarks: latency and memory (pytest-benchmark), concurrent serving, eval speed, training throughput."""
