"""The fleet's queue controls as one instance sees them: paused, draining or running (`vidrop pause`, `drain`,
`resume`), read from the ledger at every turn of the loop, and said in STATUS=, the metrics and _STATUS.txt."""

from __future__ import annotations

import os
import pwd
import socket
from typing import Callable

import structlog

from vidrop.daemon.gallery.pages import local_time
from vidrop.daemon.ledger.base import Ledger, QueueControl, QueueMode

log = structlog.get_logger()


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
    if control.mode is QueueMode.DRAINING:
        left = "" if runnable is None else (f", {runnable} left" if runnable else ", drained")
        return f"queue draining {since}: jobs queued before it finish{left}, later ones wait; `vidrop resume`"
    return None


class QueueWatch:
    """The last queue control this instance read, and the runnable jobs then; listeners hear of each change."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.control = QueueControl()
        self.runnable = 0
        self.listeners: list[Callable[[QueueControl], None]] = []

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
