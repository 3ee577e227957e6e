"""The job engine's tables (procrastinate's, on PostgreSQL; the local job table on SQLite) as /metrics
reports them: jobs waiting and running, the age of the oldest waiting, each worker's last heartbeat (on
SQLite, which keeps no worker table, a worker is seen by the lease heartbeat of the job it runs).

Plain SQL on procrastinate's tables rather than its API: a scrape must not import the job engine (it
costs a tenth of a second) nor depend on it being set up. Where the tables are not there (SQLite, a
PostgreSQL database before ``wcsync db migrate`` added them) the figures are zeros. Every statement is
bounded by a statement timeout, so a scrape never waits long on a locked table.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from infrastructure.adapters.migrations import (
    LOCAL_JOBS_TABLE,
    QUEUE_LEASES_TABLE,
    Connection,
    storage_errors,
)
from infrastructure.adapters.schema import POSTGRES
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.metrics import JobFigures

JOBS_TABLE = "procrastinate_jobs"
EVENTS_TABLE = "procrastinate_events"
WORKERS_TABLE = "procrastinate_workers"
# A statement of a scrape that runs longer is cancelled by the server (milliseconds).
STATEMENT_TIMEOUT_MS = 2000
# Workers listed at most (the newest heartbeats): a scrape's size stays bounded whatever the table holds.
MAX_WORKERS = 100

_WAITING = (
    "SELECT COUNT(DISTINCT j.id), "
    "COALESCE(EXTRACT(EPOCH FROM now() - MIN(COALESCE(j.scheduled_at, e.at))), 0) "
    f"FROM {JOBS_TABLE} j LEFT JOIN {EVENTS_TABLE} e ON e.job_id = j.id AND e.type = 'deferred' "
    "WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())"
)
_RUNNING = f"SELECT COUNT(*) FROM {JOBS_TABLE} WHERE status = 'doing'"
_HEARTBEATS = (
    f"SELECT id, EXTRACT(EPOCH FROM now() - last_heartbeat) FROM {WORKERS_TABLE} "
    f"ORDER BY last_heartbeat DESC LIMIT {MAX_WORKERS}"
)


_LOCAL_WAITING = (
    f"SELECT COUNT(*), MIN(deferred_at) FROM {LOCAL_JOBS_TABLE} WHERE status = 'waiting' AND run_after <= %s"
)
_LOCAL_RUNNING = f"SELECT COUNT(*) FROM {LOCAL_JOBS_TABLE} WHERE status = 'running'"
_LOCAL_HEARTBEATS = (
    f"SELECT j.holder, MAX(l.heartbeat_at) FROM {LOCAL_JOBS_TABLE} j JOIN {QUEUE_LEASES_TABLE} l "
    f"ON l.queue_id = j.queue_id WHERE j.status = 'running' GROUP BY j.holder LIMIT {MAX_WORKERS}"
)


class JobStats:
    """Reads JobFigures for /metrics on a connection of its own, one scrape at a time (thread-safe)."""

    def __init__(self, database: DatabaseConfig) -> None:
        self.database = database
        self._conn = Connection(database)
        self._lock = threading.Lock()

    def read(self) -> JobFigures:
        """The figures now (zeros without the job engine's tables). A database error is a StorageError."""
        if self._conn.dialect != POSTGRES:
            return self._read_local()
        with self._lock, storage_errors(self.database):
            conn = self._conn
            assert conn.dialect == POSTGRES
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(STATEMENT_TIMEOUT_MS),))
            if not conn.table_exists(JOBS_TABLE):
                return JobFigures()
            waiting, oldest = conn.execute(_WAITING)[0]
            running = conn.execute(_RUNNING)[0][0]
            heartbeats = (
                {str(worker): float(age) for worker, age in conn.execute(_HEARTBEATS)}
                if conn.table_exists(WORKERS_TABLE)
                else {}
            )
        return JobFigures(
            waiting=int(waiting),
            running=int(running),
            oldest_waiting_age_s=max(0.0, float(oldest)),
            heartbeat_age_s=heartbeats,
        )

    def _read_local(self) -> JobFigures:
        now = time.time()
        with self._lock, storage_errors(self.database):
            conn = self._conn
            if not conn.table_exists(LOCAL_JOBS_TABLE):
                return JobFigures()
            waiting, oldest = conn.execute(_LOCAL_WAITING, (now,))[0]
            running = conn.execute(_LOCAL_RUNNING)[0][0]
            beats = conn.execute(_LOCAL_HEARTBEATS)
        age = now - datetime.fromisoformat(oldest).timestamp() if oldest else 0.0
        return JobFigures(
            waiting=int(waiting),
            running=int(running),
            oldest_waiting_age_s=max(0.0, age),
            heartbeat_age_s={str(holder): max(0.0, now - float(beat)) for holder, beat in beats},
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
