"""Profiles rendered in a child process: the worker's thread hands over what a profile is rendered from (issue 18).

Why: a worker is one thread, and turning a re-scored customer into Redis bytes (``render_profile``, the at-risk
``index_entry``, ``pack_profile``) is about a third of a live event's CPU (38-40 µs per profile against 1.4-1.7
µs to hand its inputs to another process: ``benchmarks/render_offload.py``, docs/benchmarks.md). The box's
other core runs only the broker and Redis. With ``PULSE_PROFILE_RENDER_PROCESS`` the processor still decides
WHICH customers to render (``BatchProcessor.to_render``); the checkpoint hands each one's customer id, the
state bytes the changelog now holds, the clock, CLV and churn to this process's child, which decodes the
state, renders, builds the at-risk entry and packs the HSET, and answers with the sink's ``Packed`` tuples.
The parent's ``RedisProfileSink`` takes them as it takes its own packed profiles (latest per customer, one
write in flight, retry with back-off, ``on_recovered``): Redis sees the same bytes.

What the users of the profile view keep:

* per-customer order: one FIFO socket, the child answers in request order, and the answers are handed to the
  sink in that order, so a customer's newer profile is never overwritten by an older one;
* bounded work: at most ``profile_render_max_batches`` batches are handed over and not yet answered; the
  checkpoint waits for an answer beyond (back-pressure on the input, no unbounded queue);
* a revoke settles: :meth:`RenderProcess.settle` waits (bounded) for the answers in flight, which go to the sink
  and its write-behind before the sink settles; answers that come later are dropped (the next owner's sweep
  writes those profiles, as it writes a pending profile the sink drops);
* a render that raises skips only its customer's profile, and quarantines the customer as a failure on the
  worker's thread does: each answer names its batch, and ``on_answered`` (the worker's
  ``Checkpoint.render_answered`` -> ``BatchProcessor.render_answered``) unschedules the customer and leaves it
  out of due checks and sweeps until its next event, unless a later record of it (or a revoke) came first:
  the answer arrives after later batches. One difference stays: a customer with a record in its batch is quarantined
  too, but its record is applied and committed by then, where rendering in-process would have dead-lettered it
  (docs/architecture.md, "The render process");
* the child's death (its end of the socket closed) is the worker's exit (``on_death``): Redis is a view and a
  restarted worker's sweep rewrites it, but a worker whose profiles silently stop is not one.

The child is spawned (it shares no thread, lock or Kafka client with the worker) and imports the installed
``pulse`` packages; it ignores SIGINT/SIGTERM (a terminal's or a supervisor's signal to the group stops the
worker, whose clean exit closes the socket) and leaves when its socket reaches EOF or its parent is gone.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import multiprocessing
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec

from streams import metrics

if TYPE_CHECKING:
    from scoring.customer import ScoringConfig
    from streams.sinks.redis_profiles import Packed

log = logging.getLogger(__name__)

#: one render input: customer id, its state's bytes (as the changelog holds them), the clock (ms), CLV and churn
RenderInput = tuple[str, bytes, int, Any, Any]
#: one answer's profile: customer id, packed HSET, VIP score (None: not VIP), at-risk (index score, keys)
RenderedPacked = tuple[str, bytes, float | None, str, str]

#: multiprocessing.connection's framing, which the child's Connection speaks: a signed 4-byte big-endian
#: length, or -1 and an unsigned 8-byte length for a message of 2 GiB or more
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_SHORT_MAX = 0x7FFFFFFF


def _mapping_proxy(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


# the scoring configuration holds read-only mappings (the churn weights ...), which pickle cannot send to the
# spawned child as they are: sent as dicts, wrapped again there (multiprocessing's pickler only)
ForkingPickler.register(MappingProxyType, lambda proxy: (_mapping_proxy, (dict(proxy),)))


class RenderProcessDied(RuntimeError):
    """The render process is gone: no profile handed to it will come back."""


def frame(payload: bytes) -> list[bytes]:
    """``payload`` as multiprocessing's ``Connection.send_bytes`` frames it (header, payload)."""
    if len(payload) > _SHORT_MAX:
        return [_SHORT.pack(-1) + _LONG.pack(len(payload)), payload]
    return [_SHORT.pack(len(payload)), payload]


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One message framed as multiprocessing's ``Connection.send_bytes`` frames it."""
    (size,) = _SHORT.unpack(await reader.readexactly(_SHORT.size))
    if size == -1:
        (size,) = _LONG.unpack(await reader.readexactly(_LONG.size))
    return await reader.readexactly(size)


