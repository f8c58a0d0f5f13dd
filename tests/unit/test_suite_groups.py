"""The parallel run's groups (tests/conftest.py): a broker's tests go to one xdist worker, by test id."""

from __future__ import annotations

import pytest

from tests.conftest import broker_of

# (the cases' own ids name no broker: this test would be put in that broker's group)
CASES = [
    pytest.param("tests/e2e/test_restart_recovery.py::test_restart[kafka]", "kafka", id="one-param"),
    pytest.param("tests/e2e/test_walking_skeleton.py::test_orders[tansu-rocksdb://]", "tansu", id="two-params"),
    pytest.param("tests/faults/test_crashes_and_outages.py::test_kills[kafka-3-workers]", "kafka", id="dashes"),
    pytest.param("tests/faults/test_crashes_and_outages.py::test_kills[1-worker]", None, id="no-broker"),
    pytest.param("tests/unit/test_codec.py::test_edge_states_round_trip[32-min-ids]", None, id="unit-params"),
    pytest.param("tests/unit/test_codec.py::test_an_orjson_record_still_decodes", None, id="no-params"),
]


@pytest.mark.parametrize(("nodeid", "broker"), CASES)
def test_a_broker_test_is_grouped_by_the_broker_in_its_id(nodeid: str, broker: str | None) -> None:
    assert broker_of(nodeid) == broker
