"""Ownership epochs and input positions in the changelog: fencing that does not need the broker (issue 15).

A worker the group dropped (stalled past the rebalance timeout while Faust
waited for its batch) can still write its batch's states to the changelog
after the partition's new owner recovered it and wrote newer ones. Last write
wins in a changelog, so the next recovery would take the stale state while the
committed offsets are past the events it lacks. Tansu has no transactions, so
the broker cannot fence the old writer; the changelog does it instead:

* once it has recovered changelog partition p, before it reads p's input, a
  worker writes an *owner marker* (key ``OWNER_MARKER_PREFIX + epoch``; a
  customer id cannot start with NUL) with epoch = (highest epoch its recovery
  saw in p) + 1, its group generation and a writer id, and awaits the ack;
  what landed between the recovery's end and the marker it reads back and
  applies as the recovery would (``CustomerStateTable.claim``);
* every state record and end marker it writes to p carries its epoch in the
  ``pulse-epoch`` header;
* recovery tracks, per partition and in log order, the highest epoch read so
  far (markers and records) and skips records with a lower one: a dropped
  worker's late write lands after the new owner's marker, so it is skipped.
  Records without the header (written before this change) count as epoch 0.

Epochs are (count, generation) pairs compared in that order: two workers that
recovered the same epoch (one of them dropped during its own recovery) still
differ by generation, and the later generation wins.

Each checkpoint's end marker of p also carries, in the ``pulse-positions``
header, the next input offset per input topic of partition p that the
changelog covers (``streams.offsets`` rewinds a committed offset ahead of it),
and in the ``pulse-logs`` header which log of each input topic-partition that
is (:class:`InputLog`: the last record decided, by offset and checksum, and the
offset base of that log): a topic deleted and created again starts its offsets
at 0, and a worker that takes p finds the record it knew gone or different.

Compaction would undo the skip: a late record is its key's newest, so the log
cleaner drops the owner's earlier record of that customer and recovery finds
only the stale one. So an owner makes its own record the newest again:

* it tracks the offsets its own writes to p were acknowledged at
  (:class:`OwnWrites`); offsets in between that it did not write are somebody
  else's, and it reads them back (:func:`stale_keys`): a customer record of an
  older epoch is written again from the owner's current state, a marker of a
  newer epoch means this worker is the one the group dropped (fail-stop);
* a recovery that skipped a stale record as a key's last leaves that key to be
  written again by the new owner too (the record may have landed while no
  owner wrote).

A late write can only be compacted once its segment is closed, and a
partition's segment rolls on an append to it; any append by the owner
reveals the foreign offsets before it, so the repair follows within a
checkpoint (what remains is documented in docs/delivery-guarantee.md).

Pure (no I/O, no Faust): ``streams.tables`` applies it to recovery and writes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Key of the checkpoint end markers. Customer ids cannot start with NUL
#: (schemas.events.ID_PATTERN), so it never names a customer.
END_MARKER_KEY = b"\x00pulse-checkpoint-end"
#: Keys of owner markers: this prefix and the epoch (one key per epoch, so compaction keeps every marker).
OWNER_MARKER_PREFIX = b"\x00pulse-owner:"
#: Every key the worker writes that is not a customer (never stored as a state).
RESERVED_PREFIX = b"\x00pulse-"
#: RocksDB: the partition's recovery view, written in the same write batch as Faust's offset key.
META_KEY = b"\x00pulse-meta"
EPOCH_HEADER = "pulse-epoch"
POSITIONS_HEADER = "pulse-positions"
LOGS_HEADER = "pulse-logs"

Epoch = tuple[int, int]
NO_EPOCH: Epoch = (0, 0)
Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None


def encode_epoch(epoch: Epoch) -> bytes:
    return f"{epoch[0]}.{epoch[1]}".encode()


def decode_epoch(raw: bytes) -> Epoch:
    count, _, generation = raw.decode().partition(".")
    return int(count), int(generation or 0)


def header(headers: Headers, name: str) -> bytes | None:
    """One header's value from aiokafka's (name, value) pairs or Faust's mapping; None when absent."""
    if not headers:
        return None
    if isinstance(headers, Mapping):
        value = headers.get(name)
        return value if isinstance(value, bytes) else None
    for key, value in headers:
        if key == name:
            return value
    return None


def epoch_of(headers: Headers) -> Epoch:
    raw = header(headers, EPOCH_HEADER)
    return NO_EPOCH if raw is None else decode_epoch(raw)


