"""What each destination receives: the message for one alert or a digest, signatures, and what counts as delivered.

Pure: a list of envelopes in, an HTTP request (or an e-mail) out; a
response in, delivered / retry / give up out. The payload shapes follow each
platform's documentation for its incoming robot:

* Slack incoming webhook: ``{"text": fallback, "blocks": [header, section (mrkdwn), ...]}``; 200 ``ok``.
* Feishu/Lark custom bot: ``{"msg_type": "post", "content": {"post": {"zh_cn": {"title", "content":
  [[{"tag": "text", "text"}]]}}}}``, plus ``timestamp`` (seconds) and ``sign`` = base64(HMAC-SHA256 keyed
  with ``f"{timestamp}\\n{secret}"`` over an empty message) when signing is on; delivered when ``code`` is 0.
* DingTalk custom robot: ``{"msgtype": "markdown", "markdown": {"title", "text"}}``; signed by
  ``&timestamp=<ms>&sign=<urlencode(base64(HMAC-SHA256(secret, f"{timestamp}\\n{secret}")))>`` on the URL;
  delivered when ``errcode`` is 0.
* WeCom group robot: ``{"msgtype": "markdown", "markdown": {"content"}}`` (at most 4096 bytes);
  delivered when ``errcode`` is 0.
* Generic webhook: the event as JSON, ``X-Pulse-Signature`` = hex HMAC-SHA256 of the exact body bytes
  with the shared secret, ``Idempotency-Key`` = the alert id; delivered on any 2xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

from schemas.alerts import RetentionAlert
from schemas.vip import VipChange
from streams.router.config import (
    DingTalkDestination,
    EmailDestination,
    FeishuDestination,
    FileDestination,
    SlackDestination,
    WebhookDestination,
    WeComDestination,
)
from streams.router.rules import Routable

#: WeCom rejects markdown content over 4096 bytes (UTF-8)
WECOM_MAX_BYTES = 4096
#: Slack: a section's text is at most 3000 characters, a header's 150, a message at most 50 blocks
SLACK_SECTION_CHARS = 3000
SLACK_HEADER_CHARS = 150
SLACK_MAX_BLOCKS = 50
#: HTTP statuses that will not change on retry: the request itself is wrong (bad URL, token, payload)
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 422})


@dataclass(frozen=True)
class Envelope:
    """One event read by the router: an alert or a VIP change, where it came from, how to route it."""

    event: str  # "retention_alert" | "vip_change"
    id: str
    model: RetentionAlert | VipChange
    raw: dict[str, Any]
    topic: str
    partition: int
    offset: int
    historical: bool = False

    @property
    def raised_at(self) -> datetime:
        return self.model.raised_at if isinstance(self.model, RetentionAlert) else self.model.at

    def routable(self) -> Routable:
        m = self.model
        if isinstance(m, RetentionAlert):
            return Routable(
                "retention_alert",
                level=m.level.value,
                vip=m.vip,
                priority=m.priority,
                segment=m.segment,
                reasons=frozenset(r.code for r in m.reasons),
                value_at_risk=m.value_at_risk,
            )
        return Routable("vip_change", vip=m.vip, priority=m.vip, segment=m.segment)


@dataclass(frozen=True)
class Card:
    """A channel-neutral message for one event: a title, fact lines, reasons, the action."""

    title: str
    lines: list[str]
    reasons: list[str] = field(default_factory=list)
    action: str = ""
    footer: str = ""
    level: str = ""


def _money(value: Decimal | None, currency: str) -> str:
    return "n/a" if value is None else f"{value:,.2f} {currency}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def card(env: Envelope) -> Card:
    """Who, how bad, why (with the observed values), what is at stake, what to do."""
    m = env.model
    if isinstance(m, RetentionAlert):
        who = m.customer_id + (" (VIP, priority)" if m.priority else " (VIP)" if m.vip else "")
        context = ", ".join(x for x in (m.segment and f"segment {m.segment}", m.rfm_cell and f"RFM {m.rfm_cell}") if x)
        value = f"Value at risk {_money(m.value_at_risk, m.currency)} · CLV {_money(m.clv, m.currency)}"
        value += f" · revenue {_money(m.revenue, m.currency)}"
        if m.p_alive is not None:
            value += f" · P(alive) {m.p_alive:.3f}"
        return Card(
            title=f"{m.level.value.upper()} churn risk: {who}",
            lines=[
                f"Risk {m.risk_score}/100 ({m.kind}, was {m.previous_level.value})"
                + (f" · {context}" if context else ""),
                value,
            ],
            reasons=[
                f"{r.code}: {r.detail} (observed {_num(r.observed)}, threshold {_num(r.threshold)})"
                if r.detail
                else f"{r.code} (observed {_num(r.observed)}, threshold {_num(r.threshold)})"
                for r in m.reasons
            ],
            action=m.suggested_action,
            footer=f"alert {m.alert_id} · raised {m.raised_at:%Y-%m-%d %H:%M %Z}".rstrip(),
            level=m.level.value,
        )
    pct = f", top {100 * (1 - m.value_percentile):.1f} %" if m.value_percentile is not None else ""
    return Card(
        title=f"{m.customer_id} is {'now VIP' if m.vip else 'no longer VIP'}",
        lines=[
            f"Reason: {m.reason} · {m.value_measure} {_money(m.value, m.currency)}{pct}",
            ", ".join(x for x in (m.segment and f"segment {m.segment}", m.rfm_cell and f"RFM {m.rfm_cell}") if x)
            or "no segment yet",
        ],
        action="welcome them with personal service" if m.vip else "",
        footer=f"change {m.change_id} · at {m.at:%Y-%m-%d %H:%M %Z}".rstrip(),
        level="vip",
    )


def digest_title(envs: list[Envelope]) -> str:
    """The title of a message carrying several events."""
    alerts = [e for e in envs if e.event == "retention_alert"]
    parts = []
    if alerts:
        high = sum(1 for e in alerts if isinstance(e.model, RetentionAlert) and e.model.level.value == "high")
        parts.append(f"{len(alerts)} churn alert{'s' if len(alerts) > 1 else ''}" + (f" ({high} high)" if high else ""))
    if len(alerts) < len(envs):
        n = len(envs) - len(alerts)
        parts.append(f"{n} VIP change{'s' if n > 1 else ''}")
    return "customer-pulse: " + ", ".join(parts)


def title_of(envs: list[Envelope]) -> str:
    return card(envs[0]).title if len(envs) == 1 else digest_title(envs)


def text_of(c: Card) -> str:
    """Plain text of a card (e-mail body, file, Feishu paragraphs)."""
    lines = [c.title, *c.lines]
    if c.reasons:
        lines.append("Why:")
        lines += [f"  - {r}" for r in c.reasons]
    if c.action:
        lines.append(f"Suggested action: {c.action}")
    if c.footer:
        lines.append(c.footer)
    return "\n".join(lines)


def plain_text(envs: list[Envelope]) -> str:
    body = "\n\n".join(text_of(card(e)) for e in envs)
    return body if len(envs) == 1 else f"{digest_title(envs)}\n\n{body}"


# --- signatures -------------------------------------------------------------


def webhook_signature(secret: str, body: bytes) -> str:
    """``X-Pulse-Signature``: hex HMAC-SHA256 of the exact body bytes."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def feishu_sign(secret: str, timestamp: int) -> str:
    """Feishu/Lark custom bot: base64(HMAC-SHA256 keyed with "timestamp\\nsecret" over an empty message)."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk custom robot: urlencode(base64(HMAC-SHA256(secret, "timestamp\\nsecret")))."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


def dingtalk_url(url: str, secret: str, timestamp_ms: int) -> str:
    """The robot URL with ``timestamp`` and ``sign`` appended (the sign is already URL-encoded)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={timestamp_ms}&sign={dingtalk_sign(secret, timestamp_ms)}"


