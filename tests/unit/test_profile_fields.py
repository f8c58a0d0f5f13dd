"""The worker's pydantic-free profile rendering writes exactly what the edge model would.

``render_profile`` replaced ``CustomerProfile.from_state(...).to_redis()`` on the
worker's path for speed; readers still parse the hash with the edge model, so
every string must be the one pydantic would have produced: same keys, same
order, same number and date formatting.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from pydantic import AwareDatetime, TypeAdapter

from pulse.offline import score_records
from pulse.simulate import generate_events
from pulse_config.settings import Settings
from schemas.profile import (
    CustomerProfile,
    RenderedProfile,
    _float,
    _iso,
    _money,
    cents_to_money,
    ms_to_datetime,
    render_profile,
    use_native,
)
from scoring.churn import ChurnAssessment, ChurnReason
from scoring.clv import ClvSignals
from scoring.customer import CustomerState, assess_customer
from scoring.units import DAY_MS
from streams.processor import BatchProcessor
from testing.templates import template_states

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()
CURRENCY = SETTINGS.base_currency.upper()
TEMPLATES = template_states(300, 7)
DATETIME = TypeAdapter(AwareDatetime)
#: event-time clocks from 1900 to 9000: before, inside and far after any history
CLOCKS = st.integers(-2_208_988_800_000, 220_000_000_000_000)
GAPS = st.none() | st.floats(1, 400)


@pytest.fixture(autouse=True, scope="module", params=["c", "python"])
def renderer(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every check with the C renderer and packer (schemas._native), then with the Python ones, their reference."""
    use_native(request.param == "c")
    yield request.param
    use_native(True)


def expected(cid: str, state: CustomerState, now: int, clv: ClvSignals, risk: ChurnAssessment) -> dict[str, str]:
    return CustomerProfile.from_state(cid, state, now, CONFIG, CURRENCY, clv, risk).to_redis()


def check(cid: str, state: CustomerState, now: int, gap: float | None = None) -> dict[str, str]:
    clv, risk = assess_customer(state, now, gap, CONFIG)
    got = render_profile(cid, state, now, CONFIG, CURRENCY, clv, risk).fields
    want = expected(cid, state, now, clv, risk)
    assert got == want
    assert list(got) == list(want)  # same field order, so HGETALL reads the same
    assert all(type(v) is str for v in got.values())
    return got


def scored_states(customers: int, days: int, seed: int) -> dict[bytes, CustomerState]:
    topics = SETTINGS.input_topics()
    events = generate_events(customers, days, seed=seed)
    records = [(topics[kind], e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]
    return score_records(records, SETTINGS).states


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 30), st.integers(1, 800), st.integers(0, 10_000), st.lists(CLOCKS, min_size=1, max_size=3), GAPS)
def test_equal_over_scored_histories_at_random_clocks(customers, days, seed, clocks, gap):
    states = scored_states(customers, days, seed)
    last = max((s.last_event_ms or 0) for s in states.values()) if states else 0
    for now in [last, last + DAY_MS * 37 + 123, *clocks]:
        for key, state in states.items():
            check(key.decode(), state, now, gap)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(len(TEMPLATES.states))), st.integers(-30 * DAY_MS, 1500 * DAY_MS), GAPS)
def test_equal_over_realistic_templates(index, offset, gap):
    check(f"P{index:08d}", TEMPLATES.states[index], TEMPLATES.clock_ms + offset, gap)


def test_equal_over_every_template_at_its_clock():
    reasons = 0
    for i, state in enumerate(TEMPLATES.states):
        reasons += check(f"P{i:08d}", state, TEMPLATES.clock_ms, 30.0)["churn_reasons"] != "[]"
    assert reasons  # the templates exercise the reasons


def test_a_customer_with_nothing_yet():
    fields = check("new", CustomerState(), 1_700_000_000_000)
    assert fields["orders"] == "0" and fields["aov"] == "" and fields["first_purchase_at"] == ""
    assert fields["rfm_cell"] == "" and fields["csat_satisfied"] == "" and fields["last_event_at"] == ""


@pytest.mark.parametrize(
    "revenue,cost", [(0, 0), (1_000, 1_000), (1_000, 5_000), (-2_505, 0), (10**26, 1), (7, 10**25)]
)
def test_zero_negative_and_huge_money(revenue, cost):
    """Huge: as far as the order scorer itself goes (its AOV quantize stops at 28 digits); bigger money is
    covered through the CLV fields below."""
    state = TEMPLATES.states[0]
    state = replace(state, orders=replace(state.orders, revenue_cents=revenue, cost_cents=cost))
    check("money", state, TEMPLATES.clock_ms)


def test_vip_and_rfm_fields():
    state = replace(TEMPLATES.states[1], rfm_cell="514", segment="champions", vip=True)
    fields = check("vip", state, TEMPLATES.clock_ms)
    assert (fields["r_score"], fields["f_score"], fields["m_score"], fields["vip"]) == ("5", "1", "4", "True")


