"""Benchmarks (``make bench`` / ``python -m benchmarks``): results go to docs/benchmarks.md.

- ``preprocess``: the Ray preprocess pipeline vs. a naive per-image loop (``naive``), and local
  folder vs. S3 over HTTP (``tests/fixtures/s3.py``, shared with the tests), each run a cold-start subprocess.
"""
