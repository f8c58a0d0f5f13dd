"""Per input partition, the next offset the worker expects: gaps stop the batch, commits never pass it.

Faust decides what to commit from the offsets its streams *acknowledge*, and
acknowledges more than the agent applied: a message its stream skips (flow
control suspended during a rebalance, or from an older generation) is acked
as if it had been processed, and after a revoke Faust forgets the committed
offset, so its next commit starts from whatever was acked (issue 15: a
worker that kept ``orders``/5 through a revoke/re-assign committed 3485
although 3484 had only been skipped; it was never read again).

:class:`OffsetLedger` is this worker's own account, independent of Faust's:

* ``expected[tp]`` is the next offset to apply: set at the seek the worker
  makes when it gets a partition (its committed offset), moved by each
  checkpoint past what it applied, and kept through a rebalance for the
  partitions the worker keeps (so a committed offset past what was applied
  shows up as a gap instead of being trusted). Kept only from the group
  generation just before: a worker that missed a generation (stalled past the
  rebalance timeout, or removed from the group and joining again) may get a
  partition back that another worker applied and committed in between; its
  committed offset is then the truth, not this worker's old account.
* a batch whose offsets jump past ``expected`` has a gap; the guard reads the
  skipped offsets back from the broker: if they hold records, the gap is
  unexplained and the checkpoint fails before anything is written or acked
  (the worker exits uncommitted and re-reads); if they hold none (compaction,
  transaction markers, aborted transactions), the broker explains it.
* Faust may only ack, and so commit, offsets below ``expected``
  (:func:`install`): the committed offset never passes an unapplied record,
  so a fail-stop really re-reads it.

The ledger is pure bookkeeping (unit-tested with fakes); :class:`OffsetGuard`
adds the broker read-back and the Faust hooks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.protocol.group import HeartbeatRequest
from faust.tables.recovery import RebalanceAgain
from faust.transport.consumer import Consumer
from faust.types import TP, EventT

from streams import metrics
from streams.ownership import InputLog, record_crc, replacing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gap:
    """Offsets ``first..last`` (inclusive) of ``tp`` that a batch skipped."""

    tp: TP
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.tp.topic}[{self.tp.partition}] offsets {self.first}..{self.last}"


@dataclass
class Scan:
    """What a batch would do to the ledger: the next expected offset per partition, and the gaps."""

    next_expected: dict[TP, int] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)


def ranges(offsets: Iterable[int]) -> str:
    """Offsets in delivery order as runs, e.g. ``68-75,61-67`` (for log lines)."""
    runs: list[list[int]] = []
    for o in offsets:
        if runs and o == runs[-1][1] + 1:
            runs[-1][1] = o
        else:
            runs.append([o, o])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


class OffsetGapError(RuntimeError):
    """A batch skipped offsets that hold records: it must not be applied or committed."""


class OffsetLedger:
    """The next offset to apply per tracked input partition (pure: no I/O, no Faust)."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.expected: dict[TP, int] = {}
        #: started by a seek, nothing applied since: a later seek (Faust seeks more than once per rebalance) moves it
        self.provisional: set[TP] = set()
        #: the group generation of the last assignment (None: none yet, or not known)
        self.generation: int | None = None
        #: the group member id of the last assignment (None: not known)
        self.member: str | None = None
        #: the last assignment came after a generation this worker missed (it was dropped from the group)
        self.missed = False

    def tracks(self, tp: TP) -> bool:
        return tp.topic in self.topics

    def retain(self, assigned: Iterable[TP], generation: int | None = None, member: str | None = None) -> set[TP]:
        """A new assignment: forget every partition not in it (another worker may have had it meanwhile).

        Partitions kept from the previous generation keep their expected offset. After a skipped
        generation (``generation`` more than one past the last one) every partition is forgotten:
        in the generation this worker missed, another one may have owned any of them, applied
        records and committed past them, so the worker starts again from the committed offsets
        (without this, the first batch after such a rejoin was a false gap and a fail-stop).
        Returns the partitions kept through a skipped generation that were forgotten for it.

        :attr:`missed` says whether the worker was dropped from the group in between: a skipped generation
        *and* a new member id (``member``). A dropped member always comes back with a new id (aiokafka resets
        it on "unknown member" and "illegal generation", and the group completes a generation without a
        member only by removing it); Tansu also skips generation numbers for a member it never dropped
        (full-size chaos, seed 3: 9 needless fail-stops), which the id tells apart. An unknown id counts
        as changed.
        """
        keep = set(assigned)
        last, self.generation = self.generation, generation
        last_member, self.member = self.member, member
        missed = generation is not None and last is not None and generation not in (last, last + 1)
        self.missed = missed and (member is None or last_member is None or member != last_member)
        dropped = {tp for tp in self.expected if missed and tp in keep}
        for tp in [tp for tp in self.expected if tp not in keep or missed]:
            del self.expected[tp]
            self.provisional.discard(tp)
        return dropped

    def seeked(self, tp: TP, position: int, *, explicit: bool = False) -> None:
        """The consumer was positioned at ``position``.

        A seek to the committed offset at assignment only starts partitions the
        ledger does not know; an explicit seek (the worker chose the offset)
        moves a known one too.
        """
        if self.tracks(tp) and (explicit or tp not in self.expected or tp in self.provisional):
            self.expected[tp] = position
            self.provisional.add(tp)

    def unknown(self, tps: Iterable[TP]) -> set[TP]:
        return {tp for tp in tps if self.tracks(tp) and tp not in self.expected}

    def scan(self, offsets: Iterable[tuple[TP, int]]) -> Scan:
        """Walk a batch's (tp, offset) in delivery order; every tracked tp must be known.

        Below ``expected``: a record read again (its state drops it). Equal: the
        next one. Above: a gap from ``expected`` to just before it; the walk
        goes on after it, so one batch may report several gaps.
        """
        out = Scan()
        nxt = out.next_expected
        for tp, offset in offsets:
            if not self.tracks(tp):
                continue
            expected = nxt.get(tp, self.expected[tp])
            if offset > expected:
                out.gaps.append(Gap(tp, expected, offset - 1))
            if offset >= expected:
                nxt[tp] = offset + 1
        return out

    def applied(self, scan: Scan) -> None:
        """The batch is durable (changelog acknowledged): its offsets may be acked and committed."""
        for tp, offset in scan.next_expected.items():
            if tp in self.expected and offset > self.expected[tp]:
                self.expected[tp] = offset
                self.provisional.discard(tp)

    def may_ack(self, tp: TP, offset: int) -> bool:
        """Only what was applied: untracked topics as Faust does, unknown partitions not at all."""
        if not self.tracks(tp):
            return True
        expected = self.expected.get(tp)
        return expected is not None and offset < expected

    def cap(self, tp: TP, offset: int) -> int | None:
        """The offset Faust may commit for ``tp`` (at most the next one to apply); None: nothing."""
        if not self.tracks(tp):
            return offset
        expected = self.expected.get(tp)
        return None if expected is None else min(offset, expected)


