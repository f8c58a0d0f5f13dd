"""Retention alerts in the schema of schemas/alerts.py, for the router's tests (no scoring worker needed)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pulse.devstack import free_port
from schemas.alerts import RetentionAlert
from schemas.vip import VipChange
from streams.router.messages import Envelope
from testing.stack import Namespace, start_pulse


def alert_dict(
    n: int,
    level: str = "high",
    vip: bool = False,
    segment: str = "at_risk",
    reasons: tuple[str, ...] = ("overdue", "low_p_alive"),
    value_at_risk: str = "240.00",
    raised_at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The n-th alert of customer C{n:05d}: valid for RetentionAlert, JSON-ready."""
    details = {
        "overdue": ("no purchase for 137.0 days, over 3 × their 30.0-day gap", 137.0, 90.0),
        "low_p_alive": ("P(alive) 0.296 after 11 repeat purchases (BG/NBD)", 0.296, 0.3),
        "severe_complaint": ("a critical complaint (delivery)", "critical", "high"),
        "spend_decline": ("spent 0.00 in the last 91 days, 200.00 in the 91 before", 0.0, 100.0),
    }
    at = raised_at or datetime.now(UTC)
    alert = {
        "alert_id": f"C{n:05d}:churn:1",
        "customer_id": f"C{n:05d}",
        "raised_at": at.isoformat(),
        "kind": "escalated" if level == "high" else "entered",
        "level": level,
        "previous_level": "medium" if level == "high" else "low",
        "risk_score": 90 if level == "high" else 50,
        "reasons": [
            {"code": code, "observed": details[code][1], "threshold": details[code][2], "detail": details[code][0]}
            for code in reasons
        ],
        "vip": vip,
        "priority": vip,
        "segment": segment,
        "rfm_cell": "333",
        "currency": "USD",
        "revenue": "1200.00",
        "revenue_window": "800.00",
        "clv": "58.26",
        "clv_historical": "360.00",
        "p_alive": 0.296,
        "value_at_risk": value_at_risk,
        "suggested_action": "personal call and an exclusive offer" if vip else "win-back offer or recommendation",
        **extra,
    }
    RetentionAlert.model_validate(alert)  # the fixture must stay in the schema
    return alert


def envelope(n: int, offset: int = 0, **kw: Any) -> Envelope:
    raw = alert_dict(n, **kw)
    alert = RetentionAlert.model_validate(raw)
    return Envelope("retention_alert", alert.alert_id, alert, raw, "alerts", 0, offset, raw.get("historical") is True)


def vip_change(n: int, vip: bool, at: datetime | None = None) -> dict[str, Any]:
    """Customer C{n:05d}'s first VIP flag change, in the schema of schemas/vip.py."""
    change = {
        "change_id": f"C{n:05d}:vip:1",
        "customer_id": f"C{n:05d}",
        "vip": vip,
        "reason": "top_share" if vip else "left",
        "value_measure": "revenue",
        "value": "12345.00",
        "value_percentile": 0.97,
        "rfm_cell": "555",
        "segment": "high_value",
        "currency": "USD",
        "at": (at or datetime.now(UTC)).isoformat(),
    }
    VipChange.model_validate(change)
    return change


def start_file_router(
    namespace: Namespace, folder: Path, deliver_historical: bool = False
) -> tuple[subprocess.Popen, Path, Path]:
    """``pulse router`` of ``namespace`` (its env: broker, credentials, Redis) delivering every alert to a file in
    ``folder``, with its own delivery dead-letter topic: (process, its log, the deliveries file)."""
    deliveries, config, log = folder / "deliveries.log", folder / "router.toml", folder / "router.log"
    historical = "deliver_historical = true\n" if deliver_historical else ""
    config.write_text(
        f'[router]\n{historical}default_route = ["log"]\n\n'
        f'[[destinations]]\nname = "log"\nkind = "file"\npath = "{deliveries}"\n'
    )
    env = {
        **os.environ,
        **namespace.env,
        "PULSE_ROUTER_CONFIG_FILE": str(config),
        "PULSE_ROUTER_METRICS_PORT": str(free_port()),
        "PULSE_TOPIC_DELIVERY_DEAD_LETTERS": namespace.settings.topic_retention_alerts + "-deliveries-dlq",
    }
    return start_pulse(["router", "--loglevel", "info"], env, log), log, deliveries
