"""The only writer of a job's outcome: done, failed (or refused), reused, reconciled, requeued, superseded.

Each outcome writes, in this order, the job's documents in the outbox (video, thumbnail and manifest, or the
error file), its line in the folder's jobs.jsonl, its state in the ledger, the one `job_finished` event
(the same fields on every path), and tells the listeners (gallery, hooks, input disposal).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import structlog

from vidrop.config.errors import InputError, VidropError
from vidrop.daemon.clock import Clock
from vidrop.daemon.intake.variants import VARIANT
from vidrop.daemon.lease import LeaseLost
from vidrop.daemon.ledger.base import Job, JobState, Ledger, LedgerUnavailable
from vidrop.daemon.ledger_pause import LedgerPause
from vidrop.daemon.outbox import Outbox, OutboxUnavailable, OutputNames, iso_time
from vidrop.daemon.versions import versions
from vidrop.pipeline.generate import GenerationResult, JobParams

log = structlog.get_logger()

# Pauses for `seconds` unless the daemon is stopping; True when it is (the waiting job goes back to the queue).
Waiter = Callable[[float], bool]
T = TypeVar("T")
# How each job_finished came about (its `how` field).
GENERATED, DUPLICATE, RECONCILED, REFUSED, FAILED = "generated", "duplicate", "reconciled", "refused", "failed"
CANCELLED = "cancelled"  # `vidrop cancel`: state failed, how cancelled
_GENERATION_FACTS = (
    "generate_ms",
    "encode_ms",
    "frames",
    "peak_memory_bytes",
    "memory_mode",
    "estimated_bytes",
    "measured_bytes",
    "recovery_steps",
    "allocated_bytes",
    "reserved_bytes",
    "rss_bytes",
)


class JobListener(Protocol):
    """Told about every change of a job's state (galleries, hooks); must not raise."""

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None: ...


class JobInterrupted(Exception):
    """The daemon must stop now (between two steps, or while a job waits): the job goes back to the queue."""


class JobCancelled(Exception):
    """`vidrop cancel` asked for the running job (seen between two steps): it is abandoned and recorded so."""

    def __init__(self, job_id: str, request: dict[str, Any], step: str = "") -> None:
        super().__init__(job_id)
        self.request = request
        self.step = step  # where it was abandoned: "after step 3 of 10"


class CancelledError(VidropError):
    """What a cancelled job's error file says: who cancelled it, when, and how to have it made after all."""

    kind = "cancelled"


class LeaseGuard(Protocol):
    """Confirms, right before outputs are written, that this instance still holds the job."""

    def confirm(self) -> None: ...

    def seconds_left(self) -> float: ...


