"""The parallel run's groups (tests/conftest.py): a broker's tests go to one xdist worker, by test id."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import broker_of, marked_faults

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


def _module(tmp_path, source: str):
    path = tmp_path / "test_m.py"
    path.write_text(source)
    return path


@pytest.mark.parametrize(
    ("source", "test", "faults"),
    [
        pytest.param(
            "import pytest\npytestmark = [pytest.mark.e2e, pytest.mark.faults]\ndef test_a(): pass\n",
            "test_a",
            True,
            id="module-list",
        ),
        pytest.param(
            "import pytest\npytestmark = pytest.mark.faults\ndef test_a(): pass\n", "test_a", True, id="module-one"
        ),
        pytest.param(
            "import pytest\npytestmark = pytest.mark.e2e\n@pytest.mark.faults\ndef test_a(): pass\n"
            "def test_b(): pass\n",
            "test_a",
            True,
            id="function",
        ),
        pytest.param(
            "import pytest\npytestmark = pytest.mark.e2e\n@pytest.mark.faults\ndef test_a(): pass\n"
            "def test_b(): pass\n",
            "test_b",
            False,
            id="its-neighbour",
        ),
        pytest.param(
            "import pytest\n@pytest.mark.faults\n@pytest.mark.parametrize('x', [1])\ndef test_a(x): pass\n",
            "test_a[tansu-1]",
            True,
            id="parametrized",
        ),
        pytest.param(
            "import pytest\npytestmark = pytest.mark.e2e\ndef test_a(): pass\n", "test_a", False, id="unmarked"
        ),
    ],
)
def test_a_test_marked_faults_goes_to_its_brokers_faults_lane(tmp_path, source: str, test: str, faults: bool) -> None:
    path = _module(tmp_path, source)
    assert marked_faults(path, f"tests/e2e/{path.name}::{test}") is faults


def test_the_repositorys_fault_tests_are_in_the_faults_lane() -> None:
    """The lanes as scripts/test.sh runs them: every tests/faults module, and the e2e kills and outages."""
    root = Path(__file__).resolve().parents[2]
    for path in (root / "tests/faults").glob("test_*.py"):
        assert marked_faults(path, f"tests/faults/{path.name}::test_x"), path
    router = root / "tests/e2e/test_router.py"
    down = "test_a_receiver_down_30s_gets_every_alert_exactly_once_when_back"
    assert marked_faults(router, f"tests/e2e/test_router.py::{down}[kafka]")
    assert not marked_faults(router, "tests/e2e/test_router.py::test_email_over_starttls_with_login[tansu]")
    assert marked_faults(root / "tests/e2e/test_restart_recovery.py", "tests/e2e/test_restart_recovery.py::t[kafka]")
