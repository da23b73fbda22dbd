"""Waiting out a ledger that cannot be read or written: no new claims, back off, try again, go on by itself."""

from __future__ import annotations

from typing import Callable, TypeVar

import structlog

from vidrop.daemon.backoff import Backoff
from vidrop.daemon.clock import Clock
from vidrop.daemon.ledger.base import LedgerUnavailable

log = structlog.get_logger()

T = TypeVar("T")


class LedgerPause:
    """Whether the ledger is paused, why, and when to try it again (the wait doubles up to a limit).

    Every failure is logged (`ledger_unavailable`, with the next try) and the end of an outage once
    (`ledger_available`); `probe` is a small write, since a full disk still lets the ledger be read.
    """

    def __init__(self, probe: Callable[[], object], *, clock: Clock, first_wait: float, longest_wait: float) -> None:
        self.probe = probe
        self.backoff = Backoff(clock, first_wait=first_wait, longest_wait=longest_wait)
        self.reason: LedgerUnavailable | None = None
        self.outages = 0  # how many outages ended: after one, what intake knew is read again

    @property
    def is_paused(self) -> bool:
        return self.reason is not None

    @property
    def wait(self) -> float:
        """The current wait between two tries."""
        return self.backoff.wait

    def pause(self, reason: LedgerUnavailable) -> float:
        """Pause (or stay paused, waiting longer); return the seconds until the next try."""
        wait = self.backoff.failed(is_first=self.reason is None)
        self.reason = reason
        log.warning(
            "ledger_unavailable",
            reason=reason.reason,
            detail=reason.detail,
            fix=reason.fix,
            retry_in_seconds=round(wait, 1),
            paused_seconds=round(self.backoff.seconds_since_start(), 1),
        )
        return wait

    def seconds_to_next_try(self) -> float:
        return self.backoff.seconds_to_next_try()

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
        log.info("ledger_available", paused_seconds=round(self.backoff.seconds_since_start(), 1))

    def describe(self) -> str:
        if self.reason is None:
            return "ledger available"
        return (
            f"ledger unavailable: {self.reason.reason} ({self.reason.detail}); "
            f"next try in {self.seconds_to_next_try():.0f} s"
        )


def wait_out(
    step: Callable[[], T],
    *,
    clock: Clock,
    first_wait: float,
    longest_wait: float,
    wait: Callable[[float], bool],
    say: Callable[[str], None],
) -> T | None:
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
