"""Admission-side storing: what intake found complete becomes jobs in the ledger — new, known, refused or a
duplicate of a job done before — and the input's snapshot is remembered once all of its jobs are settled."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Callable

import structlog

from vidrop.config.settings import Settings
from vidrop.daemon.clock import Clock
from vidrop.daemon.gallery.sources import SourceThumbnails
from vidrop.daemon.inputs import InputDisposal
from vidrop.daemon.intake.admit import Admission, Admitter, NotReadyYet
from vidrop.daemon.intake.intake import Intake
from vidrop.daemon.intake.pending import ReadyInput
from vidrop.daemon.intake.taken import TakenInputs
from vidrop.daemon.ledger.base import Job, Ledger, LedgerUnavailable
from vidrop.daemon.outbox import OutboxUnavailable
from vidrop.daemon.recorder import Recorder
from vidrop.pipeline.generate import RequestRules

log = structlog.get_logger()

NOT_READY_RETRY_SECONDS = 2.0
# Told the outbox is unavailable; answers how long to wait before an input whose refusal could not be written
# is looked at again.
OutboxTrouble = Callable[[OutboxUnavailable], float]


class InputStore:
    """Stores the jobs of complete inputs; one input's trouble never stops the others."""

    def __init__(
        self,
        *,
        settings: Settings,
        rules: RequestRules,
        ledger: Ledger,
        recorder: Recorder,
        disposal: InputDisposal,
        clock: Clock,
        on_outbox_unavailable: OutboxTrouble,
        on_admitted: Callable[[], None] = lambda: None,
        sources: SourceThumbnails | None = None,
    ) -> None:
        self.rules = rules
        self.ledger = ledger
        self.recorder = recorder
        self.disposal = disposal
        self.clock = clock
        self.on_outbox_unavailable = on_outbox_unavailable
        self.on_admitted = on_admitted  # after each input: a long first batch is progress too (the watchdog)
        self.sources = sources  # the gallery's source thumbnails (None: no gallery)
        self.inbox = settings.inbox
        self.settings = settings
        self.intake: Intake | None = None  # attached at each start of intake
        self.taken: TakenInputs | None = None

    def attach(self, intake: Intake, taken: TakenInputs) -> None:
        """The intake (and what it has taken) whose ready inputs are stored; again after each restart of it."""
        self.intake = intake
        self.taken = taken
        self.admitter = Admitter(self.settings, self.rules, intake.is_junk, is_known=self.ledger.has_key)

    def apply(self, settings: Settings) -> None:
        """Fresh live settings (defaults, limits, intake rules): the next admission uses them."""
        self.settings = settings
        self.attach(self.intake, self.taken)

    def store_ready(self, *, should_stop: Callable[[], bool], until: float | None = None) -> int:
        """Store what is complete; with until (a monotonic time), what is left then waits for a later pass.
        How many inputs were looked at."""
        ready_inputs = self.intake.take_ready()
        try:
            for index, ready in enumerate(ready_inputs):
                left = ready_inputs[index:]
                if should_stop():  # the rest were not admitted: the next start looks at them again
                    log.info("intake_interrupted", reason="stopping", not_admitted=len(left))
                    break
                if until is not None and self.clock.monotonic() >= until:
                    self._look_later(left, delay=0)
                    log.debug("intake_deferred", reason="a job is running", not_admitted=len(left))
                    break
                try:
                    self._store_input(ready)
                except LedgerUnavailable:  # neither refused nor lost: this input and the rest wait for the ledger
                    self._look_later(left, delay=NOT_READY_RETRY_SECONDS)
                    raise
                self.on_admitted()
        finally:
            self.taken.save()
        return len(ready_inputs)

    def read_retried_refusals(self) -> None:
        """`vidrop retry` queued refusals again (they have no request to run): intake reads their files again."""
        for job in self.ledger.requeued_refusals():
            self.ledger.forget(job.id)
            log.info("input_retried", job_id=job.id, input=job.input, action="read again")
            self.look_again(job.input)

    def look_again(self, relative_input: str) -> None:
        """Intake reads an input again soon, even unchanged (`vidrop retry`)."""
        self.intake.retry_later(self._path(relative_input), delay=0)

    def notice_input(self, relative_input: str) -> None:
        """An input changed under its queued job: intake takes its new bytes, unless it already has."""
        self.intake.notice(self._path(relative_input))

    def _path(self, relative_input: str) -> Path:
        return self.inbox.joinpath(*PurePosixPath(relative_input).parts)

    def _look_later(self, inputs: list[ReadyInput], *, delay: float) -> None:
        for ready in inputs:
            self.intake.retry_later(ready.image or ready.sidecar, delay=delay)

    def _store_input(self, ready: ReadyInput) -> None:
        """One input's jobs into the ledger; once that is settled, its snapshot too (unchanged, it is passed over)."""
        path = ready.image or ready.sidecar
        try:
            admissions = self.admitter.admit(ready, now=self.clock.time())
        except NotReadyYet:
            log.info("input_not_ready", input=str(path), reason="does not decode yet; still arriving?")
            self.intake.retry_later(path, delay=NOT_READY_RETRY_SECONDS)
            return
        except OSError as exc:  # vanished or unreadable between stat and read: look again later
            log.info("input_unreadable", input=str(path), error=str(exc))
            self.intake.retry_later(path, delay=NOT_READY_RETRY_SECONDS)
            return
        except Exception:  # the one broad catch around one input: no file may stop the queue
            log.exception("input_crashed_admission", input=str(path))
            return
        with self.disposal.held():  # decided once every job of the input is stored
            settled = [self._store(admission, path, ready.image) for admission in admissions]  # per variant, seed
        if admissions and all(settled):
            self.taken.remember(
                path,
                ready.image_snapshot or ready.sidecar_snapshot,
                ready.sidecar_snapshot if ready.image is not None else None,
                admissions[0].job.key,
                self.clock.time(),
            )

    def _store(self, admission: Admission, path: Path, image: Path | None = None) -> bool:
        """Store one admission; False when the input must be looked at again (its refusal could not be written)."""
        job = admission.job
        if admission.is_known:
            log.debug("input_already_known", input=job.input, job_id=job.id)
            return True
        if admission.error is not None:
            if not self.ledger.enqueue(job):  # another instance admitted the same file a moment ago
                return True
            self._source_thumbnail(job, image)
            try:
                self.recorder.refused(job, admission.error)
            except OutboxUnavailable as exc:
                # No error file, so no refusal yet: forget the job and look at the file again later.
                self.ledger.forget(job.id)
                self.intake.retry_later(path, delay=self.on_outbox_unavailable(exc))
                return False
            return True
        try:
            if any(self.recorder.reused(job, earlier) for earlier in self.ledger.done_by_content(job.content_key)):
                return True
        except OutboxUnavailable as exc:  # the job is queued: it is generated once the outbox is back
            self.on_outbox_unavailable(exc)
            return True
        if self.ledger.enqueue(job):
            self._source_thumbnail(job, image)
            self.recorder.queued(job)
        return True

    def _source_thumbnail(self, job: Job, image: Path | None) -> None:
        """The designer's picture for the card (before the recorder tells the gallery of the job)."""
        if self.sources is not None and image is not None:
            self.sources.make(job, self.recorder.names(job), image)
