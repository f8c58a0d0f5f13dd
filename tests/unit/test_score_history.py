"""`pulse score` reads all four event kinds (JSON lines with a kind, alongside order CSVs) and writes the churn
and CLV columns (issue 14)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from pulse.cli import main
from pulse.history import PROFILE_COLUMNS, HistoryError, profile_row, read_events
from pulse.offline import score_records
from pulse.simulate import generate_events
from pulse_config.settings import Settings

END = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.chdir(tmp_path)  # no .pulse/dev.env or CLV parameter file of the repository
    monkeypatch.delenv("PULSE_CLV_PARAMS_FILE", raising=False)
    # no VIP hysteresis: with it, a customer in the band keeps the flag it had, which depends on the order of
    # the history (an order file first and the other kinds after it, or all interleaved)
    monkeypatch.setenv("PULSE_VIP_LEAVE_SHARE", "0.05")
    return Settings(_env_file=None)


def write_jsonl(path: Path, events: list[tuple[str, dict]]) -> None:
    with path.open("wb") as f:
        for kind, event in events:
            f.write(orjson.dumps({"kind": kind, "event": event}) + b"\n")


def write_orders_csv(path: Path, events: list[tuple[str, dict]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "occurred_at", "amount", "cost", "order_id", "status", "event_id"])
        for kind, e in events:
            if kind == "order":
                writer.writerow(
                    [
                        e["customer_id"],
                        e["occurred_at"],
                        e["amount"],
                        e.get("cost", ""),
                        e["order_id"],
                        e["status"],
                        e["event_id"],
                    ]
                )


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == PROFILE_COLUMNS
        return {row["customer_id"]: row for row in reader}


def test_a_history_of_all_four_kinds_is_scored_with_churn_and_clv_columns(env, tmp_path, capsys):
    events = generate_events(customers=60, days=365, seed=8, end=END)
    assert {kind for kind, _ in events} == {"order", "survey", "complaint", "support"}
    history = tmp_path / "history.jsonl"
    write_jsonl(history, events)
    out = tmp_path / "profiles.csv"
    assert main(["score", str(history), "--out", str(out)]) == 0
    assert "0 rejected" in capsys.readouterr().err
    got = rows(out)

    topics = env.input_topics()
    records = [(topics[k], e["customer_id"].encode(), orjson.dumps(e)) for k, e in events]
    expected = {cid: profile_row(p) for cid, p in score_records(records, env).profiles.items()}
    assert got == expected
    # the voice and service events count: reasons only they can give, which an order history cannot
    codes = {r["code"] for row in got.values() for r in orjson.loads(row["churn_reasons"])}
    assert codes & {"detractor", "dissatisfied", "complaint_burst", "severe_complaint", "slow_first_response"}
    assert all(row["churn_level"] in ("low", "medium", "high") and row["churn_risk"].isdigit() for row in got.values())
    assert any(row["p_alive"] and row["expected_purchases"] and row["clv"] for row in got.values())

    # an order CSV plus the other kinds as JSON lines is the same history
    orders = tmp_path / "orders.csv"
    write_orders_csv(orders, events)
    others = tmp_path / "others.ndjson"
    write_jsonl(others, [(k, e) for k, e in events if k != "order"])
    split = tmp_path / "split.csv"
    assert main(["score", str(orders), str(others), "--out", str(split)]) == 0
    assert rows(split) == got
    # and orders alone give other churn reasons
    alone = tmp_path / "alone.csv"
    assert main(["score", str(orders), "--out", str(alone)]) == 0
    assert rows(alone) != got


def test_a_bad_event_is_rejected_with_the_workers_reason_and_a_bad_line_stops_the_read(env, tmp_path, capsys):
    history = tmp_path / "h.jsonl"
    good = {"event_id": "s1", "customer_id": "C1", "occurred_at": "2026-01-01T00:00:00Z", "nps": 3}
    bad = {**good, "event_id": "s2", "nps": 11}
    write_jsonl(history, [("survey", good), ("survey", bad)])
    assert main(["score", str(history), "--out", str(tmp_path / "o.csv"), "--allow-rejects"]) == 0
    assert "1 rejected (out_of_range: 1)" in capsys.readouterr().err
    assert main(["score", str(history), "--out", str(tmp_path / "o.csv")]) == 1  # rejected rows: exit 1

    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"kind": "survey", "event": {}}\n{"kind": "refund", "event": {}}\n')
    with pytest.raises(HistoryError, match="broken.jsonl:2"):
        list(read_events(broken))
    assert main(["score", str(broken)]) == 2
