"""procrastinate, the durable job engine the sync jobs run on (PostgreSQL only, psycopg 3).

Its tables live beside wcsync's, in the schema of the URL's ``?schema=`` (the connections' search_path), and
are created by migration 4 (infrastructure/adapters/migrations.py). procrastinate costs every process that
loads it about 0.1 s, so it is imported here only inside the functions that need it: a `wcsync` command that
neither defers nor runs jobs never loads it (`wcsync --help` stays fast).

The reads that `wcsync jobs` and `wcsync workers` show go straight to procrastinate's tables through this
package's Connection: they need no App and load no procrastinate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from infrastructure.adapters.migrations import Connection, storage_errors
from infrastructure.support.config import DatabaseConfig

if TYPE_CHECKING:
    from procrastinate import App
    from procrastinate.retry import BaseRetryStrategy

# The one task of a sync job, and the periodic task that takes up the jobs of dead workers.
SYNC_TASK = "wcsync.sync"
STALLED_TASK = "wcsync.retry_stalled"
# procrastinate's queue (its name for a channel of jobs; not a sync queue) both tasks are deferred to.
JOB_QUEUE = "wcsync"

log = structlog.get_logger("wcsync.jobs")

# A decision on a failed job: seconds until it runs again, or None for no retry (it ends failed).
RetryDecider = Callable[[BaseException, int], float | None]


def new_app(database: DatabaseConfig, pool_size: int = 4) -> App:
    """A procrastinate App on wcsync's PostgreSQL database (not opened). ``pool_size``: the most
    connections it holds (a worker needs one to listen, one for its heartbeat, one per running job)."""
    from procrastinate import App, PsycopgConnector

    connector = PsycopgConnector(
        kwargs=database.pg_connect_kwargs(), min_size=1, max_size=max(2, pool_size), name="wcsync-jobs"
    )
    return App(connector=connector)


def retry_strategy(decide: RetryDecider) -> BaseRetryStrategy:
    """procrastinate's retry strategy that asks ``decide(error, attempts)``."""
    from procrastinate.retry import BaseRetryStrategy, RetryDecision

    class _Strategy(BaseRetryStrategy):
        def get_retry_decision(self, *, exception: BaseException, job: Any) -> RetryDecision | None:
            seconds = decide(exception, int(job.attempts))
            if seconds is None:
                return None
            return RetryDecision(retry_in={"milliseconds": round(seconds * 1000)})

    return _Strategy()


class _ToStructlog(logging.Handler):
    """procrastinate logs with the standard library: its records go to wcsync's structlog (stderr, the
    level and format of `-v` / WCSYNC_LOG_LEVEL), with its ``action`` and the job id. Job arguments hold no
    credential (the worker reads them from the store registry), and the secret filter applies anyway."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger": record.name}
        for name in ("action", "job_id", "worker_id"):
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value
        job = getattr(record, "job", None)
        if isinstance(job, dict) and job.get("id") is not None:
            fields["job_id"] = job["id"]
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        log.log(record.levelno, record.getMessage(), **fields)


def route_logs(level: int = logging.INFO) -> None:
    """Send procrastinate's logs at ``level`` and above to structlog (and nowhere else)."""
    logger = logging.getLogger("procrastinate")
    logger.handlers = [_ToStructlog()]
    logger.setLevel(level)
    logger.propagate = False


# ----- reads of procrastinate's tables (no procrastinate loaded) ---------------------------------------

_JOBS = """
SELECT j.id, j.task_name, j.args, j.status::text, j.attempts, j.scheduled_at, j.worker_id,
       (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id AND e.type = 'started'),
       (SELECT min(e.at) FROM procrastinate_events e WHERE e.job_id = j.id AND e.type = 'deferred')
  FROM procrastinate_jobs j
 WHERE j.task_name = %s AND j.status::text = ANY(%s)
 ORDER BY j.id
"""

_WORKERS = """
SELECT w.id, w.last_heartbeat, extract(epoch FROM now() - w.last_heartbeat),
       (SELECT array_agg(j.id ORDER BY j.id) FROM procrastinate_jobs j
         WHERE j.worker_id = w.id AND j.status = 'doing'),
       (SELECT array_agg(j.args->>'queue_id' ORDER BY j.id) FROM procrastinate_jobs j
         WHERE j.worker_id = w.id AND j.status = 'doing' AND j.task_name = %s)
  FROM procrastinate_workers w
 ORDER BY w.id
"""


def read_jobs(database: DatabaseConfig, statuses: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The sync jobs in these states (procrastinate's: todo, doing, failed ...), oldest first: id, task,
    args, status, attempts, scheduled_at, worker_id, started_at, deferred_at."""
    return _read(database, _JOBS, (SYNC_TASK, list(statuses)))


# Whether a lock (a queue's: `queue:<id>`) has a job waiting or running: one probe of procrastinate's lock index.
_PENDING = (
    "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE lock = %s AND status::text IN ('todo', 'doing'))"
)


def has_pending(database: DatabaseConfig, lock: str) -> bool:
    """Whether a job of this lock is waiting or running."""
    return bool(_read(database, _PENDING, (lock,))[0][0])


def read_workers(database: DatabaseConfig) -> list[tuple[Any, ...]]:
    """The registered workers: id, last heartbeat, seconds since it, the ids of the jobs they run (a sync
    job or the stalled-job check), the sync queues those jobs process."""
    return _read(database, _WORKERS, (SYNC_TASK,))


def _read(database: DatabaseConfig, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    conn = Connection(database)
    try:
        with storage_errors(database):
            return conn.execute(statement, params)
    finally:
        conn.close()
