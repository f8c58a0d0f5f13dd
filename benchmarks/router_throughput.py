"""Throughput and latency of pulse router on an embedded broker, to local receivers.

Usage: .venv/bin/python benchmarks/router_throughput.py [ALERTS]   (default 2000)

Starts Tansu and redis-server (pulse.devstack), a local aiohttp receiver that
answers 200 at once, and ``pulse router`` as a subprocess with two
destinations: a generic webhook (one signed request per alert) and a Slack
webhook with quiet grouping (digests). Produces ALERTS retention alerts at
once, then prints, per destination, the alerts delivered per second from the
first to the last acknowledgement, the messages sent, and the raised→delivered
latency quantiles (raised_at is the produce time here, so this is the router's
own latency, backlog included); then 20 alerts 0.5 s apart, the latency of
live operation (a digest destination waits its grouping window on purpose).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from pulse.devstack import DevStack, free_port, stop_process
from testing.stack import start_pulse

ALERT_ID = re.compile(r"alert (C\d+:churn:\d+)")
TIMEOUT_SECONDS = 600.0
#: the second phase: alerts one at a time
SPACED_ALERTS = 20
SPACED_SECONDS = 0.5


def alert(n: int) -> dict:
    return {
        "alert_id": f"C{n:06d}:churn:1",
        "customer_id": f"C{n:06d}",
        "raised_at": datetime.now(UTC).isoformat(),
        "kind": "entered",
        "level": "high" if n % 3 == 0 else "medium",
        "previous_level": "low",
        "risk_score": 70 if n % 3 == 0 else 40,
        "reasons": [{"code": "overdue", "observed": 91.0, "threshold": 90.0, "detail": "no purchase for 91 days"}],
        "vip": n % 20 == 0,
        "priority": n % 20 == 0,
        "segment": "at_risk",
        "rfm_cell": "233",
        "currency": "USD",
        "revenue": "1200.00",
        "revenue_window": "300.00",
        "clv": "118.48",
        "p_alive": 0.55,
        "value_at_risk": "90.00",
        "suggested_action": "win-back offer or personalised recommendation",
    }


class Receiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: dict[str, list[float]] = {"webhook": [], "slack": []}
        self.messages: dict[str, int] = {"webhook": 0, "slack": 0}
        self.raised: dict[str, float] = {}
        self.latency: dict[str, list[float]] = {"webhook": [], "slack": []}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhook", self.webhook)
        app.router.add_post("/slack", self.slack)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()

    def _record(self, kind: str, ids: list[str]) -> None:
        now = time.time()
        self.messages[kind] += 1
        for i in ids:
            self.acked[kind].append(now)
            if i in self.raised:
                self.latency[kind].append(now - self.raised[i])

    async def webhook(self, request: web.Request) -> web.Response:
        await request.read()
        self._record("webhook", [request.headers["Idempotency-Key"]])
        return web.json_response({"ok": True})

    async def slack(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = "\n".join(b["text"]["text"] for b in body["blocks"] if b["type"] == "section")
        self._record("slack", ALERT_ID.findall(text))
        return web.Response(text="ok")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    stack = DevStack.start(tmp)
    receiver = Receiver(free_port())
    config = tmp / "router.toml"
    config.write_text(
        f"""
[router]
default_route = ["webhook", "slack"]

[[destinations]]
name = "webhook"
kind = "webhook"
url = "http://127.0.0.1:{receiver.port}/webhook"
secret = "bench"

[[destinations]]
name = "slack"
kind = "slack"
url = "http://127.0.0.1:{receiver.port}/slack"
rate_per_minute = 0
group_seconds = 1
"""
    )
    env = {
        **os.environ,
        **stack.env(),
        "PULSE_ENV_FILE": "",
        "PULSE_ROUTER_CONFIG_FILE": str(config),
        "PULSE_ROUTER_METRICS_PORT": "0",
        "PULSE_BROKER_REBALANCE_TIMEOUT": "3",
        "PULSE_BROKER_SESSION_TIMEOUT": "6",
        "PULSE_BROKER_HEARTBEAT_INTERVAL": "0.5",
    }
    log = tmp / "router.log"
    router = start_pulse(["router", "--loglevel", "warning"], env, log)
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.2)
        alerts = [alert(i) for i in range(n)]

        async def produce(alerts: list[dict]) -> None:
            producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{stack.broker.port}", acks="all", linger_ms=5)
            await producer.start()
            try:
                for a in alerts:
                    a["raised_at"] = datetime.now(UTC).isoformat()
                    receiver.raised[a["alert_id"]] = time.time()
                    await producer.send("retention-alerts", orjson.dumps(a), key=a["customer_id"].encode())
                await producer.flush()
            finally:
                await producer.stop()

        # warm up: the group join (about the rebalance timeout) is not the router's latency
        asyncio.run(produce([alert(n)]))
        while any(len(v) < 1 for v in receiver.acked.values()) and time.monotonic() < deadline + TIMEOUT_SECONDS:
            time.sleep(0.1)
        for kind in receiver.acked:
            receiver.acked[kind].clear()
            receiver.latency[kind].clear()
            receiver.messages[kind] = 0
        start = time.time()
        asyncio.run(produce(alerts))
        print(f"produced {n} alerts in {time.time() - start:.2f} s")
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while any(len(v) < n for v in receiver.acked.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for kind, times in receiver.acked.items():
            span = (max(times) - min(times)) if len(times) > 1 else float("nan")
            lat = receiver.latency[kind]
            print(
                f"{kind:8s} {len(times)}/{n} delivered in {receiver.messages[kind]} messages; "
                f"{len(times) / span if span else float('nan'):,.0f} alerts/s first→last ack; "
                f"raised→delivered p50 {quantile(lat, 0.5):.3f} s, p99 {quantile(lat, 0.99):.3f} s, "
                f"max {max(lat) if lat else float('nan'):.3f} s"
            )
        # one at a time, as alerts arrive in live operation: the latency without a backlog
        for kind in receiver.acked:
            receiver.latency[kind].clear()
        spaced = [alert(n + 1 + i) for i in range(SPACED_ALERTS)]
        for a in spaced:
            asyncio.run(produce([a]))
            time.sleep(SPACED_SECONDS)
        while any(len(v) < n + SPACED_ALERTS for v in receiver.acked.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for kind, lat in receiver.latency.items():
            print(
                f"{kind:8s} {SPACED_ALERTS} alerts {SPACED_SECONDS} s apart: raised→delivered "
                f"p50 {quantile(lat, 0.5):.3f} s, max {max(lat) if lat else float('nan'):.3f} s"
            )
    finally:
        stop_process(router, 30)
        stack.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