# --- requests ---------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    url: str
    body: bytes
    headers: dict[str, str]
    #: True when ``url`` is already percent-encoded and must be sent as is (DingTalk's sign)
    encoded: bool = False


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode()


JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def webhook_request(dest: WebhookDestination, env: Envelope) -> HttpRequest:
    body = _json({"type": env.event, "id": env.id, "data": env.raw})
    headers = {
        **JSON_HEADERS,
        **dest.headers,
        "X-Pulse-Signature": webhook_signature(dest.secret, body),
        "Idempotency-Key": env.id,
        "X-Pulse-Event": env.event,
    }
    return HttpRequest(str(dest.url), body, headers)


def _slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup (<!channel> would ping everyone)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_mrkdwn(c: Card) -> str:
    lines = [f"*{_slack_escape(c.title)}*", *(_slack_escape(x) for x in c.lines)]
    if c.reasons:
        lines.append("*Why:*")
        lines += [f"• {_slack_escape(r)}" for r in c.reasons]
    if c.action:
        lines.append(f"*Suggested action:* {_slack_escape(c.action)}")
    if c.footer:
        lines.append(f"_{_slack_escape(c.footer)}_")
    return "\n".join(lines)[:SLACK_SECTION_CHARS]


def slack_payload(envs: list[Envelope]) -> dict[str, Any]:
    title = title_of(envs)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:SLACK_HEADER_CHARS]}}
    ]
    shown = envs[: SLACK_MAX_BLOCKS - 2]
    for env in shown:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": slack_mrkdwn(card(env))}})
    if len(shown) < len(envs):
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"and {len(envs) - len(shown)} more"}]}
        )
    return {"text": title, "blocks": blocks}