class Recorder:
    """Writes every job's outcome, and tells the listeners about every change of a job's state."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        outbox: Outbox,
        clock: Clock,
        owner: str | None = None,
        listeners: Sequence[JobListener] = (),
        lease: LeaseGuard | None = None,
        lease_seconds: float = 30.0,
        ledger_pause: LedgerPause | None = None,
        wait: Waiter | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.clock = clock
        self.owner = owner
        self.listeners = list(listeners)
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.ledger_pause = ledger_pause
        self.wait = wait or threading.Event().wait
        self.on_status = on_status
        self.outcomes: Counter[str] = Counter()  # job_finished events by state, since this recorder was made

    # -- what is not an outcome: names, earlier results, changes of state ----------------------

    def names(self, job: Job) -> OutputNames:
        return self.outbox.names_for_output(job.output) if job.output else self.outbox.names_for(job.input)

    def earlier_results(self, job: Job) -> dict[str, str] | None:
        """Outputs an earlier attempt already renamed into place for this very request (an attempt killed after
        its renames, a ledger lost or restored from an old backup); an earlier attempt's temporaries are removed."""
        names = self.names(job)
        if job.attempts > 1:  # an earlier attempt died (or lost its lease): its half-written files are no one's
            self.outbox.remove_job_temporaries(names)
        return self.outbox.find_committed(names, job.id, request=_request(job, JobParams.from_dict(job.params)))

    def notify(self, job: Job, state: JobState, details: dict[str, Any] | None = None) -> None:
        """Tell every listener; a listener that fails is logged, never allowed to stop the queue."""
        for listener in self.listeners:
            try:
                listener.job_changed(job, state, details or {})
            except Exception:
                log.exception("job_listener_failed", listener=type(listener).__name__)

    def queued(self, job: Job) -> None:
        """A job was stored in the ledger as queued."""
        log.info(
            "job_queued",
            job_id=job.id,
            input=job.input,
            sidecar=job.sidecar,
            seed=job.seed,
            priority=job.priority,
            output=job.output,
            stage="intake",
        )
        self.notify(job, JobState.QUEUED)

    def started(self, job: Job) -> None:
        log.info("job_started", attempt=job.attempts, seed=job.seed, model=job.params.get("model"))
        self.notify(job, JobState.RUNNING)

    # -- outcomes ------------------------------------------------------------------------------

    def done(self, job: Job, params: JobParams, result: GenerationResult, *, started: float) -> JobState:
        """Write the video, thumbnail and manifest, then the line and the ledger; only while the job is ours."""
        encode_started = self.clock.monotonic()
        manifest = _manifest(job, params, result.facts)
        names = self.names(job)
        self._confirm_lease(job)
        written: dict[str, float] = {}
        try:
            outputs = self.outbox.commit_success(
                names=names,
                result=result,
                params=params,
                manifest=manifest,
                before_rename=lambda: self._confirm_lease(job),
                timings=written,
            )
        except OutboxUnavailable:
            # An instance that took the job over removes the temporaries of the one it took it from:
            # a stalled holder then finds its files gone, which is a lost lease, not a missing outbox.
            self._confirm_lease(job)
            raise
        now, duration = self.clock.time(), self.clock.monotonic() - started
        # The line before the ledger: a kill between the two is reconciled without a second line.
        self._record(
            job,
            JobState.DONE,
            lambda: self._line(names, job, JobState.DONE, now, duration, outputs=outputs),
            lambda: self.ledger.finish(job.id, now, outputs, owner=self.owner, token=job.claims),
        )
        memory = result.facts["memory"]
        facts = {
            "generate_ms": round(result.facts["timings"]["generate_seconds"] * 1000),
            "encode_ms": round((self.clock.monotonic() - encode_started) * 1000),
            "frames": result.facts["frames"],
            "peak_memory_bytes": result.facts["peak_memory_bytes"],
            "memory_mode": memory["mode"],
            "estimated_bytes": memory["estimated_bytes"],
            "measured_bytes": memory["measured_bytes"],
            "recovery_steps": len(memory["recovery"]),
            **memory["after_job"],
        }
        self._finished(job, JobState.DONE, GENERATED, output=outputs["video"], duration=duration, **facts)
        details = {"outputs": outputs, "manifest": manifest, "duration_seconds": duration}
        encode_seconds = written.get("encode_seconds", 0.0)
        phases = {
            "encode_seconds": encode_seconds,
            "write_seconds": max(0.0, facts["encode_ms"] / 1000 - encode_seconds),
        }
        self.notify(job, JobState.DONE, {**details, **phases})
        return JobState.DONE

    def failed(self, job: Job, error: VidropError, *, duration: float = 0.0) -> JobState:
        """A running job ended in an error: its error file, line and ledger state, only while the job is ours."""
        self._fail(job, error, duration, how=FAILED)
        return JobState.FAILED

    def refused(self, job: Job, error: VidropError) -> Path:
        """An input intake refused (its job was just stored): the error file, line and ledger state.
        LedgerUnavailable and OutboxUnavailable go to the caller, which looks at the input again later."""
        with structlog.contextvars.bound_contextvars(stage="intake"):
            return self._fail(job, error, 0.0, how=REFUSED)

    def cancelled(self, job: Job, request: dict[str, Any], *, duration: float = 0.0, step: str = "") -> JobState:
        """`vidrop cancel`: the job (claimed by this instance to record it, or abandoned between two steps) fails
        with an error file that says who cancelled it and when; `vidrop retry` queues it again."""
        by, at = request.get("by", "?"), iso_time(float(request.get("at", self.clock.time())))
        where = f"while it ran ({step})" if step else "while it waited in the queue"
        error = CancelledError(
            f"This job was cancelled by {by} at {at}, so no video was made.",
            detail=f"`vidrop cancel` by {by} at {at}, {where}",
            fix=f"To have it made after all, run `vidrop retry {job.input}`; the same file dropped again unchanged "
            "is known and passed over, a changed image or sidecar is a new job.",
        )
        self._fail(job, error, duration, how=CANCELLED)
        return JobState.FAILED

    def removed(self, job: Job, error: InputError, *, duration: float) -> JobState:
        """The input vanished before its turn: failed, and forgotten, so the same file put back is taken again."""
        self._fail(job, error, duration, how=FAILED)
        self.ledger.forget(job.id)
        return JobState.FAILED

    def reused(self, job: Job, earlier: Job) -> bool:
        """The same image and request were done before under another name: copy, don't generate again.

        Only while the earlier results are still that job's (a re-export under the earlier name replaces them);
        False when they are not, and the job is made the ordinary way.
        """
        manifest = intact_manifest(earlier)
        if manifest is None:
            log.info(
                "duplicate_not_reused",
                job_id=job.id,
                input=job.input,
                earlier_job_id=earlier.id,
                earlier_input=earlier.input,
                reason="the earlier results are gone or belong to another job now",
            )
            return False
        manifest.update(
            {
                "job_id": job.id,
                "duplicate_of": {"job_id": earlier.id, "input": earlier.input},
                "input": {
                    "path": job.input,
                    "sha256": job.input_sha256,
                    "sidecar": job.sidecar,
                    "sidecar_sha256": job.sidecar_sha256,
                },
            }
        )
        names = self.names(job)
        # Stored as running under this instance's lease first: of several instances that found the
        # same duplicate, only the one whose row went in writes the copies.
        owner = self.owner or "local"
        job.state, job.lease_owner, job.lease_expires_at = (
            JobState.RUNNING,
            owner,
            self.clock.time() + self.lease_seconds,
        )
        if not self.ledger.enqueue(job):
            return True
        try:
            outputs = self.outbox.copy_results(
                source=earlier.outputs, names=names, fmt=JobParams.from_dict(job.params).format, manifest=manifest
            )
        except OutboxUnavailable:
            self.ledger.release(job.id, owner)
            raise
        if outputs is None:  # the earlier files are gone: make it the ordinary way
            self.ledger.release(job.id, owner)
            self.queued(job)
            return True
        now = self.clock.time()
        job.state, job.finished_at, job.outputs, job.seed = JobState.DONE, now, outputs, earlier.seed
        self.ledger.finish(job.id, now, outputs, owner=owner)
        self._line(names, job, JobState.DONE, now, 0.0, outputs=outputs, duplicate_of=earlier.id)
        self._finished(job, JobState.DONE, DUPLICATE, output=outputs["video"], duration=0.0, duplicate_of=earlier.id)
        self.notify(job, JobState.DONE, {"outputs": outputs, "manifest": manifest, "duration_seconds": 0.0})
        return True

    def reconciled(self, job: Job, outputs: dict[str, str]) -> JobState:
        """A killed attempt had already renamed every output into place: record it, do not run it again."""
        names, now = self.names(job), self.clock.time()

        def write_line() -> None:
            if not self.outbox.has_job_line(names, job.id, JobState.DONE.value):
                self._line(names, job, JobState.DONE, now, 0.0, outputs=outputs)

        self._record(
            job,
            JobState.DONE,
            write_line,
            lambda: self.ledger.finish(job.id, now, outputs, owner=self.owner, token=job.claims),
        )
        log.info("job_reconciled", state=JobState.DONE.value, output=outputs["video"])
        self._finished(job, JobState.DONE, RECONCILED, output=outputs["video"], duration=0.0)
        self.notify(job, JobState.DONE, {"outputs": outputs, "reconciled": True})
        return JobState.DONE

    def requeued(self, job: Job, *, event: str, reason: str, **fields: Any) -> None:
        """A claimed job goes back to the queue unfailed (stopping, outbox or inbox unavailable)."""
        self.ledger.release(job.id, self.owner, token=job.claims)
        log.warning(event, job_id=job.id, input=job.input, state=JobState.QUEUED.value, reason=reason, **fields)
        self.notify(job, JobState.QUEUED)  # back in the queue: pages must not say it is running

    def superseded(self, job: Job, found_sha256: str | None, found_sidecar_sha256: str | None) -> None:
        """Re-exported while the job waited: intake admits the new bytes as their own job; this one ends quietly
        (no error file: nothing is wrong with the input)."""
        self.ledger.forget(job.id)
        log.info(
            "job_superseded",
            input_sha256=job.input_sha256,
            found_sha256=found_sha256,
            sidecar_sha256=job.sidecar_sha256,
            found_sidecar_sha256=found_sidecar_sha256,
            reason="the input changed while its job waited; its new bytes are a job of their own",
        )
        self.notify(job, JobState.QUEUED, {"superseded": True})  # pages: the job is gone

    # -- writing -------------------------------------------------------------------------------

    def _fail(self, job: Job, error: VidropError, duration: float, *, how: str) -> Path:
        now, names = self.clock.time(), self.names(job)
        document = {
            "state": JobState.FAILED.value,
            "input": job.input,
            "sidecar": job.sidecar,
            "job_id": job.id,
            **error_fields(error),
            "failed_at": iso_time(now),
        }
        is_running = job.state is JobState.RUNNING
        if is_running:
            self._confirm_lease(job)
        path = self.outbox.commit_failure(names=names, error_document=document)

        def write_line() -> None:
            self._line(names, job, JobState.FAILED, now, duration, error=error.reason, error_file=path.name)

        def write_ledger() -> None:
            self.ledger.fail(
                job.id,
                now,
                {key: document[key] for key in ("error", "what_to_do", "detail", "kind")},
                owner=self.owner if is_running else None,
                token=job.claims,
            )

        if is_running:
            self._record(job, JobState.FAILED, write_line, write_ledger)
        else:
            write_line()
            write_ledger()
        self._finished(
            job,
            JobState.FAILED,
            how,
            output=str(path),
            duration=duration,
            error=error.reason,
            detail=error.detail,
            kind=document["kind"],
        )
        self.notify(job, JobState.FAILED, {"error_file": str(path), "error": document})
        return path

    def _line(
        self,
        names: OutputNames,
        job: Job,
        state: JobState,
        now: float,
        duration: float,
        *,
        outputs: dict[str, str] | None = None,
        error: str | None = None,
        error_file: str | None = None,
        duplicate_of: str | None = None,
    ) -> None:
        """The job's line in its folder's jobs.jsonl: the same keys for every outcome."""
        self.outbox.append_job_line(
            names,
            {
                "job_id": job.id,
                "input": job.input,
                "state": state.value,
                "seed": job.seed if state is JobState.DONE else None,
                "outputs": {name: Path(path).name for name, path in (outputs or {}).items()} or None,
                "error": error,
                "error_file": error_file,
                "duplicate_of": duplicate_of,
                "finished_at": iso_time(now),
                "duration_seconds": round(duration, 3),
            },
        )

    def _finished(
        self,
        job: Job,
        state: JobState,
        how: str,
        *,
        output: str,
        duration: float,
        error: str | None = None,
        detail: str | None = None,
        kind: str | None = None,
        duplicate_of: str | None = None,
        **facts: Any,
    ) -> None:
        """The one job_finished event: the same fields on every path (None where they do not apply)."""
        fields = {
            "job_id": job.id,
            "input": job.input,
            "state": state.value,
            "how": how,
            "output": output,
            "duration_ms": round(duration * 1000),
            "attempt": job.attempts,
            "error": error,
            "detail": detail,
            "kind": kind,
            "duplicate_of": duplicate_of,
            **dict.fromkeys(_GENERATION_FACTS),
            **facts,
        }
        (log.warning if state is JobState.FAILED else log.info)("job_finished", **fields)
        self.outcomes[state.value] += 1

    # -- the ledger while it may be unavailable ------------------------------------------------

    def _confirm_lease(self, job: Job) -> None:
        """Right before writing outputs: this instance must still hold the job.

        With the ledger unavailable, a lease that has not run out by this instance's clock still holds (no
        other instance may take the job before then), so the outputs are written and only their recording
        waits; once it has run out, the ledger must say first whose the job is.
        """
        if self.lease is None:
            return
        try:
            self.lease.confirm()
        except LedgerUnavailable as exc:
            left = self.lease.seconds_left()
            if self.ledger_pause is None or left <= 0:
                self._with_ledger(job, self.lease.confirm)
                return
            log.warning("lease_unconfirmed", reason=exc.reason, lease_left_seconds=round(left, 1))
            self.ledger_pause.pause(exc)
            return
        if self.ledger_pause is not None:
            self.ledger_pause.resume()

    def _record(
        self, job: Job, state: JobState, write_line: Callable[[], None], write_ledger: Callable[[], object]
    ) -> None:
        """A running job's outcome: its jobs.jsonl line, then the ledger, only while this instance holds the job.

        While the ledger is unavailable both wait (the outputs are in the outbox already); once it is back it
        says whether the job is still this instance's: if another took it over meanwhile, nothing is recorded
        twice (LeaseLost).
        """
        progress = {"line": False, "sent": False}

        def record() -> None:
            if self.owner is not None:
                current = self.ledger.get(job.id)
                if progress["sent"] and current is not None and current.state is state:
                    return  # the last try went through; only its answer was lost with the connection
                if (
                    current is None
                    or current.state is not JobState.RUNNING
                    or current.lease_owner != self.owner
                    or current.claims != job.claims
                ):  # taken over, even by a claim of this very instance
                    log.error(
                        "job_lease_lost",
                        job_id=job.id,
                        instance=self.owner,
                        holder=None if current is None else current.lease_owner,
                        state=None if current is None else current.state.value,
                    )
                    raise LeaseLost(job.id)
            if not progress["line"]:
                write_line()
                progress["line"] = True
            progress["sent"] = True
            write_ledger()

        self._with_ledger(job, record)

    def _with_ledger(self, job: Job, step: Callable[[], T]) -> T:
        """One of a running job's ledger steps; while the ledger is unavailable, wait with back-off and try again
        (the outputs already written stay; the watchdog is fed). Stopping meanwhile: JobInterrupted."""
        while True:
            try:
                result = step()
            except LedgerUnavailable as exc:
                if self.ledger_pause is None:
                    raise
                wait = self.ledger_pause.pause(exc)
                if self.on_status is not None:
                    self.on_status(f"paused: {self.ledger_pause.describe()}; {job.input} waits to be recorded")
                if self.wait(wait):
                    raise JobInterrupted(job.id) from exc
                continue
            if self.ledger_pause is not None:
                self.ledger_pause.resume()
            return result


