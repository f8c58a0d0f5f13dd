"""The batch input path: the group consumer's fetches handed over as batches of raw records.

Faust delivers each fetched record on its own: a ``Message``, a task race
against the flow-control event, the conductor's lock and decode into an
``Event``, a stream queue, the stream's per-event iteration, then an ack per
event and a commit computed from the sorted acked offsets. That costs 60-80 µs
per event on the project's machine (12,700-16,000 events/s doing nothing),
more than the scorer. Here (``PULSE_INPUT_PATH=batch``) Faust keeps the app,
the worker, the consumer group and its assignor, the table and its changelog
recovery, flow control and the seeks of a rebalance; only the delivery of the
input topics changes:

* ``Consumer.getmany`` is tapped: of each fetch, the records of the batch
  topics go, as one list (merged by timestamp with
  ``PULSE_INPUT_MERGE_TOPICS``, :func:`interleave`), into a :class:`BatchQueue` (after Faust's own
  checks: flow active, generation unchanged, partition active); every other
  record (changelogs during recovery) takes Faust's path as before;
* the queue is managed by ``app.flow_control`` like the stream queues: cleared
  when Faust clears them (a rebalance), so nothing fetched before a rebalance
  is queued after it (the seek to the committed offsets that ends every
  rebalance fetches it again);
* :class:`BatchInput` hands batches to the worker's checkpoint (``limit``
  records, or all queued up to ``backlog_limit`` while ``backlog_from`` or
  more are waiting: the input is behind, and as many as fit a share of the rebalance timeout at the measured
  pace, :class:`BatchPace`), and records what each one applied: the next offset per
  partition. Faust's commit covers exactly that (capped by the offset ledger
  of ``streams.offsets``: never past what the changelog holds), so acks and
  commits belong to the checkpoint, not to per-event bookkeeping;
* a rebalance and a stop wait for the batch in flight (``Consumer.wait_empty``,
  which Faust awaits before revoking and before stopping), then commit.

Records are :class:`InputRecord` objects: ``record.message`` is the record
itself, with the attributes of Faust's message the checkpoint reads, so the
checkpoint takes either path's items.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, cast

from faust.transport.consumer import Consumer
from faust.types import TP

from streams.watchdog import awaiting

log = logging.getLogger(__name__)


class InputRecord:
    """One fetched record of a batch topic: what the checkpoint and the offset ledger read of Faust's message."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "headers", "timestamp", "tp", "__weakref__")

    def __init__(self, tp: TP, record: Any) -> None:
        self.tp = tp
        self.topic = tp.topic
        self.partition = tp.partition
        self.offset: int = record.offset
        self.key: bytes | None = record.key
        self.value: bytes | None = record.value
        self.headers = record.headers
        #: the record's Kafka timestamp (ms; -1: none): orders a fetch's topic-partitions among each other
        timestamp = getattr(record, "timestamp", None)
        self.timestamp: int = -1 if timestamp is None else timestamp

    @property
    def message(self) -> InputRecord:
        """The record itself (a Faust event's ``.message``): the checkpoint reads both paths' items alike."""
        return self

    def __repr__(self) -> str:
        return f"<InputRecord {self.topic}[{self.partition}]@{self.offset}>"


