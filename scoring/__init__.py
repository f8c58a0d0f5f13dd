"""Pure, incremental scorers: ``state, event -> state`` and ``state, now -> signals``.

Nothing here does I/O or imports Faust, so every scorer can be unit-tested,
property-tested against a batch computation and benchmarked on its own.
"""
