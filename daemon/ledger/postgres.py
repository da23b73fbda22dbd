"""The PostgreSQL ledger (psycopg 3): many hosts on one share, claims with FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import psycopg

from daemon.ledger.sql import SqlLedger

# Any constant: the advisory lock that keeps two starting instances from migrating at once.
MIGRATION_LOCK_ID = 0x76696472


class PostgresLedger(SqlLedger):
    """Jobs in a PostgreSQL database shared by every host; the connection is in autocommit mode."""

    claim_lock = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = psycopg.connect(url, autocommit=True, application_name="vidrop")
        super().__init__()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql.replace("?", "%s"), tuple(params))

    def _execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._db.transaction():
            yield

    def _lock_schema(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_ID,))

    def _has_column(self, table: str, column: str) -> bool:
        return self._execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                             "AND table_name = ? AND column_name = ?", (table, column)).fetchone() is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()