class BatchQueue:
    """Fetched batches waiting for the checkpoint, bounded in records; cleared by Faust's flow control.

    Unlike ``asyncio.Queue``, :meth:`clear` wakes a fetcher waiting for room (it must not stay blocked
    across a rebalance) and a batch can be taken in part (a fetch larger than the checkpoint's batch).
    """

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._batches: deque[list[InputRecord]] = deque()
        self._size = 0
        self._changed = asyncio.Event()
        #: how many times the queue was cleared (a put that waited across a clear drops its records)
        self._clears = 0

    def __len__(self) -> int:
        return self._size

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def clear(self) -> None:
        """Drop every queued record (what ``FlowControlEvent.clear`` / ``resume`` call on a rebalance)."""
        if self._batches:
            log.debug("batch input: %d queued records dropped by flow control", self._size)
        self._batches.clear()
        self._size = 0
        self._clears += 1
        self._notify()

    async def put(self, records: list[InputRecord]) -> bool:
        """Queue a fetch's records; waits while the queue is full (back-pressure on the fetcher).

        Returns False, queueing nothing, when the queue was cleared meanwhile (a rebalance): the records
        queued before them are gone, so these would follow a gap; the rebalance's seek fetches them again.
        """
        clears = self._clears
        while self._size and self._size + len(records) > self.max_records:
            await self._changed.wait()
            if self._clears != clears:
                log.debug("batch input: %d fetched records dropped: the queue was cleared meanwhile", len(records))
                return False
        self._batches.append(records)
        self._size += len(records)
        self._notify()
        return True

    def take_now(self, limit: int) -> list[InputRecord]:
        """Up to ``limit`` queued records, oldest first (a partition's records stay in offset order)."""
        out: list[InputRecord] = []
        batches = self._batches
        while batches and len(out) < limit:
            head = batches[0]
            room = limit - len(out)
            if len(head) <= room:
                out += head
                batches.popleft()
            else:
                out += head[:room]
                batches[0] = head[room:]
        if out:
            self._size -= len(out)
            self._notify()
        return out

    def backlog_keys(self, limit: int, backlog_limit: int | None, backlog_from: int) -> frozenset[bytes]:
        """The record keys of what the next :meth:`take` is sure to return when it will be a backlog batch (the
        queue holds what makes one now, and only a clear removes records), else nothing: the customers the next
        batch scores again (streams.processor defers rendering their profiles to it)."""
        if backlog_limit is None or backlog_limit <= limit or self._size < max(limit, backlog_from):
            return frozenset()
        keys: set[bytes | None] = set()
        left = backlog_limit
        for records in self._batches:
            keys.update(r.key for r in records[:left])
            left -= len(records)
            if left <= 0:
                break
        keys.discard(None)
        return frozenset(cast(set[bytes], keys))

    async def take(
        self,
        limit: int,
        within: float,
        backlog_limit: int | None = None,
        backlog_from: int = 0,
        queued_limit: int | None = None,
    ) -> list[InputRecord]:
        """Up to ``limit`` records: waits for a first one, then at most ``within`` seconds for more (as
        ``take_events``: a batch is full or its time is up).

        ``backlog_limit`` (above ``limit``): when at least ``backlog_from`` records (and a full batch of
        ``limit``) are already queued, the input is behind (a backlog, a replay, a catch-up), and a batch takes
        everything queued up to ``backlog_limit`` at once, as Kafka's ``max.poll.records`` does: never waiting
        to fill it. A large batch amortises the per-batch costs (checkpoint round trips, clock moves, due
        checks) and scores a customer with several events once; a live input, even a few batches behind for a
        moment, keeps batches of ``limit``: an event of a large batch waits for all of it, so its latency grows.

        ``queued_limit``: a live batch that starts with records already queued (they came while the previous batch
        was scored) takes them at once, up to ``queued_limit`` (at least ``limit``), and does not wait ``within``
        for more: they waited a batch already, and the records left queued behind a cut would hold their
        partitions' clocks back (spec: Clock), deferring this batch's customers to a later batch's due check.
        Only an idle input (nothing queued) waits to fill a batch. None: ``limit``, waiting ``within`` to fill it.
        """
        if backlog_limit is not None and backlog_limit > limit and self._size >= max(limit, backlog_from):
            return self.take_now(backlog_limit)
        if queued_limit is not None and self._size:
            return self.take_now(max(limit, queued_limit))
        out = self.take_now(limit)
        while not out:
            await self._changed.wait()
            out = self.take_now(limit)
        deadline = time.monotonic() + within
        while len(out) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                break
            out += self.take_now(limit - len(out))
        return out


