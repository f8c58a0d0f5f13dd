"""The router's pure parts and a destination worker against fakes: config, routing, back-off, rate limit,
commit order, signatures, message formats, quiet grouping, retries and dead letters."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from decimal import Decimal
from pathlib import Path

import pytest

from pulse_config.settings import Settings
from streams.router.config import RouterConfigError, load_config, parse_config, resolved
from streams.router.messages import (
    WECOM_MAX_BYTES,
    Verdict,
    chat_request,
    dingtalk_url,
    email_message,
    feishu_sign,
    judge_http,
    slack_payload,
    webhook_request,
    webhook_signature,
    wecom_payload,
)
from streams.router.rules import OffsetTracker, RateLimiter, RetryPolicy, Routable, destinations_for
from streams.router.service import Delivery, DestinationWorker, Job, delivered_action
from tests.router_fixtures import envelope

REPO = Path(__file__).resolve().parents[2]

BASE = """
[[destinations]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:1/h"
secret = "s3cret"
"""


# --- configuration ------------------------------------------------------------------------------


def test_example_config_is_valid(monkeypatch):
    for var in (
        "CRM_WEBHOOK_SECRET",
        "SLACK_WEBHOOK_URL",
        "FEISHU_SECRET",
        "DINGTALK_TOKEN",
        "DINGTALK_SECRET",
        "WECOM_KEY",
        "SMTP_PASSWORD",
    ):
        monkeypatch.setenv(var, "https://hooks.slack.com/services/T0/B0/x" if "URL" in var else "x")
    config = load_config(REPO / "deploy" / "router.example.toml")
    kinds = {d.kind for d in config.destinations}
    assert kinds == {"webhook", "slack", "feishu", "dingtalk", "wecom", "email"}
    assert config.router.default_route == ["crm-webhook"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[destinations]]\nname='a'\nkind='carrier-pigeon'\n",
            "f.toml: destinations[0] (a): Input tag 'carrier-pigeon'",
        ),
        (BASE + "[[destinations]]\nname='s'\nkind='slack'\nurl='not a url'\n", "f.toml: destinations[1] (s).url: "),
        (BASE + "bogus = 1\n", "f.toml: destinations[0] (hook).bogus: Extra inputs are not permitted"),
        (
            BASE + "[[routes]]\nname='r'\ndestinations=['nope']\n",
            "routes[0] (r).destinations: unknown destination 'nope'",
        ),
        (BASE + "[router]\ndefault_route=['x']\n", "router.default_route: unknown destination 'x'"),
        (BASE + "[[routes]]\nname='r'\nlevels=['huge']\ndestinations=['hook']\n", "f.toml: routes[0] (r).levels[0]: "),
        (BASE + "group_seconds = 5\n", "group_seconds: a webhook sends one alert per request"),
        (BASE.replace('"s3cret"', '"${PULSE_TEST_UNSET_SECRET}"'), "destinations[0].secret: environment variable"),
        ("[[destinations]\n", "f.toml: not valid TOML"),
        ("", "f.toml: destinations: Field required"),
        (BASE + BASE, "destination name 'hook' is used twice"),
        (
            "[[destinations]]\nname='m'\nkind='email'\nhost='smtp.example.com'\nusername='u'\nsender='a@b.c'\n"
            "to=['d@e.f']\n",
            "f.toml: destinations[0] (m): security: a login needs starttls or tls",
        ),
    ],
)
def test_config_errors_are_one_line_naming_file_and_field(text, message, monkeypatch):
    monkeypatch.delenv("PULSE_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(RouterConfigError) as err:
        parse_config(text, "f.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(RouterConfigError, match=r"nope.toml: cannot read the router configuration"):
        load_config(tmp_path / "nope.toml")


def test_env_expansion_and_defaults(monkeypatch):
    monkeypatch.setenv("PULSE_TEST_HOOK_SECRET", "from-env")
    config = parse_config(BASE.replace('"s3cret"', '"${PULSE_TEST_HOOK_SECRET}"') + SLACK)
    assert config.destination("hook").secret == "from-env"
    settings = Settings(_env_file=None)
    assert resolved(config.destination("hook"), settings) == (0, 0.0, settings.router_group_max_alerts)
    assert resolved(config.destination("chat"), settings) == (
        settings.router_rate_per_minute,
        settings.router_group_seconds,
        settings.router_group_max_alerts,
    )


SLACK = """
[[destinations]]
name = "chat"
kind = "slack"
url = "http://127.0.0.1:1/s"
"""


# --- routing ------------------------------------------------------------------------------------

ROUTES = (
    BASE
    + SLACK
    + """
[[destinations]]
name = "vipdesk"
kind = "file"
path = "/dev/null"

[router]
default_route = ["hook"]

[[routes]]
name = "vip"
vip = true
destinations = ["vipdesk", "chat"]

[[routes]]
name = "big-high"
levels = ["high"]
min_value_at_risk = 500
destinations = ["chat"]

[[routes]]
name = "complaints"
reasons = ["severe_complaint"]
segments = ["loyal", "at_risk"]
destinations = ["vipdesk"]

[[routes]]
name = "vip-changes"
events = ["vip_change"]
destinations = ["vipdesk"]
"""
)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (Routable("retention_alert", "medium", value_at_risk=Decimal(10)), ["hook"]),  # default route
        (Routable("retention_alert", "high", value_at_risk=Decimal("499.99")), ["hook"]),
        (Routable("retention_alert", "high", value_at_risk=Decimal(500)), ["chat"]),
        (Routable("retention_alert", "high", value_at_risk=None), ["hook"]),
        (Routable("retention_alert", "medium", vip=True, priority=True), ["vipdesk", "chat"]),
        # two routes, one destination each: union in file order, no repeats
        (Routable("retention_alert", "high", vip=True, value_at_risk=Decimal(900)), ["vipdesk", "chat"]),
        (Routable("retention_alert", "low", segment="loyal", reasons=frozenset({"severe_complaint"})), ["vipdesk"]),
        (Routable("retention_alert", "low", segment="new", reasons=frozenset({"severe_complaint"})), ["hook"]),
        (Routable("retention_alert", "low", segment="loyal", reasons=frozenset({"overdue"})), ["hook"]),
        (Routable("vip_change", vip=True), ["vipdesk"]),
    ],
)
def test_routing(item, expected):
    assert destinations_for(parse_config(ROUTES), item) == expected


def test_vip_changes_have_no_default_route():
    config = parse_config(ROUTES.replace('events = ["vip_change"]', 'events = ["retention_alert"]\nlevels = []'))
    assert destinations_for(config, Routable("vip_change", vip=False)) == []


# --- back-off, rate limit, commit order ---------------------------------------------------------


def test_backoff_is_capped_exponential():
    policy = RetryPolicy(1.0, 10.0, max_attempts=100, max_retry_seconds=1e9)
    assert [policy.backoff(a) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.backoff(10_000) == 10


def test_retry_gives_up_on_attempts_or_time():
    policy = RetryPolicy(1.0, 8.0, max_attempts=4, max_retry_seconds=20.0)
    assert policy.next_delay(1, 0.0) == 1
    assert policy.next_delay(3, 5.0) == 4
    assert policy.next_delay(4, 5.0) is None  # the 4th attempt was the last
    assert policy.next_delay(2, 18.5) is None  # the next attempt would start after 20 s


def test_rate_limiter_rolling_minute():
    limiter = RateLimiter(3, window=60)
    for t in (0, 1, 2):
        assert limiter.delay(t) == 0
        limiter.record(t)
    assert limiter.delay(10) == 50  # the 4th waits for the first to leave the window
    assert limiter.delay(60) == 0
    limiter.record(60)
    assert limiter.delay(60.5) == 0.5
    assert RateLimiter(0).delay(0) == 0


def test_offsets_commit_only_below_the_lowest_unfinished():
    t = OffsetTracker()
    assert t.committable() is None
    for off in (5, 6, 7, 8):
        t.add(off)
    assert t.committable() == 5
    t.committed(5)
    t.done(7)
    t.done(8)
    assert t.committable() is None  # 6 is still pending: 5 stays
    t.done(5)
    assert t.committable() == 6
    t.done(6)
    assert t.committable() == 9
    t.committed(9)
    assert t.committable() is None


# --- signatures and message formats -------------------------------------------------------------


def test_webhook_request_signed_with_idempotency_key():
    config = parse_config(BASE)
    env = envelope(1)
    req = webhook_request(config.destination("hook"), env)
    assert req.headers["X-Pulse-Signature"] == hmac.new(b"s3cret", req.body, hashlib.sha256).hexdigest()
    assert req.headers["Idempotency-Key"] == "C00001:churn:1"
    body = json.loads(req.body)
    assert body["type"] == "retention_alert" and body["id"] == "C00001:churn:1"
    assert body["data"]["value_at_risk"] == "240.00"
    assert webhook_signature("s3cret", req.body + b" ") != req.headers["X-Pulse-Signature"]


def test_feishu_sign_matches_the_documented_recipe():
    # Feishu: string_to_sign = timestamp + "\n" + secret as the HMAC-SHA256 key, over an empty message, base64
    mac = hmac.new(b"1700000000\nabc", digestmod=hashlib.sha256)
    mac.update(b"")
    assert feishu_sign("abc", 1700000000) == base64.b64encode(mac.digest()).decode()


def test_dingtalk_signed_url_matches_the_documented_recipe():
    secret, ts = "SECabc+/=", 1700000000123
    url = dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=t", secret, ts)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["access_token"] == ["t"] and query["timestamp"] == [str(ts)]
    expected = base64.b64encode(hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()).decode()
    assert query["sign"] == [expected]  # parse_qs undoes the urlencoding


def _chat_text(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False)


@pytest.mark.parametrize("kind", ["slack", "feishu", "dingtalk", "wecom"])
def test_chat_message_is_readable(kind):
    dest = parse_config(f"[[destinations]]\nname='c'\nkind='{kind}'\nurl='http://127.0.0.1:1/x'\n").destination("c")
    req = chat_request(dest, [envelope(7, vip=True)], 1_700_000_000_000)
    text = _chat_text(json.loads(req.body))
    for needed in (
        "C00007",  # who
        "HIGH",  # level
        "VIP",
        "overdue",
        "observed 137",  # reasons with observed values
        "threshold 90",
        "240.00 USD",  # value at risk
        "CLV 58.26 USD",
        "personal call and an exclusive offer",  # suggested action
    ):
        assert needed in text, (kind, needed, text)


def test_platform_payload_shapes():
    envs = [envelope(1), envelope(2, level="medium")]
    slack = slack_payload(envs)
    assert slack["text"].startswith("customer-pulse: 2 churn alerts (1 high)")
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "section"]
    assert all(b["text"]["type"] == "mrkdwn" for b in slack["blocks"][1:])
    feishu = parse_config("[[destinations]]\nname='f'\nkind='feishu'\nurl='http://127.0.0.1:1/x'\nsecret='k'\n")
    body = json.loads(chat_request(feishu.destination("f"), envs, 1_700_000_000_999).body)
    assert body["msg_type"] == "post" and body["timestamp"] == "1700000000"
    assert body["sign"] == feishu_sign("k", 1700000000)
    post = body["content"]["post"]["zh_cn"]
    assert post["title"].startswith("customer-pulse: 2 churn alerts")
    assert all(seg["tag"] == "text" for para in post["content"] for seg in para)
    wecom = wecom_payload(envs)
    assert wecom["msgtype"] == "markdown" and '<font color="warning">HIGH</font>' in wecom["markdown"]["content"]


def test_slack_escapes_markup():
    env = envelope(3)
    raw = dict(env.raw, suggested_action="call <!channel> & offer")
    from schemas.alerts import RetentionAlert

    env2 = type(env)(env.event, env.id, RetentionAlert.model_validate(raw), raw, "t", 0, 0)
    text = _chat_text(slack_payload([env2]))
    assert "<!channel>" not in text and "&lt;!channel&gt; &amp; offer" in text


def test_wecom_digest_fits_4096_bytes_with_whole_alerts():
    envs = [envelope(i, reasons=("overdue", "low_p_alive", "spend_decline")) for i in range(40)]
    content = wecom_payload(envs)["markdown"]["content"]
    assert len(content.encode()) <= WECOM_MAX_BYTES
    assert "more: see pulse alerts" in content
    shown = content.count("churn risk: C")
    assert 0 < shown < 40 and f"(and {40 - shown} more" in content


def test_email_message():
    config = parse_config(
        "[[destinations]]\nname='m'\nkind='email'\nhost='127.0.0.1'\nsender='p@x.org'\nto=['a@x.org','b@x.org']\n"
    )
    msg = email_message(config.destination("m"), [envelope(1), envelope(2)])
    assert msg["To"] == "a@x.org, b@x.org"
    assert msg["Subject"] == "[customer-pulse] customer-pulse: 2 churn alerts (2 high)"
    body = msg.get_content()
    assert "HIGH churn risk: C00001" in body and "HIGH churn risk: C00002" in body and "observed 137" in body


@pytest.mark.parametrize(
    ("kind", "status", "body", "verdict"),
    [
        ("webhook", 204, b"", Verdict(True)),
        ("slack", 200, b"ok", Verdict(True)),
        ("webhook", 503, b"down", Verdict(False, False, "HTTP 503: down")),
        ("slack", 404, b"no_service", Verdict(False, True, "HTTP 404: no_service")),
        ("feishu", 200, b'{"code":0,"msg":"success","data":{}}', Verdict(True)),
        (
            "feishu",
            200,
            b'{"code":19021,"msg":"sign match fail"}',
            Verdict(False, False, "feishu error 19021: sign match fail"),
        ),
        ("dingtalk", 200, b'{"errcode":0,"errmsg":"ok"}', Verdict(True)),
        (
            "dingtalk",
            200,
            b'{"errcode":310000,"errmsg":"sign not match"}',
            Verdict(False, False, "dingtalk error 310000: sign not match"),
        ),
        (
            "wecom",
            200,
            b'{"errcode":45009,"errmsg":"api freq out of limit"}',
            Verdict(False, False, "wecom error 45009: api freq out of limit"),
        ),
        ("wecom", 200, b"<html>", Verdict(False, False, "HTTP 200, not JSON: <html>")),
    ],
)
def test_judge_http(kind, status, body, verdict):
    assert judge_http(kind, status, body) == verdict


def test_retry_after_is_read_and_honoured_up_to_the_cap():
    assert judge_http("slack", 429, b"rate_limited", "7").retry_after == 7.0
    assert judge_http("slack", 429, b"rate_limited", "Wed, 21 Oct 2015 07:28:00 GMT").retry_after is None


async def test_retry_after_sets_the_wait():
    slow = Verdict(False, False, "HTTP 429", retry_after=0.3)
    worker, _, transport = _worker(_settings(router_retry_max_seconds=0.5), verdicts=[slow])
    await worker.deliver(_deliveries(1, []))
    # a lower bound, so load cannot break it: the retry waited what the receiver asked, not the 1 ms back-off
    assert len(transport.sent) == 2 and transport.times[1] - transport.times[0] >= 0.3


# --- a destination worker against fakes: grouping, retries, dedup, dead letters -----------------


class FakeRouter:
    def __init__(self, settings: Settings, delivered: set[str] | None = None) -> None:
        self.settings = settings
        self.delivered = delivered if delivered is not None else set()
        self.dead: list[tuple[str, str, int]] = []
        #: (destination, alert id) of the delivered records, in the order they were written
        self.recorded: list[tuple[str, str]] = []

    async def record_delivered(self, destination, envs):
        for e in envs:
            action = delivered_action(e, destination)
            if action is not None:
                assert (destination, e.id) not in self.delivered  # written before the Redis mark
                self.recorded.append((destination, action.alert_id))

    async def not_delivered(self, destination, batch):
        return [d for d in batch if (destination, d.env.id) not in self.delivered]

    async def mark_delivered(self, destination, envs):
        self.delivered.update((destination, e.id) for e in envs)

    async def dead_letter(self, env, dest, reason, detail, attempts, first_at):
        self.dead.append((env.id, reason, attempts))


class FakeTransport:
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.sent: list[list[str]] = []
        self.times: list[float] = []

    async def send(self, envs):
        self.sent.append([e.id for e in envs])
        self.times.append(time.monotonic())
        return self.verdicts.pop(0) if self.verdicts else Verdict(True)


def _settings(**kw) -> Settings:
    base = {"router_retry_initial_seconds": 0.001, "router_retry_max_seconds": 0.004, "router_group_seconds": 0.2}
    return Settings(_env_file=None, **{**base, **kw})


def _worker(settings, verdicts=(), delivered=None, group_max=20):
    dest = parse_config(SLACK + f"group_max_alerts = {group_max}\n").destination("chat")
    router = FakeRouter(settings, delivered)
    transport = FakeTransport(list(verdicts))
    return DestinationWorker(router, dest, transport), router, transport


def _deliveries(n: int, finished: list[str]) -> list[Delivery]:
    out = []
    for i in range(n):
        job = Job(envelope(i, offset=i), {"chat"}, lambda j: finished.append(j.env.id))
        out.append(Delivery(job, "chat"))
    return out


async def test_quiet_grouping_makes_digests_of_at_most_max_alerts():
    worker, router, transport = _worker(_settings(), group_max=2)
    finished: list[str] = []
    for d in _deliveries(5, finished):
        worker.queue.put_nowait(d)
    for _ in range(3):
        await worker.deliver(await worker.next_batch())
    assert [len(ids) for ids in transport.sent] == [2, 2, 1]
    assert len(finished) == 5
    # each alert of each acknowledged digest is recorded as delivered for the scoring worker
    assert sorted(router.recorded) == [("chat", f"C{i:05d}:churn:1") for i in range(5)]


async def test_alerts_within_the_window_go_as_one_message():
    worker, _, transport = _worker(_settings(router_group_seconds=60), group_max=4)
    finished: list[str] = []
    deliveries = _deliveries(4, finished)
    worker.queue.put_nowait(deliveries[0])

    async def later():
        await asyncio.sleep(0.05)
        for d in deliveries[1:]:
            worker.queue.put_nowait(d)

    task = asyncio.create_task(later())
    batch = await asyncio.wait_for(worker.next_batch(), 30)
    await task
    # all four arrive inside the 60 s window: the message goes as soon as it holds group_max_alerts
    assert [d.env.id for d in batch] == [d.env.id for d in deliveries]


async def test_no_grouping_sends_one_by_one():
    worker, _, transport = _worker(_settings(router_group_seconds=0))
    finished: list[str] = []
    for d in _deliveries(3, finished):
        worker.queue.put_nowait(d)
    for _ in range(3):
        await worker.deliver(await worker.next_batch())
    assert transport.sent == [["C00000:churn:1"], ["C00001:churn:1"], ["C00002:churn:1"]]


async def test_retries_until_acknowledged_then_never_again():
    fail = Verdict(False, False, "HTTP 503")
    worker, router, transport = _worker(_settings(router_max_attempts=5), verdicts=[fail, fail, fail])
    finished: list[str] = []
    await worker.deliver(_deliveries(2, finished))
    assert len(transport.sent) == 4 and finished == ["C00000:churn:1", "C00001:churn:1"]
    assert router.dead == []
    # read again (a crash before the commit): already acknowledged, so not sent
    again: list[str] = []
    await worker.deliver(_deliveries(2, again))
    assert len(transport.sent) == 4 and len(again) == 2


async def test_dead_letter_after_max_attempts_and_at_once_when_permanent():
    fail = Verdict(False, False, "HTTP 503")
    worker, router, transport = _worker(_settings(router_max_attempts=3), verdicts=[fail] * 10)
    finished: list[str] = []
    await worker.deliver(_deliveries(1, finished))
    assert len(transport.sent) == 3 and router.dead == [("C00000:churn:1", "retries_exhausted", 3)]
    assert finished == ["C00000:churn:1"]  # finished: the offset may be committed
    worker, router, transport = _worker(_settings(), verdicts=[Verdict(False, True, "HTTP 404")])
    await worker.deliver(_deliveries(1, []))
    assert len(transport.sent) == 1 and router.dead == [("C00000:churn:1", "permanent_error", 1)]
    assert router.delivered == set()


async def test_rate_limit_defers_the_next_message():
    worker, _, transport = _worker(_settings(router_group_seconds=0, router_rate_per_minute=1))
    worker.limiter.window = 0.3  # one message per 0.3 s, so the test stays short
    finished: list[str] = []
    for d in _deliveries(2, finished):
        worker.queue.put_nowait(d)
    await worker.deliver(await worker.next_batch())
    await worker.deliver(await worker.next_batch())
    assert len(transport.sent) == 2 and len(finished) == 2
    # a lower bound, so load cannot break it: the second message waited for the first to leave the window
    assert transport.times[1] - transport.times[0] >= 0.3


async def test_rate_limit_holds_when_the_loop_clock_wakes_a_sleep_early(monkeypatch):
    """A fresh clone saw the second message 292.8 ms after the first with a 300-ms window: the sleep of the whole
    wait ended early against the limiter's clock (time.monotonic()). Why is not known (asyncio's loop should not
    wake early, and uvloop did not here); the limiter is now asked again after each sleep, so the window holds
    whatever the sleep does."""
    import asyncio

    real_sleep = asyncio.sleep

    async def early(delay: float, *args: object) -> None:
        # a long sleep ends 10 ms early, a short one does not
        await real_sleep(delay - 0.01 if delay >= 0.1 else delay, *args)

    worker, _, transport = _worker(_settings(router_group_seconds=0, router_rate_per_minute=1))
    worker.limiter.window = 0.3
    finished: list[str] = []
    for d in _deliveries(2, finished):
        worker.queue.put_nowait(d)
    monkeypatch.setattr(asyncio, "sleep", early)
    await worker.deliver(await worker.next_batch())
    await worker.deliver(await worker.next_batch())
    assert len(transport.sent) == 2 and transport.times[1] - transport.times[0] >= 0.3


# --- reading records ----------------------------------------------------------------------------


class _Record:
    def __init__(self, topic: str, value: bytes | None) -> None:
        self.topic, self.value, self.partition, self.offset, self.key = topic, value, 1, 42, None


def test_read_envelope_alerts_vip_changes_and_historical():
    import orjson

    from streams.router.service import read_envelope
    from tests.router_fixtures import alert_dict, vip_change

    s = Settings(_env_file=None)
    live = read_envelope(_Record(s.topic_retention_alerts, orjson.dumps(alert_dict(1))), s)
    assert (live.event, live.id, live.historical, live.offset) == ("retention_alert", "C00001:churn:1", False, 42)
    old = read_envelope(_Record(s.topic_retention_alerts, orjson.dumps(alert_dict(1, historical=True))), s)
    assert old.historical is True
    vip = read_envelope(_Record(s.topic_vip_changes, orjson.dumps(vip_change(5, True))), s)
    assert (vip.event, vip.id) == ("vip_change", "C00005:vip:1")
    assert vip.routable() == Routable("vip_change", vip=True, priority=True, segment="high_value")
    text = slack_payload([vip])["blocks"][1]["text"]["text"]
    assert "C00005 is now VIP" in text and "revenue 12,345.00 USD" in text and "top 3.0 %" in text
    for bad in (b"", b"[1]", b"{nope", orjson.dumps({"alert_id": "x"})):
        with pytest.raises(ValueError):
            read_envelope(_Record(s.topic_retention_alerts, bad), s)


# --- the actions API's events -------------------------------------------------------------------


def test_retention_actions_are_validated():
    from pydantic import ValidationError

    from schemas.actions import customer_of
    from streams.router.api import build_action

    ack = build_action("C:1:churn:3", "acknowledge", {"actor": "ana"}, None)
    assert (ack.customer_id, ack.action.value, ack.actor) == ("C:1", "acknowledged", "ana")
    assert customer_of("a:churn:b:churn:2") == "a:churn:b"
    one = build_action("C1:churn:1", "resolve", {"outcome": "won_back"}, "k1")
    assert build_action("C1:churn:1", "resolve", {"outcome": "won_back"}, "k1").event_id == one.event_id
    assert build_action("C1:churn:1", "resolve", {"outcome": "won_back"}, "k2").event_id != one.event_id
    assert (
        build_action("C1:churn:1", "acknowledge", {}, None).event_id
        != build_action("C1:churn:1", "acknowledge", {}, None).event_id
    )
    for alert_id, verb, body in [
        ("C1:churn:1", "assign", {}),
        ("C1:churn:1", "resolve", {"outcome": "maybe"}),
        ("C1:churn:1", "resolve", {}),
        ("C1:churn:1", "acknowledge", {"outcome": "lost"}),
        ("C1:churn:0", "acknowledge", {}),
        ("C1:vip:1", "acknowledge", {}),
        ("C1:churn:1", "acknowledge", {"actor": "x" * 200}),
    ]:
        with pytest.raises(ValidationError):
            build_action(alert_id, verb, body, None)
    with pytest.raises(ValueError, match="unknown field"):
        build_action("C1:churn:1", "acknowledge", {"who": "me"}, None)


async def test_a_re_raised_alert_in_one_digest_goes_once():
    worker, router, transport = _worker(_settings())
    finished: list[str] = []
    first, second = _deliveries(1, finished) + _deliveries(1, finished)  # the same alert id, read twice
    worker.queue.put_nowait(first)
    worker.queue.put_nowait(second)
    await worker.deliver(await worker.next_batch())
    assert transport.sent == [["C00000:churn:1"]]
    assert finished == ["C00000:churn:1", "C00000:churn:1"]  # both records are done: their offsets may commit


async def test_handed_over_deliveries_stop_being_tried():
    fail = Verdict(False, False, "HTTP 503")
    worker, router, transport = _worker(_settings(router_group_seconds=0), verdicts=[fail] * 5)
    finished: list[str] = []
    (first,) = _deliveries(1, finished)
    first.job.handed_over = True  # its partition went to another router before it was sent
    await worker.deliver([first])
    assert transport.sent == [] and finished == ["C00000:churn:1"]

    (second,) = _deliveries(1, finished)
    original_send = transport.send

    async def send_then_lose_partition(envs):
        second.job.handed_over = True  # revoked while this attempt was failing
        return await original_send(envs)

    transport.send = send_then_lose_partition
    await worker.deliver([second])
    assert len(transport.sent) == 1 and router.dead == [] and router.delivered == set()


def test_a_delivered_record_per_alert_at_its_raised_time_with_a_stable_id():
    """issue 19: the router tells the scoring worker where an alert went (the save rate by destination)."""
    from datetime import UTC, datetime

    from schemas.actions import ActionKind, RetentionAction
    from schemas.vip import VipChange
    from streams.router.messages import Envelope
    from tests.router_fixtures import vip_change

    at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    env = envelope(7, raised_at=at)
    action = delivered_action(env, "crm")
    assert isinstance(action, RetentionAction) and action.action is ActionKind.DELIVERED
    assert (action.customer_id, action.alert_id, action.destination, action.occurred_at) == (
        "C00007",
        "C00007:churn:1",
        "crm",
        at,
    )
    assert action.event_id == delivered_action(envelope(7, raised_at=at), "crm").event_id  # written again: same id
    assert action.event_id != delivered_action(env, "slack").event_id
    vip = Envelope("vip_change", "C00007:vip:1", VipChange.model_validate(vip_change(7, True)), {}, "v", 0, 0)
    assert delivered_action(vip, "crm") is None
    # the worker reads it as it reads the API's actions
    assert RetentionAction.model_validate_json(action.model_dump_json()) == action
