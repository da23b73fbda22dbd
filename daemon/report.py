"""`vidrop status` and `vidrop retry`: what the ledger knows, for people."""

from __future__ import annotations

from pathlib import Path

from vidrop.daemon.ledger.base import Job, LedgerStatus
from vidrop.daemon.names import shown
from vidrop.daemon.queue_control import describe


def render_status(status: LedgerStatus, now: float, lease_seconds: float) -> str:
    """The queue, each instance and what it runs, recent failures, and throughput over the last hour."""
    counts = status.counts
    lines = [
        f"queue: {counts['queued']} queued, {counts['running']} running, {counts['done']} done, "
        f"{counts['failed']} failed",
        f"throughput: {status.done_last_hour} done in the last hour",
        "",
        "instances:",
    ]
    held = describe(status.control, runnable=status.runnable)
    if held:  # `vidrop pause` or `drain`: said right under the queue
        lines.insert(1, f"control: {held}")
    running_by_owner = {running.job.lease_owner: running.job for running in status.running}
    for instance in status.instances:
        silent = now - instance.seen_at
        health = "alive" if silent <= lease_seconds else f"silent for {silent:.0f} s (presumed dead)"
        job = running_by_owner.get(instance.id)
        doing = f"running {job.id} {shown(job.input)} (attempt {job.attempts})" if job else instance.status
        lines.append(f"  {instance.host} pid {instance.pid} {instance.device}: {health}; {doing}")
    if not status.instances:
        lines.append("  (none)")
    orphans = [running.job for running in status.running if running.instance is None]
    for job in orphans:
        left = (job.lease_expires_at or now) - now
        lines.append(
            f"  (gone) {job.lease_owner}: held {job.id} {shown(job.input)}; lease ends in {max(left, 0):.0f} s"
        )
    lines += ["", "recent failures:"]
    lines += [
        f"  {shown(job.input)} ({job.id}): {(job.error or {}).get('error', '?')}" for job in status.recent_failures
    ]
    if not status.recent_failures:
        lines.append("  (none)")
    return "\n".join(lines)


def relative_inputs(paths: list[str], inbox: Path) -> list[str]:
    """Inbox-relative input names for paths given on the command line (absolute, or relative to the inbox)."""
    names = []
    for raw in paths:
        path = Path(raw)
        if path.is_absolute() or path.exists():
            # The inbox is resolved at start (it may be a link): so is the folder named here.
            path = path.absolute().parent.resolve() / path.name
            names.append(path.relative_to(inbox).as_posix() if path.is_relative_to(inbox) else raw)
        else:
            names.append(path.as_posix())
    return names


def describe_requeued(jobs: list[Job]) -> str:
    """One line per re-queued job; a refusal (it has no request yet) is read again from its files."""
    return "\n".join(_requeued_line(job) for job in jobs) or "nothing to re-queue"


def _requeued_line(job: Job) -> str:
    if job.params:
        return f"queued again: {shown(job.input)} ({job.id})"
    return f"read again: {shown(job.input)} ({job.id}); a running vidrop takes it in a moment, else the next start"
