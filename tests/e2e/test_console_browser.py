"""The service console in a real headless Chromium: log in, filter the queue, open a customer, act, see it live.

Real everything: a scoring worker turns tests/at_risk_story.py into churn
alerts and profiles, ``pulse console`` runs as its own process against the
same broker and Redis, and Debian's chromium (``/usr/bin/chromium``, driven by
Python playwright, no browser download) loads its pages. The story: log in,
filter the queue to VIP customers at high risk (only B), open B, acknowledge
and resolve B's alert, and watch a second page (another tab of the same
login) show each change without reloading, and then VIP entries and exits
as big orders reshuffle the VIP share. The actions must be on the
retention-actions topic with the logged-in user as the actor. Screenshots of
each page go to ``<the test's tmp_path>/screenshots``. Last, ``pulse console``
is restarted and shows the population trend it kept in Redis at once.

One broker only: the console reads Redis and consumes/produces three topics
with a plain aiokafka client, exactly as the router does; the broker
differences the suite covers (Tansu vs Apache Kafka) are in the worker's
transactions and rebalances, which test_at_risk and the worker tests run on
both. A second broker would only double a slow browser test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis

from pulse.devstack import free_port, stop_process
from schemas.profile import CustomerProfile
from streams.console.cases import alerts_key, channel
from streams.console.trends import trend_key
from streams.sinks.redis_profiles import profile_key
from testing.stack import consume, get_json, produce, start_pulse, wait_until
from tests import at_risk_story as story
from tests.churn_story import iso
from tests.conftest import first_broker_only

pytestmark = pytest.mark.e2e

TOKEN = "console-test-token"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: how long the browser waits for an element or a live change (ms): the machine may be loaded
BROWSER_WAIT_MS = int(float(os.environ.get("PULSE_TEST_CONVERGE_SECONDS", "90")) * 1000)


@pytest.fixture
def playwright_api():
    """Python playwright's sync API once Debian's chromium is there. The browser is started inside the test, after
    the data is produced: the sync API runs an event loop in this thread, and produce/consume use asyncio.run."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: chromium is missing (scripts/setup.sh installs Debian's chromium)")
        pytest.skip("no chromium (scripts/setup.sh installs Debian's chromium)")
    return pytest.importorskip("playwright.sync_api")


def in_thread(work: Callable[[], None]) -> None:
    """Run ``work`` (which may use asyncio.run) in its own thread: playwright's sync API holds this one's loop."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="console-test-produce")
    thread.start()
    thread.join(BROWSER_WAIT_MS / 1000)
    assert not thread.is_alive(), "producing did not finish"
    if failed:
        raise failed[0]


def get_text(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """(status, body) of a GET; (0, '') when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def vip_change(cid: str, kind: str) -> str:
    """A script: is ``cid`` in the VIP list's entries (kind 'enter') or exits ('exit')?"""
    links = f"document.querySelectorAll('#vips .vip-changes li.{kind} a')"
    return f"[...{links}].some(a => a.innerText === '{cid}')"


def produce_orders(namespace, orders: list[tuple[str, int, str]]) -> None:
    """(customer, day, amount) orders of the story's shape, to the namespace's orders topic."""
    records = [(cid.encode(), orjson.dumps(story.order(cid, day, amount)[1])) for cid, day, amount in orders]
    produce(namespace.bootstrap, namespace.settings.topic_orders, records)


def actions_topic(namespace) -> str:
    """The test's own retention-actions topic (the namespace has none), as tests/e2e/test_router.py names it."""
    return namespace.settings.topic_retention_alerts + "-actions"


