"""Consumer lag of the input partitions this worker owns, as a Prometheus gauge.

Every ``lag_poll_seconds`` a timer sets ``pulse_consumer_lag_records{topic,
partition}`` = high water − position for each assigned input partition, from
Faust's consumer API:

* ``consumer.highwater(tp)``: the log end offset the broker reported with the
  last fetch response (no extra request; unknown until the first fetch of the
  partition, then skipped);
* ``await consumer.position(tp)``: the offset of the next record to fetch.

So the gauge counts records this worker has not fetched yet; the few
hundred a stream buffers between fetch and checkpoint are not in it. That is
the number an operator scales on: it grows when the workers fall behind the
producers. ``Consumer.highwaters()`` (a ListOffsets request) is not used: it
costs a round trip per poll, and on Tansu it reports the start of the last
record batch instead of the log end.

Label sets of partitions no longer assigned (after a rebalance) are removed,
so a partition is reported by exactly one worker and a sum over workers is the
group's lag.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka.errors import IllegalStateError

from streams import metrics

if TYPE_CHECKING:
    from faust.types import TP

    from streams.app import PulseApp

log = logging.getLogger(__name__)


def register(pulse: PulseApp) -> None:
    """Define the lag timer on the app."""
    settings = pulse.settings
    app = pulse.app
    inputs = frozenset(settings.input_topics().values())
    # a position lookup may wait on an offset reset; never longer than one poll period
    position_timeout = settings.lag_poll_seconds
    reported: set[tuple[str, str]] = set()

    async def lag_of(tp: TP) -> int | None:
        try:
            # a rebalance may take the partition away between the assignment read and here: aiokafka then
            # asserts (seen in the chaos run: the timer's AssertionError crashed the worker)
            highwater = app.consumer.highwater(tp)
            if highwater is None:
                return None
            position = await asyncio.wait_for(app.consumer.position(tp), timeout=position_timeout)
        except (TimeoutError, AssertionError, IllegalStateError):
            return None
        if position is None:
            return None
        return max(0, highwater - position)

    @app.timer(settings.lag_poll_seconds, name="report_consumer_lag")
    async def report_consumer_lag() -> None:
        try:
            assigned = [tp for tp in app.consumer.assignment() if tp.topic in inputs]
        except Exception as exc:  # noqa: BLE001 - consumer not started or stopping: try next time
            log.debug("no assignment for the lag gauge: %r", exc)
            return
        current: set[tuple[str, str]] = set()
        for tp in sorted(assigned):
            labels = (tp.topic, str(tp.partition))
            current.add(labels)
            lag = await lag_of(tp)
            if lag is not None:
                metrics.CONSUMER_LAG.labels(*labels).set(lag)
        for labels in reported - current:
            try:
                metrics.CONSUMER_LAG.remove(*labels)
            except KeyError:
                pass
        reported.clear()
        reported.update(current)
