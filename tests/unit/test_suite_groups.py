"""The parallel run's groups (tests/conftest.py): a broker's tests go to one xdist worker, by test id."""

from __future__ import annotations

import pytest

from tests.conftest import broker_of


@pytest.mark.parametrize(
    ("nodeid", "broker"),
    [
        ("tests/e2e/test_restart_recovery.py::test_restart[kafka]", "kafka"),
        ("tests/e2e/test_walking_skeleton.py::test_orders[tansu-rocksdb://]", "tansu"),
        ("tests/faults/test_crashes_and_outages.py::test_seeded_kills[kafka-3-workers]", "kafka"),
        ("tests/faults/test_crashes_and_outages.py::test_seeded_kills[1-worker]", None),
        ("tests/unit/test_codec.py::test_edge_states_round_trip[32-min-ids]", None),
        ("tests/unit/test_codec.py::test_an_orjson_record_still_decodes", None),
    ],
)
def test_a_broker_test_is_grouped_by_the_broker_in_its_id(nodeid: str, broker: str | None) -> None:
    assert broker_of(nodeid) == broker
