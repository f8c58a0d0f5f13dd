"""The changelog encoding of CustomerState (streams.codec).

The changelog outlives every deploy: a record written today must decode the
same after any later change, and records of the old orjson format must still
decode. These tests freeze the layouts, keep one record of each format as
bytes, and check exactness on states the real scorers reach.
"""

from __future__ import annotations

import struct
from array import array
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse.offline import score_records
from pulse.simulate import COMPLAINT_CATEGORIES, generate_events
from pulse_config.settings import Settings
from scoring.churn import ChurnState
from scoring.clv import PurchaseDays
from scoring.customer import CustomerState, EventFacts, apply_event
from scoring.episodes import Episode, EpisodeState, PendingAction
from scoring.orders import OrderFact, OrderState
from scoring.tickets import Folded, ServiceState, TicketFact
from scoring.voice import SEVERITIES, ComplaintFact, SurveyFact, VoiceState
from streams.codec import FORMAT_VERSION, LAYOUTS, decode_state, encode_state, encode_state_orjson
from testing.templates import template_states

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()

#: The wire layouts of format 1, as records already in changelogs hold them. Do not edit to make a test pass:
#: read the message of test_layouts_are_frozen first.
FROZEN_LAYOUTS = {
    "CustomerState": (
        "orders",
        "voice",
        "service",
        "purchases",
        "churn",
        "last_event_ms",
        "events",
        "source_offsets",
        "recent_ids",
        "partition",
        "rfm_cell",
        "segment",
        "vip",
        "vip_changes",
        "activity",
        "pending_vip_changes",
        "pending_alerts",
        "clv_cents",
        "episodes",
    ),
    "OrderState": (
        "orders",
        "refunds",
        "revenue_cents",
        "cost_cents",
        "first_purchase_ms",
        "last_purchase_ms",
        "revenue_buckets",
    ),
    "VoiceState": ("nps", "csat", "complaint_days", "complaints_total", "answer_days"),
    "ServiceState": ("tickets", "folded", "ticket_days", "ticket_days_newest"),
    "Folded": ("tickets", "reopens", "breaches", "first_response_ms_sum", "first_responses"),
    "PurchaseDays": ("first_day", "last_day", "recent_days", "periods", "total_cents", "first_day_cents"),
    "ChurnState": ("level", "score", "next_check_ms", "alerts", "alert_level", "alert_ms"),
    "EpisodeState": ("episodes", "pending", "totals", "suppressed", "stale_actions"),
    "Episode": (
        "first_alert",
        "last_alert",
        "raised_ms",
        "level",
        "status",
        "owner",
        "outcome",
        "closed_ms",
        "purchased_ms",
        "recovered_cents",
        "destinations",
        "settled",
    ),
    "PendingAction": ("at_ms", "alert", "action", "assignee", "outcome", "destination"),
}


@pytest.mark.parametrize("cls", list(LAYOUTS), ids=lambda cls: cls.__name__)
def test_layouts_are_frozen(cls: type) -> None:
    current = tuple(f.name for f in msgspec.structs.fields(cls))
    frozen = FROZEN_LAYOUTS[cls.__name__]
    assert LAYOUTS[cls] == current
    if current[: len(frozen)] == frozen:
        added = current[len(frozen) :]
        assert not added, (
            f"{cls.__name__} gained {added} at the end: compatible, old records decode them as their defaults. "
            "Give each a default; if one is not a MessagePack type (tuple, set, a dict key other than str/int; a "
            "state class is one, as an array), convert it in streams/codec.py (its hooks); then append them to "
            "FROZEN_LAYOUTS here."
        )
    else:
        pytest.fail(
            f"{cls.__name__} fields were removed, renamed or reordered: {frozen} -> {current}. Format-1 records "
            "in the changelog are positional, so they would decode into the wrong fields. Keep the existing "
            "fields in place and add new ones at the end; if the layout really must change, bump "
            "FORMAT_VERSION in streams/codec.py, keep a decoder for format-1 records, and freeze the new layout "
            "here."
        )


@pytest.mark.parametrize("cls", list(LAYOUTS), ids=lambda cls: cls.__name__)
def test_every_field_has_a_default(cls: type) -> None:
    """A record shorter than the layout (an older writer) is completed from the defaults."""
    missing = [
        f.name
        for f in msgspec.structs.fields(cls)
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
    ]
    assert not missing, f"{cls.__name__}.{missing} need a default: records written before them lack them"


