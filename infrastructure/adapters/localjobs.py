"""The sync jobs of SQLite's one-machine mode, in a table of their own (migration 5, ``wcsync_local_jobs``).

procrastinate, which holds the jobs on PostgreSQL, needs PostgreSQL; on the embedded SQLite default the
jobs are rows here and one machine runs them (`wcsync serve`'s worker process, or `wcsync worker`). The
rules are procrastinate's, kept small: a job is ``waiting`` until a worker claims it (``running``, with the
worker's name, pid and host), then deleted when it ends, or kept ``failed`` with why; jobs of one queue run
one at a time, in the order they were deferred (procrastinate's ``lock``). A running job of a process of
this host that no longer exists goes back to waiting (``reset_dead``), as procrastinate's stalled jobs do.

SQLite's write lock (``BEGIN IMMEDIATE``) makes a claim atomic: two workers never take one job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from infrastructure.adapters.leases import pid_exists, this_machine
from infrastructure.adapters.migrations import LOCAL_JOBS_TABLE, Connection, storage_errors
from infrastructure.adapters.schema import iso
from infrastructure.support.config import DatabaseConfig

log = structlog.get_logger("wcsync.jobs")

WAITING, RUNNING, FAILED = "waiting", "running", "failed"
_COLUMNS = "id, action, org_id, queue_id, actor, store_id, status, attempts, deferred_at, started_at, holder, pid, host, error"


@dataclass(frozen=True)
class LocalJob:
    job_id: int
    action: str
    org_id: str
    queue_id: UUID
    actor: str
    store_id: UUID
    status: str
    attempts: int
    deferred_at: str
    started_at: str | None
    holder: str | None
    pid: int | None
    host: str | None
    error: str | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> LocalJob:
        (
            job_id,
            action,
            org,
            queue,
            actor,
            store,
            status,
            attempts,
            deferred,
            started,
            holder,
            pid,
            host,
            error,
        ) = row
        return cls(
            int(job_id),
            action,
            org,
            UUID(queue),
            actor,
            UUID(store),
            status,
            int(attempts),
            deferred,
            started,
            holder,
            pid,
            host,
            error,
        )


class LocalJobs:
    """The local job table of a SQLite database (thread-safe: one connection behind a lock)."""

    def __init__(
        self,
        database: DatabaseConfig,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        alive: Callable[[int], bool] = pid_exists,
    ) -> None:
        if database.backend != "sqlite":
            raise ValueError("local jobs are SQLite's; PostgreSQL's are procrastinate's")
        self.database = database
        self._conn = Connection(database)
        self._lock = threading.Lock()
        self._clock = clock
        self.host = host or this_machine()
        self._alive = alive

    def __repr__(self) -> str:
        return f"LocalJobs({self.database.display})"

    def _now(self) -> str:
        return iso(datetime.fromtimestamp(self._clock(), UTC))

    def defer(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int:
        with self._lock, storage_errors(self.database), self._conn.transaction():
            self._conn.execute(
                f"INSERT INTO {LOCAL_JOBS_TABLE} (action, org_id, queue_id, actor, store_id, status, deferred_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (action, org_id, str(queue_id), actor, str(store_id), WAITING, self._now()),
            )
            job_id = int(self._conn.execute("SELECT last_insert_rowid()")[0][0])
        return job_id

    def claim(self, holder: str, pid: int) -> LocalJob | None:
        """The oldest waiting job that may run now (none of its queue running or waiting before it), marked
        running by ``holder``; None when there is none."""
        with self._lock, storage_errors(self.database), self._conn.transaction():
            rows = self._conn.execute(
                f"SELECT id FROM {LOCAL_JOBS_TABLE} AS j WHERE j.status = %s AND j.run_after <= %s "
                f"AND NOT EXISTS (SELECT 1 FROM {LOCAL_JOBS_TABLE} AS o WHERE o.queue_id = j.queue_id "
                "AND (o.status = %s OR (o.status = %s AND o.id < j.id))) ORDER BY j.id LIMIT 1",
                (WAITING, self._clock(), RUNNING, WAITING),
            )
            if not rows:
                return None
            job_id = int(rows[0][0])
            self._conn.execute(
                f"UPDATE {LOCAL_JOBS_TABLE} SET status = %s, attempts = attempts + 1, started_at = %s, "
                "holder = %s, pid = %s, host = %s WHERE id = %s",
                (RUNNING, self._now(), holder, pid, self.host, job_id),
            )
            found = self._conn.execute(f"SELECT {_COLUMNS} FROM {LOCAL_JOBS_TABLE} WHERE id = %s", (job_id,))
        return LocalJob.of(found[0])

    def finish(self, job_id: int) -> None:
        self._write(f"DELETE FROM {LOCAL_JOBS_TABLE} WHERE id = %s", (job_id,))

    def give_back(self, job_id: int, delay_s: float = 0.0) -> None:
        """Waiting again (a stopped run, or one to retry after ``delay_s``)."""
        self._write(
            f"UPDATE {LOCAL_JOBS_TABLE} SET status = %s, run_after = %s, holder = NULL, pid = NULL, host = NULL "
            "WHERE id = %s",
            (WAITING, self._clock() + delay_s, job_id),
        )

    def fail(self, job_id: int, error: str) -> None:
        self._write(
            f"UPDATE {LOCAL_JOBS_TABLE} SET status = %s, error = %s, holder = NULL, pid = NULL WHERE id = %s",
            (FAILED, error[:1000], job_id),
        )

    def reset_dead(self) -> int:
        """Running jobs of processes of this host that no longer exist: waiting again. Returns how many."""
        dead = [
            job
            for job in self.list((RUNNING,))
            if job.host == self.host and job.pid is not None and not self._alive(job.pid)
        ]
        for job in dead:
            log.warning(
                "job.dead_worker_job_given_back",
                job_id=job.job_id,
                holder=job.holder,
                queue_id=str(job.queue_id),
            )
            self._write(
                f"UPDATE {LOCAL_JOBS_TABLE} SET status = %s, holder = NULL, pid = NULL, host = NULL "
                "WHERE id = %s AND status = %s AND pid = %s",
                (WAITING, job.job_id, RUNNING, job.pid),
            )
        return len(dead)

    def list(self, statuses: tuple[str, ...] = (WAITING, RUNNING, FAILED)) -> list[LocalJob]:
        marks = ", ".join("%s" for _ in statuses)
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM {LOCAL_JOBS_TABLE} WHERE status IN ({marks}) ORDER BY id", statuses
            )
        return [LocalJob.of(row) for row in rows]

    def pending_for(self, queue_id: UUID) -> bool:
        """Whether the queue has a job waiting or running."""
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT count(*) FROM {LOCAL_JOBS_TABLE} WHERE queue_id = %s AND status IN (%s, %s)",
                (str(queue_id), WAITING, RUNNING),
            )
        return bool(rows[0][0])

    def _write(self, statement: str, params: tuple[Any, ...]) -> None:
        with self._lock, storage_errors(self.database), self._conn.transaction():
            self._conn.execute(statement, params)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
