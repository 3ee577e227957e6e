"""Positions in the event log of readers that write no projection (migration 7, ``wcsync_positions``):
the webhook deliveries' applier keeps there the last notification id it is done with, so a worker that
starts reads only what came after, not the whole log again; and which worker reads it now (``claim``:
a compare-and-set of the holder, taken over once its heartbeat is stale), so one applies while the
others stand by instead of all racing on every delivery."""

from __future__ import annotations

import threading
from collections.abc import Callable
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

    def put_if_holder(self, name: str, holder: str, position: int) -> bool:
        """Move ``name``'s position while ``holder`` holds it (a reader whose turn was taken over writes
        nothing: the new holder's position stands); whether it was written."""
        now = iso(datetime.now(UTC))
        with self._write_gate, self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"UPDATE {POSITIONS_TABLE} SET position = %s, updated_at = %s WHERE name = %s AND holder = %s "
                "RETURNING name",
                (position, now, name, holder),
            )
        return bool(rows)

    def put(self, name: str, position: int) -> None:
        now = iso(datetime.now(UTC))
        with self._write_gate, self._lock, storage_errors(self.database):
            self._conn.execute(
                f"INSERT INTO {POSITIONS_TABLE} (name, position, updated_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                (name, position, now),
            )

    def claim(
        self, name: str, holder: str, now: float, stale_s: float, dead: Callable[[str], bool] | None = None
    ) -> bool:
        """Hold ``name`` for ``holder`` (refreshing its heartbeat to ``now``) when it is free, already
        ``holder``'s, its holder's heartbeat is older than ``stale_s``, or ``dead`` says its holder is
        gone (a process of this host that died); whether ``holder`` holds it."""
        at = iso(datetime.now(UTC))
        with self._write_gate, self._lock, storage_errors(self.database):
            self._conn.execute(
                f"INSERT INTO {POSITIONS_TABLE} (name, position, updated_at) VALUES (%s, 0, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, at),
            )
            rows = self._conn.execute(
                f"UPDATE {POSITIONS_TABLE} SET holder = %s, heartbeat_at = %s WHERE name = %s AND "
                "(holder IS NULL OR holder = %s OR heartbeat_at IS NULL OR heartbeat_at < %s) RETURNING name",
                (holder, now, name, holder, now - stale_s),
            )
            if rows or dead is None:
                return bool(rows)
            current = self._conn.execute(f"SELECT holder FROM {POSITIONS_TABLE} WHERE name = %s", (name,))
            if not current or current[0][0] is None or not dead(str(current[0][0])):
                return False
            rows = self._conn.execute(  # taken from that holder only: another may have taken it first
                f"UPDATE {POSITIONS_TABLE} SET holder = %s, heartbeat_at = %s WHERE name = %s AND holder = %s "
                "RETURNING name",
                (holder, now, name, current[0][0]),
            )
        return bool(rows)

    def release(self, name: str, holder: str) -> None:
        """Give ``name`` up (when ``holder`` still holds it): another reader takes it at its next look."""
        with self._write_gate, self._lock, storage_errors(self.database):
            self._conn.execute(
                f"UPDATE {POSITIONS_TABLE} SET holder = NULL, heartbeat_at = NULL WHERE name = %s AND holder = %s",
                (name, holder),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
