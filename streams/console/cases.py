"""The console's record of alerts and what teams did about them, in Redis next to the profiles.

The profiles say who is at risk now; a retention team also needs each
customer's alert history, the actions taken (who acknowledged, who owns it,
how it ended) and a queue filtered by owner and status. The console reads the
retention topic and the ``retention-actions`` topic (the actions API's events)
and keeps, per customer:

* ``{prefix}console:alerts:{id}``  hash alert id -> the alert (JSON);
* ``{prefix}console:actions:{id}`` hash event id -> the action (JSON);
* ``{prefix}console:case:{id}``    hash of the case, the latest alert's
  follow-up: ``alert_id``, ``status`` (open, acknowledged, assigned,
  resolved), ``owner``, ``outcome``, ``actor``, ``updated_at``;

and, for the queue's filters, one set of customers per non-open status and
per owner (``{prefix}console:status:{status}``, ``{prefix}console:owner:{o}``,
the owners in ``{prefix}console:owners``). "Open" is at risk and in none of
the status sets, so a customer whose alert the console has not seen yet is
open too.

Every event is applied once (its id is the field of the alerts or actions
hash), in a WATCH/MULTI transaction, so the console's own feed and its action
handler (which records an action as soon as the broker took it, for
read-your-writes) may both apply the same event in any order. The scoring
worker owns the episode (loop back, issue 19); this is the console's view of
the same events, not a second source of truth for re-alerting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from schemas.actions import ActionKind, RetentionAction
from schemas.alerts import RetentionAlert

STATUSES = ("open", "acknowledged", "assigned", "resolved")
#: statuses kept as sets; "open" is the rest of the queue
TRACKED = STATUSES[1:]
#: a WATCH conflict retries the transaction this many times (only two writers per customer: feed and handler)
ATTEMPTS = 20


def alerts_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}console:alerts:{customer_id}"


def actions_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}console:actions:{customer_id}"


def case_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}console:case:{customer_id}"


def status_key(prefix: str, status: str) -> str:
    return f"{prefix}console:status:{status}"


def owner_key(prefix: str, owner: str) -> str:
    return f"{prefix}console:owner:{owner}"


def owners_key(prefix: str) -> str:
    return f"{prefix}console:owners"


def vip_changes_key(prefix: str) -> str:
    """The latest VIP entries and exits (a capped list, newest first)."""
    return f"{prefix}console:vip-changes"


def channel(prefix: str) -> str:
    """Redis pub/sub channel of live updates: every console process relays it to its browsers."""
    return f"{prefix}console:events"


def alert_number(alert_id: str) -> int:
    """n of ``{customer}:churn:{n}``: later alerts of a customer have larger n."""
    return int(alert_id.rsplit(":churn:", 1)[1])


@dataclass(frozen=True)
class Case:
    """The follow-up of a customer's latest alert."""

    alert_id: str
    status: str = "open"
    owner: str | None = None
    outcome: str | None = None
    actor: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_redis(cls, fields: Mapping[str, str]) -> Case | None:
        if not fields.get("alert_id"):
            return None
        return cls(
            alert_id=fields["alert_id"],
            status=fields.get("status") or "open",
            owner=fields.get("owner") or None,
            outcome=fields.get("outcome") or None,
            actor=fields.get("actor") or None,
            updated_at=fields.get("updated_at") or None,
        )

    def to_redis(self) -> dict[str, str]:
        return {k: "" if v is None else v for k, v in self.__dict__.items()}


def after_alert(case: Case | None, alert: RetentionAlert) -> Case | None:
    """A newer alert opens a new case (the owner stays, unless the last case was resolved); an older or the same
    one (read late, or again) changes nothing: None."""
    if case is not None and alert_number(case.alert_id) >= alert_number(alert.alert_id):
        return None
    owner = None if case is None or case.status == "resolved" else case.owner
    return Case(alert.alert_id, "open", owner, None, None, alert.raised_at.isoformat())