def feishu_payload(envs: list[Envelope], secret: str | None, timestamp: int) -> dict[str, Any]:
    paragraphs: list[list[dict[str, str]]] = []
    for env in envs:
        c = card(env)
        if len(envs) > 1:
            paragraphs.append([{"tag": "text", "text": c.title}])
        paragraphs += [[{"tag": "text", "text": line}] for line in text_of(c).splitlines()[1:]]
        paragraphs.append([{"tag": "text", "text": ""}])
    payload: dict[str, Any] = {
        "msg_type": "post",
        "content": {"post": {"zh_cn": {"title": title_of(envs), "content": paragraphs[:-1]}}},
    }
    if secret:
        payload = {"timestamp": str(timestamp), "sign": feishu_sign(secret, timestamp), **payload}
    return payload


def markdown(c: Card, wecom: bool = False) -> str:
    """Markdown for DingTalk and WeCom (WeCom colours the level: warning is orange-red)."""
    title = c.title
    if wecom and c.level in ("high", "medium"):
        head, _, rest = title.partition(" ")
        title = f'<font color="{"warning" if c.level == "high" else "comment"}">{head}</font> {rest}'
    lines = [f"### {title}", *(f"> {x}" for x in c.lines)]
    if c.reasons:
        lines.append("**Why:**")
        lines += [f"- {r}" for r in c.reasons]
    if c.action:
        lines.append(f"**Suggested action:** {c.action}")
    if c.footer:
        lines.append(c.footer)
    # DingTalk's markdown needs a blank line between paragraphs; WeCom keeps single newlines
    return ("\n" if wecom else "\n\n").join(lines)


def dingtalk_payload(envs: list[Envelope]) -> dict[str, Any]:
    text = "\n\n---\n\n".join(markdown(card(e)) for e in envs)
    if len(envs) > 1:
        text = f"## {digest_title(envs)}\n\n{text}"
    return {"msgtype": "markdown", "markdown": {"title": title_of(envs), "text": text}}