def positions_of(headers: Headers) -> dict[str, int] | None:
    raw = header(headers, POSITIONS_HEADER)
    return None if raw is None else {str(t): int(o) for t, o in json.loads(raw).items()}


@dataclass(frozen=True)
class InputLog:
    """Which log of one input topic-partition the changelog's states were read from, and how its offsets count.

    Each state drops a record at or below the last offset it applied (scoring.customer ``source_offsets``). A
    topic deleted and created again starts at offset 0: read against the old offsets, its records would be
    dropped as redeliveries until they passed what the old log reached. So the changelog names the last record
    decided in the log (``last``: its offset, ``crc``: CRC-32 of its key and value), and a worker taking the
    partition reads that record back (streams.offsets): gone or different, the log was replaced, and its offsets
    count from a higher ``base`` (added to every offset the states store) than anything the old one reached.
    """

    #: offset of the last record decided in this log, and its key and value's CRC-32 (None: none yet)
    last: int | None = None
    crc: int | None = None
    #: added to this log's offsets where the states compare and store them (0: the topic's first log)
    base: int = 0

    def to_json(self) -> list[int | None]:
        return [self.last, self.crc, self.base]

    @classmethod
    def from_json(cls, raw: Sequence[int | None]) -> InputLog:
        last, crc, base = raw
        return cls(None if last is None else int(last), None if crc is None else int(crc), int(base or 0))


#: added to the offsets of a replaced log beyond what the old one reached (its end marker's position): records
#: a crash applied past the last end marker count below the new log too, whatever the batch size
REPLACED_LOG_MARGIN = 1 << 32


def record_crc(key: bytes | None, value: bytes | None) -> int:
    """The checksum an :class:`InputLog` names its last record by: CRC-32 of its key, then its value."""
    return zlib.crc32(value or b"", zlib.crc32(key or b""))


def replacing(log: InputLog, position: int) -> InputLog:
    """The log that replaces ``log`` (its topic deleted and created again): nothing of it decided yet, and an
    offset base past every offset the old one reached (its last record, the changelog's ``position``, and what a
    crash may have applied after that end marker). Depends on the old log alone: a worker that crashes before
    its first end marker on the new log, and the one after it, count the new log the same."""
    reached = max(position, 0 if log.last is None else log.last + 1)
    return InputLog(None, None, log.base + reached + REPLACED_LOG_MARGIN)


def logs_of(headers: Headers) -> dict[str, InputLog] | None:
    raw = header(headers, LOGS_HEADER)
    return None if raw is None else {str(t): InputLog.from_json(v) for t, v in json.loads(raw).items()}


def next_epoch(seen: Epoch, generation: int) -> Epoch:
    """The epoch of a new owner that recovered up to ``seen``."""
    return seen[0] + 1, max(generation, 0)


def owner_marker(epoch: Epoch, generation: int, writer: str, recovered_through: int | None) -> tuple[bytes, bytes]:
    """Key and value of an owner marker (its epoch header is added by the writer)."""
    value = {"epoch": list(epoch), "generation": generation, "writer": writer, "recovered_through": recovered_through}
    return OWNER_MARKER_PREFIX + encode_epoch(epoch), json.dumps(value, separators=(",", ":")).encode()


def epoch_headers(
    epoch: Epoch, positions: Mapping[str, int] | None = None, logs: Mapping[str, InputLog] | None = None
) -> list[tuple[str, bytes]]:
    out = [(EPOCH_HEADER, encode_epoch(epoch))]
    if positions is not None:
        out.append((POSITIONS_HEADER, json.dumps(dict(sorted(positions.items())), separators=(",", ":")).encode()))
    if logs:
        encoded = {topic: log.to_json() for topic, log in sorted(logs.items())}
        out.append((LOGS_HEADER, json.dumps(encoded, separators=(",", ":")).encode()))
    return out