NONE_CLV = ClvSignals(0, 0.0, 0.0, None, None, None, None, None)
reason_values = (
    st.integers(-(2**63), 2**63 - 1)  # orjson's range, for the edge model as much
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.booleans()
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
)
reasons = st.builds(ChurnReason, st.text(max_size=12), reason_values, reason_values, st.text(max_size=20))
cents = st.none() | st.integers(-(10**32), 10**32)
floats = st.none() | st.integers(-5, 5) | st.floats(allow_nan=True, allow_infinity=True)
clvs = st.builds(ClvSignals, st.integers(0, 9), st.floats(0, 9), st.floats(0, 9), floats, floats, cents, cents, cents)
risks = st.builds(ChurnAssessment, st.integers(0, 100), st.sampled_from(["low", "medium", "high"]), st.tuples(reasons))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(TEMPLATES.states))), clvs, risks, CLOCKS)
@example(0, NONE_CLV, ChurnAssessment(0, "low", (), None), 0)
def test_equal_for_any_clv_and_churn_assessment(index, clv, risk, now):
    """Values the scorers do not produce today (None everywhere, bools, huge money, NaN, Decimals) still match."""
    state = TEMPLATES.states[index]
    want = expected("X", state, now, clv, risk)
    assert render_profile("X", state, now, CONFIG, CURRENCY, clv, risk).fields == want


@given(st.integers(-2_208_988_800_000, 253_402_300_799_999))
@example(0)
@example(-1)
@example(4_102_444_799_999)
@example(4_102_444_800_000)
def test_datetimes_as_pydantic_dumps_them(ms):
    assert _iso(ms) == DATETIME.dump_python(ms_to_datetime(ms), mode="json")


@given(st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20))
@example(0.00005)
@example(-0.00001)
@example(99_999_999_999.99995)
@example(1e11)
@example(1e16)
def test_floats_as_pydantic_keeps_them(value):
    want = "" if value is None else str(float(round(value, 4)))
    assert _float(value) == want
    if value is not None and math.isfinite(value):
        assert float(want) == float(round(value, 4))


@given(st.integers(-(10**32), 10**32))
@example(10**18 - 1)
@example(10**18)
@example(-(10**18) + 1)
def test_money_as_the_decimal_prints(cents):
    assert _money(cents) == str(cents_to_money(cents)) == str(Decimal(cents).scaleb(-2))


def test_the_worker_renders_records_that_read_back_as_the_edge_model():
    processor = BatchProcessor(SETTINGS.processor())
    now = TEMPLATES.clock_ms
    states = {f"P{i:08d}".encode(): s for i, s in enumerate(TEMPLATES.states[:50])}
    assessed = {key: assess_customer(s, now, 21.5, CONFIG) for key, s in states.items()}
    rendered = processor.profiles(states, now, assessed)
    assert [p.customer_id for p in rendered] == [key.decode() for key in states]
    for profile, (key, state) in zip(rendered, states.items(), strict=True):
        assert isinstance(profile, RenderedProfile) and profile.vip == state.vip
        want = CustomerProfile.from_state(key.decode(), state, now, CONFIG, CURRENCY, *assessed[key])
        assert profile.fields == want.to_redis()
        assert profile.value("revenue") == str(want.revenue) and profile.value("profit") == str(want.profit)
        assert profile.model() == want
        assert render_profile(key.decode(), state, now, CONFIG, CURRENCY, *assessed[key]) == profile


WINDOW_DAYS = CONFIG.voice.complaint_window_days
BUCKET_DAYS = CONFIG.orders.revenue_bucket_days
WINDOW_BUCKETS = CONFIG.orders.window_buckets


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(-2, WINDOW_DAYS + 2), st.tuples(st.integers(1, 5), st.integers(0, 3)), max_size=5),
    st.dictionaries(st.integers(-2, WINDOW_BUCKETS + 2), st.integers(-50_000, 50_000), max_size=6),
    st.integers(0, DAY_MS - 1),
)
def test_the_windows_at_their_edges(days_back, buckets_back, time_of_day):
    """The renderer counts the complaint window and sums the revenue window itself (not through
    ``voice_signals`` and ``window_revenue_cents``, for speed): days and buckets on either side of each
    window's first and last day, as the edge model (the scorers' functions) counts them."""
    today = 20_000
    now = today * DAY_MS + time_of_day
    current = now // (BUCKET_DAYS * DAY_MS)
    state = TEMPLATES.states[2]
    voice = replace(state.voice, complaint_days={today - back: [n, sev] for back, (n, sev) in days_back.items()})
    orders = replace(state.orders, revenue_buckets={current - back: c for back, c in buckets_back.items()})
    check("edges", replace(state, voice=voice, orders=orders), now)


@pytest.mark.parametrize("count", [0, 1, 1023, 1024, 10**6, -1])
def test_counts_inside_and_outside_the_table_of_small_numbers(count):
    state = TEMPLATES.states[3]
    state = replace(
        state,
        orders=replace(state.orders, orders=max(count, 1), refunds=count),
        voice=replace(state.voice, complaints_total=count),
        churn=replace(state.churn, alerts=count),
        events={"order": count, "survey": 1},
    )
    fields = check("counts", state, TEMPLATES.clock_ms)
    assert fields["churn_alerts"] == str(count) and fields["events_total"] == str(count + 1)
