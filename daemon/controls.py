"""`vidrop pause`, `resume`, `drain`, `cancel`, `priority` and `status --json`: the queue controls, written to the
ledger, so that they reach every instance of a fleet (SQLite or PostgreSQL) and outlast restarts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vidrop.daemon.ledger.base import Job, JobState, Ledger, LedgerStatus, QueueControl, QueueMode
from vidrop.daemon.names import shown
from vidrop.daemon.queue_control import describe, iso_time, local_time, operator
from vidrop.daemon.report import relative_inputs

EX_NOT_FOUND = 1  # as `vidrop retry` with no failed job for a path
MODES = {"pause": QueueMode.PAUSED, "drain": QueueMode.DRAINING, "resume": QueueMode.RUNNING}
LIVE = (JobState.QUEUED, JobState.RUNNING)


def set_mode(ledger: Ledger, command: str, now: float) -> str:
    """Pause, drain or resume the whole fleet's queue; what that means now, in one line or two."""
    control = ledger.set_control(MODES[command], by=operator(), now=now)
    counts, runnable = ledger.counts(), ledger.runnable_count()
    queued, running = counts[JobState.QUEUED.value], counts[JobState.RUNNING.value]
    if control.mode is QueueMode.RUNNING:
        return f"queue running (resumed by {control.changed_by}): {queued} queued, {running} running"
    held = describe(control, runnable=runnable)
    intake = "intake goes on queueing dropped files"
    return f"{held}\n{queued} queued, {running} running (a running job finishes); {intake}"


def find_jobs(ledger: Ledger, target: str, inbox: Path) -> list[Job]:
    """The jobs a PATH (an input in the inbox, absolute or relative to it) or a JOB_ID names."""
    job = ledger.get(target)
    if job is not None:
        return [job]
    return ledger.jobs_for_input(relative_inputs([target], inbox)[0])


def cancel(ledger: Ledger, target: str, inbox: Path, now: float) -> int:
    """Mark the queued or running jobs of target cancelled; an instance records each (its error file)."""
    jobs = find_jobs(ledger, target, inbox)
    if not jobs:
        return _unknown("cancel", target)
    live = [job for job in jobs if job.state in LIVE]
    marked = ledger.request_cancel([job.id for job in live], {"by": operator(), "at": now})
    if not marked:
        states = ", ".join(f"{job.id} {job.state.value}" for job in jobs)
        print(f"vidrop cancel: nothing to cancel for {shown(target)}: {states}", file=sys.stderr)
        return EX_NOT_FOUND
    for job in marked:
        if job.state is JobState.QUEUED:
            print(f"cancelled {shown(job.input)} ({job.id}): queued; an instance writes its error file")
        else:
            print(f"cancelling {shown(job.input)} ({job.id}): running on {job.lease_owner}; abandoned at its next step")
    return 0


def priority(ledger: Ledger, target: str, value: int, inbox: Path) -> int:
    """Give target's queued jobs a priority (higher first; the default is 0)."""
    jobs = find_jobs(ledger, target, inbox)
    if not jobs:
        return _unknown("priority", target)
    changed = ledger.set_priority([job.id for job in jobs if job.state is JobState.QUEUED], value)
    if not changed:
        states = ", ".join(f"{job.id} {job.state.value}" for job in jobs)
        print(f"vidrop priority: no queued job for {shown(target)}: {states}", file=sys.stderr)
        return EX_NOT_FOUND
    for job in changed:
        print(f"priority {job.priority}: {shown(job.input)} ({job.id})")
    return 0


def _unknown(command: str, target: str) -> int:
    print(
        f"vidrop {command}: no job for {shown(target)} (neither a job id nor an input in the ledger)", file=sys.stderr
    )
    return EX_NOT_FOUND


def control_line(control: QueueControl, runnable: int) -> str | None:
    """`vidrop status`'s line about the queue control, while the queue is held."""
    held = describe(control, runnable=runnable)
    return None if held is None else f"control: {held}"


def status_document(status: LedgerStatus, now: float, lease_seconds: float) -> dict[str, Any]:
    """`vidrop status --json`: the same facts as the text, with stable keys (documented in the README)."""
    control = status.control
    return {
        "queue": {
            "mode": control.mode.value,
            "changed_by": control.changed_by or None,
            "changed_at": iso_time(control.changed_at),
            "changed_at_local": local_time(control.changed_at, "%Y-%m-%d %H:%M:%S") if control.changed_at else None,
            "drain_before": iso_time(control.drain_before),
            "runnable": status.runnable,
            **status.counts,
        },
        "done_last_hour": status.done_last_hour,
        "instances": [
            {
                "id": instance.id,
                "host": instance.host,
                "pid": instance.pid,
                "device": instance.device,
                "alive": now - instance.seen_at <= lease_seconds,
                "seen_at": iso_time(instance.seen_at),
                "status": instance.status,
            }
            for instance in status.instances
        ],
        "running": [_job(running.job) for running in status.running],
        "recent_failures": [_job(job) for job in status.recent_failures],
    }


def _job(job: Job) -> dict[str, Any]:
    error = job.error or {}
    return {
        "job_id": job.id,
        "input": shown(job.input),
        "state": job.state.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "instance": job.lease_owner,
        "started_at": iso_time(job.started_at),
        "finished_at": iso_time(job.finished_at),
        "error": error.get("error"),
        "kind": error.get("kind"),
        "cancelled_by": (job.cancel or {}).get("by"),
    }
