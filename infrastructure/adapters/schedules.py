"""The stores' schedules (migration 6, ``wcsync_schedules``): a periodic full sync of one registered store.

A row says how often (``every_s`` seconds, or a cron expression) and when the next run is due
(``next_due_at``, epoch seconds). A worker that finds a row due claims it with one compare-and-set
statement: ``next_due_at`` moves from the value it read to the next period's, and only the worker whose
statement changed the row runs that period; the others, having read the same value, change nothing. That
holds however many workers and machines share the database, on both backends, with no lock held across a
sync.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from infrastructure.adapters.migrations import SCHEDULES_TABLE, Connection, storage_errors
from infrastructure.support.config import DatabaseConfig

_COLUMNS = (
    "id, org_id, store_id, every_s, cron, next_due_at, created_by, created_at, last_run_at, last_queue_id"
)


@dataclass(frozen=True)
class Schedule:
    schedule_id: UUID
    org_id: str
    store_id: UUID
    every_s: int | None
    cron: str | None
    next_due_at: float
    created_by: str
    created_at: str
    last_run_at: float | None
    last_queue_id: UUID | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> Schedule:
        schedule, org, store, every, cron, due, by, at, last_run, last_queue = row
        return cls(
            UUID(schedule),
            org,
            UUID(store),
            None if every is None else int(every),
            cron,
            float(due),
            by,
            at,
            None if last_run is None else float(last_run),
            None if last_queue is None else UUID(last_queue),
        )


class ScheduleTable:
    """The schedules of a database (thread-safe: one connection behind a lock). ``write_gate``: this
    process's SQLite write gate, taken around each write (as the queue leases do)."""

    def __init__(
        self, database: DatabaseConfig, write_gate: AbstractContextManager[Any] | None = None
    ) -> None:
        self.database = database
        self._conn = Connection(database)
        self._lock = threading.Lock()
        self._write_gate = write_gate

    def __repr__(self) -> str:
        return f"ScheduleTable({self.database.display})"

    def add(self, schedule: Schedule) -> bool:
        """Insert ``schedule``; False when its store has one already (nothing written)."""
        with self._writing():
            taken = self._conn.execute(
                f"SELECT count(*) FROM {SCHEDULES_TABLE} WHERE org_id = %s AND store_id = %s",
                (schedule.org_id, str(schedule.store_id)),
            )
            if taken[0][0]:
                return False
            self._conn.execute(
                f"INSERT INTO {SCHEDULES_TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    str(schedule.schedule_id),
                    schedule.org_id,
                    str(schedule.store_id),
                    schedule.every_s,
                    schedule.cron,
                    schedule.next_due_at,
                    schedule.created_by,
                    schedule.created_at,
                    None,
                    None,
                ),
            )
        return True

    def listed(self, org_id: str | None = None) -> list[Schedule]:
        """An org's schedules (None: every org's), oldest first."""
        where, params = ("WHERE org_id = %s ", (org_id,)) if org_id is not None else ("", ())
        return self._read(f"SELECT {_COLUMNS} FROM {SCHEDULES_TABLE} {where}ORDER BY created_at, id", params)

    def get(self, org_id: str, schedule_id: UUID) -> Schedule | None:
        found = self._read(
            f"SELECT {_COLUMNS} FROM {SCHEDULES_TABLE} WHERE id = %s AND org_id = %s",
            (str(schedule_id), org_id),
        )
        return found[0] if found else None

    def due(self, now: float) -> list[Schedule]:
        """Every org's schedules due at ``now``, the longest waiting first."""
        return self._read(
            f"SELECT {_COLUMNS} FROM {SCHEDULES_TABLE} WHERE next_due_at <= %s ORDER BY next_due_at, id",
            (now,),
        )

    def remove(self, org_id: str, schedule_id: UUID) -> bool:
        """Delete an org's schedule; False when the org has none of that id."""
        with self._writing():
            rows = self._conn.execute(
                f"DELETE FROM {SCHEDULES_TABLE} WHERE id = %s AND org_id = %s RETURNING id",
                (str(schedule_id), org_id),
            )
        return bool(rows)

    def claim(self, schedule: Schedule, next_due_at: float, now: float) -> bool:
        """Take the period ``schedule`` was read due for: next_due_at moved to ``next_due_at`` only if it is
        still the value read. True for the one caller whose statement changed it."""
        with self._writing():
            rows = self._conn.execute(
                f"UPDATE {SCHEDULES_TABLE} SET next_due_at = %s, last_run_at = %s "
                "WHERE id = %s AND next_due_at = %s RETURNING id",
                (next_due_at, now, str(schedule.schedule_id), schedule.next_due_at),
            )
        return bool(rows)

    def record_queue(self, schedule_id: UUID, queue_id: UUID) -> None:
        """The queue the period just claimed started: the next period looks whether it is done."""
        with self._writing():
            self._conn.execute(
                f"UPDATE {SCHEDULES_TABLE} SET last_queue_id = %s WHERE id = %s",
                (str(queue_id), str(schedule_id)),
            )

    def _read(self, statement: str, params: tuple[Any, ...]) -> list[Schedule]:
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(statement, params)
        return [Schedule.of(row) for row in rows]

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction: the write gate (SQLite), this table's lock, database errors converted."""
        gate = self._write_gate if self._write_gate is not None else nullcontext()
        with gate, self._lock, storage_errors(self.database), self._conn.transaction():
            yield

    def close(self) -> None:
        with self._lock:
            self._conn.close()
