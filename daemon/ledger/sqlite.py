"""The SQLite ledger in the state directory (stdlib sqlite3, WAL): one host, any number of instances."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from vidrop.daemon.ledger.base import Job, LedgerUnavailable
from vidrop.daemon.ledger.folders import FolderViews
from vidrop.daemon.ledger.sql import INSERT_JOB, SqlLedger, _to_row

BUSY_TIMEOUT_SECONDS = 10.0  # the shipped recovery.ledger_busy_seconds

# Indexes for the gallery's views (SQLite only).
GALLERY_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_folder ON jobs (rtrim(input, replace(input, '/', '')), created_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (state, finished_at);
"""

# SQLite's result codes that say the file or its disk is at fault, not the statement: (reason, what to do).
# The others (a missing table, a constraint) are bugs and stay what they are.
FAULTS = {
    sqlite3.SQLITE_FULL: (
        "The state disk (where the ledger lives) is full.",
        "Free space on the state disk; vidrop goes on by itself.",
    ),
    sqlite3.SQLITE_BUSY: (
        "The ledger is locked by another process.",
        "Find the process holding the ledger file (fuser -v FILE) and end its transaction.",
    ),
    sqlite3.SQLITE_LOCKED: (
        "The ledger is locked by another process.",
        "Find the process holding the ledger file (fuser -v FILE) and end its transaction.",
    ),
    sqlite3.SQLITE_READONLY: (
        "The ledger file cannot be written (read-only).",
        "Make the state folder writable for vidrop's user (or remount it read-write).",
    ),
    sqlite3.SQLITE_IOERR: (
        "The ledger file cannot be read or written (I/O error).",
        "Check the state disk (dmesg); vidrop tries again by itself.",
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "The ledger file cannot be opened.",
        "Check that the state folder exists and vidrop's user may write to it.",
    ),
    sqlite3.SQLITE_PROTOCOL: ("The ledger is locked by another process.", "vidrop tries again by itself."),
    sqlite3.SQLITE_CORRUPT: (
        "The ledger file is damaged.",
        "Stop vidrop and restore the ledger from a backup, or delete it: vidrop makes a new "
        "one and takes what is already in the outbox from the manifests there.",
    ),
    sqlite3.SQLITE_NOTADB: (
        "The ledger file is not an SQLite database.",
        "Stop vidrop and restore the ledger from a backup, or delete it.",
    ),
}
# After these the connection is not trusted again: the next try opens the file anew.
REOPEN_AFTER = {
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
}


class _Rows:
    """A statement's rows, read in full while its errors can still be told apart (SQLite steps lazily)."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class SqliteLedger(FolderViews, SqlLedger):
    """Jobs in one SQLite file. A claim is one BEGIN IMMEDIATE transaction, so two processes never share one.

    A fault of the file or its disk raises LedgerUnavailable; the next call tries again. A file deleted or
    replaced under the running daemon is noticed (its inode) and opened anew at the same path.
    """

    tiebreak = "rowid"  # the gallery's views: insertion order
    greatest = "MAX"

    def __init__(self, path: Path, *, busy_seconds: float = BUSY_TIMEOUT_SECONDS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.busy_seconds = busy_seconds
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._was_moved = False  # the file at the path is no longer the one opened: its journal may be stale
        self._lost: LedgerUnavailable | None = None  # that fault, until the daemon's loop takes it (take_lost)
        super().__init__()

    # -- the connection, opened again after a fault ---------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None and not self._db.in_transaction:
            self._check_identity()
        if self._db is None:
            self._open()
        assert self._db is not None
        return self._db

    def _open(self) -> None:
        # The state folder is never made here (only at start): a state disk gone must not become a new folder.
        if self._was_moved:
            self._remove_stale_journal()
            self._was_moved = False
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_seconds, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        self._db = db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a done job stays done after a power cut, as the renamed outputs do.
            db.execute("PRAGMA synchronous=FULL")
            stat = os.stat(self.path)
            self._identity = (stat.st_dev, stat.st_ino)
            self.migrate()
            db.executescript(GALLERY_INDEXES)
        except sqlite3.Error as exc:
            self._drop()
            raise self._unavailable(exc) from exc
        except BaseException:
            self._drop()
            raise

    def _check_identity(self) -> None:
        """Raise LedgerUnavailable (and let go of the old file) if the path no longer names the open file."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            reason = "The ledger file was deleted."
        else:
            if (stat.st_dev, stat.st_ino) == self._identity:
                return
            reason = "The ledger file was replaced."
        self._drop()
        self._was_moved = True
        self._lost = LedgerUnavailable(
            reason,
            detail=str(self.path),
            fix="vidrop opens a new ledger there and records what the outbox's manifests say "
            "was made already; restore a ledger only while vidrop is stopped.",
        )
        raise self._lost

    def take_lost(self) -> LedgerUnavailable | None:
        with self._lock:
            lost, self._lost = self._lost, None
            return lost

    def _remove_stale_journal(self) -> None:
        """Remove the write-ahead log of the file that was deleted or replaced: SQLite keeps it when the file it
        belongs to has moved, and paired with the file now at the path it would change or corrupt it.

        A log written since the new file came (another instance on this host already uses it) is kept.
        """
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        try:
            arrived = os.stat(self.path).st_ctime_ns
        except FileNotFoundError:
            arrived = None
        try:
            if arrived is not None and wal.stat().st_mtime_ns > arrived:
                return
        except FileNotFoundError:
            pass
        wal.unlink(missing_ok=True)
        shm.unlink(missing_ok=True)

    def _drop(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass  # closing a connection to a broken file: nothing left to save

    def _unavailable(self, exc: sqlite3.Error) -> Exception:
        """LedgerUnavailable for a fault of the file or its disk; the error itself for anything else."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        if primary not in FAULTS:
            return exc
        if primary in REOPEN_AFTER:
            self._drop()
        reason, fix = FAULTS[primary]
        return LedgerUnavailable(reason, detail=f"{self.path}: {getattr(exc, 'sqlite_errorname', '')} {exc}", fix=fix)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        db = self._connection()
        try:
            cursor = db.execute(sql, tuple(params))
            return _Rows(cursor.fetchall(), cursor.rowcount)
        except sqlite3.Error as exc:
            error = self._unavailable(exc)
            if error is exc:
                raise
            raise error from exc

    def _execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        db = self._connection()
        try:
            db.executemany(sql, rows)
        except sqlite3.Error as exc:
            error = self._unavailable(exc)
            if error is exc:
                raise
            raise error from exc

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._execute(f"PRAGMA table_info({table})"))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._execute("BEGIN IMMEDIATE")
        try:
            yield
            self._execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        db = self._db
        if db is None or not db.in_transaction:
            return  # SQLite rolled back by itself (a full disk, an I/O error), or the connection is gone
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop()  # a connection that cannot roll back is not used again

    def enqueue_many(self, jobs: Iterable[Job]) -> int:
        """Store many jobs in one transaction (imports, benchmarks); how many were new."""
        with self._lock, self._transaction():
            before = self._connection().total_changes
            self._execute_many(INSERT_JOB, (_to_row(job) for job in jobs))
            return self._connection().total_changes - before

    def close(self) -> None:
        with self._lock:
            self._drop()