# --- the child --------------------------------------------------------------------------------------------------
def render_batch(
    items: Sequence[Sequence[Any]], config: ScoringConfig, currency: str, key_prefix: str, vip_value: str
) -> tuple[list[RenderedPacked], list[tuple[str, str]]]:
    """Render and pack one batch's profiles as the worker's own thread would; returns the packed profiles in
    request order and (customer, error) of those whose rendering raised.

    ``items`` as msgpack decodes them untyped: CLV and churn as maps of their fields, rebuilt here field by
    field, so a number keeps its msgpack type (a typed decode would turn an int ``observed`` into a float, which
    renders differently)."""
    from schemas.profile import render_profile
    from scoring.churn import ChurnAssessment, ChurnReason
    from scoring.clv import ClvSignals
    from streams.codec import decode_state
    from streams.sinks.redis_profiles import pack_profile

    out: list[RenderedPacked] = []
    failures: list[tuple[str, str]] = []
    for cid, raw, at, clv_fields, risk_fields in items:
        try:
            clv = ClvSignals(**clv_fields)
            reasons = tuple(ChurnReason(**reason) for reason in risk_fields["reasons"])
            risk = ChurnAssessment(**{**risk_fields, "reasons": reasons})
            profile = render_profile(cid, decode_state(raw), at, config, currency, clv, risk)
            hset, score, (index_score, index_keys) = pack_profile(profile, key_prefix, vip_value)
        except Exception as exc:  # noqa: BLE001 - one customer's profile, never the batch
            failures.append((cid, f"{type(exc).__name__}: {exc}"))
            continue
        out.append((cid, hset, score, index_score, index_keys))
    return out, failures


def child_main(
    conn: Connection,
    parent: int,
    config: ScoringConfig,
    currency: str,
    prefix: str,
    vip: str,
    gc_thresholds: tuple[int, int, int],
    native: bool = True,
) -> None:
    """The render process: answer each request (sequence number, render inputs) with (sequence number, packed
    profiles, failures, CPU seconds), in order, until EOF or the parent is gone."""
    from schemas.profile import use_native

    use_native(native)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.set_threshold(*gc_thresholds)  # as the worker runs
    decode = msgspec.msgpack.Decoder().decode
    encode = msgspec.msgpack.Encoder().encode
    while True:
        # a parent that died without closing its end (its fd inherited elsewhere) is noticed within a second
        while not conn.poll(1.0):
            if os.getppid() != parent:
                return
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        started = time.process_time()
        seq, items = decode(request)
        packed, failures = render_batch(items, config, currency, prefix, vip)
        conn.send_bytes(encode((seq, packed, failures, time.process_time() - started)))


