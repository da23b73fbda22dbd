"""Waiting out a ledger that cannot be read or written: no new claims, back off, try again, go on by itself."""

from __future__ import annotations

from typing import Callable, TypeVar

import structlog

from daemon.clock import Clock
from daemon.ledger.base import LedgerUnavailable

log = structlog.get_logger()

T = TypeVar("T")


class LedgerPause:
    """Whether the ledger is paused, why, and when to try it again (the wait doubles up to a limit).

    Every failure is logged (`ledger_unavailable`, with the next try) and the end of an outage once
    (`ledger_available`); `probe` is a small write, since a full disk still lets the ledger be read.
    """

    def __init__(self, probe: Callable[[], object], *, clock: Clock, first_wait: float, longest_wait: float) -> None:
        self.probe = probe
        self.clock = clock
        self.first_wait = first_wait
        self.longest_wait = longest_wait
        self.reason: LedgerUnavailable | None = None
        self.wait = 0.0
        self.outages = 0  # how many outages ended: after one, what intake knew is read again
        self._since = 0.0
        self._next_try = 0.0

    @property
    def is_paused(self) -> bool:
        return self.reason is not None

    def pause(self, reason: LedgerUnavailable) -> float:
        """Pause (or stay paused, waiting longer); return the seconds until the next try."""
        now = self.clock.monotonic()
        if self.reason is None:
            self._since = now
            self.wait = self.first_wait
        else:
            self.wait = min(self.wait * 2, self.longest_wait)
        self.reason = reason
        self._next_try = now + self.wait
        log.warning("ledger_unavailable", reason=reason.reason, detail=reason.detail, fix=reason.fix,
                    retry_in_seconds=round(self.wait, 1), paused_seconds=round(now - self._since, 1))
        return self.wait

    def seconds_to_next_try(self) -> float:
        return max(0.0, self._next_try - self.clock.monotonic())

    def try_again(self) -> bool:
        """When due, probe the ledger: True if it works again (the pause is over), False if not yet."""
        if not self.is_paused:
            return True
        if self.seconds_to_next_try() > 0:
            return False
        try:
            self.probe()
        except LedgerUnavailable as exc:
            self.pause(exc)
            return False
        self.resume()
        return True

    def resume(self) -> None:
        """A ledger call went through: the outage, if there was one, is over."""
        if self.reason is None:
            return
        self.reason = None
        self.outages += 1
        log.info("ledger_available", paused_seconds=round(self.clock.monotonic() - self._since, 1))

    def describe(self) -> str:
        if self.reason is None:
            return "ledger available"
        return (f"ledger unavailable: {self.reason.reason} ({self.reason.detail}); "
                f"next try in {self.seconds_to_next_try():.0f} s")


def wait_out(step: Callable[[], T], *, clock: Clock, first_wait: float, longest_wait: float,
             wait: Callable[[float], bool], say: Callable[[str], None]) -> T | None:
    """Run a ledger step, trying again with back-off while the ledger is unavailable (at start: a database
    still starting, a full state disk); say why while waiting. None if wait says to stop (it returns True)."""
    result: list[T] = []
    pause = LedgerPause(lambda: result.append(step()), clock=clock, first_wait=first_wait, longest_wait=longest_wait)
    try:
        result.append(step())
    except LedgerUnavailable as exc:
        pause.pause(exc)
    while not result:
        say(pause.describe())
        if wait(pause.seconds_to_next_try()):
            return None
        pause.try_again()
    return result[0]
