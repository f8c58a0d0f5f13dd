"""The router's HTTP API: what a team did about an alert, written to the retention-actions topic.

* ``POST /alerts/{alert_id}/acknowledge``  body (optional): ``{"actor": "ana", "note": "..."}``
* ``POST /alerts/{alert_id}/assign``       body: ``{"assignee": "vip-desk", "actor": ..., "note": ...}``
* ``POST /alerts/{alert_id}/resolve``      body: ``{"outcome": "won_back", "actor": ..., "note": ...}``
  (outcome: contacted, offer_made, won_back, lost, no_action)

Each answers 202 with the event once the broker acknowledged it (503 if it
could not be written, 400 with the reason for a bad request). The event is
keyed by the customer id (from the alert id), so it lands in the partition of
the customer's other events. A client that retries a request sends the same
``Idempotency-Key`` header: the event id is derived from it, so the consumer
can drop the repeat (without the header every request is a new event).

The API is on the router because the router is what a chat message or an
e-mail links back to; it keeps no alert state (the scoring worker, which
consumes the topic, owns the episode). ``PULSE_API_TOKEN``, when set, is
required as ``Authorization: Bearer <token>`` (except ``/health``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from pulse_config.settings import Settings
from schemas.actions import ActionKind, RetentionAction, customer_of

log = logging.getLogger("pulse.router.api")

#: path verb -> the action it records
VERBS = {"acknowledge": ActionKind.ACKNOWLEDGED, "assign": ActionKind.ASSIGNED, "resolve": ActionKind.RESOLVED}
#: the largest request body read (a note is at most 2000 characters)
MAX_BODY_BYTES = 16 * 1024


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def action_event_id(alert_id: str, action: ActionKind, idempotency_key: str | None) -> str:
    """Stable for a retried request (same Idempotency-Key), unique otherwise."""
    if idempotency_key:
        digest = hashlib.sha256(f"{alert_id}\n{action.value}\n{idempotency_key}".encode()).hexdigest()[:32]
        return f"action-{digest}"
    return f"action-{uuid.uuid4().hex}"


def build_action(alert_id: str, verb: str, body: dict[str, Any], idempotency_key: str | None) -> RetentionAction:
    """The event for a request; ValueError/ValidationError with the reason when the request is wrong."""
    action = VERBS[verb]
    unknown = set(body) - {"actor", "note", "assignee", "outcome"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    return RetentionAction(
        event_id=action_event_id(alert_id, action, idempotency_key),
        customer_id=customer_of(alert_id),
        occurred_at=datetime.now(UTC),
        alert_id=alert_id,
        action=action,
        **body,
    )


def build_actions_api(settings: Settings, producer: AIOKafkaProducer) -> web.Application:
    token = settings.api_token.get_secret_value().encode()
    topic = settings.topic_retention_actions

    @web.middleware
    async def bearer_auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if token and request.path != "/health":
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                return _error(401, "unauthorized", "missing or wrong bearer token")
        return await handler(request)

    async def act(request: web.Request) -> web.Response:
        alert_id, verb = request.match_info["alert_id"], request.match_info["verb"]
        if verb not in VERBS:
            return _error(404, "not_found", f"unknown action {verb!r}: one of {', '.join(VERBS)}")
        if request.content_length and request.content_length > MAX_BODY_BYTES:
            return _error(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
        raw = await request.read()
        try:
            body = (await request.json()) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            event = build_action(alert_id, verb, body, request.headers.get("Idempotency-Key"))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return _error(400, "invalid", f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}")
        except ValueError as exc:
            return _error(400, "invalid", str(exc))
        try:
            await producer.send_and_wait(topic, event.model_dump_json().encode(), key=event.customer_id.encode())
        except KafkaError as exc:
            log.warning("retention action not written: %s", exc)
            return _error(503, "unavailable", f"the broker did not take the event: {type(exc).__name__}")
        return web.json_response(event.model_dump(mode="json"), status=202)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[bearer_auth], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/alerts/{alert_id}/{verb}", act)
    app.router.add_get("/health", health)
    return app
