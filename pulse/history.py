"""Histories (order CSVs, JSON lines of all four event kinds): read them into events, write profiles back out.

``pulse replay`` produces the events to the order topic; ``pulse score`` feeds
the very same bytes to the offline processor. Both go through the worker's
validation, so a bad row is a dead letter on both paths (with the same reason).

Columns: ``customer_id``, ``occurred_at``, ``amount`` (required), and
optionally ``order_id``, ``cost``, ``status`` (completed/refunded, default
completed), ``currency`` (default the base currency), ``event_id``.
Timestamps without a UTC offset are taken as UTC. Without an ``event_id``
column the id is ``{order_id}-{status}``, or ``{file stem}-{line}`` when the
row has no order id, so replaying the same file twice changes nothing.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson

from schemas.profile import CustomerProfile

REQUIRED_COLUMNS = ("customer_id", "occurred_at", "amount")

#: Columns of ``pulse score --out``, in order.
PROFILE_COLUMNS = (
    "customer_id",
    "revenue",
    "profit",
    "orders",
    "aov",
    "first_purchase_at",
    "last_purchase_at",
    "recency_days",
    "r",
    "f",
    "m",
    "rfm_cell",
    "segment",
    "vip",
    "churn_risk",
    "churn_level",
    "churn_reasons",
    "p_alive",
    "expected_purchases",
    "clv",
)

#: the event kinds a JSON-lines history may hold (each line: {"kind": ..., "event": {...}}); "action": a record
#: of the retention-actions topic (schemas/actions.py: what a team did about an alert), so `pulse score` can
#: replay the loop back too
EVENT_KINDS = ("order", "survey", "complaint", "support", "action")
#: file name endings read as JSON lines (anything else: an order CSV)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


class HistoryError(ValueError):
    """The file is not an order history (missing columns)."""


def _utc(text: str) -> str:
    text = text.strip()
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return text  # left to the event validation: a dead letter with reason invalid_time
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def _cell(row: dict[str, str | None], name: str) -> str:
    return (row.get(name) or "").strip()


def row_to_order(row: dict[str, str | None], line: int, source: str, base_currency: str) -> dict:
    """One CSV row as an order event (amounts stay decimal strings: no float rounding)."""
    order_id = _cell(row, "order_id")
    status = _cell(row, "status") or "completed"
    event_id = _cell(row, "event_id") or (f"{order_id}-{status}" if order_id else f"{source}-{line}")
    event: dict = {
        "event_id": event_id,
        "customer_id": _cell(row, "customer_id"),
        "occurred_at": _utc(row.get("occurred_at") or ""),
        "order_id": order_id or f"{source}-{line}",
        "amount": _cell(row, "amount"),
        "currency": _cell(row, "currency") or base_currency,
        "status": status,
    }
    if cost := _cell(row, "cost"):
        event["cost"] = cost
    return event


#: what Excel's "CSV UTF-8" export starts with; read and ignored
BOM = b"\xef\xbb\xbf"


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> HistoryError:
    return HistoryError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 (Excel: CSV UTF-8)")


def order_rows(path: Path, base_currency: str) -> Iterator[tuple[int, bytes, bytes]]:
    """(line, key, value) per row of an order CSV, read as it goes (any length, one row in memory).

    A UTF-8 byte-order mark and CRLF line ends (Excel's "CSV UTF-8") are accepted."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                has = ", ".join(reader.fieldnames or []) or "no header"
                raise HistoryError(f"{path}: missing column(s) {', '.join(missing)}; has {has}")
            for line, row in enumerate(reader, start=2):
                event = row_to_order(row, line, path.stem, base_currency.upper())
                yield line, event["customer_id"].encode(), orjson.dumps(event)
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None


def read_orders(path: Path, base_currency: str) -> Generator[tuple[bytes, bytes]]:
    """(key, value) per row, as they are produced to the order topic."""
    for _line, key, value in order_rows(path, base_currency):
        yield key, value


def event_lines(path: Path) -> Iterator[tuple[int, str, bytes | None, bytes]]:
    """(line, kind, key, value) per line of a JSON-lines history of all four kinds.

    Each line is ``{"kind": "order"|"survey"|"complaint"|"support", "event": {...}}``, the event as it is
    produced to its topic (an envelope, because support events have a ``kind`` field of their own). The
    key is the event's ``customer_id``. The event is validated like the worker's input (a bad one is
    rejected with the worker's reason); a line that is not such an envelope stops the read. A UTF-8
    byte-order mark and CRLF line ends are accepted.
    """
    with path.open("rb") as f:
        for line, text in enumerate(f, start=1):
            if line == 1 and text.startswith(BOM):
                text = text[len(BOM) :]
            if not text.strip():
                continue
            try:
                envelope = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise HistoryError(f"{path}:{line}: not JSON ({exc})") from None
            if not isinstance(envelope, dict) or envelope.get("kind") not in EVENT_KINDS or "event" not in envelope:
                raise HistoryError(
                    f'{path}:{line}: expected {{"kind": one of {", ".join(EVENT_KINDS)}, "event": {{...}}}}'
                )
            event = envelope["event"]
            customer = event.get("customer_id") if isinstance(event, dict) else None
            yield line, envelope["kind"], customer.encode() if isinstance(customer, str) else None, orjson.dumps(event)


def read_events(path: Path) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(kind, key, value) per line of a JSON-lines history (:func:`event_lines`)."""
    for _line, kind, key, value in event_lines(path):
        yield kind, key, value


def history_lines(path: Path, base_currency: str) -> Iterator[tuple[int, str, bytes | None, bytes]]:
    """(line, kind, key, value) of an order CSV or a JSON-lines history (by the file name's ending)."""
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        yield from event_lines(path)
    else:
        for line, key, value in order_rows(path, base_currency):
            yield line, "order", key, value


def read_history(path: Path, base_currency: str) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(kind, key, value) of an order CSV or a JSON-lines history (by the file name's ending)."""
    for _line, kind, key, value in history_lines(path, base_currency):
        yield kind, key, value


def count_rows(path: Path) -> int:
    """Rows of an order CSV (lines but the header); for a progress bar."""
    with path.open("rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def count_lines(path: Path) -> int:
    """Lines of a file, read in blocks (a progress bar's total, without holding the file)."""
    with path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def profile_row(profile: CustomerProfile) -> dict[str, str]:
    """One output row; the e2e test renders Redis profiles with the same function."""
    values = {
        "customer_id": profile.customer_id,
        "revenue": profile.revenue,
        "profit": profile.profit,
        "orders": profile.orders,
        "aov": profile.aov,
        "first_purchase_at": profile.first_purchase_at and profile.first_purchase_at.isoformat(),
        "last_purchase_at": profile.last_purchase_at and profile.last_purchase_at.isoformat(),
        "recency_days": profile.recency_days,
        "r": profile.r_score,
        "f": profile.f_score,
        "m": profile.m_score,
        "rfm_cell": profile.rfm_cell,
        "segment": profile.segment,
        "vip": "true" if profile.vip else "false",
        "churn_risk": profile.churn_risk,
        "churn_level": profile.churn_level,
        # the JSON list the profile holds: codes, observed values, thresholds (the population gap shows here)
        "churn_reasons": orjson.dumps([r.model_dump(mode="json") for r in profile.churn_reasons]).decode(),
        "p_alive": profile.p_alive,
        "expected_purchases": profile.expected_purchases,
        "clv": profile.clv,
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def write_profiles(profiles: list[CustomerProfile], out: TextIO) -> None:
    writer = csv.DictWriter(out, fieldnames=PROFILE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for profile in sorted(profiles, key=lambda p: p.customer_id):
        writer.writerow(profile_row(profile))


class Progress:
    """A one-line progress bar on stderr (redrawn at most every ``every`` seconds)."""

    def __init__(self, total: int, label: str, width: int = 30, every: float = 0.2) -> None:
        self.total, self.label, self.width, self.every = max(total, 1), label, width, every
        self.done = 0
        self.started = self._drawn = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._drawn >= self.every:
            self.draw()

    def draw(self, end: str = "") -> None:
        self._drawn = time.monotonic()
        share = min(1.0, self.done / self.total)
        filled = int(share * self.width)
        rate = self.done / max(1e-9, self._drawn - self.started)
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {share:6.1%} {self.done}/{self.total} {rate:,.0f}/s{end}")
        sys.stderr.flush()

    def close(self) -> None:
        self.draw(end="\n")