# --- the parent -------------------------------------------------------------------------------------------------
class RenderProcess:
    """The worker's side: hands batches of render inputs to the child and the answers, in order, to ``on_packed``.

    ``on_packed(profiles)``: customer id -> ``Packed``, one call per answered batch, in request order (the sink's
    ``submit_packed`` and the write-behind). ``on_death(why)``: the child is gone (the worker exits).
    ``on_answered(batch, failures, dropped)``: every answer, in request order, after its ``on_packed``: the
    number ``submit`` was given, (customer id, error) of the profiles that could not be rendered, and whether
    the answer came after a revoke settled without it (its profiles dropped). The worker's quarantines the
    failed customers (``BatchProcessor.render_answered``) and reports them; without it a failure is only
    counted (``pulse_processing_errors_total{stage="render"}``) and logged.
    """

    def __init__(
        self,
        config: ScoringConfig,
        currency: str,
        key_prefix: str,
        vip_value: str,
        max_batches: int,
        gc_thresholds: tuple[int, int, int],
        on_packed: Callable[[dict[str, Packed]], None],
        on_death: Callable[[str], None],
        on_answered: Callable[[int, list[tuple[str, str]], bool], None] | None = None,
    ) -> None:
        from schemas.profile import native_in_use

        # the child renders as this process does: in C or in Python (PULSE_NATIVE_PROFILES, schemas.profile)
        self._args = (config, currency, key_prefix, vip_value, gc_thresholds, native_in_use())
        self.max_batches = max_batches
        self.on_packed = on_packed
        self.on_death = on_death
        self.on_answered = on_answered
        #: request sequence number -> the batch number ``submit`` was given, until answered
        self._batches: dict[int, int] = {}
        self.process: multiprocessing.process.BaseProcess | None = None
        self._sock: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(tuple[int, list[RenderedPacked], list[tuple[str, str]], float]).decode
        #: sequence number of the last request sent, and of the last answered (answers come in order)
        self._sent = 0
        self._answered = 0
        #: answers to requests up to this one are dropped (a revoke settled without them)
        self._discard_through = 0
        self._changed = asyncio.Event()
        self._closing = False
        self._dead: str | None = None

    @property
    def in_flight(self) -> int:
        """Batches handed over and not answered yet."""
        return self._sent - self._answered

    def start(self) -> None:
        """Spawn the child (spawn: no fork of a process with Kafka clients and threads). Its socket is read once
        an event loop runs (:meth:`submit` starts the reader)."""
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = socket.socketpair()
        child_conn = Connection(os.dup(theirs.fileno()))
        theirs.close()
        self.process = ctx.Process(
            target=child_main,
            args=(child_conn, os.getpid(), *self._args),
            name="pulse-render",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self._sock = mine
        # before multiprocessing's own exit handler (registered earlier, so run later) joins the child: closing
        # the socket is what makes it leave
        atexit.register(self.close)

    def attach(self, sock: socket.socket) -> None:
        """Talk to whatever answers on ``sock`` (a started child's socket; tests: a fake child)."""
        self._sock = sock

    async def open(self) -> None:
        """Start the child (unless started) and read its answers: from here its death is seen at once."""
        await self._ensure_reader()

    async def _ensure_reader(self) -> asyncio.StreamWriter:
        if self._dead is not None:
            raise RenderProcessDied(self._dead)
        if self._writer is None:
            if self._sock is None:
                self.start()
            reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
            self._reader_task = asyncio.ensure_future(self._read(reader))
            # here, not at the start: the worker may start the child before its logging is set up
            log.info("profile render process started (pid %s)", None if self.process is None else self.process.pid)
        return self._writer

    async def submit(self, items: Sequence[RenderInput], batch: int = 0) -> None:
        """Hand one batch's render inputs over; waits while ``max_batches`` are in flight (back-pressure).
        ``batch``: the processor's number of the batch (``BatchOutcome.seq``), handed back to ``on_answered``."""
        if not items:
            return
        writer = await self._ensure_reader()
        while self.in_flight >= self.max_batches:
            await self._wait_change()
        self._sent += 1
        self._batches[self._sent] = batch
        writer.writelines(frame(self._encode((self._sent, items))))
        metrics.RENDER_PROCESS_BATCHES_IN_FLIGHT.set(self.in_flight)

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()
        if self._dead is not None:
            raise RenderProcessDied(self._dead)

    async def settle(self, timeout: float) -> int:
        """Wait (at most ``timeout`` s) until every batch handed over is answered (and handed to ``on_packed``);
        returns how many batches are still out, whose answers are then dropped (for a revoke: a late answer
        would be written after the partitions' next owner wrote newer profiles)."""
        deadline = time.monotonic() + timeout
        try:
            while self.in_flight and self._dead is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait_for(self._wait_change(), left)
        except (TimeoutError, RenderProcessDied):
            pass
        late = self.in_flight
        if late:
            self._discard_through = self._sent
            log.warning("%d batches of profiles still rendering after %.1fs at a rebalance: dropped", late, timeout)
        return late

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                seq, packed, failures, cpu = self._decode(await read_frame(reader))
                self._answered = seq
                self._changed.set()
                metrics.RENDER_PROCESS_BATCHES_IN_FLIGHT.set(self.in_flight)
                metrics.RENDER_PROCESS_CPU_SECONDS.inc(cpu)
                metrics.RENDER_PROCESS_PROFILES.inc(len(packed))
                dropped = seq <= self._discard_through
                if not dropped and packed:
                    self.on_packed({cid: (hset, score, (index, keys)) for cid, hset, score, index, keys in packed})
                self._answered_batch(self._batches.pop(seq, 0), failures, dropped)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if self._closing:
                return
            code = None if self.process is None else self.process.exitcode
            if self.process is not None and code is None:
                self.process.join(1.0)
                code = self.process.exitcode
            self._died(f"the profile render process exited (exit code {code}, {type(exc).__name__})")
        except Exception as exc:  # noqa: BLE001 - an answer this side cannot read: as good as dead
            self._died(f"the profile render process answered what cannot be read: {exc!r}")

    def _answered_batch(self, batch: int, failures: list[tuple[str, str]], dropped: bool) -> None:
        if self.on_answered is None:
            for cid, error in failures:
                metrics.PROCESSING_ERRORS.labels("render").inc()
                log.error("rendering the profile of %s raised, not written: %s", cid, error)
            return
        try:
            self.on_answered(batch, failures, dropped)
        except Exception:  # noqa: BLE001 - the profiles are written: a quarantine missed is not a dead child
            log.exception("handling the render process's answer to batch %d (%d failures) raised", batch, len(failures))

    def _died(self, why: str) -> None:
        self._dead = why
        self._changed.set()
        self.on_death(why)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child: close its socket (it leaves at EOF), wait for it, kill it if it does not leave."""
        self._closing = True
        try:
            if self._reader_task is not None and not self._reader_task.done():
                self._reader_task.cancel()
            if self._writer is not None:
                self._writer.close()
        except RuntimeError:  # at exit, the event loop is closed already: the socket is closed below
            pass
        if self._sock is not None:
            self._sock.close()
        process = self.process
        if process is not None and process.pid is not None and process.exitcode is None:
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join(timeout)
