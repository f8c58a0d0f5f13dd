"""The chaos scenario's schedule (testing.chaos): what each seed does, and the freezes added last."""

from __future__ import annotations

import random

from testing.chaos import ChaosPlan, _schedule


def test_freezes_leave_a_seed_s_other_actions_as_they_were():
    """Each chaos seed's runs are compared across sessions (docs/benchmarks.md), so a plan without freezes
    draws exactly what it drew before they existed, and one with them draws them after everything else."""
    plan = ChaosPlan(seed=45, kills=15, churn_cycles=12, send_seconds=480.0)
    without = _schedule(plan, random.Random(45))
    frozen = _schedule(ChaosPlan(seed=45, kills=15, churn_cycles=12, send_seconds=480.0, freezes=6), random.Random(45))
    assert [a for a in frozen if a[1] not in ("freeze", "thaw")] == without
    freezes = [a for a in frozen if a[1] == "freeze"]
    thaws = [a for a in frozen if a[1] == "thaw"]
    assert len(freezes) == len(thaws) == 6
    for at, _, slot in freezes:
        assert 0.1 * 480 <= at <= 0.85 * 480 and slot in {"0", "1", "2"}
        # each is thawed 6-10 s later: past the scenario's 3 s session timeout
        assert any(t_slot == slot and 6.0 <= t - at <= 10.0 for t, _, t_slot in thaws)


def test_a_worker_digest_reads_its_checkpoints_from_the_joined_scrape():
    """A failing fault test orders its workers' digests by checkpoints run; the scrape joins samples with ", ", and
    a number read with its comma turned a broker-restart failure into a ValueError that hid the digests."""
    from testing.stack import checkpoints_in

    scrape = "pulse_clock_held_partitions 0.0, pulse_checkpoint_seconds_count 70.0, pulse_batch_events_count 71.0"
    assert checkpoints_in(scrape) == 70.0
    assert checkpoints_in("pulse_batch_events_count 3.0, pulse_checkpoint_seconds_count 2.0") == 2.0
    assert checkpoints_in("metrics not read: [Errno 111] Connection refused") == -1.0


class FakeClock:
    """``time`` for send_steadily: sleep moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_spike_sends_its_seconds_of_traffic_at_once_and_the_rest_keeps_its_times(monkeypatch):
    """The chaos scenario's traffic spike (a CI run on Kafka queued too little in any batch to defer an
    assessment): the chunks due within the spike go with the chunk at its start, and every later chunk keeps the
    time it had, so the run lasts as long as without the spike."""
    import testing.chaos as chaos

    clock, sent = FakeClock(), []
    monkeypatch.setattr(chaos, "time", clock)
    monkeypatch.setattr(chaos, "produce", lambda bootstrap, topic, batch: sent.append((clock.now - 100.0, batch)))
    records = [("order", f"c{i}".encode(), b"{}") for i in range(20)]
    chaos.send_steadily("bootstrap", {"order": "orders"}, records, 10.0, spike_at=4.5, spike_seconds=3.0)
    at = [round(t, 6) for t, _ in sent]
    # one chunk of 2 records per second; those due at 5, 6 and 7 s go at 4 s with the chunk sent then
    assert at == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 8.0, 9.0]
    assert [r for _, batch in sent for r in batch] == [(key, value) for _, key, value in records]
    steady, clock.now = [], 100.0
    monkeypatch.setattr(chaos, "produce", lambda bootstrap, topic, batch: steady.append(clock.now - 100.0))
    chaos.send_steadily("bootstrap", {"order": "orders"}, records, 10.0)
    assert [round(t, 6) for t in steady] == [float(i) for i in range(10)]
