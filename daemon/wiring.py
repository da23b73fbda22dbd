"""The composition root: the services a daemon runs, built from the settings in the order a start needs
(folders, ledger, model, instance, outbox, lease keeper, listeners, recorder, runner)."""

from __future__ import annotations

import queue
from typing import Callable, Sequence, TypeVar

import structlog

from vidrop.config.settings import Settings
from vidrop.daemon.clock import Clock, SystemClock
from vidrop.daemon.console import JobProgress
from vidrop.daemon.gallery.sources import SourceThumbnails
from vidrop.daemon.gallery.writer import GalleryWriter
from vidrop.daemon.hooks import HookDispatcher
from vidrop.daemon.inputs import InputDisposal
from vidrop.daemon.instance import Instance, instance_token, this_instance
from vidrop.daemon.intake.store import InputStore
from vidrop.daemon.lease import LeaseKeeper
from vidrop.daemon.ledger import open_ledger
from vidrop.daemon.ledger.base import Job, Ledger
from vidrop.daemon.ledger_pause import LedgerPause, wait_out
from vidrop.daemon.metrics import start_metrics
from vidrop.daemon.outbox import Outbox
from vidrop.daemon.outbox_pause import OutboxPause
from vidrop.daemon.queue_control import QueueWatch
from vidrop.daemon.recorder import JobListener, Recorder
from vidrop.daemon.runner import Runner
from vidrop.daemon.services import Services
from vidrop.daemon.status import ServiceStatus
from vidrop.daemon.steps import BetweenSteps
from vidrop.daemon.stop import StopRequest
from vidrop.daemon.systemd import Notifier, NullNotifier, StartExtension
from vidrop.pipeline.generate import Generator

log = structlog.get_logger()

GeneratorFactory = Callable[[Settings], Generator]
T = TypeVar("T")