@dataclass(frozen=True)
class LogRead:
    """What one read-back of a partition saw: every offset in ``first..through`` that holds a record the worker
    would read (sorted). A read usually goes past the gap it was asked about (one fetch returns up to a
    partition's fetch size), and what it saw stays true: offsets below the position a read reached never gain
    records, so the next gaps in ``first..through`` (the next transaction markers) are explained without
    another round trip. A record seen may be compacted away later; that answer is only trusted fresh."""

    first: int
    through: int
    records: Sequence[int] = ()
    #: the partition's log start, read just after (None: not asked)
    log_start: int | None = None

    def covers(self, gap: Gap) -> bool:
        return self.first <= gap.first and gap.last <= self.through

    def records_in(self, first: int, last: int) -> list[int]:
        return list(self.records[bisect_left(self.records, first) : bisect_right(self.records, last)])


#: verdicts of :data:`CheckRecords`: the record is there, the log holds another one there (or ends before it),
#: or nothing can be told (below the log's start, compacted away, no answer in time)
SAME, REPLACED, UNKNOWN = "same", "replaced", "unknown"
#: {tp: (offset, crc)} -> {tp: verdict}: is the record at ``offset`` of each partition the one of that checksum
CheckRecords = Callable[[Mapping[TP, tuple[int, int]]], Awaitable[dict[TP, str]]]

#: (tp, first, last) -> what the broker holds from ``first`` on, read at least through ``last`` (else through
#: less, and then the gap counts as holding records: a fail-stop re-reads it)
ReadBack = Callable[[TP, int, int], Awaitable[LogRead]]


def rewinds(
    committed: Mapping[TP, int | None], positions: Callable[[int], Mapping[str, int]]
) -> dict[TP, tuple[int, int]]:
    """Input partitions whose committed offset is ahead of the position the changelog holds: tp -> (committed,
    changelog position).

    The changelog's position of an input partition is the next offset its last accepted end marker covers
    (streams.ownership). A committed offset beyond it covers events whose states the changelog lacks (a dropped
    worker's late batch, written after the new owner's recovery read the partition, issue 15): they are read
    again from the position, and each state drops what it already applied. No position (a changelog written
    before positions, or nothing applied yet): nothing to compare, no rewind.
    """
    out = {}
    for tp, offset in committed.items():
        position = positions(tp.partition).get(tp.topic)
        if offset is not None and position is not None and offset > position:
            out[tp] = (offset, position)
    return out


def read_starts(
    assigned: Iterable[TP], committed: Mapping[TP, int | None], ledger: OffsetLedger | None
) -> dict[tuple[str, int], int]:
    """Where this session reads each assigned input topic-partition from, until a record of it is read: the
    ledger's next offset to apply, else the committed offset, else 0 (the log's start).

    The committed offset alone is wrong for a partition kept through a rebalance before its first commit:
    :func:`unseeked` puts it at the ledger's next offset, not at 0. When everything of it was applied before the
    rebalance, nothing is read again, so its position stayed "0, behind the end offset" for good and held its
    partition's clock (``BatchProcessor.holds``: known behind, never idle). A CI run on Kafka showed that
    effect (one kept partition's clock, and the population indicators with it, at an earlier event time for
    the rest of the run; not reproduced here, so the path is inferred). A ledger offset is what was applied
    and made durable, so it is never ahead of what the worker's states hold.
    """
    expected = {} if ledger is None else ledger.expected
    out = {}
    for tp in assigned:
        start = expected.get(tp)
        if start is None:
            start = committed.get(tp) or 0
        out[(tp.topic, tp.partition)] = start
    return out


