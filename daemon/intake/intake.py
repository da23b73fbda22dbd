"""Intake: watcher events as the fast path, scans as the truth, and a pause while the inbox is gone."""

from __future__ import annotations

import errno
import queue
import random
import time
from pathlib import Path
from typing import Callable

import structlog

from vidrop.config.settings import IntakeSettings
from vidrop.daemon.clock import Clock
from vidrop.daemon.intake.mounts import filesystem_type, is_network_filesystem
from vidrop.daemon.intake.pending import PendingInputs, ReadyInput
from vidrop.daemon.intake.readiness import JunkFilter
from vidrop.daemon.intake.scan import InboxScanner, InboxUnavailable
from vidrop.daemon.intake.taken import TakenInputs
from vidrop.daemon.intake.watch import INOTIFY_LIMIT_ERRORS, STOP, InboxWatcher, WatchLimitReached

log = structlog.get_logger()

# Which kernel limit an inotify error means, and the sysctl that raises it.
INOTIFY_SYSCTLS = {errno.ENOSPC: "fs.inotify.max_user_watches", errno.EMFILE: "fs.inotify.max_user_instances"}


class Intake:
    """Everything between a file appearing in the inbox and a ready input."""

    def __init__(
        self,
        inbox: Path,
        settings: IntakeSettings,
        events: queue.Queue,
        clock: Clock,
        watcher_factory: Callable[[Path, queue.Queue], InboxWatcher] = InboxWatcher,
        taken: TakenInputs | None = None,
        cpu_time: Callable[[], float] = time.thread_time,
    ) -> None:
        self.inbox = inbox
        self.cpu_time = cpu_time  # the scan's own CPU seconds (it runs in the caller's thread)
        self.events = events
        self.clock = clock
        self.watcher_factory = watcher_factory
        self.fs_type = filesystem_type(inbox)
        self.is_network = is_network_filesystem(self.fs_type)
        self.is_junk = JunkFilter(settings.ignore)
        self.pending = PendingInputs(
            inbox,
            is_junk=self.is_junk,
            pairing_seconds=settings.pairing_seconds,
            reopen=self.is_network,
            settle_seconds=settings.network_settle_seconds if self.is_network else settings.settle_seconds,
            taken=taken,
            grace_seconds=settings.decode_grace_seconds,
        )
        self.scanner = InboxScanner(inbox, self.is_junk)
        self.settings = settings
        self.mode = self._choose_mode(settings.watch)
        self.is_available = True
        self.unavailable_reason = ""
        self.polling_reason = ""  # why events were wanted but the inbox is polled (an inotify limit)
        self._watcher: InboxWatcher | None = None
        self._next_poll = 0.0
        self._next_reconcile = 0.0
        self._scan_soon = False
        self.is_watching = False

    def _choose_mode(self, requested: str) -> str:
        if requested != "auto":
            return requested
        return "polling" if self.is_network else "events"

    def start(self, *, watch: bool) -> None:
        """Start the observer (when events are wanted) and run the first full scan."""
        self.is_watching = watch
        if watch and self.mode == "events":
            self._start_watcher()
        self._scan(full=True)
        log.info(
            "intake_started",
            mode=self.mode if watch else "scan-once",
            polling_reason=self.polling_reason or None,
            filesystem=self.fs_type or "unknown",
            network=self.is_network,
            pending=len(self.pending),
            unchanged=self.pending.passed_over,
        )

    def stop(self) -> None:
        """Stop and join the observer."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def notice(self, path: Path | WatchLimitReached) -> None:
        """A path from the observer; a folder created or moved in is scanned (its files raise no events)."""
        if isinstance(path, WatchLimitReached):
            if self.mode == "events":
                self._fall_back_to_polling(path.error, folder=path.folder)
            return
        if not self.is_available:
            return
        if path.is_dir() and not path.is_symlink():
            self._scan_soon = True
        else:
            self.pending.notice(path)

    def drain(self, timeout: float) -> None:
        """Take what the observer saw, waiting up to timeout for the first item (a STOP item only wakes the
        caller; the stop and reload requests are flags of their own)."""
        try:
            item = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not STOP:
                self.notice(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def tick(self) -> None:
        """Scans when due, the observer's health, the inbox's presence."""
        now = self.clock.monotonic()
        if not self.is_available:
            if now >= self._next_poll:
                self._scan(full=True)
            return
        if self.mode == "events" and self._watcher is not None and not self._watcher.is_alive():
            log.warning("observer_died", action="restarting")
            self._watcher = None
            self._start_watcher()
            self._scan(full=True)
        elif now >= self._next_reconcile:
            self._scan(full=True)
        elif self._scan_soon or (self.mode == "polling" and now >= self._next_poll):
            self._scan_soon = False
            self._scan(full=False)

    def scan_now(self) -> None:
        """A full scan at the next tick (a job found the inbox gone)."""
        self._next_reconcile = 0.0

    def take_ready(self) -> list[ReadyInput]:
        """Inputs complete now (none while the inbox is unavailable); judged on the monotonic clock."""
        return self.pending.take_ready(self.clock.monotonic()) if self.is_available else []

    def retry_later(self, path: Path, *, delay: float) -> None:
        """Look at a path again after delay seconds."""
        self.pending.release(path, not_before=self.clock.monotonic() + delay)

    def is_idle(self) -> bool:
        """Nothing waiting to settle or pair."""
        return len(self.pending) == 0

    def _start_watcher(self) -> None:
        watcher = self.watcher_factory(self.inbox, self.events)
        try:
            watcher.start()
        except OSError as exc:
            watcher.stop()
            if exc.errno in INOTIFY_LIMIT_ERRORS:
                self._fall_back_to_polling(exc, folder=self.inbox)
                return
            raise
        self._watcher = watcher
        reached = getattr(watcher, "limit_reached", None)
        if reached is not None:  # already while the tree was walked: say so before intake_started does
            self._fall_back_to_polling(reached.error, folder=reached.folder)

    def _fall_back_to_polling(self, exc: OSError, *, folder: Path) -> None:
        """inotify ran out (watches or instances): poll the whole inbox rather than miss the folders beyond it.

        The whole inbox, not only the folders without a watch: which those are changes as folders come and go,
        and a poll of every folder is what a network mount gets anyway.
        """
        sysctl = INOTIFY_SYSCTLS.get(exc.errno or 0, "fs.inotify.max_user_watches")
        self.mode = "polling"
        self.polling_reason = f"inotify limit reached ({sysctl})"
        log.warning(
            "inotify_exhausted",
            error=exc.strerror or str(exc),
            errno=errno.errorcode.get(exc.errno or 0, ""),
            folder=str(folder),
            sysctl=sysctl,
            mode=self.mode,
            poll_seconds=self.settings.poll_seconds,
            action="polling the whole inbox until vidrop restarts",
            fix=f"raise {sysctl} (sysctl -w {sysctl}=N, and in /etc/sysctl.d/ to keep it), then restart vidrop",
        )
        if self._watcher is not None:
            self._watcher.stop()  # its watches go back to the other programs of this user
            self._watcher = None
        self._scan_soon = True  # what arrived in the unwatched folders meanwhile

    def _scan(self, *, full: bool) -> None:
        now = self.clock.monotonic()
        self._next_poll = now + self.settings.poll_seconds
        passed_over = self.pending.passed_over
        cpu_before = self.cpu_time()
        try:
            result = self.scanner.scan(full=full, visit=self.pending.notice_listing)
        except InboxUnavailable as exc:
            self._mark_unavailable(exc)
            return
        if full:
            self._next_reconcile = now + self._reconcile_interval(self.cpu_time() - cpu_before)
        if not self.is_available:
            self._mark_available()
        gone = self.pending.taken.prune_folders(result.listed, result.failed) if full else 0
        log.debug(
            "inbox_scanned",
            full=full,
            folders=len(result.listed),
            failed=len(result.failed),
            unchanged=self.pending.passed_over - passed_over,
            pending=len(self.pending),
            gone_folders=gone,
        )

    def _reconcile_interval(self, scan_cpu_seconds: float) -> float:
        """reconcile_seconds, or longer where a full scan costs more than reconcile_cpu_share of a core (jittered)."""
        interval = max(self.settings.reconcile_seconds, scan_cpu_seconds / self.settings.reconcile_cpu_share)
        if interval > self.settings.reconcile_seconds:
            log.debug("reconcile_spaced", scan_cpu_seconds=round(scan_cpu_seconds, 3), every_seconds=round(interval, 1))
        return interval * (1 + random.uniform(-0.1, 0.1))

    def _mark_unavailable(self, exc: OSError) -> None:
        if self.is_available:
            self.is_available = False
            self.unavailable_reason = exc.strerror or str(exc)
            log.error(
                "inbox_unavailable",
                inbox=str(self.inbox),
                error=self.unavailable_reason,
                errno=errno.errorcode.get(exc.errno or 0, ""),
                action="intake paused; the ledger is untouched",
            )
            self.stop()

    def _mark_available(self) -> None:
        self.is_available = True
        self.unavailable_reason = ""
        log.info("inbox_available", inbox=str(self.inbox), action="intake resumed")
        if self.mode == "events":
            self._start_watcher()
