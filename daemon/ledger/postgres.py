"""The PostgreSQL ledger (psycopg 3): many hosts on one share, claims with FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import psycopg
from psycopg_pool import ConnectionPool

from vidrop.daemon.ledger.base import LedgerUnavailable
from vidrop.daemon.ledger.folders import FOLDER_SQL, FolderViews
from vidrop.daemon.ledger.sql import SqlLedger

# Any constant: the advisory lock that keeps two starting instances from migrating at once.
MIGRATION_LOCK_ID = 0x76696472
# How long one call waits for a working connection before the ledger counts as unavailable.
CONNECTION_WAIT_SECONDS = 5.0
# The pool's own reconnect attempts give up after this; the daemon's back-off decides when to ask again.
RECONNECT_SECONDS = 5.0
CONNECTION_OPTIONS = {
    "autocommit": True,
    "application_name": "vidrop",
    "connect_timeout": 5,
    # A host that vanishes from the network sends no reset: keepalives and a TCP timeout end the wait.
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}
# Indexes for the gallery's views (as SQLite's), made under the migration lock by whichever instance starts first.
GALLERY_INDEXES = (
    f"CREATE INDEX IF NOT EXISTS jobs_folder ON jobs (({FOLDER_SQL}), created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (state, finished_at)",
)
FIX = "Check that PostgreSQL is running and reachable from this host (pg_isready); vidrop goes on by itself once it is."


class PostgresLedger(FolderViews, SqlLedger):
    """Jobs in a PostgreSQL database shared by every host.

    Connections come from a pool that checks one before handing it out, so a restart of the server while
    vidrop is idle is not even noticed; a connection lost during a call raises LedgerUnavailable, and the
    pool connects again in the background.
    """

    claim_lock = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self.url = url
        # The pool logs each failed connection attempt; vidrop's own ledger_unavailable events say it once a try.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=1,
            kwargs=CONNECTION_OPTIONS,
            open=False,
            check=ConnectionPool.check_connection,
            timeout=CONNECTION_WAIT_SECONDS,
            reconnect_timeout=RECONNECT_SECONDS,
            name="vidrop-ledger",
        )
        self._pool.open(wait=False)
        self._held: psycopg.Connection | None = None  # the connection of the transaction under way
        try:
            super().__init__()
        except BaseException:
            self._pool.close()
            raise

    def migrate(self) -> list[int]:
        """The shared migrations, then the gallery's indexes."""
        applied = super().migrate()
        with self._lock, self._transaction():
            self._lock_schema()
            for statement in GALLERY_INDEXES:
                self._execute(statement)
        return applied

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        sql = sql.replace("?", "%s")
        with _faults():
            if self._held is not None:
                return self._held.execute(sql, tuple(params))
            # The results are read in full by execute, so the cursor outlives the connection's turn.
            with self._pool.connection() as db:
                return db.execute(sql, tuple(params))

    def _execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        assert self._held is not None, "executemany runs inside a transaction"
        with _faults(), self._held.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # The ledger's lock is held around every transaction, so one attribute is enough to pin the connection.
        with _faults(), self._pool.connection() as db, db.transaction():
            self._held = db
            try:
                yield
            finally:
                self._held = None

    def _lock_schema(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_ID,))

    def _has_column(self, table: str, column: str) -> bool:
        return (
            self._execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = ? AND column_name = ?",
                (table, column),
            ).fetchone()
            is not None
        )

    def close(self) -> None:
        with self._lock:
            self._pool.close()


@contextmanager
def _faults() -> Iterator[None]:
    """A lost connection, a server shutting down or starting up, a read-only standby: LedgerUnavailable."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
        reason = (
            "The ledger database is read-only (a standby?)."
            if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)
            else "The ledger database cannot be reached."
        )
        raise LedgerUnavailable(reason, detail=f"{type(exc).__name__}: {exc}".strip(), fix=FIX) from exc