class OffsetGuard:
    """The ledger of one worker, with the broker behind it: start offsets, gap read-back, metrics and log."""

    def __init__(
        self,
        topics: Iterable[str],
        read_back: ReadBack,
        start_offsets: Callable[[set[TP]], Awaitable[Mapping[TP, int]]],
        log_start: Callable[[TP], Awaitable[int]] | None = None,
        check_records: CheckRecords | None = None,
    ) -> None:
        self.ledger = OffsetLedger(topics)
        self._read_back = read_back
        self._start_offsets = start_offsets
        #: the partition's first offset still on the broker (None: not asked; every empty gap is compaction's)
        self._log_start = log_start
        #: partition -> the input positions its changelog holds, for the partitions recovered since the last call
        #: (CustomerStateTable.recovered_positions)
        self.changelog_positions: Callable[[], Mapping[int, Mapping[str, int]]] | None = None
        #: per partition, the last read-back (explains the next gaps it covers without another round trip)
        self._reads: dict[TP, LogRead] = {}
        #: called (instead of going on) when an assignment follows a generation this worker missed
        self.on_missed_generation: Callable[[int | None, int | None], None] | None = None
        #: partition -> the input logs its changelog names (CustomerStateTable.changelog_logs; None: not checked)
        self.changelog_logs: Callable[[int], Mapping[str, InputLog]] | None = None
        #: reads back the record each log names (:data:`CheckRecords`; None: not checked)
        self.check_records = check_records
        #: input logs found replaced and not yet taken by the checkpoint: (topic, partition) -> (new log's first
        #: offset, the new InputLog)
        self.replaced: dict[tuple[str, int], tuple[int, InputLog]] = {}
        #: partition -> the input positions its changelog holds now (CustomerStateTable.changelog_positions)
        self.table_positions: Callable[[int], Mapping[str, int]] | None = None
        #: input partitions whose log was read back since they were last sought (:meth:`_verify_reread`)
        self.verified: set[TP] = set()
        #: input partitions whose read-back could tell nothing once since they were last sought
        self.unknown_once: set[TP] = set()
        #: serializes the resume seek and the fetch loop's (:func:`_perform_seek_noted`)
        self.seek_lock = asyncio.Lock()

    async def _verify_reread(self, offsets: list[tuple[TP, int]]) -> None:
        """A batch that reads a partition again below the next offset to apply, first since the partition was
        sought: is the log the one the changelog names? A rebalance, a crash or an offsets reset read records
        again, and so does a consumer whose log was replaced under it: its fetch past the new log's end was out of
        range and it went back to the log's start (Kafka; no rebalance need come). Found replaced, the new log's
        records are applied with its new offset base (the checkpoint takes it before this batch), from its start."""
        if self.table_positions is None or self.changelog_logs is None or self.check_records is None:
            return
        expected = self.ledger.expected
        first: dict[TP, int] = dict(reversed(offsets))  # each partition's first offset, in C (a batch's whole walk)
        again = [
            tp
            for tp, offset in first.items()
            if tp not in self.verified and tp in expected and offset < expected[tp] and self.ledger.tracks(tp)
        ]
        if not again:
            return
        partitions = {tp.partition for tp in again}
        found = await self.verify_logs(
            again, {p: self.table_positions(p) for p in partitions}, "reading it again", reread=True
        )
        for tp, (start, _) in found.items():
            self.ledger.seeked(tp, start, explicit=True)  # the consumer reads the new log from its start already

    def take_replaced(self) -> dict[tuple[str, int], tuple[int, InputLog]]:
        """The input logs found replaced since the last call (streams.checkpoint reads them before each batch)."""
        out, self.replaced = self.replaced, {}
        return out

    async def verify_logs(
        self,
        tps: Iterable[TP],
        recovered: Mapping[int, Mapping[str, int]],
        when: str = "at its assignment",
        reread: bool = False,
    ) -> dict[TP, tuple[int, InputLog]]:
        """The input partitions among ``tps`` (of partitions just recovered) whose log the changelog names is
        not there any more: the record it names as the last one decided is gone (the log now ends before it) or
        different. Each is noted in :attr:`replaced` with the new log's start and its new offset base; the caller
        seeks it there. A record that cannot be read (below the log's start, compacted away, no answer in time)
        proves nothing: that log is taken as the same."""
        if self.changelog_logs is None or self.check_records is None:
            return {}
        named: dict[TP, tuple[InputLog, int]] = {}
        for tp in tps:
            if tp.partition not in recovered:
                continue
            input_log = self.changelog_logs(tp.partition).get(tp.topic)
            if input_log is not None and input_log.last is not None and input_log.crc is not None:
                named[tp] = (input_log, recovered[tp.partition].get(tp.topic, 0))
        if not named:
            return {}
        verdicts = await self.check_records({tp: (n.last, n.crc) for tp, (n, _) in named.items()})  # type: ignore[misc]
        out: dict[TP, tuple[int, InputLog]] = {}
        for tp, verdict in sorted(verdicts.items()):
            metrics.INPUT_LOG_CHECKS.labels(verdict).inc()
            if reread:
                # not at the seek: a topic being deleted may still answer there with its old log, and the first
                # batch that reads it again asks once more (one fetch per rebalance); an unknown one twice
                if verdict != UNKNOWN or tp in self.unknown_once:
                    self.verified.add(tp)
                else:
                    self.unknown_once.add(tp)
            if verdict != REPLACED:
                continue
            old, position = named[tp]
            start = await self._log_start(tp) if self._log_start is not None else 0
            new = replacing(old, position)
            out[tp] = (start, new)
            self.replaced[(tp.topic, tp.partition)] = (start, new)
            metrics.INPUT_LOGS_REPLACED.labels(tp.topic).inc()
            log.warning(
                "input log replaced: %s[%d] (found %s) no longer holds the record at offset %d the changelog names as "
                "the last one decided (the topic was deleted and created again): reading it "
                "from offset %d as a new log, its offsets counted from %d",
                tp.topic,
                tp.partition,
                when,
                old.last,
                start,
                new.base,
            )
        return out

    def positions(self, partition: int) -> dict[str, int]:
        """The next offset to apply per tracked input topic of ``partition`` (what the checkpoint's end markers
        carry, with the batch's own offsets on top). A topic the ledger does not know yet had no committed
        offset and no record in any batch: nothing of it was applied, its position is the log's start (0; a
        seek there on a log whose start moved on resets to the earliest offset, and the gap check finds the
        offsets in between empty)."""
        expected = self.ledger.expected
        return {topic: expected.get(TP(topic, partition), 0) for topic in sorted(self.ledger.topics)}

    def owned(self, events: Sequence[EventT], assigned: set[TP]) -> list[EventT]:
        """The events of partitions this worker owns now; the others are dropped, not applied.

        ``take_events`` hands its buffer over as it is: a batch gathered before a
        rebalance may hold records of partitions another worker owns since.
        Applying them would write states the new owner writes too. Not applied,
        they are not acked either (see :func:`install`).
        """
        kept = [e for e in events if e.message.tp in assigned]
        if len(kept) < len(events):
            gone = Counter(f"{e.message.topic}[{e.message.partition}]" for e in events if e.message.tp not in assigned)
            metrics.STALE_EVENTS_DROPPED.inc(len(events) - len(kept))
            log.info("dropped %d events of partitions no longer owned: %s", len(events) - len(kept), dict(gone))
        return kept

    async def check(self, offsets: list[tuple[TP, int]]) -> Scan:
        """Scan a batch before it is applied; raise :class:`OffsetGapError` on a gap that holds records."""
        await self._verify_reread(offsets)
        unknown = self.ledger.unknown(tp for tp, _ in offsets)
        if unknown:
            # no seek seen for it: the seek after a rebalance sets only partitions with a committed offset, so a
            # group's first read of a partition starts here (info: every fresh deployment logged one warning per
            # input partition, which buried the warnings that matter in a worker's log)
            for tp, offset in (await self._start_offsets(unknown)).items():
                log.info(
                    "offset ledger: %s[%d] starts at %d (committed, else the log start)", tp.topic, tp.partition, offset
                )
                self.ledger.seeked(tp, offset)
        scan = self.ledger.scan(offsets)
        unexplained = []
        for gap in scan.gaps:
            read = await self._read(gap)
            found = read.records_in(gap.first, gap.last)
            if found:
                unexplained.append((gap, found))
                metrics.INPUT_OFFSET_GAPS.labels(gap.tp.topic).inc()
                log.warning(
                    "batch offsets of %s[%d] (expected %d): %s",
                    gap.tp.topic,
                    gap.tp.partition,
                    self.ledger.expected[gap.tp],
                    ranges(o for t, o in offsets if t == gap.tp),
                )
                log.critical(
                    "input offset gap: %s skipped by the batch hold %d records (first %d); "
                    "expected %d, the batch went on at %d: stopping before commit",
                    gap,
                    len(found),
                    found[0],
                    gap.first,
                    gap.last + 1,
                )
            else:
                self._explained(gap, read.log_start)
        if unexplained:
            raise OffsetGapError("unexplained input offset gaps: " + "; ".join(str(g) for g, _ in unexplained))
        return scan

    async def _read(self, gap: Gap) -> LogRead:
        """What the broker holds in ``gap``: from the last read of its partition if that covered it and saw no
        record there (an upstream producer with transactions leaves a marker after every transaction, one gap
        each: one round trip per fetch's worth of them, not per marker), else read back now."""
        last = self._reads.get(gap.tp)
        if last is not None and last.covers(gap) and not last.records_in(gap.first, gap.last):
            metrics.INPUT_GAPS_EXPLAINED.labels("read_ahead").inc()
            return last
        read = await self._read_back(gap.tp, gap.first, gap.last)
        if self._log_start is not None:
            read = replace(read, log_start=await self._log_start(gap.tp))
        metrics.INPUT_GAPS_EXPLAINED.labels("read_back").inc()
        self._reads[gap.tp] = read
        return read

    def _explained(self, gap: Gap, start: int | None) -> None:
        """A gap that holds no records: below the log's start (``start``, read just after the read-back that
        saw the gap empty), its records were deleted before this worker read them (retention outran an outage,
        or DeleteRecords): nothing brings them back, but the operator must learn of it, so a warning and its
        own counter. Within the log: transaction markers, aborted transactions or compaction, counted (an
        upstream producer with transactions leaves one per transaction, so not a line each)."""
        size = gap.last - gap.first + 1
        gone = 0 if start is None else max(0, min(gap.last + 1, start) - gap.first)
        if gone:
            metrics.INPUT_OFFSETS_DELETED_UNREAD.labels(gap.tp.topic).inc(gone)
            log.warning(
                "input offsets %d..%d of %s[%d] were deleted before this worker read them (the topic's retention "
                "outran an outage, or DeleteRecords): %d offsets never scored; the log now starts at %d",
                gap.first,
                gap.first + gone - 1,
                gap.tp.topic,
                gap.tp.partition,
                gone,
                start,
            )
        if size > gone:
            metrics.INPUT_OFFSETS_SKIPPED.labels(gap.tp.topic).inc(size - gone)
            log.debug("input offsets %s hold no records (transaction markers, aborted transactions, compaction)", gap)


