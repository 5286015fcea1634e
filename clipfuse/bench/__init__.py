"""Throughput and latency benchmarks (``clipfuse bench``); see :mod:`clipfuse.bench.run`."""

from clipfuse.bench.images import synthetic_jpeg, synthetic_jpegs

__all__ = ["synthetic_jpeg", "synthetic_jpegs"]
