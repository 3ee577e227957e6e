"""Positions in the event log of readers that write no projection (migration 7, ``wcsync_positions``):
the webhook deliveries' applier keeps there the last notification id it is done with, so a worker that
starts reads only what came after, not the whole log again."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

from infrastructure.adapters.migrations import POSITIONS_TABLE, Connection, storage_errors
from infrastructure.adapters.schema import iso
from infrastructure.support.config import DatabaseConfig


class LogPositions:
    """Named positions (thread-safe: one connection behind a lock); ``write_gate``: this process's SQLite
    write gate, taken around each write."""

    def __init__(
        self, database: DatabaseConfig, write_gate: AbstractContextManager[Any] | None = None
    ) -> None:
        self.database = database
        self._conn = Connection(database)
        self._lock = threading.Lock()
        self._write_gate = write_gate or nullcontext()

    def __repr__(self) -> str:
        return f"LogPositions({self.database.display})"

    def get(self, name: str) -> int:
        """The position kept under ``name``; 0 (the log's start) when none is."""
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(f"SELECT position FROM {POSITIONS_TABLE} WHERE name = %s", (name,))
        return int(rows[0][0]) if rows else 0

    def put(self, name: str, position: int) -> None:
        now = iso(datetime.now(UTC))
        with self._write_gate, self._lock, storage_errors(self.database):
            self._conn.execute(
                f"INSERT INTO {POSITIONS_TABLE} (name, position, updated_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                (name, position, now),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
