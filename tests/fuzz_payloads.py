"""Seeded hostile payloads for the bad-input tests: every one must be rejected with a reason."""

from __future__ import annotations

import random

import orjson

VALID = {
    "order": {"order_id": "O1", "amount": 10.5, "currency": "USD", "status": "completed"},
    "survey": {"nps": 7, "csat": 4},
    "complaint": {"complaint_id": "K1", "severity": "high", "category": "billing"},
    "support": {"ticket_id": "T1", "kind": "opened"},
}
#: a retention action (the retention-actions topic, written by the router or a CRM integration): input too
VALID_ACTION = {"alert_id": "F000:churn:1", "action": "acknowledged"}
HOSTILE_VALUES = [
    None,
    True,
    -1,
    -1e308,
    1e308,
    "NaN",
    "Infinity",
    "-Infinity",
    "",
    " ",
    "x" * 5000,
    [],
    {},
    [1, 2],
    {"a": 1},
    "2026-13-45",
    "10,5",
    "1e999",
    12345678901234567890,
    "🙂",
    "\u0000",
    "DROP TABLE",
]
BAD_TIMES = ["2026-01-01T00:00:00", "2026-01-01", "01/02/2026", "2026-01-01T00:00:00+24:00", 1767225600, "", "now"]


def _base(rng: random.Random, n: int) -> dict:
    return {"event_id": f"bad-{n}", "customer_id": f"F{rng.randrange(50):03d}", "occurred_at": "2026-01-01T00:00:00Z"}


def hostile(kind: str, rng: random.Random, n: int, max_bytes: int) -> tuple[bytes | None, bytes | None]:
    """One bad (key, value) for ``kind`` (an event kind, or "action"); the kind of damage is drawn from ``rng``."""
    event = {**_base(rng, n), **(VALID_ACTION if kind == "action" else VALID[kind])}
    key = event["customer_id"].encode()
    damage = rng.randrange(10)
    if damage == 0:  # not JSON at all
        value = rng.choice([b"{", b"}", b"null", b"[]", b'"str"', b"42", b"{'single': 'quotes'}", b"", b'{"a":}'])
    elif damage == 1:  # not UTF-8
        value = bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 64)))
    elif damage == 2:  # a field removed
        del event[rng.choice(list(event))]
        value = orjson.dumps(event)
    elif damage == 3:  # a field of the wrong type or absurd value
        event[rng.choice(list(event))] = rng.choice(HOSTILE_VALUES)
        value = orjson.dumps(event)
    elif damage == 4:  # a bad time
        event["occurred_at"] = rng.choice(BAD_TIMES)
        value = orjson.dumps(event)
    elif damage == 5:  # huge payload
        event["pad"] = "x" * (max_bytes + rng.randrange(1, 50_000))
        value = orjson.dumps(event)
    elif damage == 6:  # out-of-range or unknown enum value, per kind
        bad = {
            "order": {"amount": rng.choice([-0.01, -5, 1e10, "1e999"]), "status": "stolen"},
            "survey": {"nps": rng.choice([-1, 11, 100]), "csat": rng.choice([0, 6])},
            "complaint": {"severity": rng.choice(["urgent", "LOW", ""])},
            "support": {"kind": rng.choice(["closed", "OPENED", "escalated"])},
            "action": {"action": rng.choice(["closed", "ACKNOWLEDGED", ""]), "alert_id": rng.choice(["", "F000"])},
        }[kind]
        field = rng.choice(list(bad))
        event[field] = bad[field]
        value = orjson.dumps(event)
    elif damage == 7:  # a null key with an empty payload, or a tombstone (null value)
        key, value = rng.choice([(None, b""), (key, None)])
    elif damage == 8:  # JSON text that orjson would refuse: NaN literal, trailing garbage
        value = orjson.dumps(event)[:-1] + rng.choice([b", NaN}", b"} trailing", b",}"])
    else:  # an id that is not an id
        event[rng.choice(["event_id", "customer_id"])] = rng.choice(["", "a b", "x" * 300, "\n", "/etc/passwd\u0000"])
        value = orjson.dumps(event)
    if kind == "survey" and damage == 2 and "nps" not in event and "csat" in event:
        # removing nps alone still leaves a valid survey: remove the answer too
        event.pop("csat")
        value = orjson.dumps(event)
    return key, value
