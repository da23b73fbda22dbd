"""Test hooks ([debug] settings): make chosen inputs slow or hang the main loop, so tests can see the
watchdog fire and stops abandon a job. Empty by default; never set them in production."""

from __future__ import annotations

import fnmatch
import threading
import time

import structlog

from config.settings import DebugSettings
from daemon.ledger.base import Job

log = structlog.get_logger()


class DebugHooks:
    """Called from the step callback, on the main loop's thread."""

    def __init__(self, settings: DebugSettings) -> None:
        self.settings = settings

    def on_step(self, job: Job, step: int) -> None:
        """Sleep for a slow input; hang forever on the first step of a hang input's first attempt."""
        if job.attempts <= 1 and step <= 1 and _matches(job.input, self.settings.hang_inputs):
            log.warning("debug_hang", job_id=job.id, input=job.input)
            threading.Event().wait()  # a hung main loop: no more steps, no more WATCHDOG=1
        if _matches(job.input, self.settings.slow_inputs):
            time.sleep(self.settings.slow_step_seconds)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