# --- Faust hooks ---------------------------------------------------------------------------------

#: Faust's methods as they were when :func:`install` replaced them (streams.faust_fixes may have come first)
_upstream: dict[str, Any] = {}
_HOOKED = ("__init__", "ack", "_filter_committable_offsets", "perform_seek", "seek", "on_partitions_assigned")
_INSTALLED = False


def guard_of(consumer: Consumer) -> OffsetGuard | None:
    return getattr(consumer.app, "pulse_offset_guard", None)


class ReadOffsets(dict):
    """``Consumer._read_offset`` that never reports a read offset for the tracked input topics.

    Faust's fetch loop drops a fetched record whose offset is below the
    partition's read offset ("already read") and records a jump past it as a
    *gap* that counts as acknowledged. Both assume every record it delivered
    reaches the agent. They do not around a rebalance: the table recovery
    resumes the flow before it seeks the kept partitions to their committed
    offsets, so records are delivered meanwhile; the recovery's second
    ``flow_control.resume()`` clears them from the stream's queue, and the
    fetch loop, still delivering while the seek reset the read offset, moves
    it past them again, so their copies fetched after the seek are dropped as
    already read (issue 15: ``orders``/5 offset 3484). Without a read offset
    every record fetched is delivered; one delivered twice is below the
    ledger's next offset and its customer's state drops it.
    """

    def __init__(self, topics: frozenset[str], items: Mapping[TP, int | None]) -> None:
        super().__init__(items)
        self.topics = topics

    def __getitem__(self, tp: TP) -> int | None:
        if tp.topic in self.topics:
            return None
        return self.get(tp)


