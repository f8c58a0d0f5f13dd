"""Fixes for faust-streaming (and aiokafka) bugs that lose events, crash a worker or hang its stop, applied when
the app is built.

Each fix replaces one method with the upstream code re-ordered (or, for the seek, moved to the consumer
thread), and says why; ``tests/e2e/test_restart_recovery.py`` fails without the recovery ones.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import TopicAuthorizationFailedError
from faust.app.base import App
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, RecordMap, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import Transport
from faust.types import TP

from streams.batch_input import input_of

log = logging.getLogger(__name__)

_APPLIED = False

#: how long the fetch loop waits before it asks again while no partition is active (upstream's 1 s), unless the
#: app's batch input says otherwise (``BatchInput.idle_seconds``)
UPSTREAM_IDLE_SECONDS = 1.0


def _resume_flow_control(app: object) -> None:
    """``flow_control.resume()`` only if the flow is suspended.

    Resuming clears every stream queue (``FlowControlEvent.resume``): right for
    the records queued before a rebalance, wrong for those the fetcher
    delivered since the flow was last resumed. The table recovery resumes the
    flow before it completes (and seeks), then completion resumed it again,
    clearing records of kept partitions fetched in between, while later ones
    went on: the stream saw offsets 51..53, then 60 (issue 15).
    """
    flow_control = app.flow_control  # type: ignore[attr-defined]
    if not flow_control.is_active():
        flow_control.resume()


#: set while the seek before a resume runs (Faust's ``on_recovery_completed`` and ``_resume_streams``): the
#: recovery's revocation count when the assignment it resumes came (``BulkRecovery.assigned_at``), else None. A context
#: variable set around the seek alone: Faust's fetch loop seeks too, in its own task (streams.offsets tells the
#: two apart), and a task started during a resume (the fetcher, by ``maybe_start``) would inherit a wider one.
RESUME_SEEK: ContextVar[int | None] = ContextVar("pulse_resume_seek", default=None)


async def _resume_seek(consumer: Any, since: int) -> None:
    token = RESUME_SEEK.set(since)
    try:
        await consumer.perform_seek()
    finally:
        RESUME_SEEK.reset(token)


async def _resume_streams_seek_first(self: Recovery, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` (faust-streaming 0.15.3) with the seek moved before the resume.

    Upstream resumes the stream partitions and only then seeks them to the
    committed offsets. The fetcher is already running (it was started to read
    the changelogs), so it delivers records from the old position first; the
    seek then rewinds the consumer's read offset, Faust records the distance to
    the records already buffered as a *gap* (which it treats as acknowledged,
    so committable), and drops the re-fetched records as already read. After a
    restart, a whole batch of input events was skipped for good. Upstream fixed
    the same ordering for apps without tables (faust-streaming#216, PR #217).
    """
    app = self.app
    consumer = app.consumer
    since = getattr(self, "assigned_at", 0)  # BulkRecovery's (streams.tables)
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(_resume_seek(consumer, since), timeout=app.conf.broker_request_timeout)
        self.log.dev("Resume stream partitions")
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    _resume_flow_control(app)
    consumer.resume_flow()
    await app._fetcher.maybe_start()  # type: ignore[attr-defined]  # App has it, AppT does not say so
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