@dataclass
class PartitionView:
    """One changelog partition as recovery has read it so far: the highest epoch, the last accepted positions."""

    epoch: Epoch = NO_EPOCH
    positions: dict[str, int] = field(default_factory=dict)
    #: stale records skipped (a dropped worker's late writes)
    skipped: int = 0
    #: the input logs the last accepted end marker named (:class:`InputLog`)
    logs: dict[str, InputLog] = field(default_factory=dict)

    def accept(self, key: bytes, value: bytes | None, headers: Headers) -> bool:
        """Read one record in log order; True when (key, value) is a customer state (or tombstone) to apply."""
        epoch = epoch_of(headers)
        if key.startswith(OWNER_MARKER_PREFIX):
            if epoch == NO_EPOCH and value:
                epoch = tuple(json.loads(value)["epoch"])  # type: ignore[assignment]
            if epoch < self.epoch:
                self.skipped += 1
            else:
                self.epoch = epoch
            return False
        if epoch < self.epoch:
            self.skipped += 1
            return False
        self.epoch = epoch  # a record proves its writer's marker came before it (awaited before any write)
        if key == END_MARKER_KEY:
            positions = positions_of(headers)
            if positions is not None:
                self.positions = positions
                self.logs = logs_of(headers) or {}
            return False
        return not key.startswith(RESERVED_PREFIX)

    def to_bytes(self) -> bytes:
        logs = {topic: log.to_json() for topic, log in self.logs.items()}
        return json.dumps(
            {"epoch": list(self.epoch), "positions": self.positions, "logs": logs}, separators=(",", ":")
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PartitionView:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            tuple(data["epoch"]),  # type: ignore[arg-type]
            {str(t): int(o) for t, o in data.get("positions", {}).items()},
            logs={str(t): InputLog.from_json(v) for t, v in data.get("logs", {}).items()},
        )


@dataclass
class OwnWrites:
    """Per changelog partition, where this worker's next acknowledged write should land, and the offset ranges
    in between that it did not write (another writer's: read back and judged by :func:`stale_keys`).

    A partition is tracked from its owner marker's acknowledgement (:meth:`marker`) until the next rebalance
    (:meth:`forget`). Acknowledgements arrive in offset order per partition (one batch in flight per partition);
    an offset below the expected one (a retried send acknowledged twice) is ignored, and a range that holds
    only this worker's own records (a duplicate of a retried batch) is judged harmless when read back.
    """

    next_offset: dict[int, int] = field(default_factory=dict)
    foreign: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def marker(self, partition: int, offset: int) -> None:
        self.next_offset[partition] = offset + 1

    def acked(self, partition: int, offset: int) -> None:
        expected = self.next_offset.get(partition)
        if expected is None:
            return  # not since a marker of ours (rebalanced meanwhile): the next owner's recovery judges it
        if offset > expected:
            self.foreign.setdefault(partition, []).append((expected, offset - 1))
        if offset >= expected:
            self.next_offset[partition] = offset + 1

    def acked_range(self, partition: int, first: int, last: int) -> None:
        """This worker's records at ``first``..``last`` (one record batch: consecutive offsets, all its own)."""
        self.acked(partition, first)
        expected = self.next_offset.get(partition)
        if expected is not None and last >= expected:
            self.next_offset[partition] = last + 1

    def take(self) -> dict[int, list[tuple[int, int]]]:
        """The foreign ranges found since the last call (then forgotten)."""
        out, self.foreign = self.foreign, {}
        return out

    def forget(self) -> None:
        self.next_offset.clear()
        self.foreign.clear()


def stale_keys(records: Iterable[Any], epoch: Epoch) -> tuple[set[bytes], Epoch | None]:
    """Judge records another writer put between this owner's writes (``key``, ``value``, ``headers``): the
    customers whose record there has an epoch below ``epoch`` (to be written again), and the newest epoch of an
    owner marker above ``epoch``, if any (then this worker is no longer the owner)."""
    keys: set[bytes] = set()
    newer: Epoch | None = None
    for record in records:
        seen = epoch_of(record.headers)
        if record.key.startswith(OWNER_MARKER_PREFIX):
            if seen == NO_EPOCH and record.value:
                seen = tuple(json.loads(record.value)["epoch"])  # type: ignore[assignment]
            if seen > epoch and (newer is None or seen > newer):
                newer = seen
        elif seen > epoch:
            newer = seen if newer is None or seen > newer else newer
        elif seen < epoch and not record.key.startswith(RESERVED_PREFIX):
            keys.add(record.key)
    return keys, newer


def latest_states(records: Iterable[Any]) -> dict[bytes, bytes]:
    """The customer states a recovery of the whole changelog keeps (records in offset order per partition, with
    ``partition``, ``key``, ``value`` and ``headers``): the last accepted record per key, tombstones removed."""
    views: dict[int, PartitionView] = {}
    latest: dict[bytes, bytes | None] = {}
    for record in records:
        view = views.setdefault(record.partition, PartitionView())
        if view.accept(record.key, record.value, record.headers):
            latest[record.key] = record.value
    return {k: v for k, v in latest.items() if v is not None}