def _init_with_read_offsets(self: Consumer, *args: Any, **kwargs: Any) -> None:
    _upstream["__init__"](self, *args, **kwargs)
    guard = guard_of(self)
    if guard is not None:
        self._read_offset = ReadOffsets(guard.ledger.topics, self._read_offset)


def _ack_applied_only(self: Consumer, message: Any) -> bool:
    """``Consumer.ack`` that refuses offsets the checkpoint did not apply.

    A refused message is marked acked and leaves the unacked set (so a
    rebalance's ``wait_empty`` does not wait for it) but never reaches the
    offsets Faust commits from: it is read again after the next seek.
    """
    guard = guard_of(self)
    if guard is not None and not message.acked and not guard.ledger.may_ack(message.tp, message.offset):
        message.acked = True
        self._unacked_messages.discard(message)
        metrics.INPUT_ACKS_REFUSED.labels(message.tp.topic).inc()
        log.info(
            "ack refused for %s[%d] offset %d: not applied (next to apply: %s)",
            message.tp.topic,
            message.tp.partition,
            message.offset,
            guard.ledger.expected.get(message.tp),
        )
        return False
    return _upstream["ack"](self, message)


def _filter_committable_capped(self: Consumer, tps: Iterable[TP]) -> dict[TP, int]:
    offsets = _upstream["_filter_committable_offsets"](self, tps)
    guard = guard_of(self)
    if guard is None:
        return offsets
    out = {}
    for tp, offset in offsets.items():
        capped = guard.ledger.cap(tp, offset)
        committed = self._committed_offset[tp]
        if capped is not None and (committed is None or capped > committed):
            out[tp] = capped
        if guard.ledger.tracks(tp):
            log.debug("commit %s[%d]: faust %s capped %s (was %s)", tp.topic, tp.partition, offset, capped, committed)
    return out


async def _perform_seek_noted(self: Consumer) -> None:
    """Faust's seek to the committed offsets; partitions the ledger does not know start there.

    Faust seeks in two places: before it resumes the stream partitions after a rebalance (the *resume* seek:
    Faust's ``on_recovery_completed`` or ``_resume_streams``), and in its fetch loop when a fetch returns while
    the flow is stopped (a rebalance began meanwhile). Only the resume seek reads the input logs back and
    rewinds to the changelog's positions (:func:`_after_recovery`): it is the one that precedes every batch of
    the new assignment. The fetch loop's comes at the start of a rebalance, while the assignment changes (it
    raised ``IllegalStateError: No current assignment`` there in the fresh clone of session 29), so it only goes
    back to the committed offsets, and not at all once a resume seek finished since the last revocation: it
    would undo that seek's rewinds. The two are serialized.

    The offsets are read from what the seek stored, before anything else runs:
    the fetcher may be running already, so the consumer's position may be past
    them by the time it could be asked.
    """
    guard = guard_of(self)
    if guard is None:
        await _upstream["perform_seek"](self)
        return
    recovery = getattr(getattr(self.app, "tables", None), "_recovery", None)
    resuming = recovery is not None and recovery.seeking_to_resume()
    async with guard.seek_lock:
        if not resuming and recovery is not None and recovery.resumed_since_revoked():
            log.debug("fetch-loop seek skipped: the resume seek since the last revocation placed the partitions")
            return
        await _upstream["perform_seek"](self)
        guard.verified.clear()  # every partition read again after this seek is checked again
        guard.unknown_once.clear()
        ledger = guard.ledger
        for tp in self.assignment():
            if ledger.tracks(tp) and (tp not in ledger.expected or tp in ledger.provisional):
                offset = dict.get(self._read_offset, tp)  # type: ignore[call-overload]  # a dict (ReadOffsets) at run time
                # no committed offset here: left unknown, the first batch asks the broker (OffsetGuard.check)
                if offset is not None:
                    ledger.seeked(tp, offset)
                    log.debug("offset ledger: %s[%d] starts at %d", tp.topic, tp.partition, offset)
        await _seek_uncommitted(self, ledger)
        if recovery is None or resuming:
            await _after_recovery(self, guard)
        if resuming and recovery is not None:
            if recovery.revoked_while_resuming():
                # the streams are not resumed in the middle of a rebalance (streams.tables.BulkRecovery)
                log.info("partitions revoked while the streams were sought: the flow waits for the next recovery")
                raise RebalanceAgain()
            recovery.note_resume_seek()


async def _after_recovery(consumer: Consumer, guard: OffsetGuard) -> None:
    """What the resume seek adds after a recovery read the changelog: the input logs read back
    (:meth:`OffsetGuard.verify_logs`; a replaced one is read from its start) and a committed offset ahead of the
    changelog's position rewound to it (:func:`rewinds`)."""
    recovered = guard.changelog_positions() if guard.changelog_positions is not None else {}
    if not recovered:
        return
    ledger = guard.ledger
    tracked = [tp for tp in consumer.assignment() if ledger.tracks(tp)]
    replaced = await guard.verify_logs(tracked, recovered)
    for tp, (start, _) in sorted(replaced.items()):
        await consumer.seek(tp, start)  # the committed offset is the old log's
    # only right after a recovery read them: before the recovery read a kept partition's tail, its view is older
    # than this worker's own newer end markers
    committed = {
        tp: dict.get(consumer._read_offset, tp)  # type: ignore[call-overload]  # a dict (ReadOffsets) at run time
        for tp in tracked
        if tp.partition in recovered and tp not in replaced
    }
    for tp, (offset, position) in sorted(rewinds(committed, lambda p: recovered[p]).items()):
        metrics.INPUT_REWINDS.labels(tp.topic).inc()
        log.warning(
            "input rewind: %s[%d] committed offset %d is ahead of the changelog's position %d: reading again from %d",
            tp.topic,
            tp.partition,
            offset,
            position,
            position,
        )
        await consumer.seek(tp, position)


