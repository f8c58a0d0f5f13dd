"""The sink's packers (the generated HSET, ``streams.resp.pack_texts``) write exactly hiredis's ``pack_command``.

``pack_hset`` replaced ``pack_command(("HSET", key, *args))`` on the worker's path for speed (issue 18): it
counts the length of a number's value in characters and every other value's in UTF-8 bytes, so a wrong
count would corrupt the RESP stream. These hold the two byte-equal over rendered profiles and over arbitrary
values of the profile's layout (non-ASCII, empty, longer than the header table), and check that another layout
still packs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hiredis import pack_command
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from pulse_config.settings import Settings
from schemas.profile import CustomerProfile, RenderedProfile, render_profile, use_native
from scoring.customer import assess_customer
from scoring.units import DAY_MS
from streams.at_risk import UPDATE_SCRIPT, index_entry
from streams.resp import pack_texts
from streams.sinks.redis_profiles import ASCII_FIELDS, pack_hset, profile_key
from testing.templates import template_states

SETTINGS = Settings(_env_file=None)
CONFIG = SETTINGS.scoring()
FIELDS = tuple(CustomerProfile.model_fields)
TEMPLATES = template_states(200, 11)


@pytest.fixture(autouse=True, scope="module", params=["c", "python"])
def renderer(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every check with the C renderer and packer (schemas._native), then with the Python ones, their reference."""
    use_native(request.param == "c")
    yield request.param
    use_native(True)


def hiredis_hset(key: str, args: tuple[str, ...]) -> bytes:
    return pack_command(("HSET", key, *args))  # type: ignore[arg-type]


def test_every_ascii_field_is_a_profile_field():
    # a name here that the profile does not have is a typo that leaves the real field on the slow path
    assert ASCII_FIELDS <= set(FIELDS)


def test_equal_over_rendered_profiles():
    non_ascii = 0
    for i, state in enumerate(TEMPLATES.states):
        cid = f"P{i:08d}" if i % 3 else f"Kundé-{i}-客户"
        clv, risk = assess_customer(state, TEMPLATES.clock_ms, 30.0, CONFIG)
        profile = render_profile(cid, state, TEMPLATES.clock_ms, CONFIG, "USD", clv, risk)
        key = profile_key("pulse:", cid)
        assert pack_hset(key, profile.args) == hiredis_hset(key, profile.args)
        non_ascii += not "".join(profile.args).isascii()
    assert non_ascii > len(TEMPLATES.states) // 3  # the ids above, and reasons' details ("×")


TEXT = st.text(st.characters(codec="utf-8"), max_size=80) | st.text(st.characters(codec="ascii"), max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT, min_size=len(FIELDS), max_size=len(FIELDS)), TEXT)
def test_equal_over_any_values_of_the_layout(values, key):
    args = tuple(x for pair in zip(FIELDS, values, strict=True) for x in pair)
    assert pack_hset(key, args) == hiredis_hset(key, args)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), TEXT), max_size=8), TEXT)
def test_another_layout_still_packs(pairs, key):
    args = tuple(x for pair in pairs for x in pair)
    assert pack_hset(key, args) == hiredis_hset(key, args)


def test_a_value_longer_than_the_header_table():
    values = ["1" * n for n in range(len(FIELDS))]  # up to 51 digits, then the longest over the table
    values[FIELDS.index("orders")] = "9" * 5000
    args = tuple(x for pair in zip(FIELDS, values, strict=True) for x in pair)
    assert pack_hset("k", args) == hiredis_hset("k", args)
    # a text of 3,000 characters and 6,000 bytes, and one of 4,095 bytes, the longest in the table
    for reasons in ("×" * 3000, "x" * 4095, "é" * 2047 + "x"):
        values = ["1"] * len(FIELDS)
        values[FIELDS.index("churn_reasons")] = reasons
        args = tuple(x for pair in zip(FIELDS, values, strict=True) for x in pair)
        assert pack_hset("k", args) == hiredis_hset("k", args)


def test_index_entry_from_rendered_values_equals_the_parsed_fields():
    """The at-risk index entry from the codes and cents the renderer hands over equals the one parsed back from
    the fields (as for a profile built from its fields), at and past the clock, and for extreme money."""
    at_risk = 0
    states = list(TEMPLATES.states)
    states += [
        replace(states[0], orders=replace(states[0].orders, revenue_cents=r, cost_cents=c))
        for r, c in [(10**26, 1), (-2_505, 0), (2**53, 0), (10**18 + 7, 3)]
    ]
    for i, state in enumerate(states):
        for now in (TEMPLATES.clock_ms, TEMPLATES.clock_ms + 90 * DAY_MS):
            clv, risk = assess_customer(state, now, 30.0, CONFIG)
            profile = render_profile(f"P{i:08d}", state, now, CONFIG, "USD", clv, risk)
            parsed = RenderedProfile(profile.customer_id, profile.vip, profile.args)
            assert index_entry(profile) == index_entry(parsed)
            at_risk += index_entry(profile) != ("", "")
    assert at_risk > len(states) // 4


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=12))
def test_pack_texts_equals_hiredis(args):
    assert pack_texts(args) == pack_command(tuple(args))


def test_pack_texts_of_long_arguments_and_the_index_script():
    for args in (["EVAL", UPDATE_SCRIPT, "0", "p:", "C1", "-4503599627370496", "high|any"], ["x" * 4096, "é" * 2048]):
        assert pack_texts(args) == pack_command(tuple(args))
