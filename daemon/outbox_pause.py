"""Waiting out a full or missing outbox: back off, try again, go on by itself."""

from __future__ import annotations

from daemon.clock import Clock
from daemon.outbox import Outbox, OutboxUnavailable


class OutboxPause:
    """Whether results are paused, why, and when to try the outbox again (the wait doubles up to a limit)."""

    def __init__(self, outbox: Outbox, *, clock: Clock, first_wait: float, longest_wait: float) -> None:
        self.outbox = outbox
        self.clock = clock
        self.first_wait = first_wait
        self.longest_wait = longest_wait
        self.reason: OutboxUnavailable | None = None
        self.wait = 0.0
        self.last_pause_seconds = 0.0
        self._since = 0.0
        self._next_try = 0.0

    @property
    def is_paused(self) -> bool:
        return self.reason is not None

    def pause(self, reason: OutboxUnavailable) -> float:
        """Pause (or stay paused, waiting longer); return the seconds until the next try."""
        now = self.clock.monotonic()
        if self.reason is None:
            self._since = now
            self.wait = self.first_wait
        else:
            self.wait = min(self.wait * 2, self.longest_wait)
        self.reason = reason
        self._next_try = now + self.wait
        return self.wait

    def is_due(self) -> bool:
        return self.clock.monotonic() >= self._next_try

    def try_again(self) -> None:
        """Probe the outbox; raise OutboxUnavailable if it is still unusable, else end the pause."""
        self.outbox.check_available()
        self.last_pause_seconds = self.clock.monotonic() - self._since
        self.reason = None

    def describe(self) -> str:
        if self.reason is None:
            return "outbox available"
        left = max(0.0, self._next_try - self.clock.monotonic())
        return f"{self.reason.reason} ({self.reason.errno_name}: {self.reason.detail}); next try in {left:.0f} s"
