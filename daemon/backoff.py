"""A wait that doubles while a fault lasts: how long to wait, since when, and when to try again."""

from __future__ import annotations

from vidrop.daemon.clock import Clock


class Backoff:
    """first_wait after the first failure, doubling with each further one up to longest_wait (monotonic clock)."""

    def __init__(self, clock: Clock, *, first_wait: float, longest_wait: float) -> None:
        self.clock = clock
        self.first_wait = first_wait
        self.longest_wait = longest_wait
        self.wait = 0.0
        self.since = 0.0
        self._next_try = 0.0

    def failed(self, *, is_first: bool) -> float:
        """One more failure (is_first: the fault starts now); return the seconds until the next try."""
        now = self.clock.monotonic()
        if is_first:
            self.since = now
            self.wait = self.first_wait
        else:
            self.wait = min(self.wait * 2, self.longest_wait)
        self._next_try = now + self.wait
        return self.wait

    def seconds_to_next_try(self) -> float:
        return max(0.0, self._next_try - self.clock.monotonic())

    def seconds_since_start(self) -> float:
        return self.clock.monotonic() - self.since
