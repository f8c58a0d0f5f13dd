"""The C renderer and packer (schemas/_native.c) write exactly what the Python ones write.

``schemas._native`` renders a re-scored customer's profile and packs its HSET for ~1/5 of the Python code's
instructions (issue 18, docs/benchmarks.md session 37). The Python renderer stays the reference, and renders
whatever the C one leaves to it (numbers beyond 64 bits or the fast ranges of ``_float``/``_iso``/``_money``,
types the scorers do not produce). These hold the two byte-equal over scored histories, templates at random
clocks and hostile values, check that the C renderer does render the usual customer (a fallback for everyone
would pass the equality and save nothing), that it leaks nothing, and that ``PULSE_NATIVE_PROFILES`` turns it
off. tests/unit/test_profile_fields.py and test_redis_pack.py run their checks with both renderers.
"""

from __future__ import annotations

import gc
import tracemalloc

import msgspec
import orjson
import pytest
from hiredis import pack_command
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from pulse.offline import score_records
from pulse.simulate import generate_events
from pulse_config.settings import Settings
from schemas import profile
from schemas.profile import CustomerProfile, _native_context, _render, _render_python, native_available, use_native
from scoring.churn import ChurnAssessment
from scoring.clv import ClvSignals
from scoring.customer import CustomerState, assess_customer
from scoring.episodes import Episode, EpisodeState
from scoring.units import DAY_MS
from streams.processor import BatchProcessor
from testing.templates import template_states

pytestmark = pytest.mark.skipif(not native_available(), reason="unreachable: test_the_c_module_is_built fails first")

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()
CURRENCY = SETTINGS.base_currency.upper()
TEMPLATES = template_states(300, 7)
#: the C renderer's dates: 1970-01-01 to 2099-12-31 (schemas.profile._FAST_ISO_MS)
IN_RANGE = st.integers(0, 4_102_444_799_999)
CLOCKS = st.integers(-2_208_988_800_000, 220_000_000_000_000)


def native(cid: str, state: CustomerState, now: int, clv: ClvSignals, risk: ChurnAssessment) -> object:
    from schemas import _native

    return _native.render(cid, state, now, _native_context(CONFIG), CURRENCY, clv, risk)


def same(cid: str, state: CustomerState, now: int, gap: float | None = None) -> bool:
    """The C rendering equals Python's (when it renders); returns whether C rendered it."""
    clv, risk = assess_customer(state, now, gap, CONFIG)
    want = _render_python(cid, state, now, CONFIG, CURRENCY, clv, risk)
    got = native(cid, state, now, clv, risk)
    if got is not None:
        assert got == want
        assert all(type(v) is str for v in got[0])  # type: ignore[index]
    assert _render(cid, state, now, CONFIG, CURRENCY, clv, risk) == want
    return got is not None


def test_the_c_module_is_built():
    """scripts/setup.sh (pip install) builds it with the machine's C compiler; the tests need it built."""
    assert native_available(), "schemas._native is not built: install gcc and the Python headers, then setup"
    from schemas import _native

    assert _native.FIELDS == tuple(CustomerProfile.model_fields)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 30), st.integers(1, 800), st.integers(0, 10_000), st.lists(IN_RANGE, min_size=1, max_size=2))
def test_equal_over_scored_histories_and_rendered_in_c(customers, days, seed, clocks):
    topics = SETTINGS.input_topics()
    events = generate_events(customers, days, seed=seed)
    records = [(topics[kind], e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]
    states = score_records(records, SETTINGS).states
    last = max((s.last_event_ms or 0) for s in states.values()) if states else 0
    for now in [last, last + DAY_MS * 37 + 123, *clocks]:
        for key, state in states.items():
            # inside its ranges (every value a scorer makes from a history of 1970-2099) C renders every customer
            assert same(key.decode(), state, now), f"left to Python at schemas/_native.c:{last_bail()}"


def last_bail() -> int:
    from schemas import _native

    return _native.last_bail()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(TEMPLATES.states))), CLOCKS, st.none() | st.floats(1, 400))
def test_equal_over_templates_at_any_clock(index, now, gap):
    state = TEMPLATES.states[index]
    rendered = same(f"P{index:08d}", state, now, gap)
    if 0 <= now < 4_102_444_800_000:
        assert rendered, f"left to Python at schemas/_native.c:{last_bail()}"


