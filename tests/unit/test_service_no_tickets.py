"""A customer without ticket records takes a short path through the service signals and risk: the same
values as the general computation (run here on an empty mapping that does not look empty)."""

from __future__ import annotations

import pytest

from scoring.tickets import Folded, ServiceConfig, ServiceState, service_risk, service_signals


class LooksNonEmpty(dict):
    def __bool__(self) -> bool:
        return True


@pytest.mark.parametrize(
    "folded", [Folded(), Folded(3, 1, 2, 3 * 7_200_000 + 5, 3), Folded(1, 0, 0, 0, 0), Folded(2, 0, 1, 0, 2)]
)
def test_no_tickets_gives_what_the_general_path_gives(folded):
    config, now = ServiceConfig(), 1_767_225_600_000
    short = ServiceState(folded=folded)
    general = ServiceState(tickets=LooksNonEmpty(), folded=folded)
    assert service_signals(short, now, config) == service_signals(general, now, config)
    assert service_risk(short, now, config, 86_400_000) == service_risk(general, now, config, 86_400_000)
