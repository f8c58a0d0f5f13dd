"""Units of time shared by the scorers: every event time is epoch milliseconds (spec: Clock)."""

#: milliseconds in a day: day-based windows, gaps and ages (recency, revenue windows, churn, indicators)
DAY_MS = 86_400_000
