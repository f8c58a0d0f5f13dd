"""Benchmarks of customer-pulse; ``python -m benchmarks`` is ``pulse bench`` (see harness.py)."""