class BatchPace:
    """How many records a backlog batch may take so that its checkpoint ends within ``budget_seconds``.

    Why a time bound on top of the record bound: a rebalance waits for the batch in flight
    (:meth:`BatchInput.settle`), and a member that has not rejoined within the group's rebalance timeout is
    dropped from the group: its commit is refused and the worker fail-stops (exit 75) with the batch
    uncommitted. A backlog batch of ``PULSE_BATCH_BACKLOG_MAX_EVENTS`` takes a few hundred ms on a quiet box
    and several seconds on a loaded one, and a second worker joins exactly when there is a backlog to share.
    The pace is measured, not configured: the wall seconds per record of the batches of at least the live size.
    A rise is taken at once; so is a fall measured on a batch at least as large as the one the pace came from
    (a batch's fixed costs spread over more records: its pace is what the next, as large or larger, batch costs
    at most), while a fall on a smaller batch goes halfway. Taken halfway, the falls of a backlog's first,
    growing batches held it at 6,000-8,400 records for most of a short run (docs/benchmarks.md, session 12,
    pace18). Before any is measured a backlog batch takes the live size: the first measurement costs one small
    batch. ``budget_seconds`` None: no time bound. ``clock``: wall seconds (tests give their own)."""

    def __init__(self, budget_seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_seconds = budget_seconds
        self.clock = clock
        #: measured wall seconds per record of a checkpoint (None until a batch of the live size was timed)
        self.seconds_per_record: float | None = None
        #: the records of the batch the pace was last taken from whole (0: none yet)
        self.paced_records = 0

    def backlog_limit(self, limit: int, backlog_limit: int | None) -> int | None:
        """The backlog limit for the next batch: ``backlog_limit`` capped by the budget, never below ``limit``."""
        if backlog_limit is None or self.budget_seconds is None or backlog_limit <= limit:
            return backlog_limit
        if self.seconds_per_record is None:
            return limit
        return max(limit, min(backlog_limit, int(self.budget_seconds / self.seconds_per_record)))

    def timed(self, records: int, seconds: float, limit: int) -> None:
        """A checkpoint of ``records`` took ``seconds``; batches smaller than the live size are mostly fixed cost
        (a live input's) and say little about a backlog batch's pace."""
        if records < limit or records <= 0:
            return
        pace = seconds / records
        known = self.seconds_per_record
        if known is None or pace > known or records >= self.paced_records:
            self.seconds_per_record = pace
            self.paced_records = records
        else:
            self.seconds_per_record = (known + pace) / 2


class BatchInput:
    """The batch topics' records, from the tapped fetches to the checkpoint; what each batch applied.

    ``topics``: the topics delivered in batches (the scoring channel's). ``cap``: the offset Faust may commit
    for a partition given what was applied (the offset ledger's ``cap``; None: the applied offset as it is).
    """

    def __init__(
        self,
        app: Any,
        topics: Iterable[str],
        max_records: int,
        cap: Callable[[TP, int], int | None] | None = None,
        merge: bool = False,
        pace: BatchPace | None = None,
    ) -> None:
        self.app = app
        #: the time bound of backlog batches (none: records only)
        self.pace = pace if pace is not None else BatchPace(None)
        #: each fetch's topic-partitions merged by timestamp (:func:`interleave`), else one after the other
        self.merge = merge
        self.topics = frozenset(topics)
        self.queue = BatchQueue(max_records)
        self.cap = cap
        #: tp -> the offset after the last record a checkpoint applied (what the commit may cover)
        self.applied: dict[TP, int] = {}
        #: the batch in flight (its checkpoint, then the applied offsets), awaited by a rebalance or a stop
        self.in_flight: asyncio.Future | None = None
        #: how long Faust's fetch loop waits before asking again while no partition is active (a table's recovery
        #: pauses them all; streams.faust_fixes): upstream's 1 s until :meth:`run` starts, then the batch's fill wait
        self.idle_seconds = 1.0
        #: monotonic time the last batch started or ended (None: none yet) and the task taking batches (a worker
        #: that took none for long says where its input stands: :meth:`describe`)
        self.last_batch_at: float | None = None
        self.task: asyncio.Task | None = None
        #: tp -> (group generation, offset of the last record delivered in it or None, the consumer's position
        #: after that fetch): how far the fetches read, markers and aborted records included (:meth:`readable_end`)
        self.read_through: dict[TP, tuple[int | None, int | None, int]] = {}
        #: set while the table's partitions are claimed (``CustomerStateTable.claimed``): no batch starts between
        #: an assignment and the end of its recovery's claim, which may still apply changelog records (None: no
        #: table to wait for)
        self.gate: asyncio.Event | None = None
        app.flow_control.manage_queue(self.queue)  # cleared with the stream queues on a rebalance

    async def deliver(self, records: list[InputRecord], generation_id: int) -> bool:
        """Queue one fetch's records once the flow is open, unless a rebalance came in between (then the seek
        that ends it fetches them again); says whether they were queued."""
        await self.app.flow_control.acquire()
        if self.app.consumer_generation_id != generation_id:
            log.debug("batch input: %d fetched records of generation %s dropped", len(records), generation_id)
            return False
        await self.queue.put(records)
        return True

    def fetched(self, generation_id: int | None, positions: Mapping[TP, int], records: list[InputRecord]) -> None:
        """One fetch was delivered: note where the consumer's position stands now for each of the batch topics'
        partitions, and the last record delivered of each."""
        last = {r.tp: r.offset for r in records}
        through = self.read_through
        for tp, position in positions.items():
            before = through.get(tp)
            previous = before[1] if before is not None and before[0] == generation_id else None
            through[tp] = (generation_id, last.get(tp, previous), position)

    def readable_end(self, tp: TP, highwater: int | None, start: int | None) -> int | None:
        """The end offset of ``tp`` as far as records this worker reads go: the highwater, unless the fetches
        already read past it while the last record they delivered ends earlier. The offsets in between hold no
        record it reads (an upstream producer's transaction markers, aborted transactions: every partition a
        transactional producer wrote ends with a marker), so once that last record is applied the partition
        has caught up and holds no clock. ``start``: where this session began reading ``tp`` (its end when
        nothing was delivered)."""
        entry = self.read_through.get(tp)
        if entry is None or highwater is None:
            return highwater
        generation, last, position = entry
        if generation != self.app.consumer_generation_id or position < highwater:
            return highwater
        if last is None:
            return highwater if start is None else min(start, highwater)
        return min(last + 1, highwater)

    def mark_applied(self, records: Sequence[InputRecord]) -> None:
        """The checkpoint made ``records`` durable: Faust's next commit may cover them."""
        applied = self.applied
        for r in records:
            if applied.get(r.tp, -1) <= r.offset:
                applied[r.tp] = r.offset + 1
        inbound = getattr(self.app.monitor, "stream_inbound_time", None)
        if inbound is not None:  # Faust's livelock detector reads it per partition
            now = time.monotonic()
            for tp in {r.tp for r in records}:
                inbound[tp] = now

    def committable(self, consumer: Consumer) -> dict[TP, int]:
        """The offsets to commit for the batch topics: what was applied, capped, beyond the committed offset."""
        assignment = consumer.assignment()
        out = {}
        for tp, offset in list(self.applied.items()):
            if tp not in assignment:
                del self.applied[tp]  # revoked: the next owner commits it
                continue
            capped = self.cap(tp, offset) if self.cap is not None else offset
            committed = consumer._committed_offset[tp]
            if capped is not None and (committed is None or capped > committed):
                out[tp] = capped
        return out

    async def settle(self) -> None:
        """Wait for the batch in flight (its checkpoint either completes or exits the worker)."""
        in_flight = self.in_flight
        if in_flight is not None and not in_flight.done():
            log.info("batch input: waiting for the batch in flight")
            await asyncio.wait({in_flight})

    async def run(
        self,
        checkpoint: Callable[[list[InputRecord]], Awaitable[Sequence[InputRecord]]],
        limit: int,
        within: float,
        guard: Callable[[Awaitable[None]], Awaitable[None]],
        backlog_limit: int | None = None,
        backlog_from: int = 0,
        queued_limit: int | None = None,
    ) -> None:
        """Take batches and hand each to ``checkpoint`` (which returns the records it applied) under ``guard``
        (the worker's ``run_guarded``: the checkpoint completes or the process exits uncommitted); batches of up
        to ``backlog_limit`` while the queue holds ``backlog_from`` records or more, fewer when the measured pace
        says that many would outlast the time budget (:class:`BatchPace`); of all queued up to ``queued_limit``
        without a fill wait when records are queued (:meth:`BatchQueue.take`)."""
        loop = asyncio.get_running_loop()
        self.idle_seconds = within
        self.task = asyncio.current_task()
        while True:
            records = await self.queue.take(
                limit, within, self.pace.backlog_limit(limit, backlog_limit), backlog_from, queued_limit
            )
            # No batch starts while a rebalance is on (the flow is suspended before Faust waits for the batch in
            # flight): it would write states the partitions' next owner may be reading. Records taken before it
            # are applied after it, as Faust's take_events buffer is; those of partitions gone meanwhile are
            # dropped by the checkpoint's ownership filter (streams.offsets.OffsetGuard.owned).
            await self.app.flow_control.acquire()
            # Faust resumes the flow before its recovery's last step, which claims the partitions and applies the
            # changelog records that landed before the owner markers: a batch taken before the rebalance would be
            # scored on states without them, and its writes overwritten by them. Not in flight while it waits, so
            # a rebalance that comes meanwhile does not wait for it.
            while self.gate is not None and not self.gate.is_set():
                await self.gate.wait()
                await self.app.flow_control.acquire()
            self.in_flight = done = loop.create_future()
            started = self.last_batch_at = self.pace.clock()
            try:
                await guard(self._one(checkpoint, records))
                self.pace.timed(len(records), self.pace.clock() - started, limit)
            finally:
                self.last_batch_at = self.pace.clock()
                if not done.done():
                    done.set_result(None)

    def silent_for(self) -> float | None:
        """Seconds since the last batch started or ended, while none is in flight (a long checkpoint is the
        checkpoint watchdog's to report); None before the first batch or during one."""
        last, in_flight = self.last_batch_at, self.in_flight
        if last is None or (in_flight is not None and not in_flight.done()):
            return None
        return self.pace.clock() - last

    def describe(self, consumer: Consumer) -> str:
        """Where the input stands, for a worker that took no batch for long (the worker's ``watch_input_silence``
        timer, streams.agents.customer_events): the flow,
        the queue, the batch topics' partitions assigned, active (fetched) and paused, and what the batch loop
        and Faust's fetch loop await."""
        assigned = {tp for tp in consumer.assignment() if tp.topic in self.topics}
        active = getattr(consumer, "_active_partitions", None)
        paused: set[TP] = getattr(consumer, "_paused_partitions", set())
        buffered: set[TP] = getattr(consumer, "_buffered_partitions", set())
        inactive = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned if active is not None and tp not in active)
        # Faust's fetch loop runs as a task of its Fetcher service: the one whose chain passes Fetcher._fetcher
        chains = [awaiting(task) for task in asyncio.all_tasks()]
        fetch_loop = next((chain for chain in chains if "Fetcher._fetcher" in chain), "-")
        parts = [
            f"flow {'active' if self.app.flow_control.is_active() else 'suspended'}",
            f"{len(self.queue)} records queued (queue cleared {self.queue._clears} times)",
            f"{len(assigned)} partitions of its topics assigned, not active: {inactive or 'none'}",
            f"paused: {sorted(str(tp) for tp in paused if tp.topic in self.topics) or 'none'}",
            f"buffered: {sorted(str(tp) for tp in buffered) or 'none'}",
            f"batch loop awaits: {'-' if self.task is None else awaiting(self.task)}",
            f"fetch loop awaits: {fetch_loop}",
        ]
        return "; ".join(parts)

    async def _one(
        self, checkpoint: Callable[[list[InputRecord]], Awaitable[Sequence[InputRecord]]], records: list[InputRecord]
    ) -> None:
        self.mark_applied(await checkpoint(records))


