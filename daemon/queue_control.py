"""The fleet's queue controls as one instance sees them: paused, draining or running (`vidrop pause`, `drain`,
`resume`), read from the ledger at every turn of the loop, and said in STATUS=, the metrics and _STATUS.txt."""

from __future__ import annotations

import os
import pwd
import socket
import time
from datetime import datetime, timezone
from typing import Any, Callable

import structlog

from vidrop.daemon.ledger.base import Ledger, QueueControl, QueueMode

log = structlog.get_logger()


# The command line imports this module: nothing here may import the pipeline (torch, diffusers take seconds).


def local_time(epoch: float, fmt: str = "%H:%M") -> str:
    """A time in the server's local time zone, with the zone's name: "14:05 CET" (as the gallery writes it)."""
    return time.strftime(f"{fmt} %Z", time.localtime(epoch))


def iso_time(epoch: float | None) -> str | None:
    """A UTC ISO-8601 timestamp (as the outbox writes them), None for none."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")


def operator() -> str:
    """Who runs this command: user@host, as a cancelled job's error file and `vidrop status` name them."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a name (a container): its number
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def describe(control: QueueControl, *, runnable: int | None = None) -> str | None:
    """One line for people while the queue is held (None while it runs): what, who, since when, how to go on."""
    since = f"by {control.changed_by or '?'} at {local_time(control.changed_at)}"
    if control.mode is QueueMode.PAUSED:
        return f"queue paused {since}: no new job starts; `vidrop resume` to go on"
    if control.mode is QueueMode.DRAINING and runnable == 0:
        return f"queue drained {since}: nothing new starts; `vidrop resume` to go on"
    if control.mode is QueueMode.DRAINING:
        jobs = "the jobs" if runnable is None else f"{runnable} job{'s' if runnable != 1 else ''}"
        return f"queue draining {since}: {jobs} queued before it still run, then nothing new; `vidrop resume` to go on"
    return None


class QueueWatch:
    """The last queue control this instance read, and the runnable jobs then; listeners hear of each change."""

    def __init__(self, ledger: Ledger, *, metrics: Any = None) -> None:
        self.ledger = ledger
        self.control = QueueControl()
        self.runnable = 0
        self.listeners: list[Callable[[QueueControl], None]] = []
        if metrics is not None:  # vidrop_queue_paused / _draining read what this instance read last
            metrics.watch_queue(lambda: self.control)

    @property
    def text(self) -> str | None:
        return describe(self.control, runnable=self.runnable)

    def refresh(self) -> int:
        """Read the control and count the runnable jobs (the loop's work: 0 while paused); tell a change.
        LedgerUnavailable goes to the caller."""
        control = self.ledger.control()
        self.runnable = self.ledger.runnable_count()
        if control != self.control:
            self.control = control
            log.info(
                "queue_control_changed",
                mode=control.mode.value,
                changed_by=control.changed_by,
                changed_at=control.changed_at,
                drain_before=control.drain_before,
                runnable=self.runnable,
            )
            for listener in self.listeners:
                listener(control)
        return self.runnable
