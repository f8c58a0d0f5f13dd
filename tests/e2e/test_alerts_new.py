"""`pulse alerts --new` prints only alerts raised after it started, on both brokers.

Tansu answers ListOffsets(latest) with the start of the last record batch + 1, so a reader
seeking to that "end" used to print the rest of the last batch as new; the reader now takes
the end from a fetch's high watermark (``pulse.alerts.seek_to_log_end``).
"""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pulse.alerts import watch
from tests.router_fixtures import alert_dict

pytestmark = pytest.mark.e2e


def test_new_prints_only_alerts_raised_after_it_started(namespace):
    settings = namespace.settings
    topic = settings.topic_retention_alerts

    async def go() -> list[str]:
        producer = AIOKafkaProducer(bootstrap_servers=namespace.bootstrap, acks="all", linger_ms=50)
        await producer.start()
        try:
            # earlier alerts, in one record batch per partition (linger), as a busy worker sends them
            old = [await producer.send(topic, orjson.dumps(alert_dict(i)), partition=0) for i in range(10)]
            offsets = [m.offset for m in await asyncio.gather(*old)]
            assert offsets == list(range(10))
            out, positioned = io.StringIO(), asyncio.Event()
            reader = asyncio.create_task(
                watch(
                    settings,
                    out=out,
                    follow=True,
                    from_beginning=False,
                    as_json=True,
                    max_alerts=1,
                    positioned=positioned,
                )
            )
            await asyncio.wait_for(positioned.wait(), 60)
            # a real alert: --json validates what it prints (a record that is not an alert goes to stderr)
            await producer.send_and_wait(topic, orjson.dumps(alert_dict(99)), partition=0)
            assert await asyncio.wait_for(reader, 60) == 1
            return [orjson.loads(line)["alert_id"] for line in out.getvalue().splitlines()]
        finally:
            await producer.stop()

    assert asyncio.run(go()) == [alert_dict(99)["alert_id"]]
