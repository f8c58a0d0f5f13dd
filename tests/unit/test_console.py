"""The console's pure parts: case transitions, the session cookie, the queue's filter parsing, the charts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from schemas.actions import ActionKind, Outcome, RetentionAction
from schemas.alerts import RetentionAlert
from streams.at_risk import AtRiskQuery, BadFilter
from streams.console import charts
from streams.console.app import _safe_next, make_session, read_session
from streams.console.cases import Case, after_action, after_alert

AT = datetime(2026, 1, 1, tzinfo=UTC)


def alert(n: int, customer: str = "B") -> RetentionAlert:
    return RetentionAlert(
        alert_id=f"{customer}:churn:{n}",
        customer_id=customer,
        raised_at=AT,
        kind="entered",
        level="high",
        previous_level="low",
        risk_score=90,
        reasons=[],
        vip=True,
        priority=True,
        currency="USD",
        revenue=Decimal(100),
        revenue_window=Decimal(100),
        value_at_risk=Decimal(30),
        suggested_action="call",
    )


def action(n: int, kind: ActionKind, **extra: object) -> RetentionAction:
    return RetentionAction(
        event_id=f"e{n}{kind.value}",
        customer_id="B",
        occurred_at=AT,
        alert_id=f"B:churn:{n}",
        action=kind,
        actor="ana",
        **extra,
    )


def test_a_case_follows_its_alert_through_acknowledge_assign_resolve():
    case = after_alert(None, alert(1))
    assert case == Case("B:churn:1", "open", None, None, None, AT.isoformat())
    case = after_action(case, action(1, ActionKind.ACKNOWLEDGED))
    assert (case.status, case.actor) == ("acknowledged", "ana")
    case = after_action(case, action(1, ActionKind.ASSIGNED, assignee="vip-desk"))
    assert (case.status, case.owner) == ("assigned", "vip-desk")
    # acknowledging an assigned case keeps it assigned to its owner
    again = after_action(case, action(1, ActionKind.ACKNOWLEDGED))
    assert (again.status, again.owner) == ("assigned", "vip-desk")
    case = after_action(case, action(1, ActionKind.RESOLVED, outcome=Outcome.WON_BACK))
    assert (case.status, case.owner, case.outcome) == ("resolved", "vip-desk", "won_back")
    # resolved stays resolved until a newer alert, which opens a new case without the old owner
    assert after_action(case, action(1, ActionKind.ACKNOWLEDGED)) is None
    assert after_alert(case, alert(1)) is None
    fresh = after_alert(case, alert(2))
    assert (fresh.alert_id, fresh.status, fresh.owner) == ("B:churn:2", "open", None)


def test_late_and_early_events_do_not_move_a_newer_case():
    assigned = after_action(after_alert(None, alert(2)), action(2, ActionKind.ASSIGNED, assignee="desk"))
    # an action on an older alert is history only
    assert after_action(assigned, action(1, ActionKind.RESOLVED, outcome=Outcome.LOST)) is None
    # a newer alert keeps the owner of an unresolved case
    assert after_alert(assigned, alert(3)).owner == "desk"
    # an action read before its alert opens the case at that alert; the alert read later changes nothing
    early = after_action(None, action(4, ActionKind.ACKNOWLEDGED))
    assert (early.alert_id, early.status) == ("B:churn:4", "acknowledged")
    assert after_alert(early, alert(4)) is None


def test_session_cookie_is_signed_by_the_token_and_expires():
    cookie = make_session(b"token", "ana lee", expires=2_000)
    assert read_session(b"token", cookie, now=1_000) == "ana lee"
    assert read_session(b"token", cookie, now=2_001) is None
    assert read_session(b"other", cookie, now=1_000) is None
    name, expires, mac = cookie.split(".")
    assert read_session(b"token", f"{name}.9999999999.{mac}", now=1_000) is None
    assert read_session(b"token", "garbage", now=1_000) is None
    assert "token" not in cookie


def test_login_redirects_only_within_the_site():
    assert _safe_next("/customers/B?x=1") == "/customers/B?x=1"
    for bad in ("https://evil.example/", "//evil.example/", "/\\evil", "", None):
        assert _safe_next(bad) == "/"


def test_queue_filters_parse_into_index_keys():
    q = AtRiskQuery.from_params({"level": "high", "vip": "true", "reason": "overdue", "limit": "5"}, 25, 50)
    assert q.include() == ["high:vip", "high:reason:overdue"]
    assert AtRiskQuery.from_params({}, 25, 50).include() == ["any"]
    assert AtRiskQuery.from_params({"level": "medium"}, 25, 50).include() == ["medium"]
    q = AtRiskQuery.from_params({"vip": "false", "segment": "at_risk", "min_value": "10.5"}, 25, 50)
    assert q.include() == ["any:nonvip", "any:segment:at_risk"]
    assert q.min_value == Decimal("10.5") and q.limit == 25
    for bad in ({"level": "low"}, {"segment": "a|b"}, {"min_value": "NaN"}, {"limit": "51"}, {"offset": "-1"}):
        with pytest.raises(BadFilter):
            AtRiskQuery.from_params(bad, 25, 50)


def test_monthly_spend_sums_the_buckets_of_each_month():
    day = 86_400_000
    jan1 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    buckets = [[jan1, 100], [jan1 + 7 * day, 250], [jan1 + 35 * day, -50]]
    assert charts.monthly_spend(buckets) == [("2026-01", 350), ("2026-02", -50)]
    svg = charts.bars([("2026-01", 3.5), ("<b>", 1.0)])
    assert svg.count("<rect") == 2 and "<b>" not in svg and "&lt;b&gt;" in svg
    assert charts.line([]) == '<p class="muted">no data</p>'