# --- Faust hooks ---------------------------------------------------------------------------------

_upstream: dict[str, Any] = {}
_INSTALLED = False


def input_of(consumer: Consumer) -> BatchInput | None:
    return getattr(consumer.app, "pulse_batch_input", None)


async def _getmany_tapped(self: Consumer, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
    """``Consumer.getmany`` (faust-streaming 0.15.3) whose batch topics' records go to the batch input.

    The same checks as upstream, per fetch instead of per record: nothing is delivered when the flow
    stopped (upstream seeks back to the committed offsets then), when the group generation moved, or for a
    partition no longer active. The other records are yielded to Faust's fetch loop as upstream does.
    """
    tap = input_of(self)
    if tap is None:
        async for item in _upstream["getmany"](self, timeout):
            yield item
        return
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    if not self.flow_active:
        self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
        try:
            await self.perform_seek()
        except Exception as ex:  # noqa: BLE001 - as upstream: logged, the next fetch tries again
            self.log.warning(f"exception performing seek when flow not active {ex}")
        return
    fetched: list[list[InputRecord]] = []
    rest: dict[Any, Any] = {}
    buffered = self._buffered_partitions
    track = self.app.monitor.track_tp_end_offset
    for tp, tp_records in records.items():
        if not (active_partitions is None or tp in active_partitions or tp in buffered):
            continue
        if tp.topic in tap.topics:
            track(tp, self.highwater(tp))
            fetched.append([InputRecord(tp, r) for r in tp_records])
        else:
            rest[tp] = tp_records
    delivered = interleave(fetched) if tap.merge else [r for rs in fetched for r in rs]
    if not fetched or await tap.deliver(delivered, generation_id):
        tap.fetched(generation_id, fetch_positions(self, tap.topics, active_partitions), delivered)
    if not rest:
        return
    to_message = self._to_message
    for tp, record in self.scheduler.iterate(rest):
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            break
        track(tp, self.highwater(tp))
        yield tp, to_message(tp, record)


def fetch_positions(consumer: Consumer, topics: frozenset[str], active: set[TP] | None) -> dict[TP, int]:
    """The aiokafka consumer's position of each assigned partition of ``topics`` (active ones when given): the
    offset after what its fetches handed over, control batches and aborted records included. Read in the
    main thread right after a getmany, the only call that moves it; a partition without a position yet (being
    reset) is left out."""
    try:
        assignment = cast(Any, consumer)._thread._ensure_consumer()._subscription.subscription.assignment
    except Exception:  # noqa: BLE001 - no consumer or assignment yet (starting, rebalancing): nothing known
        return {}
    out: dict[TP, int] = {}
    for tp in assignment.tps if active is None else active:
        if tp.topic in topics:
            try:
                state = assignment.state_value(tp)
            except Exception:  # noqa: BLE001 - revoked meanwhile
                continue
            if state is not None and state.has_valid_position:
                out[tp] = state.position
    return out


def interleave(fetched: list[list[InputRecord]]) -> list[InputRecord]:
    """One fetch's records of several topic-partitions, merged by Kafka timestamp; each topic-partition's records
    stay in offset order (a merge never reorders one input).

    Concatenated per topic-partition, a fetch larger than a batch (an input behind: Tansu answers a held fetch
    with hundreds of records per topic-partition) is cut into batches of one or two topics; the other topics of
    a partition then hold its clock back (spec: Clock), so most customers of the batch wait for a later batch's
    due check: scored and written twice, their alerts a batch later (docs/benchmarks.md, session 9, the live
    path). Merged, a batch covers about the same span of time on every topic."""
    if len(fetched) == 1:
        return fetched[0]
    return list(heapq.merge(*fetched, key=attrgetter("timestamp")))


def _filter_committable_with_batches(self: Consumer, tps: Iterable[TP]) -> dict[TP, int]:
    offsets = _upstream["_filter_committable_offsets"](self, tps)
    tap = input_of(self)
    if tap is not None:
        offsets.update(tap.committable(self))
    return offsets


async def _wait_empty_and_batches(self: Consumer) -> None:
    """``Consumer.wait_empty`` that first waits for the batch in flight (a rebalance, a stop), so its offsets
    are in the commit that follows and nothing of it is written after the partitions moved on."""
    tap = input_of(self)
    if tap is not None:
        await tap.settle()
    await _upstream["wait_empty"](self)


def install() -> None:
    """Patch Faust's consumer; it only changes apps that carry a ``pulse_batch_input``."""
    global _INSTALLED
    if not _INSTALLED:
        for name in ("getmany", "_filter_committable_offsets", "wait_empty"):
            _upstream[name] = getattr(Consumer, name)
        Consumer.getmany = _getmany_tapped  # type: ignore[method-assign]
        Consumer._filter_committable_offsets = _filter_committable_with_batches  # type: ignore[method-assign]
        Consumer.wait_empty = _wait_empty_and_batches  # type: ignore[method-assign]
        _INSTALLED = True


def attach(
    app: Any,
    topics: Iterable[str],
    max_records: int,
    cap: Callable[[TP, int], int | None] | None = None,
    merge: bool = False,
    pace: BatchPace | None = None,
) -> BatchInput:
    """Give ``app`` a batch input for ``topics`` (fetched records of them reach only it) and install the hooks."""
    install()
    tap = BatchInput(app, topics, max_records, cap, merge, pace)
    app.pulse_batch_input = tap
    return tap