def unseeked(committed: Mapping[TP, int | None], ledger: OffsetLedger) -> dict[TP, int]:
    """The tracked partitions a seek to the committed offsets leaves where they are, and where to put them:
    tp -> the ledger's next offset to apply, else 0 (the log's start; nothing is known to be applied).

    aiokafka's ``seek_to_committed`` seeks only a partition whose committed offset is above 0; one without
    a commit (or at 0) keeps its fetch position. Faust relies on that seek to read again what it fetched before
    a rebalance and then cleared from its queues (the stream queues, the batch input's queue). A partition
    kept through the rebalance before its first commit (a worker that fetched a backlog, and a second worker
    joined before the first commit) kept a position past records nobody applied; with the whole backlog
    fetched nothing came after them, so no gap ever showed: the worker sat idle (the two-worker Kafka stall
    of session 8).
    """
    out = {}
    for tp, offset in committed.items():
        if ledger.tracks(tp) and not (offset is not None and offset > 0):
            out[tp] = ledger.expected.get(tp, 0)
    return out


async def _seek_uncommitted(consumer: Consumer, ledger: OffsetLedger) -> None:
    """Seek the partitions :func:`unseeked` names (Faust's own seek, so the ledger is left as it is: a kept
    partition's next offset is the target, an unknown one is started by the first batch, OffsetGuard.check)."""
    committed = {
        tp: dict.get(consumer._read_offset, tp)  # type: ignore[call-overload]  # a dict (ReadOffsets) at run time
        for tp in consumer.assignment()
    }
    targets = unseeked(committed, ledger)
    for tp, offset in sorted(targets.items()):
        await _upstream["seek"](consumer, tp, offset)
    kept = {tp: offset for tp, offset in sorted(targets.items()) if offset}
    for tp in kept:
        metrics.INPUT_UNCOMMITTED_SEEKS.labels(tp.topic).inc()
    if kept:
        log.info(
            "input seek: no committed offset, back to the next offset to apply: %s",
            ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in kept.items()),
        )


async def _seek_noted(self: Consumer, partition: TP, offset: int) -> None:
    await _upstream["seek"](self, partition, offset)
    guard = guard_of(self)
    if guard is not None:
        tp = TP(partition.topic, partition.partition)
        guard.ledger.seeked(tp, offset, explicit=True)
        guard.verified.discard(tp)
        guard.unknown_once.discard(tp)


async def _on_partitions_assigned_retaining(self: Consumer, assigned: set[TP], generation_id: int = 0) -> None:
    guard = guard_of(self)
    if guard is not None:
        last = guard.ledger.generation
        # the coordinator's generation as Faust passes it: Tansu's first one is 0, a generation like any other
        forgotten = guard.ledger.retain(assigned, generation_id, coordinator_member(self))
        if guard.ledger.missed and guard.on_missed_generation is not None:
            metrics.GENERATION_MISSED.inc()
            guard.on_missed_generation(last, generation_id)
        if forgotten:
            log.info(
                "offset ledger: generation %s after %s (this worker missed one): %d kept partitions start again "
                "at their committed offsets",
                generation_id,
                last,
                len(forgotten),
            )
    await _upstream["on_partitions_assigned"](self, assigned, generation_id)


def install() -> None:
    """Patch Faust's consumer; it only changes apps that carry a ``pulse_offset_guard``."""
    global _INSTALLED
    if not _INSTALLED:
        for name in _HOOKED:
            _upstream[name] = getattr(Consumer, name)
        Consumer.__init__ = _init_with_read_offsets  # type: ignore[method-assign]
        Consumer.ack = _ack_applied_only  # type: ignore[method-assign]
        Consumer._filter_committable_offsets = _filter_committable_capped  # type: ignore[method-assign]
        Consumer.perform_seek = _perform_seek_noted  # type: ignore[method-assign]
        Consumer.seek = _seek_noted  # type: ignore[method-assign]
        Consumer.on_partitions_assigned = _on_partitions_assigned_retaining  # type: ignore[method-assign]
        _INSTALLED = True


# --- the group generation: a worker the group has dropped writes nothing ---------------------------


class GenerationLost(RuntimeError):
    """The group dropped this worker (or moved on) since its partitions were assigned: it must not write."""


def generation_lost(assigned: int | None, current: int | None) -> bool:
    """True when the coordinator's generation is no longer the one the worker's partitions were assigned in.

    aiokafka resets its generation to -1 when the coordinator no longer knows the member (a heartbeat or a
    commit answered "unknown member": the worker stalled past the session or rebalance timeout) and sets
    the new one when it joins again. Either way another worker may own the partitions already and have
    read their changelog: a state written now (the batch Faust waits for while revoking) would land after
    the new owner's and a later recovery would take it for the latest (full-size chaos on Apache Kafka,
    seed 1: 37 events lost, 94 alert/VIP ids with two contents, under a load average of 24-52).
    ``assigned``: the generation of the worker's last assignment (None: none yet, not checked; 0 is Tansu's
    first generation, see :func:`assigned_generation`).
    """
    return assigned is not None and current != assigned


