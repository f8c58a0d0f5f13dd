"""Real local receivers for the router's e2e tests: one aiohttp server standing in for every webhook kind,
and an SMTP server (aiosmtpd).

Each HTTP endpoint checks what the platform would check (the signature, the
documented payload shape) and answers the way the platform answers (Slack
``ok``; Feishu ``{"code": 0}``; DingTalk and WeCom ``{"errcode": 0}``; a
wrong signature gets the platform's error code, so the router would retry and
dead-letter it). A delivery counts as *acknowledged* only when the answer was
actually written to the router's connection: a router killed while the
receiver holds its request has not been acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

from aiohttp import web

#: the router's messages end each alert with "alert <id>"; a digest carries several
ALERT_ID = re.compile(r"(?:alert|change) (C\d+:(?:churn|vip):\d+)")
SIGNATURE_MAX_AGE_SECONDS = 3600  # Feishu and DingTalk refuse a timestamp more than an hour off


@dataclass
class Received:
    """What one endpoint saw."""

    requests: int = 0
    #: alert ids per request the receiver acknowledged (the answer reached the router)
    acked: list[list[str]] = field(default_factory=list)
    #: alert ids of requests received but not acknowledged (the router went away first)
    unacked: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)

    def ack_counts(self) -> Counter[str]:
        return Counter(i for ids in self.acked for i in ids)

    def received_counts(self) -> Counter[str]:
        return Counter(i for ids in self.acked + self.unacked for i in ids)


class Receivers:
    """The HTTP endpoints on one loopback port, on their own event loop thread; stop/start simulate an outage."""

    def __init__(self, port: int, secrets: dict[str, str]) -> None:
        self.port = port
        self.secrets = secrets
        self.seen: dict[str, Received] = {
            k: Received() for k in ("webhook", "slack", "feishu", "dingtalk", "wecom", "gone")
        }
        self.lock = threading.Lock()
        #: hold the n-th webhook request (1-based) until ``release`` is set or the connection drops
        self.hold_webhook_request: int | None = None
        self.holding = threading.Event()
        self.release = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="receivers", daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())

    def close(self) -> None:
        self.release.set()
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhook", self.webhook)
        app.router.add_post("/slack", self.slack)
        app.router.add_post("/feishu", self.feishu)
        app.router.add_post("/dingtalk", self.dingtalk)
        app.router.add_post("/wecom", self.wecom)
        app.router.add_post("/gone", self.gone)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def snapshot(self) -> dict[str, Received]:
        with self.lock:
            return {
                k: Received(v.requests, list(v.acked), list(v.unacked), list(v.problems), list(v.bodies))
                for k, v in self.seen.items()
            }

    async def _answer(
        self, request: web.Request, kind: str, ids: list[str], answer: Any, problem: str | None, status: int = 200
    ) -> web.StreamResponse:
        rec = self.seen[kind]
        with self.lock:
            rec.requests += 1
            n = rec.requests
            if problem:
                rec.problems.append(problem)
        if kind == "webhook" and n == self.hold_webhook_request:
            self.holding.set()
            deadline = time.monotonic() + 120
            # hold until the test releases us (after killing the router) or the connection drops
            while not self.release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        resp = web.Response(status=status, text=answer if isinstance(answer, str) else json.dumps(answer))
        try:
            await resp.prepare(request)
            await resp.write_eof()
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("router went away")
        except (ConnectionError, RuntimeError):
            with self.lock:
                rec.unacked.append(ids)
            return resp
        with self.lock:
            (rec.acked if 200 <= status < 300 and not problem else rec.unacked).append(ids)
        return resp

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        expected = hmac.new(self.secrets["webhook"].encode(), body, hashlib.sha256).hexdigest()
        problem = None
        if not hmac.compare_digest(request.headers.get("X-Pulse-Signature", ""), expected):
            problem = "webhook: bad signature"
        payload = json.loads(body)
        key = request.headers.get("Idempotency-Key", "")
        data = payload.get("data", {})
        if key != payload.get("id") or key != data.get("alert_id", data.get("change_id")):
            problem = f"webhook: Idempotency-Key {key!r} is not the alert id"
        with self.lock:
            self.seen["webhook"].bodies.append(payload)
        if problem:
            return await self._answer(request, "webhook", [key], {"error": problem}, problem, status=401)
        return await self._answer(request, "webhook", [key], {"ok": True}, None)

    async def gone(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return await self._answer(request, "gone", [request.headers.get("Idempotency-Key", "")], "gone", None, 404)

    async def slack(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        problem = None
        blocks = payload.get("blocks")
        if not isinstance(payload.get("text"), str) or not isinstance(blocks, list) or not blocks:
            problem = "slack: text and blocks required"
        elif blocks[0].get("type") != "header" or blocks[0]["text"].get("type") != "plain_text":
            problem = "slack: first block must be a plain_text header"
        elif not all(b["type"] in ("section", "context") for b in blocks[1:]) or len(blocks) > 50:
            problem = "slack: unexpected blocks"
        elif any(
            b["type"] == "section" and (b["text"]["type"] != "mrkdwn" or len(b["text"]["text"]) > 3000) for b in blocks
        ):
            problem = "slack: section text must be mrkdwn, at most 3000 characters"
        text = "\n".join(b["text"]["text"] for b in blocks if b.get("type") == "section")
        with self.lock:
            self.seen["slack"].bodies.append(payload)
        if problem:
            return await self._answer(request, "slack", [], "invalid_blocks", problem, status=400)
        return await self._answer(request, "slack", ALERT_ID.findall(text), "ok", None)

    async def feishu(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        problem = None
        ts = payload.get("timestamp", "")
        key = f"{ts}\n{self.secrets['feishu']}".encode()
        expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        if payload.get("sign") != expected or abs(time.time() - int(ts or 0)) > SIGNATURE_MAX_AGE_SECONDS:
            with self.lock:
                self.seen["feishu"].bodies.append(payload)
            problem = "feishu: sign match fail"
            answer = {"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time"}
            return await self._answer(request, "feishu", [], answer, problem)
        post = payload.get("content", {}).get("post", {}).get("zh_cn", {})
        if payload.get("msg_type") != "post" or not isinstance(post.get("title"), str):
            problem = "feishu: msg_type post with content.post.zh_cn.title required"
        paragraphs = post.get("content", [])
        if not all(isinstance(p, list) and all(s.get("tag") == "text" for s in p) for p in paragraphs):
            problem = "feishu: paragraphs must be lists of text elements"
        text = "\n".join(s.get("text", "") for p in paragraphs for s in p)
        with self.lock:
            self.seen["feishu"].bodies.append(payload)
        if problem:
            return await self._answer(request, "feishu", [], {"code": 9499, "msg": problem}, problem)
        return await self._answer(
            request, "feishu", ALERT_ID.findall(text), {"code": 0, "msg": "success", "data": {}}, None
        )

    async def dingtalk(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        # the raw query: the sign must arrive URL-encoded exactly once
        query = urllib.parse.parse_qs(request.rel_url.raw_query_string)
        ts = query.get("timestamp", ["0"])[0]
        secret = self.secrets["dingtalk"]
        expected = base64.b64encode(
            hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
        ).decode()
        problem = None
        if query.get("access_token") != ["tok"]:
            problem = "dingtalk: access_token missing"
        elif (
            query.get("sign", [""])[0] != expected
            or abs(time.time() * 1000 - int(ts)) > SIGNATURE_MAX_AGE_SECONDS * 1000
        ):
            problem = "dingtalk: sign not match"
        md = payload.get("markdown", {})
        if not problem and (payload.get("msgtype") != "markdown" or not md.get("title") or not md.get("text")):
            problem = "dingtalk: msgtype markdown with markdown.title and markdown.text required"
        with self.lock:
            self.seen["dingtalk"].bodies.append(payload)
        if problem:
            return await self._answer(request, "dingtalk", [], {"errcode": 310000, "errmsg": problem}, problem)
        return await self._answer(
            request, "dingtalk", ALERT_ID.findall(md["text"]), {"errcode": 0, "errmsg": "ok"}, None
        )

    async def wecom(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        content = payload.get("markdown", {}).get("content", "")
        problem = None
        if request.query.get("key") != "wkey":
            problem = "wecom: key missing"
        elif payload.get("msgtype") != "markdown" or not content:
            problem = "wecom: msgtype markdown with markdown.content required"
        elif len(content.encode()) > 4096:
            problem = "wecom: markdown.content over 4096 bytes"
        with self.lock:
            self.seen["wecom"].bodies.append(payload)
        if problem:
            return await self._answer(request, "wecom", [], {"errcode": 40058, "errmsg": problem}, problem)
        return await self._answer(request, "wecom", ALERT_ID.findall(content), {"errcode": 0, "errmsg": "ok"}, None)


class MailSink:
    """An SMTP server (aiosmtpd) on loopback that keeps every message; ids from X-Pulse-Alert-Ids."""

    def __init__(self, port: int, **smtp: Any) -> None:
        """``smtp``: aiosmtpd SMTP options (tls_context, require_starttls, auth_required, authenticator...)."""
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
                with sink.lock:
                    sink.messages.append(
                        (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
                    )
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port, **smtp)
        self.controller.start()

    def ack_counts(self) -> Counter[str]:
        with self.lock:
            return Counter(
                i.strip() for _, _, m in self.messages for i in (m["X-Pulse-Alert-Ids"] or "").split(",") if i.strip()
            )

    def close(self) -> None:
        self.controller.stop()


def counts_by(seen: dict[str, Received], mail: MailSink | None) -> dict[str, Counter[str]]:
    out = {k: v.ack_counts() for k, v in seen.items()}
    if mail is not None:
        out["email"] = mail.ack_counts()
    return out
