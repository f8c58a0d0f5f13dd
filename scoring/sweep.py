"""The sweep cursor of one partition: which customers the next sweep tick re-scores, and when a round re-renders
every profile (docs/architecture.md, Sweep). Pure: no I/O, no Faust."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SweepSlice:
    keys: list[bytes]
    #: re-render every profile of this round (the clock moved: see ``SweepCursor.next_slice``)
    refresh_all: bool


@dataclass(slots=True)
class SweepCursor:
    """Where a partition's round-robin sweep stands over its members, and what its rounds rendered with."""

    #: position of the next slice in the partition's member list
    position: int = 0
    #: clock when the running sweep round started, and when the previous one did
    round_clock_ms: int | None = None
    previous_round_clock_ms: int | None = None
    #: clock of the last round that re-rendered every profile, and whether the running one does
    refreshed_clock_ms: int | None = None
    #: the population inputs of the profiles (see ``next_slice``) that round rendered with
    refreshed_inputs: object = None
    round_refresh: bool = False

    def restart(self) -> None:
        """Start over with a round that re-renders every profile (see ``PopulationView.refresh_all``)."""
        self.position = 0
        self.round_clock_ms = self.previous_round_clock_ms = self.refreshed_clock_ms = None
        self.refreshed_inputs = None

    def next_slice(
        self, members: list[bytes], limit: int | None, now_ms: int, inputs: object, refresh_min_ms: int
    ) -> SweepSlice:
        """The next ``limit`` of ``members`` (all of them if None), round-robin.

        A round re-renders every profile when the clock or ``inputs`` (what every profile is measured
        against besides the clock and its own state: the population's purchase gap) changed since the last
        such round, and either ``refresh_min_ms`` of event time passed since then or the clock stood still
        for a whole round (traffic stopped: profiles must end as of the final clock and the final
        population). So live traffic, whose clock moves with every batch, re-renders the whole population at
        most once per ``refresh_min_ms``; once the clock stops, a population that still moves (a partition
        read behind the others, another worker's late snapshot) brings one more round each time it moved,
        until a round ran with the final one.
        """
        if self.position == 0:
            self.previous_round_clock_ms, self.round_clock_ms = self.round_clock_ms, now_ms
            last = self.refreshed_clock_ms
            settled = now_ms == self.previous_round_clock_ms
            moved = now_ms != last or inputs != self.refreshed_inputs
            self.round_refresh = moved and (last is None or now_ms - last >= refresh_min_ms or settled)
            if self.round_refresh:
                self.refreshed_clock_ms = now_ms
                self.refreshed_inputs = inputs
        end = len(members) if limit is None else self.position + limit
        keys = members[self.position : end]
        self.position = 0 if end >= len(members) else end
        return SweepSlice(keys, self.round_refresh)