FLOATS = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5)
CENTS = st.none() | st.integers(-(2**70), 2**70)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(range(len(TEMPLATES.states))), FLOATS, FLOATS, CENTS, CENTS, CENTS, IN_RANGE)
@example(0, 0.03125, -0.0, 10**18 - 1, -(10**18) + 1, 0, 1_700_000_000_000)  # a "%.4f" tie, minus zero
@example(0, 0.00005, -0.00001, 10**18, -(10**18), 2**63, 1_700_000_000_000)  # the money ranges' edges
@example(0, 99_999_999_999.99995, 1e11, None, None, None, 0)
@example(0, 109_951_162.77765, 0.12345, 1, -1, 99, 4_102_444_799_999)  # near the C path's 2**40 bound
def test_equal_for_any_clv_value(index, p_alive, expected, order_value, predictive, historical, now):
    """The C formatting of floats and money against Python's, through the fields that carry them."""
    state = TEMPLATES.states[index]
    clv, risk = assess_customer(state, now, None, CONFIG)
    clv = msgspec.structs.replace(
        clv,
        p_alive=p_alive,
        expected_purchases=expected,
        expected_order_value_cents=order_value,
        clv_predictive_cents=predictive,
        clv_historical_cents=historical,
    )
    want = _render_python("X", state, now, CONFIG, CURRENCY, clv, risk)
    got = native("X", state, now, clv, risk)
    assert got is None or got == want
    assert _render("X", state, now, CONFIG, CURRENCY, clv, risk) == want


money = st.integers(-(2**64), 2**64)
times = st.none() | st.integers(-(2**63), 2**63)
texts = st.text(max_size=6) | st.sampled_from(['a"b', "x\\y", "tab\there", "é", "ok", "\x7f"])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(range(len(TEMPLATES.states))),
    money,
    money,
    times,
    times,
    texts,
    st.none() | texts,
    st.lists(texts, max_size=3),
    st.booleans() | st.integers(0, 1),
    st.integers(-(2**64), 2**64),
    texts,
    IN_RANGE,
)
@example(0, 0, 0, None, None, "", None, [], True, 0, "C1", 0)
def test_equal_for_hostile_state_values(
    index, revenue, cost, first, last, owner, outcome, destinations, settled, recovered, cid, now
):
    """Money past 64 bits, times outside 1970-2099, texts JSON escapes, an int for a bool: C renders or leaves
    the customer to Python, and the strings are Python's either way."""
    state = TEMPLATES.states[index]
    episode = Episode(
        first_alert=1,
        last_alert=2,
        raised_ms=now,
        owner=owner,
        outcome=outcome,
        closed_ms=first,
        purchased_ms=last,
        recovered_cents=recovered,
        destinations=destinations,
        settled=settled,
    )
    state = replace(
        state,
        orders=replace(state.orders, revenue_cents=revenue, cost_cents=cost),
        episodes=EpisodeState(episodes=[episode]),
        last_event_ms=first,
    )
    clv, risk = assess_customer(TEMPLATES.states[index], now, None, CONFIG)
    try:
        want = _render_python(cid, state, now, CONFIG, CURRENCY, clv, risk)
    except Exception as exc:  # noqa: BLE001 - what Python refuses (orjson past 64 bits), C must not render
        with pytest.raises(type(exc)):
            _render(cid, state, now, CONFIG, CURRENCY, clv, risk)
        return
    got = native(cid, state, now, clv, risk)
    assert got is None or got == want
    assert _render(cid, state, now, CONFIG, CURRENCY, clv, risk) == want


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20), st.lists(st.text(max_size=40), max_size=120).map(tuple))
@example("k", ("a" * 1000,))
@example("\u00e9", ("", "\ud800"))  # a lone surrogate: hiredis's error, not a wrong length
def test_pack_hset_writes_what_hiredis_writes(key, args):
    from schemas import _native

    try:
        want = pack_command(("HSET", key, *args))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - not encodable: C leaves it to hiredis
        assert _native.pack_hset(key, args) is None
        return
    assert _native.pack_hset(key, args) == want


def test_rendering_leaks_nothing():
    """Every path of the C code gives back what it took: 20,000 renderings and packs leave the heap as it was."""
    from schemas import _native

    cases = []
    for i, state in enumerate(TEMPLATES.states[:100]):
        for now in (TEMPLATES.clock_ms, -1, 5_000_000_000_000):  # rendered in C, left to Python
            clv, risk = assess_customer(state, now, None, CONFIG)
            cases.append((f"c{i}", state, now, clv, risk))
    context = _native_context(CONFIG)

    def run(times: int) -> None:
        for _ in range(times):
            for cid, state, now, clv, risk in cases:
                out = _native.render(cid, state, now, context, CURRENCY, clv, risk)
                if out is not None:
                    _native.pack_hset(cid, out[0])

    run(3)  # caches (small ints, interned names, the context) filled
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(70)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after {70 * len(cases)} renderings"


def test_the_setting_turns_it_off_for_the_process():
    try:
        BatchProcessor(Settings(_env_file=None, native_profiles=False).processor())
        assert not profile.native_in_use() and profile.native_packer() is None
        BatchProcessor(SETTINGS.processor())
        assert profile.native_in_use() and profile.native_packer() is not None
    finally:
        use_native(True)
