"""The SQLite ledger in the state directory (stdlib sqlite3, WAL): one host, any number of instances."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from daemon.ledger.sql import SqlLedger

BUSY_TIMEOUT_SECONDS = 60


class SqliteLedger(SqlLedger):
    """Jobs in one SQLite file. A claim is one BEGIN IMMEDIATE transaction, so two processes never share one."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a done job stays done after a power cut, as the renamed outputs do.
        self._db.execute("PRAGMA synchronous=FULL")
        super().__init__()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, tuple(params))

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._db.execute(f"PRAGMA table_info({table})"))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
