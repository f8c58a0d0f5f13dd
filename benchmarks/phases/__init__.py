"""The phases of ``pulse bench`` (benchmarks/harness.py runs them and reports): ``common`` (the run, its
processes and metrics), ``throughput`` (raw, naive, faust, full, scaling), ``latency``, ``state``, ``cost``,
``recovery``."""
