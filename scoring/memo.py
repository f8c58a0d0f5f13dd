"""Bounded memos of pure functions that read a configuration (issue 18: the CLV and churn hot paths).

A scorer re-assessed without new input asks the same question again (a customer re-scored the same day, or
customers sharing a few small integers): a memo answers it with the very float it computed. One dict per
configuration object, found by identity, because hashing a frozen configuration on every call would cost more than
the memo saves; the configuration is kept alive with its dict so that its id cannot be reused by another one.
Bounded: a full dict starts again (its keys move on with the days, so a long-running worker keeps the current
ones), and so does the set of configurations (tests build many).
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: configurations remembered at once; past this the memos start again (a worker has one, tests a few dozen)
CONFIGS_MAX = 64


class ConfigMemo(Generic[K, V]):
    """``key -> value`` per configuration, at most ``entries_max`` entries each."""

    __slots__ = ("_by_config", "entries_max")

    def __init__(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self._by_config: dict[int, tuple[object, dict[K, V]]] = {}

    def of(self, config: object) -> dict[K, V]:
        """The memo of ``config``: read it with ``get``, fill it with :meth:`put`."""
        entry = self._by_config.get(id(config))
        if entry is None or entry[0] is not config:
            if len(self._by_config) >= CONFIGS_MAX:
                self._by_config.clear()
            entry = self._by_config[id(config)] = (config, {})
        return entry[1]

    def put(self, memo: dict[K, V], key: K, value: V) -> None:
        """Remember ``value``; a full memo starts again."""
        if len(memo) >= self.entries_max:
            memo.clear()
        memo[key] = value

    def memos(self) -> list[dict[K, V]]:
        """Every configuration's memo (tests: the bound)."""
        return [memo for _, memo in self._by_config.values()]

    def clear(self) -> None:
        self._by_config.clear()
