"""The CDNOW transaction history (Fader, Hardie & Lee), as order events: a real population of 23,570 customers.

``CDNOW_master.txt`` ships with the ``lifetimes`` package (a dev dependency): one line per purchase,
``customer_id date(YYYYMMDD) number_of_cds dollar_value``. Each line becomes one completed USD order at
midnight UTC of its day (CDNOW has no time of day).
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files


def cdnow_orders() -> list[dict]:
    """Every CDNOW purchase as an order event (order of the file: by customer, then date)."""
    path = files("lifetimes.datasets").joinpath("CDNOW_master.txt")
    events = []
    for n, line in enumerate(path.read_text().splitlines()):
        fields = line.split()
        if len(fields) != 4 or not fields[0].isdigit():
            continue  # the header
        customer, day, _cds, dollars = fields
        at = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
        events.append(
            {
                "event_id": f"cdnow-{n}",
                "customer_id": f"CD{customer}",
                "occurred_at": at.isoformat(),
                "order_id": f"cdnow-{n}",
                "amount": dollars,
                "currency": "USD",
                "status": "completed",
            }
        )
    return events