# --- one record of each format, as bytes ------------------------------------------------------------------

GOLDEN_STATE = CustomerState(
    orders=OrderState(
        orders=3,
        refunds=1,
        revenue_cents=12_345,
        cost_cents=8_000,
        first_purchase_ms=1_735_689_600_000,
        last_purchase_ms=1_740_000_000_000,
        revenue_buckets={2869: 5_000, 2870: -1_000, 2875: 8_345},
    ),
    voice=VoiceState(
        nps=[[1_740_000_000_000, 9], [1_739_000_000_000, 4]],
        csat=[1_740_000_000_000, 5],
        complaint_days={20140: [2, 3]},
        complaints_total=7,
        answer_days={20140: [1, 0, 0, 1, 1, 2]},
    ),
    service=ServiceState(
        tickets={"T1": [1_740_000_000_000, 1_740_003_600_000, None, None, 0]},
        folded=Folded(tickets=2, reopens=1, breaches=1, first_response_ms_sum=7_200_000, first_responses=2),
        ticket_days={20140: [1, 0, 2, 1]},
        ticket_days_newest=20140,
    ),
    purchases=PurchaseDays(
        first_day=20089,
        last_day=20138,
        recent_days=[20089, 20100, 20138],
        periods=3,
        total_cents=13_345,
        first_day_cents=5_000,
    ),
    churn=ChurnState(
        level="medium",
        score=45,
        next_check_ms=1_741_000_000_000,
        alerts=1,
        alert_level="medium",
        alert_ms=1_740_000_000_000,
    ),
    last_event_ms=1_740_003_600_000,
    events={"order": 4, "survey": 2, "complaint": 7, "support": 2},
    source_offsets={"order": 1_234, "survey": 56, "complaint": 78, "support": 90},
    recent_ids=array("q", [-(2**63), -1, 0, 1, 2**63 - 1, 7_735_709_686_547_361_061]),
    partition=3,
    rfm_cell="545",
    segment="champions",
    vip=True,
    vip_changes=1,
    activity=11,
)

#: GOLDEN_STATE as format 1 wrote it (361 bytes)
GOLDEN_V1 = bytes.fromhex(
    "019f970301cd3039cd1f40cf000001941f297c00cf000001952014f80083cd0b35cd1388cd0b36d1fc18cd0b3bcd20999592"
    "92cf000001952014f8000992cf00000194e47a2e000492cf000001952014f8000581cd4eac9202030781cd4eac9601000001"
    "01029481a2543195cf000001952014f800cf00000195204be680c0c00095020101ce006ddd000281cd4eac9401000201cd4e"
    "ac96cd4e79cd4eaa93cd4e79cd4e84cd4eaa03cd3421cd138896a66d656469756d2dcf000001955bafc20001a66d65646975"
    "6dcf000001952014f800cf00000195204be68084a56f7264657204a673757276657902a9636f6d706c61696e7407a7737570"
    "706f72740284a56f72646572cd04d2a673757276657938a9636f6d706c61696e744ea7737570706f72745ac4300000000000"
    "000080ffffffffffffffff00000000000000000100000000000000ffffffffffffff7f252d3470f9c25a6b03a3353435a963"
    "68616d70696f6e73c3010b"
)

#: GOLDEN_STATE as the orjson format wrote it (1,204 bytes): changelogs written before format 1 hold these
GOLDEN_ORJSON = (
    b'{"orders":{"orders":3,"refunds":1,"revenue_cents":12345,"cost_cents":8000,"first_purchase_ms":173568'
    b'9600000,"last_purchase_ms":1740000000000,"revenue_buckets":{"2869":5000,"2870":-1000,"2875":8345}},"'
    b'voice":{"nps":[[1740000000000,9],[1739000000000,4]],"csat":[1740000000000,5],"complaint_days":{"2014'
    b'0":[2,3]},"complaints_total":7,"answer_days":{"20140":[1,0,0,1,1,2]}},"service":{"tickets":{"T1":[17'
    b'40000000000,1740003600000,null,null,0]},"folded":{"tickets":2,"reopens":1,"breaches":1,"first_respon'
    b'se_ms_sum":7200000,"first_responses":2},"ticket_days":{"20140":[1,0,2,1]},"ticket_days_newest":20140'
    b'},"purchases":{"first_day":20089,"last_day":20138,"recent_days":[20089,20100,20138],"periods":3,"tot'
    b'al_cents":13345,"first_day_cents":5000},"churn":{"level":"medium","score":45,"next_check_ms":1741000'
    b'000000,"alerts":1,"alert_level":"medium","alert_ms":1740000000000},"last_event_ms":1740003600000,"ev'
    b'ents":{"order":4,"survey":2,"complaint":7,"support":2},"source_offsets":{"order":1234,"survey":56,"c'
    b'omplaint":78,"support":90},"recent_ids":[-9223372036854775808,-1,0,1,9223372036854775807,77357096865'
    b'47361061],"partition":3,"rfm_cell":"545","segment":"champions","vip":true,"vip_changes":1,"activity"'
    b":11}"
)


