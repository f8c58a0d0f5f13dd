"""Test support shared by tests/ and benchmarks/: the per-test slice of a dev stack and its worker
subprocesses (``testing.stack``), the batch references (``testing.reference``), the chaos driver
(``testing.chaos``) and realistically scored state templates (``testing.templates``).

One copy, imported by both instead of each importing the other: in the import layers (pyproject's
[tool.importlinter]) this package sits above ``pulse`` and below ``tests`` and ``benchmarks``, which
are independent of each other. Like them it belongs to a checkout and is not installed.
"""
