"""The ledger's views for the gallery (jobs per outbox folder, the claim order, the latest finished), in SQL that
SQLite and PostgreSQL both run: a backend names only its tie-breaker column and its greatest-of function."""

from __future__ import annotations

from typing import Any, Sequence

from vidrop.daemon.ledger.base import Job, JobState
from vidrop.daemon.ledger.sql import COLUMNS, _from_row
from vidrop.daemon.names import from_ledger_text, ledger_text

# The folder part of an input path with its trailing slash ("a/b/" for "a/b/c.png", "" at the top):
# rtrim strips every trailing character that is not a slash (SQLite and PostgreSQL alike).
FOLDER_SQL = "rtrim(input, replace(input, '/', ''))"
SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"


class FolderViews:
    """Mixed into an SqlLedger: the queries GalleryWriter reads (its GalleryLedger protocol)."""

    #: breaks ties between jobs stored in the same instant: insertion order where the backend keeps one
    tiebreak = "id"
    #: the larger of several values in one row (SQLite: MAX, PostgreSQL: GREATEST)
    greatest = "GREATEST"

    def folder_jobs(self, folder: str, *, offset: int, limit: int) -> list[Job]:
        """Jobs whose input sits directly in folder ("" for the inbox itself), oldest first, one slice."""
        rows = self._rows(
            f"{SELECT} WHERE {FOLDER_SQL} = ? ORDER BY created_at, {self.tiebreak} LIMIT ? OFFSET ?",
            (folder_prefix(folder), limit, offset),
        )
        return [_from_row(row) for row in rows]

    def folder_position(self, folder: str, job_id: str) -> int | None:
        """How many of the folder's jobs came before this one (its place, oldest first), or None."""
        found = self._rows(f"SELECT created_at, {self.tiebreak} FROM jobs WHERE id = ?", (job_id,))
        if not found:
            return None
        this = found[0]
        return self._rows(
            f"SELECT COUNT(*) FROM jobs WHERE {FOLDER_SQL} = ? AND (created_at, {self.tiebreak}) < (?, ?)",
            (folder_prefix(folder), this[0], this[1]),
        )[0][0]

    def folder_summaries(self) -> dict[str, dict[str, Any]]:
        """Per folder ("" for the inbox itself): jobs in each state and the time of the latest activity."""
        summaries: dict[str, dict[str, Any]] = {}
        latest = f"MAX({self.greatest}(created_at, COALESCE(started_at, 0), COALESCE(finished_at, 0)))"
        for prefix, state, count, when in self._rows(
            f"SELECT {FOLDER_SQL} AS folder, state, COUNT(*), {latest} FROM jobs GROUP BY 1, state"
        ):
            summary = summaries.setdefault(
                from_ledger_text(prefix.rstrip("/")), {**{s.value: 0 for s in JobState}, "latest": 0.0}
            )
            summary[state] = count
            summary["latest"] = max(summary["latest"], when)
        return summaries

    def queued_ids(self) -> list[str]:
        """Ids of queued jobs in the order they will be claimed."""
        return [
            row[0]
            for row in self._rows(
                f"SELECT id FROM jobs WHERE state = ? ORDER BY priority DESC, created_at, {self.tiebreak}",
                (JobState.QUEUED.value,),
            )
        ]

    def recent_jobs(self, state: JobState, limit: int) -> list[Job]:
        """The latest finished jobs in one state, newest first."""
        rows = self._rows(
            f"{SELECT} WHERE state = ? ORDER BY finished_at DESC, {self.tiebreak} DESC LIMIT ?",
            (state.value, limit),
        )
        return [_from_row(row) for row in rows]

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:  # the SqlLedger's lock and statement
            return self._execute(sql, params).fetchall()  # type: ignore[attr-defined]


def folder_prefix(folder: str) -> str:
    """A folder as FOLDER_SQL gives it ("a/b/"; "" at the top)."""
    return f"{ledger_text(folder.strip('/'))}/" if folder.strip("/") else ""
