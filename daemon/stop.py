"""A stop request: what SIGTERM / SIGINT (or a test) asked for, read by the loop and between two steps."""

from __future__ import annotations

import threading

from vidrop.daemon.clock import Clock


class StopRequest:
    """Stop after the running job if it ends within the stop timeout, else (or on a second request, or
    immediately) between two of its steps; a waiting job is woken at once."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.is_requested = False
        self.is_urgent = False
        self.deadline: float | None = None
        self.event = threading.Event()  # set once requested: waits (memory, the ledger) end early

    def request(self, *, timeout_seconds: float, immediately: bool = False) -> None:
        """Only flags and an event: safe from a signal handler."""
        self.is_urgent = self.is_urgent or immediately or self.is_requested
        if self.deadline is None:
            self.deadline = self.clock.monotonic() + timeout_seconds
        self.is_requested = True
        self.event.set()

    def must_stop_now(self) -> bool:
        """Whether a running job must be abandoned at its next step."""
        return self.is_urgent or (self.deadline is not None and self.clock.monotonic() >= self.deadline)

    def seconds_left(self) -> float:
        return 0.0 if self.deadline is None else self.deadline - self.clock.monotonic()

    def wait(self, seconds: float) -> bool:
        """Pause unless stopping; True when stopping."""
        return self.event.wait(seconds)


def stop_message(*, first: bool, status_text: str, timeout_seconds: float) -> str:
    """What a person at the terminal is told at once on Ctrl-C: what happens now, and how to stop sooner."""
    if not first:
        return "vidrop: stopping now; the running job is abandoned between two steps and queued again"
    if status_text.startswith("running ") and ": " in status_text:
        job_input = status_text.split(": ", 1)[1]
        return f"vidrop: finishing {job_input}, at most {timeout_seconds:g} s; Ctrl-C again to stop now"
    return "vidrop: stopping (no job is running); Ctrl-C again to stop now"
