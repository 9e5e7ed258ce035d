"""Benchmarks behind tools/benchmark.py: harness.py (timing, environment, report), loader.py,
model.py (model-only and end-to-end train), readers.py (ways DALI can read the shards)."""