def _coordinator(consumer: Any) -> Any:
    """aiokafka's group coordinator behind Faust's consumer (None when not started or without a group)."""
    try:
        return consumer._thread._ensure_consumer()._coordinator
    except Exception:  # noqa: BLE001 - not started or no group: nothing to ask
        return None


def coordinator_generation(app: Any) -> int | None:
    """The generation aiokafka's group coordinator holds now (None when there is no consumer yet)."""
    try:
        consumer = app.consumer
    except Exception:  # noqa: BLE001 - no consumer yet: nothing to check against
        return None
    coordinator = _coordinator(consumer)
    return None if coordinator is None else coordinator.generation


def coordinator_member(consumer: Any) -> str | None:
    """The member id aiokafka's group coordinator holds now (None when not known), from Faust's consumer."""
    member = getattr(_coordinator(consumer), "member_id", None)
    return member if isinstance(member, str) and member else None


def assigned_generation(app: Any) -> int | None:
    """The generation of the worker's last assignment, None before the first.

    The offset ledger's (set by each assignment, :func:`_on_partitions_assigned_retaining`), not Faust's
    ``consumer_generation_id``, which is 0 before any assignment and so cannot tell it from Tansu's first
    generation, 0: a worker frozen past its session in generation 0 on Tansu was never fenced and, woken, found
    its kept partitions' committed offsets moved (a false input gap; ``test_a_worker_frozen_past_its_session``,
    session 30). Kafka's generations start at 1."""
    guard = getattr(app, "pulse_offset_guard", None)
    if guard is not None:
        return guard.ledger.generation
    generation = getattr(app, "consumer_generation_id", None)
    return generation or None


def check_generation(app: Any) -> None:
    """Raise :class:`GenerationLost` if the group dropped this worker since its last assignment."""
    assigned, current = assigned_generation(app), coordinator_generation(app)
    if current is not None and generation_lost(assigned, current):
        metrics.GENERATION_LOST_WRITES.inc()
        raise GenerationLost(f"group generation {current}, partitions assigned in {assigned}: not writing")


#: heartbeat answers that count a member in the generation it sent: a rebalance in progress still has the member
#: and its generation (the coordinator checks both before it answers that)
CURRENT_MEMBER_ANSWERS = (kafka_errors.NoError, kafka_errors.RebalanceInProgressError)


async def generation_confirmed(app: Any, generation: int) -> bool:
    """Whether the group coordinator counts this worker a member of ``generation`` now: a heartbeat sent in it.

    Why: the generation a worker was assigned in does not prove the assignment current. A worker frozen after its
    JoinGroup can wake to the late SyncGroup answer of a generation the group has left, and aiokafka reports that
    generation until its next heartbeat fails; meanwhile the worker recovers its partitions, sees the next
    generation's owner marker, and would write over it (:meth:`streams.tables.CustomerStateTable.epoch_for`).
    Only the coordinator knows: "no error" (or "rebalancing", which it answers only to a member of its current
    generation) confirms; an unknown member, an illegal generation, no coordinator, or no answer within the
    session timeout does not. The request is sent on the consumer thread (aiokafka's client lives there) and
    changes nothing in the consumer's own state.
    """
    try:
        consumer = app.consumer
    except Exception:  # noqa: BLE001 - no consumer: no group to be a member of
        return False
    coordinator = _coordinator(consumer)
    if coordinator is None:
        return False

    async def ask() -> type[BaseException]:
        request = HeartbeatRequest(coordinator.group_id, generation, coordinator.member_id)
        response = await coordinator._send_req(request)
        return kafka_errors.for_code(response.error_code)

    try:
        answer = await asyncio.wait_for(consumer._thread.call_thread(ask), coordinator._session_timeout_ms / 1000)
    except (TimeoutError, kafka_errors.KafkaError) as exc:
        log.warning("generation %s not confirmed: the group coordinator did not answer (%r)", generation, exc)
        return False
    if answer in CURRENT_MEMBER_ANSWERS:
        return True
    log.warning("generation %s not confirmed: the group coordinator answered %s", generation, answer.__name__)
    return False


# --- the broker side -----------------------------------------------------------------------------


#: how long one poll of a read-back waits for the broker (bounded overall by offset_gap_read_back_seconds)
READ_BACK_POLL_MS = 200
#: the most record offsets one read-back keeps past its gap (8 bytes each, one read per partition)
READ_AHEAD_RECORDS = 50_000


