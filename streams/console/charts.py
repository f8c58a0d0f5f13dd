"""Small inline SVG charts for the console, drawn on the server: no chart library, no script in the page.

Each function returns the SVG markup of one chart from plain numbers; the
templates insert it as is (every label in it is escaped here).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT, PAD = 360, 120, 18


def monthly_spend(buckets: Sequence[Sequence[int]]) -> list[tuple[str, int]]:
    """Net spend (cents) per calendar month from the profile's revenue buckets ([start ms, cents], ...): a bucket
    counts for the month its first day is in (buckets are days wide, months are not: a chart's resolution)."""
    months: dict[str, int] = {}
    for start_ms, cents in buckets:
        month = datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y-%m")
        months[month] = months.get(month, 0) + cents
    return sorted(months.items())


def bars(points: Sequence[tuple[str, float]], unit: str = "", title: str = "") -> str:
    """A bar chart: one bar per (label, value), the value on hover (title)."""
    if not points:
        return '<p class="muted">no data</p>'
    top = max(max(v for _, v in points), 1e-9)
    step = (WIDTH - 2 * PAD) / len(points)
    parts = []
    for i, (label, value) in enumerate(points):
        h = max(0.0, value) / top * (HEIGHT - 2 * PAD)
        x, y = PAD + i * step, HEIGHT - PAD - h
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" class="bar">'
            f"<title>{escape(label)}: {value:,.2f}{escape(unit)}</title></rect>"
        )
    first, last = escape(points[0][0]), escape(points[-1][0])
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
        + "".join(parts)
        + f'<text x="{PAD}" y="{HEIGHT - 4}" class="axis">{first}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 4}" class="axis" text-anchor="end">{last}</text>'
        f'<text x="{PAD}" y="12" class="axis">max {top:,.2f}{escape(unit)}</text></svg>'
    )


def line(
    points: Sequence[tuple[str, float]], low: float | None = None, high: float | None = None, title: str = ""
) -> str:
    """A line with dots, e.g. the risk score (0-100) at each alert; a dot's label and value on hover."""
    if not points:
        return '<p class="muted">no data</p>'
    values = [v for _, v in points]
    lo = min(values) if low is None else low
    hi = max(values) if high is None else high
    span = (hi - lo) or 1.0
    step = (WIDTH - 2 * PAD) / max(len(points) - 1, 1)
    xy = [(PAD + i * step, HEIGHT - PAD - (v - lo) / span * (HEIGHT - 2 * PAD)) for i, (_, v) in enumerate(points)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="dot"><title>{escape(label)}: {v:g}</title></circle>'
        for (x, y), (label, v) in zip(xy, points, strict=True)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
        f'<polyline points="{path}" class="line"/>{dots}'
        f'<text x="{PAD}" y="12" class="axis">{hi:g}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 4}" class="axis">{lo:g}</text></svg>'
    )


#: most points a trend line draws (an 80 px line shows no more; a day of readings is thinned to this)
SPARK_POINTS = 120


def spark(values: Sequence[float | None]) -> str:
    """A tiny trend line (the population panel): the last values of an indicator, gaps for unknown ones; a long
    series is thinned to SPARK_POINTS evenly spaced readings (the newest always kept)."""
    if len(values) > SPARK_POINTS:
        last = len(values) - 1
        values = [values[round(i * last / (SPARK_POINTS - 1))] for i in range(SPARK_POINTS)]
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return ""
    lo, hi = min(known), max(known)
    span = (hi - lo) or 1.0
    w, h = 80, 20
    step = w / (len(values) - 1)
    pts = " ".join(f"{i * step:.1f},{h - (v - lo) / span * h:.1f}" for i, v in enumerate(values) if v is not None)
    return f'<svg class="spark" viewBox="0 -1 {w} {h + 2}" aria-hidden="true"><polyline points="{pts}"/></svg>'