class Wiring:
    """Builds the services from the settings; what tests replace (generator, clock, notifier, listeners)
    comes in here."""

    def __init__(
        self,
        settings: Settings,
        *,
        generator_factory: GeneratorFactory,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        listeners: Sequence[JobListener] = (),
        progress: JobProgress | None = None,
    ) -> None:
        self.settings = settings
        self.generator_factory = generator_factory
        self.clock = clock or SystemClock()
        self.notifier = notifier or NullNotifier()
        self.listeners = list(listeners)
        self.progress = progress  # the live line at a terminal (a listener, and told each step)
        self.events: queue.Queue = queue.Queue()  # the watcher's paths, and STOP items that wake the loop

    def build(self, stop: StopRequest) -> Services | None:
        """Folders, ledger, model, instance, outbox, listeners, recorder, runner; None if asked to stop while
        the ledger could not be reached."""
        settings, clock = self.settings, self.clock
        for folder in (settings.inbox, settings.outbox, settings.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        ledger = self._wait_out_ledger(
            stop,
            lambda: open_ledger(
                settings.ledger_url, settings.state_dir, busy_seconds=settings.recovery.ledger_busy_seconds
            ),
        )
        if ledger is None:
            return None
        log.info(
            "daemon_starting",
            inbox=str(settings.inbox),
            outbox=str(settings.outbox),
            ledger=type(ledger).__name__,
            schema_version=ledger.schema_version(),
        )
        self.notifier.status("loading model")
        with StartExtension(self.notifier):  # the load may take minutes: TimeoutStartSec stays short
            generator = self.generator_factory(settings)
        described = generator.describe()
        log.info("model_loaded", **described)
        instance = this_instance(str(described.get("device", "?")), clock.time())
        if self._wait_out_ledger(stop, lambda: ledger.register(instance) or True) is None:
            ledger.close()
            return None
        return self._services(stop, ledger, generator, instance)

    def _services(self, stop: StopRequest, ledger: Ledger, generator: Generator, instance: Instance) -> Services:
        settings, clock, recovery = self.settings, self.clock, self.settings.recovery
        outbox = Outbox(settings.outbox, owner=instance_token(instance.id), x264_preset=settings.output.x264_preset)
        outbox_pause = OutboxPause(
            outbox,
            clock=clock,
            first_wait=recovery.outbox_retry_seconds,
            longest_wait=recovery.outbox_retry_max_seconds,
        )
        services: Services | None = None
        ledger_pause = LedgerPause(
            lambda: services.probe_ledger(),
            clock=clock,
            first_wait=recovery.ledger_retry_seconds,
            longest_wait=recovery.ledger_retry_max_seconds,
        )
        # Temporary files of instances that stopped heartbeating are no one's; a live one's are left alone.
        live = {
            instance_token(i.id)
            for i in ledger.status(clock.time()).instances
            if i.seen_at >= clock.time() - recovery.lease_seconds
        }
        removed = outbox.remove_stale_temporaries(live_owners=live)
        keeper = LeaseKeeper(
            ledger,
            instance_id=instance.id,
            clock=clock,
            lease_seconds=recovery.lease_seconds,
            describe=lambda: services.status.text,
        )
        keeper.start()
        log.info(
            "instance_registered",
            instance=instance.id,
            host=instance.host,
            pid=instance.pid,
            device=instance.device,
            stale_temporaries_removed=len(removed),
        )
        disposal = InputDisposal(settings, ledger)
        hooks, gallery = self._hooks(), self._gallery(ledger)
        if gallery is not None:
            gallery.alive(clock.time(), recovery.lease_seconds)
            keeper.on_beat = lambda now: gallery.alive(now, recovery.lease_seconds)
        listeners = [*self.listeners, disposal, *(listener for listener in (hooks, gallery) if listener is not None)]
        listeners += [self.progress] if self.progress is not None else []
        metrics = start_metrics(settings.metrics, ledger, outbox_paused=lambda: outbox_pause.is_paused)
        if metrics is not None:
            listeners.append(metrics)
            metrics.models_loaded(generator.describe())
            if hooks is not None:
                hooks.on_result = metrics.hook_attempt
        queue_watch = QueueWatch(ledger, metrics=metrics)
        status = ServiceStatus(
            notifier=self.notifier,
            stop=stop,
            ledger=ledger,
            ledger_pause=ledger_pause,
            outbox_pause=outbox_pause,
            gallery=gallery,
            queue=queue_watch,
        )
        queue_watch.listeners.append(lambda control: services.queue_changed())
        recorder = Recorder(
            ledger=ledger,
            outbox=outbox,
            clock=clock,
            owner=instance.id,
            listeners=listeners,
            lease=keeper,
            lease_seconds=recovery.lease_seconds,
            ledger_pause=ledger_pause,
            wait=stop.wait,
            on_status=lambda text: services.steps.waiting(text),
        )
        limit = settings.limits.max_image_pixels
        sources = None if gallery is None else SourceThumbnails(outbox.root, max_pixels=limit)
        store = InputStore(
            settings=settings,
            rules=generator,
            ledger=ledger,
            recorder=recorder,
            disposal=disposal,
            clock=clock,
            on_outbox_unavailable=lambda exc: services.outbox_unavailable(exc),
            on_admitted=self.notifier.watchdog,
            sources=sources,
        )
        steps = BetweenSteps(
            stop=stop,
            lease=keeper,
            status=status,
            notifier=self.notifier,
            store=store,
            ledger_pause=ledger_pause,
            clock=clock,
            tick_seconds=settings.intake.tick_seconds,
            gallery=gallery,
            ledger=ledger,
        )
        runner = Runner(
            recorder=recorder,
            ledger=ledger,
            generator=generator,
            inbox=settings.inbox,
            clock=clock,
            settings=settings,
            on_progress=steps.step if self.progress is None else _each_step(steps.step, self.progress.step),
            wait=stop.wait,
            on_status=steps.waiting,
            owner=instance.id,
            on_input_changed=store.notice_input,
        )
        services = Services(
            settings=settings,
            clock=clock,
            notifier=self.notifier,
            ledger=ledger,
            generator=generator,
            instance=instance,
            outbox=outbox,
            outbox_pause=outbox_pause,
            ledger_pause=ledger_pause,
            keeper=keeper,
            disposal=disposal,
            recorder=recorder,
            status=status,
            store=store,
            steps=steps,
            runner=runner,
            gallery=gallery,
            hooks=hooks,
            events=self.events,
            queue=queue_watch,
        )
        return services

    def _hooks(self) -> HookDispatcher | None:
        settings = self.settings
        if not settings.hooks.is_configured:
            return None
        hooks = HookDispatcher(settings.hooks, dead_letter=settings.dead_letter_path)
        hooks.start()
        return hooks

    def _gallery(self, ledger: Ledger) -> GalleryWriter | None:
        settings = self.settings.gallery
        if not settings.enabled:
            return None
        gallery = GalleryWriter(
            ledger=ledger,
            outbox=self.settings.outbox,
            clock=self.clock,
            page_size=settings.page_size,
            refresh_seconds=settings.refresh_seconds,
            progress_interval=settings.refresh_seconds / 2,
        )
        gallery.rebuild(every_page=False)  # requeued jobs, and pages written by an older version
        return gallery

    def _wait_out_ledger(self, stop: StopRequest, step: Callable[[], T]) -> T | None:
        """A ledger step at start, tried again while the ledger is unavailable; None if asked to stop meanwhile."""
        recovery = self.settings.recovery
        return wait_out(
            step,
            clock=self.clock,
            first_wait=recovery.ledger_retry_seconds,
            longest_wait=recovery.ledger_retry_max_seconds,
            wait=stop.wait,
            say=lambda text: self.notifier.status(f"waiting: {text}"),
        )


def _each_step(*callbacks: Callable[[Job, int, int], None]) -> Callable[[Job, int, int], None]:
    """One step callback telling several, in order (the first may stop the job: the others then are not told)."""

    def step(job: Job, step: int, total: int) -> None:
        for callback in callbacks:
            callback(job, step, total)

    return step