def after_action(case: Case | None, action: RetentionAction) -> Case | None:
    """The case after an action on its alert (or on a newer one, read before its alert); an action on an older
    alert is history only: None. A resolved case stays resolved until a newer alert."""
    n = alert_number(action.alert_id)
    if case is not None and alert_number(case.alert_id) > n:
        return None
    current = case if case is not None and case.alert_id == action.alert_id else Case(action.alert_id)
    at = action.occurred_at.isoformat()
    if action.action is ActionKind.RESOLVED:
        outcome = action.outcome.value if action.outcome else None
        return Case(action.alert_id, "resolved", current.owner, outcome, action.actor or None, at)
    if current.status == "resolved":
        return None
    if action.action is ActionKind.ASSIGNED:
        return Case(action.alert_id, "assigned", action.assignee, None, action.actor or None, at)
    status = "assigned" if current.status == "assigned" else "acknowledged"
    return Case(action.alert_id, status, current.owner, None, action.actor or None, at)


async def _apply(
    client: aioredis.Redis, prefix: str, customer_id: str, history: str, entry_id: str, entry: bytes, transition: Any
) -> bool:
    """Record ``entry`` under ``entry_id`` in the ``history`` hash once, and move the case with ``transition``
    (old case -> new case or None) in the same transaction. False if it was recorded before."""
    ck = case_key(prefix, customer_id)
    async with client.pipeline(transaction=True) as pipe:
        for _ in range(ATTEMPTS):
            try:
                await pipe.watch(history, ck)
                if await pipe.hexists(history, entry_id):
                    await pipe.reset()
                    return False
                old = Case.from_redis(await pipe.hgetall(ck))  # type: ignore[arg-type]  # decode_responses: str
                new = transition(old)
                pipe.multi()
                pipe.hset(history, entry_id, entry)
                if new is not None:
                    pipe.hset(ck, mapping=new.to_redis())
                    for status in TRACKED:
                        (pipe.sadd if new.status == status else pipe.srem)(status_key(prefix, status), customer_id)
                    if old is not None and old.owner and old.owner != new.owner:
                        pipe.srem(owner_key(prefix, old.owner), customer_id)
                    if new.owner:
                        pipe.sadd(owner_key(prefix, new.owner), customer_id)
                        pipe.sadd(owners_key(prefix), new.owner)
                await pipe.execute()
                return True
            except WatchError:
                continue
    raise RuntimeError(f"case of {customer_id}: {ATTEMPTS} conflicting writes in a row")


async def apply_alert(client: aioredis.Redis, prefix: str, alert: RetentionAlert) -> bool:
    """Record an alert (once) and open its case if it is the customer's newest; True if it was new."""
    return await _apply(
        client,
        prefix,
        alert.customer_id,
        alerts_key(prefix, alert.customer_id),
        alert.alert_id,
        alert.model_dump_json().encode(),
        lambda case: after_alert(case, alert),
    )


async def apply_action(client: aioredis.Redis, prefix: str, action: RetentionAction) -> bool:
    """Record an action (once, by event id) and move its case; True if it was new."""
    return await _apply(
        client,
        prefix,
        action.customer_id,
        actions_key(prefix, action.customer_id),
        action.event_id,
        action.model_dump_json().encode(),
        lambda case: after_action(case, action),
    )


async def history(client: aioredis.Redis, prefix: str, customer_id: str) -> tuple[list[dict], list[dict], Case | None]:
    """The customer's alerts (oldest first), actions (oldest first) and case."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hvals(alerts_key(prefix, customer_id))
        pipe.hvals(actions_key(prefix, customer_id))
        pipe.hgetall(case_key(prefix, customer_id))
        alerts, actions, case = await pipe.execute()
    alert_list = sorted((orjson.loads(a) for a in alerts), key=lambda a: alert_number(a["alert_id"]))
    action_list = sorted((orjson.loads(a) for a in actions), key=lambda a: a["occurred_at"])
    return alert_list, action_list, Case.from_redis(case)