#: GOLDEN_STATE with entries in its outbox (fields appended to format 1 after GOLDEN_V1 was written)
GOLDEN_STATE_OUTBOX = msgspec.structs.replace(
    GOLDEN_STATE,
    pending_vip_changes=[b'{"change_id":"C:vip:1","vip":true}'],
    pending_alerts=[b'{"alert_id":"C:churn:1"}', b'{"alert_id":"C:churn:2"}'],
)

#: GOLDEN_STATE_OUTBOX as format 1 writes it since the outbox (453 bytes; GOLDEN_STATE itself: 365)
GOLDEN_V1_OUTBOX = bytes.fromhex(
    "01dc0011970301cd3039cd1f40cf000001941f297c00cf000001952014f80083cd0b35cd1388cd0b36d1fc18cd0b3bcd2099"
    "959292cf000001952014f8000992cf00000194e47a2e000492cf000001952014f8000581cd4eac9202030781cd4eac960100"
    "000101029481a2543195cf000001952014f800cf00000195204be680c0c00095020101ce006ddd000281cd4eac9401000201"
    "cd4eac96cd4e79cd4eaa93cd4e79cd4e84cd4eaa03cd3421cd138896a66d656469756d2dcf000001955bafc20001a66d6564"
    "69756dcf000001952014f800cf00000195204be68084a56f7264657204a673757276657902a9636f6d706c61696e7407a773"
    "7570706f72740284a56f72646572cd04d2a673757276657938a9636f6d706c61696e744ea7737570706f72745ac430000000"
    "0000000080ffffffffffffffff00000000000000000100000000000000ffffffffffffff7f252d3470f9c25a6b03a3353435"
    "a96368616d70696f6e73c3010b91c4227b226368616e67655f6964223a22433a7669703a31222c22766970223a747275657d"
    "92c4187b22616c6572745f6964223a22433a636875726e3a31227dc4187b22616c6572745f6964223a22433a636875726e3a"
    "32227d"
)


def test_a_format_1_record_decodes_the_same_forever() -> None:
    assert decode_state(GOLDEN_V1) == GOLDEN_STATE
    assert decode_state(GOLDEN_V1_OUTBOX) == GOLDEN_STATE_OUTBOX


def test_a_record_written_before_the_outbox_decodes_with_it_empty() -> None:
    state = decode_state(GOLDEN_V1)
    assert state.pending_vip_changes == [] and state.pending_alerts == []
    assert len(encode_state(state)) == len(GOLDEN_V1) + 4  # a longer array header and two empty arrays


def test_an_orjson_record_still_decodes() -> None:
    assert GOLDEN_ORJSON == encode_state_orjson(GOLDEN_STATE)
    assert decode_state(GOLDEN_ORJSON) == GOLDEN_STATE


def test_the_encoding_is_deterministic() -> None:
    """A redelivered batch must write byte-identical records (tests/unit/test_processor.py relies on it)."""
    assert encode_state(GOLDEN_STATE_OUTBOX) == GOLDEN_V1_OUTBOX
    assert encode_state(decode_state(GOLDEN_V1_OUTBOX)) == GOLDEN_V1_OUTBOX
    assert encode_state(decode_state(GOLDEN_V1)) == encode_state(GOLDEN_STATE)
    assert GOLDEN_V1[0] == GOLDEN_V1_OUTBOX[0] == FORMAT_VERSION