async def _on_recovery_completed_seek_first(self: Recovery, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` (faust-streaming 0.15.3), the path apps with
    tables take, with the same fix as :func:`_resume_streams_seek_first`."""
    consumer = self.app.consumer
    since = getattr(self, "assigned_at", 0)  # BulkRecovery's (streams.tables)
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} param {generation_id}")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(_resume_seek(consumer, since), timeout=self.app.conf.broker_request_timeout)
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    self.log.dev("Resume stream partitions")
    _resume_flow_control(self.app)
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]  # App has it, AppT does not say so
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _wait_next_records_snapshot(self: Consumer, timeout: float) -> tuple[RecordMap | None, set[TP] | None]:
    """``Consumer._wait_next_records`` (faust-streaming 0.15.3) fetching for a *copy* of the active set.

    Upstream hands its live active-partition set to the consumer thread. When
    recovery pauses the changelog partitions meanwhile, the set is empty by the
    time aiokafka runs ``getmany(*partitions)``, which then means *all*
    partitions; Faust discards the records of every partition not in the (now
    empty) set after aiokafka has moved past them. A new worker whose group had
    not committed yet skipped everything produced before it started. (A copy of
    this method that handed over the live set again skipped offsets after
    recoveries in session 12; tests/unit/test_faust_fixes.py fails with it.)

    While no partition is active (a table's recovery pauses them all) upstream
    sleeps a whole second before it asks again; an app with a batch input waits
    its ``idle_seconds`` instead (the batch's fill wait once it runs), so the
    first batch after a rebalance does not come up to a second after the worker
    is ready (docs/benchmarks.md, session 12, pace18).
    """
    if not self.flow_active:
        await self.wait(self.can_resume_flow)  # type: ignore[arg-type]  # as upstream: an asyncio.Event
    try:
        self.not_waiting_next_records.set()
        active_partitions: set[TP] | None
        if self.app.client_only:
            active_partitions = None
        else:
            active_partitions = set(self._get_active_partitions())
        records: RecordMap = {}
        if active_partitions is None or active_partitions:
            records = await self._getmany(active_partitions=active_partitions, timeout=timeout)
        else:
            tap = input_of(self)
            await self.sleep(UPSTREAM_IDLE_SECONDS if tap is None else tap.idle_seconds)
        return records, active_partitions
    finally:
        self.not_waiting_next_records.set()


async def _seek_on_consumer_thread(self: ThreadDelegateConsumer, partition: TP, offset: int) -> None:
    """``ThreadDelegateConsumer._seek`` (faust-streaming 0.15.3) run on the consumer's own thread.

    Upstream calls aiokafka's ``seek`` from the calling (main) thread. aiokafka's fetcher then drops the
    partition's fetched records (``Fetcher.seek_to``: ``del self._records[tp]``) while the consumer thread may be
    in ``fetched_records`` between reading that entry and deleting it: ``KeyError``, the Fetcher service
    crashes and the worker exits. Seen once in a fresh clone's ``test_clock.py`` replay on Kafka (session 18),
    where the ledger's seek of partitions without a commit (streams.offsets) ran right after a second worker
    joined. Faust's other seeks (``seek_to_committed``, ``seek_wait``) already go through ``call_thread``.
    """
    await self._thread.call_thread(_seek_now, self._thread, partition, offset)


async def _seek_now(thread: Any, partition: TP, offset: int) -> None:
    """On the consumer thread (its event loop): aiokafka's ``seek``, as upstream's ``_seek`` calls it."""
    thread.seek(partition, offset)


_UPSTREAM_CREATE_TOPIC = Transport._really_create_topic


async def _create_topic_unless_it_exists(
    self: Transport, owner: Any, client: Any, topic: str, partitions: int, replication: int, **kwargs: Any
) -> None:
    """``Transport._really_create_topic``, except that a CREATE the cluster's ACLs deny is no error for a topic
    that exists.

    Faust declares its internal topics (the state table's changelog) at every start, and skips the request only
    for a topic its producer's metadata already lists, which at start-up it does not. Kafka checks the CREATE
    permission before whether the topic exists, so on a cluster whose ACLs give the worker READ, WRITE and DESCRIBE
    on topics an admin made (``pulse topics``, or ``streams.admin.ensure_topics`` under the admin's credentials)
    the worker crashed at every start with ``TopicAuthorizationFailedError: Cannot create topic``
    (tests/e2e/test_kafka_acls.py). The topic being there is all the worker needs; one that is not is still an
    error."""
    try:
        await _UPSTREAM_CREATE_TOPIC(self, owner, client, topic, partitions, replication, **kwargs)
    except TopicAuthorizationFailedError:
        cluster = await client.fetch_all_metadata()  # the topics this principal may DESCRIBE
        if topic not in cluster.topics():
            raise
        owner.log.info("Topic %r exists (this principal may not create topics, and need not)", topic)


def _ignore_rebalance_when_stopped(self: App) -> None:
    """A rebalance that reaches a stopping worker changes nothing here: its consumer leaves the group as it stops.

    Upstream (``App._on_rebalance_when_stopped``) calls ``consumer.close()``, which schedules aiokafka's
    ``client.close()`` and ``coordinator.close()`` on the app's event loop, not on the consumer thread's that
    owns them. When workers stop together (a scale-in, ``pulse dev`` stopping its workers, a rolling restart)
    the group rebalances while each stops, so this ran while the stop's own offset commit was in flight on the
    consumer thread: the client closed that commit's connection, the coordinator was marked dead, and the
    coordinator, now closing, never looked it up again, so aiokafka's commit retried forever and the heartbeat
    logged ten errors a second. The worker never exited until it was killed (30 s later in the tests, the
    pod's grace period in Kubernetes), and it never sent LeaveGroup, so the others waited out its session
    timeout (2 of 8 suite runs' chaos teardowns on Kafka; 1 of 6 rounds of 3 workers stopped together under
    traffic; every test's teardown now fails on a worker that outlives SIGTERM by 30 s). Returning instead lets
    the stop go on as usual: its commit lands or fails as any commit in a rebalance does ("already rebalanced",
    which Faust ignores), then the consumer thread stops its consumer, which leaves the group."""
    self.log.info("A rebalance while stopping: ignored (the consumer leaves the group as it stops)")


#: aiokafka's own, which ``apply`` replaces (tests/unit/test_faust_fixes.py shows its endless loop)
_UPSTREAM_COMMIT_OFFSETS = GroupCoordinator.commit_offsets


async def _commit_offsets_unless_closing(self: GroupCoordinator, assignment: Any, offsets: Any) -> None:
    """aiokafka's ``GroupCoordinator.commit_offsets``, except that it gives up once the coordinator is closing and
    knows no group coordinator (the upstream loop with that one check added).

    Upstream retries a retriable error until the commit lands, and a closing coordinator's
    ``ensure_coordinator_known`` returns at once without looking one up, so such a commit loops forever every
    ``retry_backoff_ms`` (the hang ``_ignore_rebalance_when_stopped`` removes one cause of; aiokafka#659 was
    another). The error raised is the one a commit in a rebalance gets, which Faust's commit treats as a failed
    commit, not as a crash: the offsets are not committed, and the partitions' next owner re-reads from the last
    commit, as after a kill (the checkpoint's ownership epochs make that exact)."""
    while True:
        await self.ensure_coordinator_known()
        # not closing, it returned with one (lost since, the send below fails and is retried, as upstream)
        if self.coordinator_id is None and self._closing.done():
            log.warning("offset commit given up: the consumer is closing and its group coordinator is unknown")
            raise kafka_errors.CommitFailedError(
                "Commit cannot be completed since the group has already rebalanced: the consumer is closing and "
                "its group coordinator is unknown"
            )
        try:
            async with self._commit_lock:
                await asyncio.shield(self._do_commit_offsets(assignment, offsets))
        except (
            kafka_errors.UnknownMemberIdError,
            kafka_errors.IllegalGenerationError,
            kafka_errors.RebalanceInProgressError,
        ) as exc:
            raise kafka_errors.CommitFailedError(
                "Commit cannot be completed since the group has already rebalanced and may have assigned the "
                "partitions to another member"
            ) from exc
        except kafka_errors.KafkaError as err:
            if not err.retriable:
                raise
            await asyncio.sleep(self._retry_backoff_ms / 1000)
        else:
            return


def apply() -> None:
    global _APPLIED
    if not _APPLIED:
        App._on_rebalance_when_stopped = _ignore_rebalance_when_stopped  # type: ignore[method-assign]
        GroupCoordinator.commit_offsets = _commit_offsets_unless_closing  # type: ignore[method-assign]
        Transport._really_create_topic = _create_topic_unless_it_exists  # type: ignore[method-assign]
        Recovery._resume_streams = _resume_streams_seek_first  # type: ignore[method-assign]
        Recovery.on_recovery_completed = _on_recovery_completed_seek_first  # type: ignore[method-assign]
        Consumer._wait_next_records = _wait_next_records_snapshot  # type: ignore[method-assign]
        ThreadDelegateConsumer._seek = _seek_on_consumer_thread  # type: ignore[method-assign]
        _APPLIED = True
