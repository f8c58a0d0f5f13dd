"""The checkpoint's per-batch reporting (streams.checkpoint_metrics), outside the durable steps."""

from __future__ import annotations

import logging

import orjson
from prometheus_client import REGISTRY

from pulse_config.settings import Settings
from scoring.customer import CustomerState
from streams.checkpoint_metrics import CheckpointMetrics
from streams.processor import BatchOutcome, BatchProcessor, ClockHold, Incoming


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_misplaced_records_are_counted_every_batch_and_logged_once_per_topic_partition(caplog):
    report = CheckpointMetrics(BatchProcessor(Settings(_env_file=None).processor()), wall_clock=lambda: 1000.0)
    outcome = BatchOutcome(misplaced={("orders", 3): 2}, time_driven_failures=[(3, b"C1", "ValueError: x")])
    before = sample("pulse_misplaced_events_total", topic="orders")
    failures = sample("pulse_processing_errors_total", stage="time_driven")
    with caplog.at_level(logging.WARNING, logger="streams.checkpoint"):
        report.anomalies(outcome)
        report.anomalies(outcome)
    assert sample("pulse_misplaced_events_total", topic="orders") == before + 4
    assert sample("pulse_processing_errors_total", stage="time_driven") == failures + 2
    assert sum("orders[3]" in r.getMessage() for r in caplog.records) == 1


def test_a_batch_moves_the_event_counters_and_the_population_gauges():
    processor = BatchProcessor(Settings(_env_file=None).processor())
    processor.population.partition(0).members.extend([b"A", b"B"])
    report = CheckpointMetrics(processor, wall_clock=lambda: 1000.0)
    scored = sample("pulse_events_total", kind="order", outcome="scored")
    report.batch(BatchOutcome(counts={("order", "scored"): 3}, occurred_ms=[999_000]))
    assert sample("pulse_events_total", kind="order", outcome="scored") == scored + 3
    assert sample("pulse_table_customers") == 2


def test_the_population_gauges_are_recomputed_at_most_every_population_seconds():
    processor = BatchProcessor(Settings(_env_file=None).processor())
    members = processor.population.partition(0).members
    members.extend([b"A", b"B"])
    now = [1000.0]
    report = CheckpointMetrics(processor, wall_clock=lambda: now[0], population_seconds=1.0)
    report.batch(BatchOutcome())
    assert sample("pulse_table_customers") == 2
    members.append(b"C")
    now[0] += 0.5
    report.batch(BatchOutcome(counts={("order", "scored"): 1}))  # the counters move every batch; the gauges wait
    assert sample("pulse_table_customers") == 2
    now[0] += 0.5
    report.batch(BatchOutcome())
    assert sample("pulse_table_customers") == 3
    now[0] -= 60  # the wall clock stepped back: recomputed, and timed from there
    members.append(b"D")
    report.batch(BatchOutcome())
    assert sample("pulse_table_customers") == 4


def test_a_customer_is_counted_assessed_once_per_batch_whatever_its_events():
    """``pulse_customers_assessed_total``: the work per customer a batch did (issue 18: live, about one per event)."""
    processor = BatchProcessor(Settings(_env_file=None).processor())
    report = CheckpointMetrics(processor, wall_clock=lambda: 1000.0)

    def order(n: int, customer: str) -> Incoming:
        value = orjson.dumps(
            {
                "event_id": f"e{n}",
                "customer_id": customer,
                "occurred_at": "2025-05-01T00:00:00Z",
                "order_id": f"o{n}",
                "amount": 10,
                "currency": "USD",
                "status": "completed",
            }
        )
        return Incoming("orders", 0, n, customer.encode(), value)

    store: dict[bytes, CustomerState] = {}
    outcome = processor.process(
        [order(0, "A"), order(1, "A"), order(2, "B")], lambda key: store.get(key, CustomerState())
    )
    assert set(outcome.assessed) == {b"A", b"B"}
    before = sample("pulse_customers_assessed_total")
    report.batch(outcome)
    assert sample("pulse_customers_assessed_total") == before + 2


def test_a_stalled_input_is_logged_once_per_episode_and_counted_while_it_lasts(caplog):
    report = CheckpointMetrics(BatchProcessor(Settings(_env_file=None).processor()), wall_clock=lambda: 1000.0)
    stalled = {("complaints", 0): (0, 3)}
    with caplog.at_level(logging.WARNING, logger="streams.checkpoint"):
        report._log_stalls(stalled)
        report._log_stalls(stalled)
        report._log_stalls({})  # read on
        report._log_stalls(stalled)
    assert sample("pulse_clock_stalled_inputs") == 1
    report._log_stalls({})
    assert sample("pulse_clock_stalled_inputs") == 0
    logged = [r.getMessage() for r in caplog.records if "complaints[0]" in r.getMessage()]
    assert len(logged) == 2 and "at offset 0 of 3" in logged[0]


class HeldProcessor:
    """The processor's side that ``CheckpointMetrics._log_held`` reads, set by the test between batches."""

    partition_idle_ms = 10_000

    def __init__(self) -> None:
        self.clocks: dict[int, int | None] = {0: 100, 1: 500}
        self.watermark_ms: int | None = 500
        self.holds: dict[int, list[ClockHold]] = {}
        self.population = self

    def clock_of(self, partition: int) -> int | None:
        return self.clocks.get(partition)

    def holding(self) -> dict[int, list[ClockHold]]:
        return self.holds


def test_a_partition_clock_held_behind_the_others_is_logged_once_per_episode_with_what_holds_it(caplog):
    processor = HeldProcessor()
    report = CheckpointMetrics(processor, wall_clock=lambda: 0.0)  # type: ignore[arg-type]  # the fake above
    hold = ClockHold("complaints", 2, 3, 90, 4_000)
    processor.holds = {0: [hold]}
    with caplog.at_level(logging.WARNING, logger="streams.checkpoint"):
        for now in (0.0, 5.0, 9.9):
            report._log_held(now)
        assert not caplog.records  # held, but not for 10 s yet
        report._log_held(10.0)
        report._log_held(20.0)
        processor.clocks[0] = 200  # moved: a new episode if it stays held again
        report._log_held(21.0)
        report._log_held(30.0)
        processor.watermark_ms = 200  # held, but no partition is later: a partition reading its own backlog
        report._log_held(40.0)
        processor.watermark_ms = 500
        report._log_held(41.0)
        processor.holds = {}  # caught up
        report._log_held(42.0)
        processor.holds = {0: [hold]}
        report._log_held(43.0)
        report._log_held(52.0)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2, logged
    assert "partition 0 held at 100 for 10 s while a partition reached 500" in logged[0]
    assert "complaints at offset 2 of 3, watermark 90, quiet 4 s" in logged[0]
    assert "held at 200 for 20 s" in logged[1]