def broker_guard(
    app: Any,
    topics: Iterable[str],
    client_kwargs: Mapping[str, Any],
    read_back_seconds: float,
    isolation_level: str = "read_committed",
) -> OffsetGuard:
    """An :class:`OffsetGuard` whose read-back and start offsets use a plain aiokafka consumer of the group.

    It reads at the group consumer's ``isolation_level``: what the worker was handed is what it compares."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    client: AIOKafkaConsumer | None = None
    lock = asyncio.Lock()

    async def ensure() -> AIOKafkaConsumer:
        nonlocal client
        if client is None:
            consumer = AIOKafkaConsumer(
                **client_kwargs,
                client_id=f"{app.conf.broker_client_id}-offset-guard",
                enable_auto_commit=False,
                # a gap that begins below the log's start: read from the start, so that records after it are
                # found (aiokafka's default, latest, would jump past them and take the gap for empty)
                auto_offset_reset="earliest",
                isolation_level=isolation_level,
            )
            await consumer.start()
            client = consumer
        return client

    async def read_back(tp: TP, first: int, last: int) -> LogRead:
        async with lock:
            consumer = await ensure()
            ktp = TopicPartition(tp.topic, tp.partition)
            consumer.assign([ktp])
            consumer.seek(ktp, first)
            try:
                return await read_from(consumer, ktp, first, last)
            finally:
                # no fetch of it in the background until the next read-back: an idle consumer's long polls cost
                # the broker, and the next read-back's seek waited for the one in flight (fetch.max.wait, 500
                # ms by default: a round trip per gap of ~0.5 s, measured in session 23)
                consumer.pause(ktp)

    async def read_from(consumer: AIOKafkaConsumer, ktp: TopicPartition, first: int, last: int) -> LogRead:
        found: array[int] = array("q")
        deadline = time.monotonic() + read_back_seconds
        while time.monotonic() < deadline:
            batch = await consumer.getmany(ktp, timeout_ms=READ_BACK_POLL_MS)
            found.extend(r.offset for r in batch.get(ktp, []) if r.offset >= first)
            through = await consumer.position(ktp) - 1
            if through >= last or (found and found[0] <= last):
                # what the fetch brought past the gap is kept too (LogRead), up to READ_AHEAD_RECORDS
                if len(found) > READ_AHEAD_RECORDS:
                    through = found[READ_AHEAD_RECORDS] - 1
                    del found[READ_AHEAD_RECORDS:]
                return LogRead(first, through, found)
        # could not read past the gap in time: assume the worst (fail-stop re-reads it)
        return LogRead(first, last, found if found else array("q", [first]))

    async def check_records(items: Mapping[TP, tuple[int, int]]) -> dict[TP, str]:
        """Read back the record at each given offset, all partitions at once, and compare its checksum.

        Below the log's end the fetch returns the record (compacted away or below the log's start: a later one,
        unknown). At or past the end (an empty log: replaced at once) the log's last batch is read from the end
        offset - 1: on Kafka that is the last record, below the offset; Tansu answers ListOffsets with the last
        batch's base + 1 and a fetch past its end with nothing (no out-of-range), so the record may still be in
        that batch. Records that all stay below the offset, then nothing more with the position at the log's end
        (asked again: a fetch cut short by its size limit is not the end): the log ends before it."""
        async with lock:
            consumer = await ensure()
            ktps = {TopicPartition(tp.topic, tp.partition): (tp, offset, crc) for tp, (offset, crc) in items.items()}
            ends = await consumer.end_offsets(list(ktps))
            out: dict[TP, str] = {}
            below: set[TopicPartition] = set()  # read only records below the offset so far
            consumer.assign(list(ktps))
            for ktp, (tp, offset, _) in ktps.items():
                end = ends[ktp]
                if end == 0:
                    out[tp] = REPLACED
                    consumer.pause(ktp)
                else:
                    consumer.seek(ktp, offset if offset < end else end - 1)
            deadline = time.monotonic() + read_back_seconds
            try:
                while len(out) < len(ktps) and time.monotonic() < deadline:
                    waiting = [k for k, (tp, _, _) in ktps.items() if tp not in out]
                    batch = await consumer.getmany(*waiting, timeout_ms=READ_BACK_POLL_MS)
                    quiet = [k for k in waiting if not batch.get(k)]
                    positions = {k: await consumer.position(k) for k in quiet}
                    ended = [k for k in quiet if k in below]
                    at_end = set()
                    if ended:
                        now = await consumer.end_offsets(ended)
                        at_end = {k for k in ended if positions[k] >= now[k]}
                    for ktp in waiting:
                        tp, offset, crc = ktps[ktp]
                        records = batch.get(ktp, [])
                        verdict = None
                        if not records:
                            if ktp in at_end:
                                verdict = REPLACED  # read to the log's end without reaching the offset
                            elif ktp not in below and positions[ktp] > offset:
                                verdict = UNKNOWN  # past it with nothing read: deleted by retention (an empty log)
                        else:
                            at = next((r for r in records if r.offset >= offset), None)
                            if at is None:
                                below.add(ktp)
                            elif at.offset == offset:
                                verdict = SAME if record_crc(at.key, at.value) == crc else REPLACED
                            else:
                                verdict = UNKNOWN  # compacted away, or below the log's start
                        if verdict is not None:
                            out[tp] = verdict
                            consumer.pause(ktp)
            finally:
                consumer.pause(*ktps)
            for tp, _, _ in ktps.values():
                out.setdefault(tp, UNKNOWN)
            return out

    async def log_start(tp: TP) -> int:
        """The partition's first offset still on the broker."""
        async with lock:
            consumer = await ensure()
            ktp = TopicPartition(tp.topic, tp.partition)
            return int((await consumer.beginning_offsets([ktp]))[ktp])

    async def start_offsets(tps: set[TP]) -> dict[TP, int]:
        """The group's committed offset (asked through the worker's own consumer), else the log start."""
        thread = app.consumer._thread
        group_consumer = thread._ensure_consumer()
        out: dict[TP, int] = {}
        for tp in sorted(tps):
            ktp = TopicPartition(tp.topic, tp.partition)
            committed = await thread.call_thread(group_consumer.committed, ktp)
            out[tp] = await log_start(tp) if committed is None else committed
        return out

    return OffsetGuard(topics, read_back, start_offsets, log_start, check_records)


def attach(pulse: Any) -> OffsetGuard:
    """Install the hooks and give the app a guard over its input topics (the four inputs, retention actions)."""
    from streams.security import kafka_client_kwargs

    install()
    settings = pulse.settings
    guard = broker_guard(
        pulse.app,
        [*settings.input_topics().values(), settings.topic_retention_actions],
        kafka_client_kwargs(settings),
        settings.offset_gap_read_back_seconds,
        settings.consumer_isolation_level,
    )
    pulse.app.pulse_offset_guard = guard
    consumer = getattr(pulse.app, "_consumer", None)  # built already: the __init__ hook came too late
    if consumer is not None and not isinstance(consumer._read_offset, ReadOffsets):
        consumer._read_offset = ReadOffsets(guard.ledger.topics, consumer._read_offset)
    return guard