@dataclass
class ConsoleProcess:
    """``pulse console`` as its own process; ``restart`` stops it and starts a new one on the same port."""

    env: dict[str, str]
    log: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_pulse(["console"], self.env, self.log)
        assert wait_until(lambda: get_json(self.base + "/health")[0] == 200), self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def console(namespace) -> Iterator[ConsoleProcess]:
    port = free_port()
    env = {**os.environ, **namespace.env, "PULSE_CONSOLE_PORT": str(port), "PULSE_API_TOKEN": TOKEN}
    env["PULSE_CONSOLE_STATS_SECONDS"] = "2"
    env["PULSE_CONSOLE_TREND_SECONDS"] = "2"  # a trend point per reading: the panel has lines within the test
    env["PULSE_TOPIC_RETENTION_ACTIONS"] = actions_topic(namespace)
    process = ConsoleProcess(env, namespace.log_dir / "console.log", port)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def test_queue_filter_customer_actions_and_live_updates(devstack, namespace, start_worker, console, playwright_api):
    first_broker_only(devstack, "the console (broker-agnostic: see the module docstring)")
    settings = namespace.settings
    base = console.base
    prefix = settings.redis_key_prefix
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    shots = namespace.log_dir / "screenshots"
    shots.mkdir()
    worker = start_worker(**story.VIP_ENV)

    def profile(cid: str) -> CustomerProfile | None:
        fields = client.hgetall(profile_key(prefix, cid))
        return CustomerProfile.from_redis(fields) if fields else None

    # B: VIP, high risk, with its alerts recorded by the console
    story.send(namespace, range(0, 468))

    def b_is_ready() -> bool:
        b, a = profile("B"), profile("A")
        return (
            b is not None
            and a is not None
            and b.as_of.isoformat() == iso(467)
            and b.churn_level == "high"
            and b.vip
            and client.hlen(alerts_key(prefix, "B")) >= 1
        )

    state = lambda: {  # noqa: E731 - the failure message
        c: (p.churn_level, p.vip, p.as_of.isoformat(), client.hlen(alerts_key(prefix, c)))
        for c in story.BUYERS
        if (p := profile(c))
    }
    assert wait_until(b_is_ready), (state(), worker.log_tail())
    others_high = [c for c in story.BUYERS if c != "B" and (prof := profile(c)) and prof.churn_level == "high"]
    assert others_high, "the filter must have something to leave out"

    # no customer data without logging in
    assert get_json(base + "/fragments/queue")[0] == 401
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI and the dev machines run as root, where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(BROWSER_WAIT_MS)
            page = context.new_page()
            page.goto(base + "/")
            assert "/login" in page.url
            page.fill("input[name=name]", "ana")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("table.queue")
            page.wait_for_function("document.body.dataset.live === 'open'")
            assert TOKEN not in page.content()  # no secret in the page
            rows = page.locator("table.queue tbody tr[data-customer-id]")
            queue_ids = set(rows.evaluate_all("rs => rs.map(r => r.dataset.customerId)"))
            assert {"B", *others_high} <= queue_ids
            # priority order: every high-risk row before any medium-risk one, each with its place
            shown = rows.evaluate_all("rs => rs.map(r => [r.dataset.priority, r.querySelector('td.rank').innerText])")
            assert [level for level, _ in shown] == sorted((lvl for lvl, _ in shown), key=lambda lvl: lvl != "high")
            assert [int(place) for _, place in shown] == list(range(1, len(shown) + 1))
            page.screenshot(path=shots / "1-queue.png", full_page=True)

            # filter: VIP, high risk -> only B
            page.select_option("select[name=level]", "high")
            page.select_option("select[name=vip]", "true")
            page.wait_for_function(
                "() => { const rs = [...document.querySelectorAll('table.queue tbody tr[data-customer-id]')];"
                " return rs.length === 1 && rs[0].dataset.customerId === 'B'; }"
            )
            assert page.inner_text("#queue-total") == "1"
            page.screenshot(path=shots / "2-queue-vip-high.png", full_page=True)

            # a second page (tab) shows the same filtered queue, and stays loaded (a marker survives: no reload)
            second = context.new_page()
            second.goto(base + "/?level=high&vip=true")
            second.wait_for_selector("tr[data-customer-id=B]")
            second.wait_for_function("document.body.dataset.live === 'open'")
            second.evaluate("window.notReloaded = true")
            assert second.inner_text("tr[data-customer-id=B] td.status") == "open"

            # open B
            page.click("tr[data-customer-id=B] a")
            page.wait_for_selector("#case-status")
            assert page.inner_text("#case-status") == "open"
            assert "severe_complaint" in page.inner_text("table.reasons")
            assert page.locator("svg.chart").count() == 2
            page.wait_for_function("document.body.dataset.live === 'open'")
            page.screenshot(path=shots / "3-customer.png", full_page=True)

            # acknowledge: this page swaps in the new case; the second page's queue row follows live
            page.click("text=Acknowledge")
            page.wait_for_function("document.querySelector('#case-status').innerText === 'acknowledged'")
            second.wait_for_function(
                "document.querySelector('tr[data-customer-id=B] td.status').innerText === 'acknowledged'"
            )
            assert second.evaluate("window.notReloaded") is True
            second.screenshot(path=shots / "4-second-page-acknowledged.png", full_page=True)

            # assign to a team: owner and status follow, here and on the second page
            page.fill("input[name=assignee]", "vip-desk")
            page.click("text=Assign")
            page.wait_for_function("document.querySelector('#case-status').innerText === 'assigned'")
            assert page.inner_text("#case-owner") == "vip-desk"
            second.wait_for_function(
                "document.querySelector('tr[data-customer-id=B] td.status').innerText === 'assigned'"
            )

            # resolve with an outcome; a live refresh while the user fills the form keeps what was picked and typed
            # (the notice of the user's own "Assign" may arrive just then: it once reset the outcome to the first)
            page.select_option("select[name=outcome]", "won_back")
            page.fill("input[name=note]", "called, offered a voucher")
            page.evaluate("document.querySelector('#case').dataset.beforeRefresh = 'yes'")
            client.publish(channel(prefix), orjson.dumps({"type": "action", "customer_id": "B", "alert_id": "x"}))
            page.wait_for_function("!document.querySelector('#case').dataset.beforeRefresh")  # replaced
            assert page.input_value("select[name=outcome]") == "won_back"
            assert page.input_value("input[name=note]") == "called, offered a voucher"
            assert page.evaluate("document.activeElement.name") == "note"
            page.click("text=Resolve")
            page.wait_for_function("document.querySelector('#case-status').innerText === 'resolved'")
            assert page.inner_text("#case-outcome") == "won_back"
            history = page.inner_text("table.history")
            assert all(f"ana {done}" in history for done in ("acknowledged", "assigned", "resolved")), history
            assert "won_back" in history and "vip-desk" in history
            page.screenshot(path=shots / "5-customer-resolved.png", full_page=True)
            second.wait_for_function(
                "document.querySelector('tr[data-customer-id=B] td.status').innerText === 'resolved'"
            )
            assert second.evaluate("window.notReloaded") is True
            second.screenshot(path=shots / "6-second-page-resolved.png", full_page=True)

            # the VIP list's entries and exits, live on the second page: C outspends everyone (enters), then A and
            # D outspend C, which pushes B (and C) out of the VIP share
            assert not second.evaluate(vip_change("C", "enter"))
            in_thread(lambda: produce_orders(namespace, [("C", 468, "100000.00")]))
            second.wait_for_function(vip_change("C", "enter"))
            in_thread(lambda: produce_orders(namespace, [("A", 469, "200000.00"), ("D", 469, "300000.00")]))
            second.wait_for_function(vip_change("B", "exit"))
            # the queue row follows too (B is no VIP any more: the VIP filter leaves it out)
            second.wait_for_function("document.querySelectorAll('tr[data-customer-id=B]').length === 0")
            # the population panel has its trend lines (one point per reading here), and a save rate: A and D,
            # alerted at high risk, bought within their save window
            second.wait_for_selector("#population svg.spark")
            second.wait_for_function(
                "[...document.querySelectorAll('#population tr')]"
                ".some(r => r.innerText.startsWith('save rate') && r.innerText.includes('%'))"
            )
            assert second.evaluate("window.notReloaded") is True
            second.screenshot(path=shots / "7-second-page-vip-changes.png", full_page=True)

            # status and owner filters: B is resolved (not open) and vip-desk's
            page.goto(base + "/?status=resolved&owner=vip-desk")
            page.wait_for_selector("tr[data-customer-id=B]")
            assert page.inner_text("#queue-total") == "1"
            page.goto(base + "/?status=open")
            page.wait_for_selector("table.queue")
            assert page.locator("tr[data-customer-id=B]").count() == 0
        finally:
            browser.close()

    # the actions went where the router API's go, as the logged-in user did them
    records = consume(namespace.bootstrap, actions_topic(namespace), 3, quiet=1.0)
    actions = [orjson.loads(r.value) for r in records]
    assert [(a["customer_id"], a["action"], a["actor"], a.get("outcome")) for a in actions] == [
        ("B", "acknowledged", "ana", None),
        ("B", "assigned", "ana", None),
        ("B", "resolved", "ana", "won_back"),
    ]
    assert actions[1]["assignee"] == "vip-desk"
    assert len({a["alert_id"] for a in actions}) == 1 and actions[0]["alert_id"].startswith("B:churn:")

    # the population trend survives a restart of pulse console: the new process shows the points the old one kept
    # in Redis at once, far more than it could have read itself by then (one reading per 2 s)
    kept = client.llen(trend_key(prefix))
    assert kept >= 5, kept
    restarted = time.monotonic()
    console.restart()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def spark_points() -> int:
        status, body = get_text(base + "/fragments/population", headers)
        lines = re.findall(r'<polyline points="([^"]*)"', body) if status == 200 else []
        return max((len(line.split()) for line in lines), default=0)

    assert wait_until(lambda: spark_points() > 0, every=0.1)
    readings_since = (time.monotonic() - restarted) / 2 + 1
    assert spark_points() >= min(kept, 120) > readings_since, (kept, readings_since)