def test_orjson_records_written_before_the_indicators_clv_and_churn_decode_with_defaults() -> None:
    old = orjson.loads(GOLDEN_ORJSON)
    del old["voice"]["answer_days"], old["service"]["ticket_days"], old["service"]["ticket_days_newest"]
    del old["activity"], old["purchases"], old["churn"]
    decoded = decode_state(orjson.dumps(old))
    assert decoded.voice.answer_days == {} and decoded.service.ticket_days == {}
    assert decoded.service.ticket_days_newest is None and decoded.activity == 0
    assert decoded.purchases == PurchaseDays() and decoded.churn == ChurnState()
    assert decoded.orders == GOLDEN_STATE.orders and decoded.recent_ids == GOLDEN_STATE.recent_ids


def test_no_record_is_a_new_customer() -> None:
    assert decode_state(None) == CustomerState() and decode_state(b"") == CustomerState()


@pytest.mark.parametrize("raw", [b"\x00", b"\x02\x90", b"[1]", b"\xc1"])
def test_an_unknown_format_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="unknown customer state format"):
        decode_state(raw)


# --- schema evolution -------------------------------------------------------------------------------------

_NESTED = {name: type(getattr(CustomerState(), name)) for name in LAYOUTS[CustomerState]}
_NESTED = {name: cls for name, cls in _NESTED.items() if cls in LAYOUTS}


def _arrays(raw: bytes) -> list[Any]:
    return msgspec.msgpack.decode(raw[1:])


def _record(arrays: list[Any]) -> bytes:
    return bytes([FORMAT_VERSION]) + msgspec.msgpack.encode(arrays)


def _prefix(obj: Any, keep: int) -> Any:
    """``obj`` as a writer that knew only its first ``keep`` fields would have it decoded."""
    return type(obj)(**{name: getattr(obj, name) for name in LAYOUTS[type(obj)][:keep]})


@pytest.mark.parametrize("keep", range(len(LAYOUTS[CustomerState]) + 1))
def test_a_shorter_record_fills_the_missing_trailing_fields_with_defaults(keep: int) -> None:
    arrays = _arrays(GOLDEN_V1)
    assert decode_state(_record(arrays[:keep])) == _prefix(GOLDEN_STATE, keep)


@pytest.mark.parametrize("name", list(_NESTED))
def test_a_shorter_nested_record_fills_its_missing_fields_with_defaults(name: str) -> None:
    index = LAYOUTS[CustomerState].index(name)
    for keep in range(len(LAYOUTS[_NESTED[name]]) + 1):
        arrays = _arrays(GOLDEN_V1)
        arrays[index] = arrays[index][:keep]
        expected = msgspec.structs.replace(GOLDEN_STATE, **{name: _prefix(getattr(GOLDEN_STATE, name), keep)})
        assert decode_state(_record(arrays)) == expected


def test_a_shorter_folded_record_fills_its_missing_fields_with_defaults() -> None:
    service, folded = LAYOUTS[CustomerState].index("service"), LAYOUTS[ServiceState].index("folded")
    arrays = _arrays(GOLDEN_V1)
    arrays[service][folded] = arrays[service][folded][:2]
    decoded = decode_state(_record(arrays))
    assert decoded.service.folded == Folded(tickets=2, reopens=1)


def test_a_longer_record_from_a_newer_layout_keeps_the_known_fields() -> None:
    """What a rolled-back worker reads: fields appended by the newer version are dropped."""
    arrays = _arrays(encode_state(GOLDEN_STATE))
    for name in _NESTED:
        arrays[LAYOUTS[CustomerState].index(name)].append("a newer field")
    arrays[LAYOUTS[CustomerState].index("service")][LAYOUTS[ServiceState].index("folded")].append(1)
    arrays += [None] * (len(LAYOUTS[CustomerState]) - len(arrays))  # a newer writer writes the optional tail too
    arrays.append({"a newer": "field"})
    assert decode_state(_record(arrays)) == GOLDEN_STATE


# --- exactness on reachable states ------------------------------------------------------------------------


def assert_round_trips(state: CustomerState) -> None:
    raw = encode_state(state)
    decoded = decode_state(raw)
    assert decoded == state
    assert encode_state(decoded) == raw
    # the orjson format predates the alert episodes (issue 19): its records decode without them
    assert decode_state(encode_state_orjson(state)) == msgspec.structs.replace(state, episodes=None)


