"""The population panel's trend points: what a reading keeps (the save rate included), the Redis entry format, and
the trend line's thinning. Redis itself (spacing, cap, a restart) is in tests/e2e/test_console_queue_trends.py."""

from __future__ import annotations

import dataclasses

from scoring.episodes import EPISODES_TAG
from scoring.indicator_sums import IndicatorValues
from streams.console import charts
from streams.console.trends import INDICATORS, Point, point_of
from streams.stats import PopulationStats


def values(**given: float | None) -> IndicatorValues:
    fields = {f.name: 0 for f in dataclasses.fields(IndicatorValues)}
    fields.update(first_response_ms={}, **{name: None for name in INDICATORS if name != "save_rate"})
    return IndicatorValues(**{**fields, **given})  # type: ignore[arg-type]


def test_a_reading_keeps_every_panel_indicator_and_the_save_rate_of_the_episodes():
    saves = {f"{EPISODES_TAG}:high:acknowledged:saved": 3, f"{EPISODES_TAG}:medium:none:not_saved": 1}
    stats = PopulationStats(4, 1234, values(nps=12.5, csat=0.8, churn_rate=0.1), saves)
    point = point_of(stats, 1_000)
    assert point is not None and point.customers == 1234 and point.at_ms == 1_000
    assert point.values["nps"] == 12.5 and point.values["csat"] == 0.8 and point.values["retention_rate"] is None
    assert point.values["save_rate"] == 0.75  # 3 saved of 4 settled
    assert set(point.values) == set(INDICATORS)
    assert point_of(PopulationStats(4, 0, values(), {}), 1).values["save_rate"] is None
    assert point_of(PopulationStats(0, 0, None), 1) is None  # no worker published yet: nothing to record


def test_an_entry_round_trips_and_a_foreign_one_is_skipped():
    point = Point(1_700_000_000_123, 99, {name: (0.5 if name == "nps" else None) for name in INDICATORS})
    entry = point.entry()
    assert entry.startswith(b"1700000000123 ")  # the script reads the time before the first space
    assert Point.from_entry(entry) == point
    assert Point.from_entry(entry.decode()) == point
    for bad in ("", "12", "x {}", "12 {not json", '12 {"values": 3}', b"12 []"):
        assert Point.from_entry(bad) is None, bad
    # a value that is not a number (an edited entry) is unknown, not an error
    odd = Point.from_entry('5 {"customers": 2, "values": {"nps": "high", "csat": true, "churn_rate": 0.25}}')
    assert odd is not None and odd.values["nps"] is None and odd.values["csat"] is None
    assert odd.values["churn_rate"] == 0.25


def test_a_long_trend_is_thinned_and_keeps_its_newest_reading():
    day = [float(i) for i in range(1440)]
    svg = charts.spark(day)
    points = svg.split('points="')[1].split('"')[0].split()
    assert len(points) == charts.SPARK_POINTS
    assert points[-1].endswith(",0.0")  # the newest (highest) value at the top
    assert charts.spark([1.0]) == "" and charts.spark([None, 2.0, None]) == ""
