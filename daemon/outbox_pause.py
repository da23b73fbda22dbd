"""Waiting out a full or missing outbox: back off, try again, go on by itself."""

from __future__ import annotations

from vidrop.daemon.backoff import Backoff
from vidrop.daemon.clock import Clock
from vidrop.daemon.outbox import Outbox, OutboxUnavailable


class OutboxPause:
    """Whether results are paused, why, and when to try the outbox again (the wait doubles up to a limit)."""

    def __init__(self, outbox: Outbox, *, clock: Clock, first_wait: float, longest_wait: float) -> None:
        self.outbox = outbox
        self.backoff = Backoff(clock, first_wait=first_wait, longest_wait=longest_wait)
        self.reason: OutboxUnavailable | None = None
        self.last_pause_seconds = 0.0

    @property
    def is_paused(self) -> bool:
        return self.reason is not None

    @property
    def wait(self) -> float:
        """The current wait between two tries."""
        return self.backoff.wait

    def pause(self, reason: OutboxUnavailable) -> float:
        """Pause (or stay paused, waiting longer); return the seconds until the next try."""
        wait = self.backoff.failed(is_first=self.reason is None)
        self.reason = reason
        return wait

    def is_due(self) -> bool:
        return self.backoff.seconds_to_next_try() <= 0

    def try_again(self) -> None:
        """Probe the outbox; raise OutboxUnavailable if it is still unusable, else end the pause."""
        self.outbox.check_available()
        self.last_pause_seconds = self.backoff.seconds_since_start()
        self.reason = None

    def describe(self) -> str:
        if self.reason is None:
            return "outbox available"
        left = self.backoff.seconds_to_next_try()
        return f"{self.reason.reason} ({self.reason.errno_name}: {self.reason.detail}); next try in {left:.0f} s"