START = datetime(2025, 1, 1, tzinfo=UTC)
MINUTES = st.integers(0, 2 * 365 * 24 * 60)


def _at(minute: int) -> str:
    return (START + timedelta(minutes=minute)).isoformat(timespec="milliseconds")


@st.composite
def raw_event(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """One input event as a producer sends it; ids repeat now and then (producer duplicates)."""
    kind = draw(st.sampled_from(["order", "order", "survey", "complaint", "support"]))
    event: dict[str, Any] = {
        "event_id": f"e{draw(st.integers(0, 500))}",
        "customer_id": draw(st.sampled_from(["A", "B", "C"])),
        "occurred_at": _at(draw(MINUTES)),
    }
    if kind == "order":
        event |= {
            "order_id": f"O{draw(st.integers(0, 10**6))}",
            "amount": draw(st.integers(1, 10**11)) / 100,
            "currency": "USD",
            "status": draw(st.sampled_from(["completed", "completed", "completed", "refunded"])),
        }
        if draw(st.booleans()):
            event["cost"] = draw(st.integers(0, 10**7)) / 100
    elif kind == "survey":
        event["nps"] = draw(st.integers(0, 10))
        if draw(st.booleans()):
            event["csat"] = draw(st.integers(1, 5))
    elif kind == "complaint":
        event |= {
            "complaint_id": f"K{draw(st.integers(0, 10**6))}",
            "severity": draw(st.sampled_from(SEVERITIES)),
            "category": draw(st.sampled_from(COMPLAINT_CATEGORIES)),
        }
    else:
        event |= {
            "ticket_id": f"T{draw(st.integers(0, 45))}",
            "kind": draw(st.sampled_from(["opened", "first_response", "resolved", "reopened"])),
        }
    return kind, event


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(raw_event(), max_size=150), st.booleans())
def test_states_the_worker_builds_from_random_histories_round_trip(events, in_time_order) -> None:
    """Through the worker's own processor: population fields (RFM, segment, VIP, churn) included."""
    if in_time_order:
        events.sort(key=lambda e: e[1]["occurred_at"])
    topics = SETTINGS.input_topics()
    records = [(topics[kind], e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]
    for state in score_records(records, SETTINGS).states.values():
        assert_round_trips(state)


@st.composite
def scored_event(draw: st.DrawFn) -> EventFacts:
    """An event as the scorer sees it, over a wider range than the schemas let through."""
    at = draw(st.integers(0, 4_000_000_000_000))
    fact: dict[str, Any] = draw(
        st.sampled_from(["order", "survey", "complaint", "support"]).flatmap(
            lambda kind: st.fixed_dictionaries(
                {
                    "order": {
                        "order": st.builds(
                            OrderFact,
                            st.just(at),
                            st.integers(0, 10**14),
                            st.none() | st.integers(0, 10**14),
                            st.booleans(),
                        )
                    },
                    "survey": {
                        "survey": st.builds(
                            SurveyFact, st.just(at), st.none() | st.integers(0, 10), st.none() | st.integers(1, 5)
                        )
                    },
                    "complaint": {"complaint": st.builds(ComplaintFact, st.just(at), st.sampled_from(SEVERITIES))},
                    "support": {
                        "ticket": st.builds(
                            TicketFact,
                            st.just(at),
                            st.integers(0, 60).map(lambda n: f"T{n}"),
                            st.sampled_from(["opened", "first_response", "resolved", "reopened"]),
                        )
                    },
                }[kind]
            )
        )
    )
    kind = "support" if "ticket" in fact else next(iter(fact))
    offset = draw(st.none() | st.integers(0, 2**63 - 1))
    return EventFacts(kind, f"e{draw(st.integers(0, 10**6))}", at, offset, **fact)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(scored_event(), max_size=300))
def test_states_the_scorers_build_from_random_events_round_trip(events) -> None:
    """Straight through apply_event: many tickets (folding), refunds, huge amounts, late events."""
    state = CustomerState()
    for event in events:
        apply_event(state, event, CONFIG)
        assert_round_trips(state)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 25), st.integers(1, 400), st.integers(0, 10**6))
