"""Daemon: startup → loop → shutdown, stop and reload requests. It runs the services `Wiring` builds; signal
handlers only set flags."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

import structlog

from vidrop.config.settings import ConfigError, Settings, flat_settings, reloaded
from vidrop.daemon.intake.watch import STOP
from vidrop.daemon.ledger.base import Job, LedgerUnavailable
from vidrop.daemon.logs import set_level
from vidrop.daemon.outbox import OutboxUnavailable
from vidrop.daemon.runner import InboxUnavailable
from vidrop.daemon.stop import StopRequest, stop_message
from vidrop.daemon.wiring import Services, Wiring

log = structlog.get_logger()


class Daemon:
    """The hot-folder daemon. `run()` for the service, `run(once=True)` to drain the inbox and exit."""

    def __init__(self, wiring: Wiring, *, settings_loader: Callable[[], Settings] | None = None) -> None:
        self.wiring = wiring
        self.settings = wiring.settings
        self.clock = wiring.clock
        self.notifier = wiring.notifier
        self.settings_loader = settings_loader
        self.stop = StopRequest(self.clock)
        self.should_reload = False
        self.services: Services | None = None
        self._last_job_ended = self.clock.monotonic()
        self._outages_handled = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with once, until nothing is pending). 0, or 1 if a job failed in once mode."""
        self.startup(watch=not once)
        try:
            while not self.stop.is_requested:
                self.run_once(timeout=self.settings.intake.tick_seconds)
                if once and self.is_idle():
                    break
        finally:
            self.shutdown()
        return 1 if once and self.services is not None and self.services.recorder.outcomes["failed"] else 0

    def startup(self, *, watch: bool) -> None:
        """Services (ledger, model, outbox...), the first scan; then READY. Stopped while waiting for the ledger:
        nothing runs."""
        self.services = self.wiring.build(self.stop)
        if self.services is None:
            return
        services = self.services
        services.start_intake(watch=watch, load_taken=True)
        self.notifier.ready()  # only now: the model is loaded and the inbox is watched
        services.status.idle()
        log.info("daemon_ready", watching=watch, pending=len(services.intake.pending), counts=services.ledger.counts())

    def shutdown(self) -> None:
        """Stop the watcher and the services, say goodbye."""
        if self.services is None:
            return
        self.services.status.announce_stopping()
        counts = self.services.close()
        outcomes = self.services.recorder.outcomes
        log.info(
            "daemon_stopped", finished=outcomes["done"] + outcomes["failed"], failed=outcomes["failed"], counts=counts
        )
        self.services.ledger.close()

    def request_stop(self, *, immediately: bool = False) -> None:
        """Ask the loop to stop: after the running job if it ends within service.stop_timeout_seconds,
        else (or immediately, or on a second request) between two of its steps, and the job is queued again."""
        self.stop.request(timeout_seconds=self.settings.service.stop_timeout_seconds, immediately=immediately)
        self.wiring.events.put(STOP)

    def request_reload(self) -> None:
        """Ask the loop to re-read the settings at its next turn (SIGHUP, `systemctl reload`)."""
        self.should_reload = True
        self.wiring.events.put(STOP)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop (a second one: at once); SIGHUP: reload the live settings."""
        signal.signal(signal.SIGTERM, lambda signum, frame: self._stop_signal(signum))
        signal.signal(signal.SIGINT, lambda signum, frame: self._stop_signal(signum))
        signal.signal(signal.SIGHUP, lambda signum, frame: self.request_reload())

    def _stop_signal(self, signum: int) -> None:
        """Stop, and say so at once: the event (and, at a terminal, a sentence for the person who pressed
        Ctrl-C) from a short thread of its own, since the main thread may be in the middle of a write."""
        first = not self.stop.is_requested
        self.request_stop()
        status = self.services.status.text if self.services is not None else "starting"
        timeout = self.settings.service.stop_timeout_seconds
        name = signal.Signals(signum).name

        def tell() -> None:
            log.info("stop_signal_received", signal=name, first=first, doing=status, stop_timeout_seconds=timeout)
            if signum == signal.SIGINT and sys.stderr.isatty():
                print(stop_message(first=first, status_text=status, timeout_seconds=timeout), file=sys.stderr)

        threading.Thread(target=tell, name="vidrop-stop-message", daemon=True).start()

    def reload(self) -> None:
        """Re-read the settings: apply the live ones (log level, defaults, limits, intake, stop timeout),
        name the ones that need a restart (folders, model, device) in a warning."""
        self.should_reload = False
        if self.settings_loader is None or self.services is None:
            return
        self.notifier.reloading()
        try:
            fresh = self.settings_loader()
        except ConfigError as exc:
            log.warning("reload_failed", error=str(exc), fix="fix the settings; the old ones stay in force")
            self.notifier.ready()
            return
        result = reloaded(self.settings, fresh)
        self.settings = result.settings
        set_level(self.settings.log_level)
        self.services.apply(self.settings)
        log.info(
            "settings_reloaded",
            changed=result.changed,
            values={name: flat_settings(fresh).get(name) for name in result.changed},
        )
        if result.needs_restart:
            log.warning(
                "settings_need_restart",
                settings=result.needs_restart,
                fix="restart vidrop (systemctl restart vidrop) to apply them",
            )
        self.notifier.ready()
        self.services.status.idle()

    # -- one turn of the loop ------------------------------------------------------------------

    def run_once(self, timeout: float) -> None:
        """One turn, or, while the ledger is unavailable, a wait for it: nothing is claimed or admitted, the
        watcher's events are kept, and the ledger is tried again with back-off. The watchdog is fed either way."""
        services = self.services
        if services is None:
            self.stop.request(timeout_seconds=0)  # stopped while waiting for the ledger at start
            return
        try:
            lost = services.ledger.take_lost()  # met by another caller (the heartbeat, a gallery write) first
            if services.ledger_pause.is_paused:
                self._wait_for_ledger(timeout)
            elif lost is not None:
                raise lost
            else:
                if services.ledger_pause.outages != self._outages_handled:
                    self._outages_handled = services.ledger_pause.outages
                    services.after_ledger_outage()
                self._turn(timeout)
        except LedgerUnavailable as exc:
            services.ledger.take_lost()  # if this was it, it is told now, once
            services.status.ledger_paused(exc)
        self.notifier.watchdog()

    def _turn(self, timeout: float) -> None:
        """Take what the watcher saw, scan when due, admit what is complete, run at most one job."""
        services = self.services
        # The queued jobs the fleet's queue control lets start (none while paused) and cancelled ones to record.
        runnable = services.queue.refresh() if services.queue is not None else services.ledger.queued_count()
        has_work = runnable and not services.outbox_pause.is_paused
        services.intake.drain(timeout=0 if has_work else timeout)
        if self.should_reload:
            self.reload()
        services.intake.tick()
        services.store.read_retried_refusals()
        if services.store.store_ready(should_stop=lambda: self.stop.is_requested):
            services.status.idle()
        if self.stop.is_requested:
            return
        if runnable:
            services.record_cancellations()
        job = services.next_job()
        if job is not None:
            self._run_job(job)
        else:
            services.unload_if_idle(idle_seconds=self.clock.monotonic() - self._last_job_ended)
        if services.gallery is not None:
            services.gallery.flush()  # changes held back by the once-a-second limit

    def is_idle(self) -> bool:
        """Nothing waiting to settle or pair, nothing queued, and the outbox and the ledger usable."""
        services = self.services
        if services is None or services.ledger_pause.is_paused:  # nothing to do; or all waits for the ledger
            return services is None
        try:
            return (
                services.intake.is_idle()
                and services.ledger.runnable_count() == 0  # held by `vidrop pause`: `vidrop once` leaves them
                and not services.outbox_pause.is_paused
            )
        except LedgerUnavailable as exc:
            services.status.ledger_paused(exc)
            return False

    def _run_job(self, job: Job) -> None:
        services = self.services
        services.keeper.hold(job.id, job.claims)
        services.status.job_started(job)
        try:
            if not job.params:  # a refusal `vidrop retry` queued again, claimed before intake read it again
                services.ledger.forget(job.id)
                services.store.look_again(job.input)
            else:
                services.runner.run(job)
        except InboxUnavailable:
            services.intake.scan_now()  # it finds the inbox gone and pauses intake and jobs until it is back
        except OutboxUnavailable as exc:
            services.outbox_unavailable(exc)
        finally:
            services.keeper.drop()
            self._last_job_ended = self.clock.monotonic()
            services.status.idle()

    # -- the ledger unavailable ----------------------------------------------------------------

    def _wait_for_ledger(self, timeout: float) -> None:
        """Keep the watcher's events and the stop and reload requests; try the ledger again when due."""
        services = self.services
        services.intake.drain(timeout=min(timeout, services.ledger_pause.seconds_to_next_try()))
        if self.should_reload:
            self.reload()
        if not self.stop.is_requested and services.ledger_pause.seconds_to_next_try() <= 0:
            services.try_ledger_again()
