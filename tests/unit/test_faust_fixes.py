"""The issue-15 fix of streams/faust_fixes.py: the flow is resumed (and the stream queues cleared) only once."""

from __future__ import annotations

from types import SimpleNamespace

from streams import faust_fixes


class FakeFlowControl:
    def __init__(self, active: bool) -> None:
        self.active = active
        self.resumed = 0

    def is_active(self) -> bool:
        return self.active

    def resume(self) -> None:  # clears every stream queue in mode's FlowControlEvent
        self.resumed += 1
        self.active = True


def test_flow_is_resumed_only_when_suspended():
    """A second resume would clear the stream queues of records fetched since the first."""
    running, suspended = FakeFlowControl(True), FakeFlowControl(False)
    faust_fixes._resume_flow_control(SimpleNamespace(flow_control=running))
    faust_fixes._resume_flow_control(SimpleNamespace(flow_control=suspended))
    assert running.resumed == 0 and suspended.resumed == 1