def test_simulated_populations_round_trip(customers, days, seed) -> None:
    events = generate_events(customers, days, seed=seed)
    topics = SETTINGS.input_topics()
    records = [(topics[kind], e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]
    for state in score_records(records, SETTINGS).states.values():
        assert_round_trips(state)


def test_a_realistic_population_round_trips() -> None:
    states = template_states(300, 11).states
    assert len(states) == 300
    for state in states:
        assert_round_trips(state)


# --- edge cases over the whole value range ----------------------------------------------------------------

INT = st.integers(-(2**63), 2**64 - 1)  # what both MessagePack and orjson hold
I64 = st.integers(-(2**63), 2**63 - 1)
OPT = st.none() | INT
TEXT = st.text(max_size=24)
LEVELS = st.sampled_from(["low", "medium", "high"])

STATES = st.builds(
    CustomerState,
    orders=st.builds(
        OrderState,
        orders=INT,
        refunds=INT,
        revenue_cents=INT,
        cost_cents=INT,
        first_purchase_ms=OPT,
        last_purchase_ms=OPT,
        revenue_buckets=st.dictionaries(INT, INT, max_size=CONFIG.orders.window_buckets + 1),
    ),
    voice=st.builds(
        VoiceState,
        nps=st.lists(st.lists(INT, min_size=2, max_size=2), max_size=2),
        csat=st.none() | st.lists(INT, min_size=2, max_size=2),
        complaint_days=st.dictionaries(INT, st.lists(INT, min_size=2, max_size=2), max_size=31),
        complaints_total=INT,
        answer_days=st.dictionaries(INT, st.lists(INT, min_size=6, max_size=6), max_size=91),
    ),
    service=st.builds(
        ServiceState,
        tickets=st.dictionaries(TEXT, st.lists(OPT, min_size=4, max_size=4).map(lambda t: [*t, 0]), max_size=32),
        folded=st.builds(
            Folded, tickets=INT, reopens=INT, breaches=INT, first_response_ms_sum=INT, first_responses=INT
        ),
        ticket_days=st.dictionaries(INT, st.lists(INT, max_size=16), max_size=31),
        ticket_days_newest=OPT,
    ),
    purchases=st.builds(
        PurchaseDays,
        first_day=OPT,
        last_day=OPT,
        recent_days=st.lists(INT, max_size=32),
        periods=INT,
        total_cents=INT,
        first_day_cents=INT,
    ),
    churn=st.builds(
        ChurnState,
        level=LEVELS,
        score=INT,
        next_check_ms=OPT,
        alerts=INT,
        alert_level=st.none() | LEVELS,
        alert_ms=OPT,
    ),
    last_event_ms=OPT,
    events=st.dictionaries(TEXT, INT, max_size=4),
    source_offsets=st.dictionaries(TEXT, INT, max_size=4),
    recent_ids=st.lists(I64, max_size=32).map(lambda ids: array("q", ids)),
    partition=OPT,
    rfm_cell=st.none() | TEXT,
    segment=st.none() | TEXT,
    vip=st.booleans(),
    vip_changes=INT,
    activity=INT,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(STATES)
def test_any_state_within_the_value_range_round_trips(state) -> None:
    assert_round_trips(state)


def _extreme() -> CustomerState:
    lo, hi = -(2**63), 2**64 - 1
    window = CONFIG.orders.window_buckets + 1
    return CustomerState(
        orders=OrderState(hi, hi, lo, hi, lo, hi, {lo + i: hi - i for i in range(window)}),
        voice=VoiceState(
            [[hi, 10], [lo, 0]], [hi, 5], {i: [hi, 3] for i in range(31)}, hi, {i: [hi] * 6 for i in range(91)}
        ),
        service=ServiceState(
            {f"T{i:0190d}": [hi, None, lo, None, hi] for i in range(32)},
            Folded(hi, hi, hi, hi, hi),
            {i: [hi] * 16 for i in range(31)},
            lo,
        ),
        purchases=PurchaseDays(lo, hi, list(range(hi - 31, hi + 1)), hi, lo, hi),
        churn=ChurnState("high", hi, hi, hi, "high", lo),
        last_event_ms=hi,
        events={"order": hi, "survey": hi, "complaint": hi, "support": hi},
        source_offsets={"order": lo, "survey": hi, "complaint": 0, "support": -1},
        recent_ids=array("q", [-(2**63), 2**63 - 1, -1, 0] + [-(2**62) - i for i in range(28)]),
        partition=hi,
        rfm_cell="x" * 200,
        segment="é" * 200,
        vip=True,
        vip_changes=hi,
        activity=lo,
    )


@pytest.mark.parametrize(
    "state",
    [
        CustomerState(),
        CustomerState(recent_ids=array("q", [-(2**63)] * 32)),
        CustomerState(recent_ids=array("q", range(-16, 16)), voice=VoiceState(csat=None, nps=[])),
        CustomerState(service=ServiceState(tickets={"": [None, None, None, None, 0]})),
        _extreme(),
    ],
    ids=["empty", "32-min-ids", "32-small-ids", "empty-ticket", "extreme"],
)
def test_edge_states_round_trip(state: CustomerState) -> None:
    assert_round_trips(state)


def test_an_empty_state_is_a_few_bytes() -> None:
    assert len(encode_state(CustomerState())) < 64


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_an_int_beyond_64_bits_is_refused_not_corrupted(value: int) -> None:
    """orjson refused these too: an int field this large is a bug in the scorer, not a state to keep."""
    with pytest.raises(OverflowError):
        encode_state(CustomerState(activity=value))


def test_a_recent_id_beyond_64_bits_is_refused() -> None:
    with pytest.raises(OverflowError):
        CustomerState().recent_ids.append(2**63)


def test_recent_ids_in_a_list_are_refused_not_written_undecodable() -> None:
    """MessagePack would write a list as an array, which no reader takes for the ids' bin."""
    with pytest.raises(TypeError, match="recent_ids"):
        encode_state(CustomerState(recent_ids=[1, 2]))  # type: ignore[arg-type]


def test_the_optional_clv_is_left_out_while_unset_and_kept_when_set() -> None:
    """``clv_cents`` (PULSE_VIP_VALUE=clv only) costs no byte and changes no record where the mode is off."""
    assert encode_state(GOLDEN_STATE_OUTBOX) == GOLDEN_V1_OUTBOX
    with_clv = msgspec.structs.replace(GOLDEN_STATE_OUTBOX, clv_cents=123_456)
    raw = encode_state(with_clv)
    assert len(raw) > len(GOLDEN_V1_OUTBOX) and decode_state(raw) == with_clv


EPISODE_STATES = st.builds(
    EpisodeState,
    episodes=st.lists(
        st.builds(
            Episode,
            first_alert=INT,
            last_alert=INT,
            raised_ms=INT,
            level=TEXT,
            status=TEXT,
            owner=st.none() | TEXT,
            outcome=st.none() | TEXT,
            closed_ms=OPT,
            purchased_ms=OPT,
            recovered_cents=INT,
            destinations=st.lists(TEXT, max_size=4),
            settled=st.booleans(),
        ),
        max_size=3,
    ),
    pending=st.lists(
        st.builds(
            PendingAction,
            at_ms=INT,
            alert=INT,
            action=TEXT,
            assignee=st.none() | TEXT,
            outcome=st.none() | TEXT,
            destination=st.none() | TEXT,
        ),
        max_size=3,
    ),
    totals=st.dictionaries(TEXT, INT, max_size=3),
    suppressed=INT,
    stale_actions=INT,
)


def _walk(value: Any) -> Any:
    """A state part as format 1 defines it, field by field: each class an array in its layout's order, the ids
    packed little-endian 8 bytes each."""
    if isinstance(value, msgspec.Struct):
        return [_walk(getattr(value, name)) for name in LAYOUTS[type(value)]]
    if isinstance(value, array):
        return struct.pack(f"<{len(value)}q", *value)
    if isinstance(value, list):
        return [_walk(item) for item in value]
    if isinstance(value, dict):
        return {key: _walk(item) for key, item in value.items()}
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(STATES, OPT, st.none() | EPISODE_STATES)
def test_the_encoder_writes_what_the_layout_walk_writes(state, clv_cents, episodes) -> None:
    """``encode_state`` is msgspec's own encoding of the state classes (``array_like`` Structs, issue 18); a walk
    of the layouts field by field, the last two fields left out while None, stays the definition of the bytes."""
    state = msgspec.structs.replace(state, clv_cents=clv_cents, episodes=episodes)
    raw = encode_state(state)
    values = _walk(state)
    while len(values) > len(LAYOUTS[CustomerState]) - 2 and values[-1] is None:
        del values[-1]
    assert raw == bytes([FORMAT_VERSION]) + msgspec.msgpack.encode(values)
    assert decode_state(raw) == state
