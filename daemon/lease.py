"""The heartbeat: renews this instance's lease on the job it runs and tells the ledger it is alive."""

from __future__ import annotations

import threading
from typing import Callable

import structlog

from vidrop.daemon.clock import Clock
from vidrop.daemon.ledger.base import Ledger, LedgerUnavailable

log = structlog.get_logger()

BEATS_PER_LEASE = 3


class LeaseLost(Exception):
    """Another instance took the job over (this one missed its heartbeats): stop without writing anything."""


class LeaseKeeper:
    """A timer thread renews the lease every lease/3 seconds; the step callback and the commit check it."""

    def __init__(
        self, ledger: Ledger, *, instance_id: str, clock: Clock, lease_seconds: float, describe: Callable[[], str]
    ) -> None:
        self.ledger = ledger
        self.instance_id = instance_id
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.describe = describe
        self._lock = threading.Lock()
        self._job_id: str | None = None
        self._token: int | None = None
        self._is_lost = False
        self._renewed_at = 0.0  # this instance's clock at the last renewal (or the claim) that went through
        self.on_beat: Callable[[float], None] | None = None  # told each heartbeat's time (the gallery)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vidrop-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def hold(self, job_id: str, token: int | None = None) -> None:
        """This instance now runs job_id under the claim numbered token (it was just claimed with a fresh lease)."""
        with self._lock:
            self._job_id, self._token, self._is_lost, self._renewed_at = job_id, token, False, self.clock.time()

    def drop(self) -> None:
        """The job is over, one way or another."""
        with self._lock:
            self._job_id, self._token, self._is_lost = None, None, False

    def check(self) -> None:
        """Raise LeaseLost if a heartbeat found the job taken over (called only while the job is under way)."""
        if self._is_lost:
            log.error("job_lease_lost", job_id=self._job_id, instance=self.instance_id)
            raise LeaseLost(self._job_id)

    def confirm(self) -> None:
        """Renew now, under this claim's token, before writing outputs and again right before renaming them
        into place: the renames start with a whole lease ahead of them, or not at all (LeaseLost)."""
        self._renew()
        self.check()

    def seconds_left(self) -> float:
        """How long the lease holds, by this instance's clock, since the last renewal that went through."""
        return self._renewed_at + self.lease_seconds - self.clock.time()

    def beat(self) -> None:
        """One heartbeat: renew the lease if a job is held, and say what this instance is doing."""
        self._renew()
        now = self.clock.time()
        self.ledger.seen(self.instance_id, now, self.describe())
        if self.on_beat is not None:
            self.on_beat(now)

    def _renew(self) -> None:
        with self._lock:
            if self._job_id is None or self._is_lost:
                return
            # A failed renewal right after the job finished is no news; check() tells only while it runs.
            now = self.clock.time()
            if self.ledger.renew(self._job_id, self.instance_id, now, self.lease_seconds, token=self._token):
                self._renewed_at = now
            else:
                self._is_lost = True

    def beat_once(self) -> None:
        """One beat of the heartbeat thread: a fault is logged (the daemon's loop meets it too, or hears of it
        from the ledger: take_lost); the next beat tries again."""
        try:
            self.beat()
        except LedgerUnavailable as exc:
            log.warning("heartbeat_failed", instance=self.instance_id, reason=exc.reason, detail=exc.detail)
        except Exception:  # anything else: the next beat tries again
            log.exception("heartbeat_failed", instance=self.instance_id)

    def _loop(self) -> None:
        interval = self.lease_seconds / BEATS_PER_LEASE
        while not self._stopping.wait(interval):
            self.beat_once()
