"""Fakes shared by the unit tests (the seams of DESIGN.md: a clock the test moves)."""

from __future__ import annotations


class FakeClock:
    """Wall and monotonic time in one number that only the test moves."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