def _request(job: Job, params: JobParams) -> dict[str, Any]:
    """What a manifest of this job says it was made from: the input block and the effective parameters."""
    parameters = {**params.to_dict(), "seed": job.seed}
    parameters.pop("adjustments")
    return {
        "input": {
            "path": job.input,
            "sha256": job.input_sha256,
            "sidecar": job.sidecar,
            "sidecar_sha256": job.sidecar_sha256,
        },
        "parameters": parameters,
        "seed_was_random": params.seed is None,
    }


def error_fields(error: VidropError) -> dict[str, Any]:
    """What an error file says about its error (also what `vidrop validate` prints for one)."""
    kind = "input" if isinstance(error, InputError) else getattr(error, "kind", "generation")
    return {"error": error.reason, "what_to_do": error.fix, "detail": error.detail, "kind": kind}


def _manifest(job: Job, params: JobParams, facts: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "state": JobState.DONE.value,
        **_request(job, params),  # input, parameters, seed_was_random
        "variant": job.params.get(VARIANT),
        "adjustments": params.to_dict()["adjustments"],
        "model": facts["model"],
        "model_name": facts.get("model_name"),
        # The model before this job's and what loading this one took (None: it was already the one).
        "model_switch": facts.get("model_switch"),
        # The LoRAs applied (name, weight, path, loaded_now: read from its file for this job).
        "loras": facts.get("loras", []),
        "family": facts["family"],
        "device": facts["device"],
        "dtype": facts["dtype"],
        "timings": {
            "queued_at": iso_time(job.created_at),
            "started_at": iso_time(job.started_at or time.time()),
            "queued_seconds": round(max(0.0, (job.started_at or job.created_at) - job.created_at), 3),
            **facts["timings"],
        },
        "peak_memory_bytes": facts["peak_memory_bytes"],
        "memory": facts["memory"],
        # The speed levers the job ran with, those dropped (and why), compile warm-up, denoiser calls made/skipped.
        "speed": facts.get("speed"),
        "attempts": job.attempts,
        "versions": versions(),  # vidrop, diffusers, torch
    }


def intact_manifest(earlier: Job) -> dict[str, Any] | None:
    """The earlier job's manifest, if the manifest on disk and the video it lists are still that job's."""
    manifest_path, video = Path(earlier.outputs.get("manifest", "")), Path(earlier.outputs.get("video", ""))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        # The manifest is renamed into place after its video: a video newer than it was written by another job.
        is_video_older = video.stat().st_mtime_ns <= manifest_path.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    recorded = manifest.get("input") or {}
    belongs = (
        manifest.get("job_id") == earlier.id
        and manifest.get("state") == JobState.DONE.value
        and recorded.get("sha256") == earlier.input_sha256
        and recorded.get("sidecar_sha256") == earlier.sidecar_sha256
        and (manifest.get("outputs") or {}).get("video") == video.name
        and is_video_older
    )
    return manifest if belongs else None
