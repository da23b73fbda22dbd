"""The gallery writer: a JobListener that keeps each outbox folder's pages and status files current.

Pages are cut into blocks of `page_size` jobs in order of arrival, so a block's page changes only when
one of its own jobs does: `index.html` shows the two newest blocks, newest first, and `page-K.html`
holds block K (1 is the oldest). A folder of ten thousand jobs costs one index and a page or two per write.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import structlog

from vidrop.daemon.clock import Clock
from vidrop.daemon.gallery.cards import Card, Estimates, Progress, folder_of, make_card, running_left
from vidrop.daemon.gallery.pages import (
    ALIVE_SCRIPT,
    alive_script,
    href,
    local,
    render_page,
    status_json,
    status_text,
    with_heartbeat,
)
from vidrop.daemon.gallery.sources import remove_source
from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.outbox import GALLERY_STATUS, Outbox, OutputNames, iso_time, replace_text

log = structlog.get_logger()

INDEX = "index.html"
STATUS_JSON = GALLERY_STATUS  # an input named _status.png has its outputs under _status_png
STATUS_TEXT = "_STATUS.txt"
MIN_INTERVAL_SECONDS = 1.0
RECENT_FOR_AVERAGE = 20
FAILURES_SHOWN = 5
STATUS_VERSION = 1


class GalleryLedger(Protocol):
    """The ledger queries the gallery reads (SqliteLedger has them)."""

    def folder_jobs(self, folder: str, *, offset: int, limit: int) -> list[Job]: ...

    def folder_position(self, folder: str, job_id: str) -> int | None: ...

    def folder_summaries(self) -> dict[str, dict[str, Any]]: ...

    def queued_ids(self) -> list[str]: ...

    def recent_jobs(self, state: JobState, limit: int) -> list[Job]: ...


def page_name(block: int) -> str:
    """The file of one block of jobs (0 is the oldest)."""
    return f"page-{block + 1}.html"


@dataclass
class _Snapshot:
    """The queue as a whole, read once per flush and shared by every folder written in it."""

    updated_at: str
    summaries: dict[str, dict[str, Any]]
    estimates: Estimates
    running: Card | None
    failures: list[Card]

    @property
    def counts(self) -> dict[str, int]:
        return {state.value: sum(s[state.value] for s in self.summaries.values()) for state in JobState}


class GalleryWriter:
    """Rewrites `index.html`, `page-K.html` and `_status.json` per folder and `_STATUS.txt`, at most once a second."""

    def __init__(
        self,
        *,
        ledger: GalleryLedger,
        outbox: Path,
        clock: Clock,
        page_size: int = 50,
        refresh_seconds: int = 5,
        min_interval: float = MIN_INTERVAL_SECONDS,
        progress_interval: float | None = None,
    ) -> None:
        self.ledger = ledger
        self.outbox = Outbox(outbox)
        self.clock = clock
        self.page_size = page_size
        self.refresh_seconds = refresh_seconds
        self.min_interval = min_interval
        # Steps alone rewrite a folder at most this often: the writes run between two denoising steps, on
        # the job's time, and a page that reloads every refresh_seconds shows few of them anyway.
        self.progress_interval = min_interval if progress_interval is None else max(min_interval, progress_interval)
        self._dirty: dict[str, set[str]] = {}  # folder → ids of its jobs that changed since its last write
        self._last_written: dict[str, float] = {}
        self._blocks: dict[str, int] = {}  # folder → how many blocks it had at its last write
        self._progress: dict[str, Progress] = {}
        self._every_page = False
        self._notice: str | None = None
        self._last_status: dict[str, Any] | None = None  # what _STATUS.txt last showed, for a notice alone
        self._heartbeat: tuple[float, float] | None = None  # (time of the last heartbeat, lease seconds)
        self._heartbeat_failing = False  # its last write failed (logged once until one goes through)
        self._held: str | None = None  # the queue control's line (`vidrop pause`, `drain`) for _STATUS.txt

    # -- what the runner and the daemon call ---------------------------------------------------

    def job_changed(self, job: Job, state: JobState, details: dict[str, Any]) -> None:
        """A job was queued, started, finished or failed."""
        now = self.clock.monotonic()
        if state is JobState.RUNNING:
            self._progress[job.id] = Progress(step=0, total=int(job.params.get("steps", 0)), started=now, at=now)
        else:
            self._progress.pop(job.id, None)
        if state is JobState.DONE:  # its video's thumbnail shows now
            remove_source(self._names(job))
        self._mark(job)
        self.flush()

    def job_progress(self, job: Job, step: int, total: int) -> None:
        """The running job made a step."""
        now = self.clock.monotonic()
        started = self._progress[job.id].started if job.id in self._progress else now
        self._progress[job.id] = Progress(step=step, total=total, started=started, at=now)
        self._mark(job)
        self.flush(interval=self.progress_interval)

    def flush(self, *, force: bool = False, interval: float | None = None) -> list[str]:
        """Write every changed folder whose last write is at least min_interval (or interval) old; all with force."""
        now = self.clock.monotonic()
        interval = self.min_interval if interval is None else interval
        due = [folder for folder in self._dirty if force or now - self._last_written.get(folder, -math.inf) >= interval]
        if not due or not self.outbox.root.is_dir():
            return []  # an unmounted share: never make the outbox again on the local disk; retried later
        snapshot = self._snapshot()
        for folder in due:
            changed = self._dirty.pop(folder)
            self._last_written[folder] = now
            try:
                self._write_folder(folder, changed, snapshot)
            except OSError as exc:  # a full or vanished share must not stop the queue; the next change retries
                log.warning("gallery_write_failed", folder=folder, error=str(exc))
        return due

    def alive(self, now: float, lease_seconds: float) -> None:
        """A heartbeat went through: _alive.js (which every page reads when it loads) and _STATUS.txt say when.
        A page or a _STATUS.txt left by an instance that died still carries that time, so it tells on its own."""
        self._heartbeat = (now, lease_seconds)
        if not self.outbox.root.is_dir():
            return  # an unmounted share: never make the outbox again on the local disk (the outbox pause notices)
        try:
            replace_text(self.outbox.root / ALIVE_SCRIPT, alive_script(now, lease_seconds))
            self._beat_status_text()
        except OSError as exc:  # a full or vanished share must stop neither the start nor the lease keeper
            if not self._heartbeat_failing:
                log.warning("gallery_write_failed", folder="", file=ALIVE_SCRIPT, error=str(exc))
            self._heartbeat_failing = True
        else:
            self._heartbeat_failing = False

    def _beat_status_text(self) -> None:
        """The heartbeat's line in _STATUS.txt. The rest stays as it is on the share: in a fleet another instance
        may have written it since this one last did, from a fresher look at the same ledger."""
        assert self._heartbeat is not None
        path = self.outbox.root / STATUS_TEXT
        try:
            written = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            written = None
        if written is not None and written.startswith("vidrop status"):
            replace_text(path, with_heartbeat(written, self._heartbeat))
        elif self._last_status is not None:
            replace_text(
                path,
                status_text(**self._last_status, notice=self._notice, heartbeat=self._heartbeat, held=self._held),
            )

    def show_notice(self, notice: str | None) -> None:
        """Say at the top of _STATUS.txt why nothing moves, at once and without the ledger (it is the one that
        cannot be read then): the rest is what the file showed last. None: gone at the next write."""
        self._notice = notice
        self._dirty.setdefault("", set())
        if notice is None or not self.outbox.root.is_dir():
            return
        shown = self._last_status or dict(
            running=None, queue_length=0, drain_seconds=None, failures=[], counts={state.value: 0 for state in JobState}
        )
        try:
            replace_text(
                self.outbox.root / STATUS_TEXT,
                status_text(**{**shown, "updated_at": iso_time(self.clock.time())}, notice=notice, held=self._held),
            )
        except OSError as exc:
            log.warning("gallery_write_failed", folder="", error=str(exc))

    def show_held(self, text: str | None) -> None:
        """The queue control's line (None: the queue runs) in _STATUS.txt from its next write on."""
        if text != self._held:
            self._held = text
            self._dirty.setdefault("", set())

    def rebuild(self, *, every_page: bool = True) -> list[str]:
        """Write every folder from the ledger: all its pages (`vidrop gallery`), or, at a start, the index and
        missing pages of each folder whose status file does not show what the ledger holds now."""
        self._blocks.clear()
        self._every_page = every_page
        summaries = self.ledger.folder_summaries()
        for folder in [*summaries, ""]:
            if every_page or not folder or not self._is_current(folder, summaries[folder]):
                self._dirty.setdefault(folder, set())
        try:
            return self.flush(force=True)
        finally:
            self._every_page = False

    @property
    def is_dirty(self) -> bool:
        """Whether some change is not written yet."""
        return bool(self._dirty)

    # -- writing -------------------------------------------------------------------------------

    def _is_current(self, folder: str, summary: dict[str, Any]) -> bool:
        """Whether the folder's pages were written, by this version, after its last job changed, and nothing in it
        is pending: then a start need not write them again (at 1,000 folders that was most of the start)."""
        directory = self._directory(folder)
        try:
            written = json.loads((directory / STATUS_JSON).read_bytes())
        except (OSError, ValueError):
            return False
        counts = {state.value: summary.get(state.value, 0) for state in JobState}
        return (
            isinstance(written, dict)
            and written.get("version") == STATUS_VERSION
            and written.get("page_size") == self.page_size
            and written.get("counts") == counts
            and not counts[JobState.QUEUED.value]
            and not counts[JobState.RUNNING.value]
            and str(written.get("updated_at", "")) >= iso_time(summary["latest"])
            and (directory / INDEX).is_file()
        )

    def _mark(self, job: Job) -> None:
        self._dirty.setdefault(folder_of(job.input), set()).add(job.id)
        self._dirty.setdefault("", set())  # the root lists every folder and holds _STATUS.txt

    def _snapshot(self) -> _Snapshot:
        now = self.clock.monotonic()
        finished = [
            job
            for job in self.ledger.recent_jobs(JobState.DONE, RECENT_FOR_AVERAGE)
            if job.started_at is not None and job.finished_at is not None
        ]
        average = sum(job.finished_at - job.started_at for job in finished) / len(finished) if finished else None
        running_jobs = self.ledger.recent_jobs(JobState.RUNNING, 1)
        left = 0.0
        if running_jobs:
            left = running_left(self._progress.get(running_jobs[0].id), average, now) or 0.0
        estimates = Estimates(
            positions={job_id: place for place, job_id in enumerate(self.ledger.queued_ids(), 1)},
            average_seconds=average,
            running_left=left,
        )
        snapshot = _Snapshot(
            updated_at=iso_time(self.clock.time()),
            summaries=self.ledger.folder_summaries(),
            estimates=estimates,
            running=None,
            failures=[],
        )
        snapshot.running = next(iter(self._cards(running_jobs, snapshot)), None)
        snapshot.failures = self._cards(self.ledger.recent_jobs(JobState.FAILED, FAILURES_SHOWN), snapshot)
        return snapshot

    def _cards(self, jobs: list[Job], snapshot: _Snapshot) -> list[Card]:
        now = self.clock.monotonic()
        directories: dict[str, Path] = {}
        cards = []
        for job in jobs:
            folder = folder_of(job.input)
            if folder not in directories:
                directories[folder] = self._directory(folder)
            names = self._names(job, directories[folder])
            cards.append(
                make_card(
                    job,
                    names=names,
                    estimates=snapshot.estimates,
                    progress=self._progress.get(job.id),
                    now_monotonic=now,
                )
            )
        return cards

    def _names(self, job: Job, directory: Path | None = None) -> OutputNames:
        """Where the job's outputs are (its folder's directory, when known already)."""
        stem = PurePosixPath(job.output).name if job.output else PurePosixPath(job.input).stem
        return OutputNames(folder=directory or self._directory(folder_of(job.input)), stem=stem)

    def _directory(self, folder: str) -> Path:
        return self.outbox.root.joinpath(*folder.split("/")) if folder else self.outbox.root

    def _write_folder(self, folder: str, changed: set[str], snapshot: _Snapshot) -> None:
        directory = self._directory(folder)
        own = {state.value: snapshot.summaries.get(folder, {}).get(state.value, 0) for state in JobState}
        is_root = folder == ""
        if not is_root and not sum(own.values()):
            return
        counts = snapshot.counts if is_root else own  # the root speaks for every folder
        blocks = math.ceil(sum(own.values()) / self.page_size)
        paged = max(0, blocks - 2)  # blocks that have their own page; the newest two are on the index
        newest = list(
            reversed(self.ledger.folder_jobs(folder, offset=paged * self.page_size, limit=2 * self.page_size))
        )
        cards = self._cards(newest, snapshot)
        is_pending = bool(counts["queued"] or counts["running"])
        common = self._common(folder, snapshot, counts)
        range_text = f"newest {len(cards)} of {sum(own.values())}" if cards else ""
        replace_text(
            directory / INDEX,
            render_page(
                **common,
                cards=cards,
                refresh_seconds=self.refresh_seconds if is_pending else None,
                newer_href=None,
                older_href=href(page_name(paged - 1)) if paged else None,
                range_text=range_text,
                folders=self._folder_rows(snapshot) if is_root else [],
            ),
        )
        document = {
            "version": STATUS_VERSION,
            "folder": folder,
            "updated_at": snapshot.updated_at,
            "is_pending": is_pending,
            "counts": counts,
            "queue": {"length": len(snapshot.estimates.positions), "drain_seconds": snapshot.estimates.drain_seconds},
            "running": snapshot.running,
            "page_size": self.page_size,
            "jobs": cards,
            "older_pages": [page_name(block) for block in reversed(range(paged))],
        }
        if is_root:
            document["folders"] = snapshot.summaries
            document["failures"] = snapshot.failures
        replace_text(directory / STATUS_JSON, status_json(document))
        if is_root:
            self._last_status = dict(
                updated_at=snapshot.updated_at,
                queue_length=len(snapshot.estimates.positions),
                drain_seconds=snapshot.estimates.drain_seconds,
                running=snapshot.running,
                counts=snapshot.counts,
                failures=snapshot.failures,
            )
            replace_text(
                directory / STATUS_TEXT,
                status_text(**self._last_status, notice=self._notice, heartbeat=self._heartbeat, held=self._held),
            )
        for block in sorted(self._blocks_to_write(folder, directory, changed, blocks, paged)):
            self._write_block(folder, directory, block, paged, snapshot, common)
        self._blocks[folder] = blocks

    def _blocks_to_write(self, folder: str, directory: Path, changed: set[str], blocks: int, paged: int) -> set[int]:
        """Blocks whose own jobs changed, plus those whose neighbours moved since the last write."""
        todo = set()
        for job_id in changed:
            position = self.ledger.folder_position(folder, job_id)
            if position is not None and position // self.page_size < paged:
                todo.add(position // self.page_size)
        previous = self._blocks.get(folder)
        if self._every_page:
            return set(range(paged))
        if previous is None:
            todo |= {block for block in range(paged) if not (directory / page_name(block)).exists()}
            todo |= {block for block in (paged - 1, paged - 2) if block >= 0}
        elif previous != blocks:  # blocks left the index: they get pages, and the old top page a new "newer" link
            todo |= set(range(max(0, previous - 3), paged))
        return todo

    def _write_block(
        self, folder: str, directory: Path, block: int, paged: int, snapshot: _Snapshot, common: dict[str, Any]
    ) -> None:
        jobs = list(reversed(self.ledger.folder_jobs(folder, offset=block * self.page_size, limit=self.page_size)))
        cards = self._cards(jobs, snapshot)
        is_pending = any(card.state in (JobState.QUEUED.value, JobState.RUNNING.value) for card in cards)
        first = block * self.page_size + 1
        replace_text(
            directory / page_name(block),
            render_page(
                **common,
                cards=cards,
                refresh_seconds=self.refresh_seconds if is_pending else None,
                newer_href=href(page_name(block + 1)) if block + 1 < paged else href(INDEX),
                older_href=href(page_name(block - 1)) if block else None,
                range_text=f"jobs {first}–{first + len(cards) - 1} in order of arrival",
                folders=[],
            ),
        )

    def _common(self, folder: str, snapshot: _Snapshot, counts: dict[str, int]) -> dict[str, Any]:
        depth = len(folder.split("/")) if folder else 0
        return {
            "title": folder or "outbox",
            "counts": counts,
            "updated_at": local(snapshot.updated_at, "%Y-%m-%d %H:%M:%S"),
            "queue_length": len(snapshot.estimates.positions),
            "drain_seconds": snapshot.estimates.drain_seconds,
            "root_href": "../" * depth + INDEX if depth else None,
            "alive_href": "../" * depth + ALIVE_SCRIPT,
        }

    def _folder_rows(self, snapshot: _Snapshot) -> list[dict[str, Any]]:
        rows = []
        for name, summary in sorted(snapshot.summaries.items(), key=lambda item: -item[1]["latest"]):
            if name:
                rows.append(
                    {
                        **summary,
                        "name": name,
                        "href": href(f"{name}/{INDEX}"),
                        "latest": local(iso_time(summary["latest"])),
                    }
                )
        return rows
