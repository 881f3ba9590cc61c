"""Benchmarks (``make bench`` / ``python -m benchmarks``): results go to docs/benchmarks.md.

- ``preprocess``: the Ray preprocess pipeline vs. a naive per-image loop (``naive``), and local
  folder vs. S3 over HTTP (``s3server``), each run a cold-start subprocess.
"""