def wecom_payload(envs: list[Envelope]) -> dict[str, Any]:
    parts = [markdown(card(e), wecom=True) for e in envs]
    head = f"## {digest_title(envs)}\n" if len(envs) > 1 else ""
    content = head + "\n\n".join(parts)
    if len(content.encode()) > WECOM_MAX_BYTES:
        # keep whole alerts while they fit, then say how many are left out: never a cut-off reason line
        kept = head
        for i, part in enumerate(parts):
            more = f"\n\n(and {len(parts) - i} more: see pulse alerts)"
            if len((kept + part + "\n\n" + more).encode()) > WECOM_MAX_BYTES:
                content = kept + more.lstrip()
                break
            kept += part + "\n\n"
        content = content.encode()[:WECOM_MAX_BYTES].decode(errors="ignore")
    return {"msgtype": "markdown", "markdown": {"content": content}}


def chat_request(dest: Any, envs: list[Envelope], now_ms: int) -> HttpRequest:
    """The request for a chat destination; ``now_ms`` is the wall clock for the signed ones."""
    url = str(dest.url)
    if isinstance(dest, SlackDestination):
        return HttpRequest(url, _json(slack_payload(envs)), dict(JSON_HEADERS))
    if isinstance(dest, FeishuDestination):
        return HttpRequest(url, _json(feishu_payload(envs, dest.secret, now_ms // 1000)), dict(JSON_HEADERS))
    if isinstance(dest, DingTalkDestination):
        if dest.secret:
            return HttpRequest(
                dingtalk_url(url, dest.secret, now_ms), _json(dingtalk_payload(envs)), dict(JSON_HEADERS), True
            )
        return HttpRequest(url, _json(dingtalk_payload(envs)), dict(JSON_HEADERS))
    if isinstance(dest, WeComDestination):
        return HttpRequest(url, _json(wecom_payload(envs)), dict(JSON_HEADERS))
    raise TypeError(f"not a chat destination: {dest.kind}")


def email_message(dest: EmailDestination, envs: list[Envelope]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = dest.sender
    msg["To"] = ", ".join(dest.to)
    msg["Subject"] = f"{dest.subject_prefix} {title_of(envs)}".strip()
    # one Message-ID per (first alert, count): a mail server can spot a resend of the same digest
    msg["X-Pulse-Alert-Ids"] = ", ".join(e.id for e in envs)
    msg.set_content(plain_text(envs))
    return msg


def file_text(dest: FileDestination, envs: list[Envelope]) -> str:
    return plain_text(envs) + "\n\n"


@dataclass(frozen=True)
class Verdict:
    delivered: bool
    #: the failure will not go away by retrying (bad URL, bad token, rejected payload)
    permanent: bool = False
    detail: str = ""
    #: seconds the receiver asked us to wait (HTTP 429/503 Retry-After), if it said
    retry_after: float | None = None


def _seconds(value: str | None) -> float | None:
    """Retry-After in its delay-seconds form (the HTTP-date form is ignored: our own back-off applies)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def judge_http(kind: str, status: int, body: bytes, retry_after: str | None = None) -> Verdict:
    """Did the receiver acknowledge? Chat robots answer HTTP 200 with an error code in the body."""
    snippet = body[:200].decode(errors="replace")
    if not 200 <= status < 300:
        return Verdict(False, status in PERMANENT_STATUSES, f"HTTP {status}: {snippet}", _seconds(retry_after))
    if kind in ("feishu", "dingtalk", "wecom"):
        try:
            answer = json.loads(body or b"{}")
        except ValueError:
            return Verdict(False, False, f"HTTP {status}, not JSON: {snippet}")
        if not isinstance(answer, dict):
            return Verdict(False, False, f"HTTP {status}, unexpected answer: {snippet}")
        # Feishu: {"code": 0, "msg": "success"} (older bots: "StatusCode"); DingTalk/WeCom: {"errcode": 0}
        code = answer.get("errcode", answer.get("code", answer.get("StatusCode")))
        if code not in (0, None):
            return Verdict(False, False, f"{kind} error {code}: {answer.get('errmsg') or answer.get('msg') or snippet}")
    return Verdict(True)
