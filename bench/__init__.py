"""Benchmarks: load test, framework ceiling, inserts, memory, end-to-end (see bench/README.md)."""
