"""Durable sync jobs: a start, retry or resume of a queue deferred to procrastinate and run by any
`wcsync worker` of any machine sharing the PostgreSQL database (issue 11, part 3).

A job's arguments name the work, never a credential: {action, org_id, queue_id, actor, store_id}; the
worker reads the store's credentials from the store registry (WCSYNC_SECRET_KEY in its environment). Every
job of a queue carries the lock ``queue:<id>``, so procrastinate runs at most one of them at a time, in the
order they were deferred.

How a job ends:
- its run finished (done, failed lines, a store error the queue recorded): succeeded;
- the worker was asked to stop (SIGTERM/SIGINT): the run stops after the batch in hand (saved, as a CLI
  run does), and the job is given back to procrastinate at once (retried: another worker, or this one
  started again, resumes the queue from its events);
- the worker died (SIGKILL, a lost machine): its heartbeat goes stale, and the periodic task
  ``wcsync.retry_stalled`` that every worker schedules gives its jobs back the same way;
- the queue is busy (another run holds its lease): tried again a little later;
- anything else (no such store, a key that cannot open its secret): failed, logged with its reason; the
  queue keeps every saved batch and can be resumed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from domain.errors import WcsyncError
from domain.queue_terms import Q_DONE, Q_DRAFT, Q_PROCESSING, QueueOptions
from infrastructure.adapters import jobqueue
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import ConfigurationError, StorageError

if TYPE_CHECKING:  # types only: `wcsync jobs` and `wcsync workers` list the jobs without the HTTP client
    from infrastructure.adapters.woocommerce import ClientOptions
    from infrastructure.services.stores import StoreRegistry
    from infrastructure.services.sync import SyncEngine, SyncOutcome

log = structlog.get_logger("wcsync.jobs")

ACTIONS = ("start", "retry", "resume")
# The states `wcsync jobs` lists (procrastinate's names): waiting, running, failed.
LISTED_STATUSES = ("todo", "doing", "failed")
STATUS_WORDS = {"todo": "waiting", "doing": "running", "failed": "failed"}

# A queue busy with another run (its lease, held by a process that may have died) is tried again this
# often, this many times (the lease of a dead process goes stale well within that).
BUSY_RETRY_S = 5.0
BUSY_ATTEMPTS = 120
# A database failure under a job: tried again after this many seconds times the attempt, this many times.
STORAGE_RETRY_S = 5.0
STORAGE_ATTEMPTS = 5


@dataclass(frozen=True)
class SyncJob:
    """What a job asks for: the action on a queue of an org's registered store, and who asked."""

    action: str
    org_id: str
    queue_id: UUID
    actor: str
    store_id: UUID

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigurationError(
                f"a sync job's action is one of {', '.join(ACTIONS)}, not {self.action!r}"
            )

    @property
    def lock(self) -> str:
        return self.lock_of(self.queue_id)

    @staticmethod
    def lock_of(queue_id: UUID) -> str:
        """procrastinate's lock of a queue's jobs: one at a time, in order."""
        return f"queue:{queue_id}"

    def as_args(self) -> dict[str, str]:
        return {
            "action": self.action,
            "org_id": self.org_id,
            "queue_id": str(self.queue_id),
            "actor": self.actor,
            "store_id": str(self.store_id),
        }

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> SyncJob:
        try:
            return cls(
                action=str(args["action"]),
                org_id=str(args["org_id"]),
                queue_id=UUID(str(args["queue_id"])),
                actor=str(args["actor"]),
                store_id=UUID(str(args["store_id"])),
            )
        except (KeyError, ValueError) as problem:
            raise ConfigurationError(f"a sync job's arguments are not a sync job's ({problem})") from None


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker runs. The stall settings: a worker writes a heartbeat every ``heartbeat_s``; one whose
    last is older than ``stalled_after_s`` is dead and its jobs are given back, checked every
    ``stalled_check_s`` (a whole number of seconds dividing 60) by whichever worker's turn it is. So a
    killed worker's job runs again within about stalled_after_s + stalled_check_s (40 s by default)."""

    concurrency: int = 1
    heartbeat_s: float = 10.0
    stalled_after_s: float = 30.0
    stalled_check_s: int = 10
    # A stop waits this long for the jobs' runs to reach their batch's end; then procrastinate cancels them.
    shutdown_timeout_s: float = 8.0
    # procrastinate polls for jobs this often besides LISTEN/NOTIFY (a notification lost, a job retried).
    poll_s: float = 2.0
    # Due schedules (infrastructure.services.schedules) are looked for this often.
    schedule_check_s: float = 5.0
    # Webhook deliveries recorded by a server (infrastructure.services.deliveries) are looked for this often:
    # most of the time from a delivery's receipt to its customer's row.
    delivery_check_s: float = 0.25
    # The stores' installed webhooks are looked at in each store this often (a webhook WooCommerce disabled
    # becomes an activity and the store's action-required reason).
    webhook_check_s: float = 300.0

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= 32:
            raise ConfigurationError(f"--concurrency must be 1 to 32, got {self.concurrency}")
        if not 0 < self.heartbeat_s < self.stalled_after_s:
            raise ConfigurationError(
                "the heartbeat interval must be more than 0 and less than the stall timeout"
            )
        if self.stalled_check_s < 1 or 60 % self.stalled_check_s:
            raise ConfigurationError(
                "the stalled-job check interval must be a whole number of seconds dividing 60"
            )


# ----- deferring and listing -----------------------------------------------------------------------------


class DetachedStarts:
    """A detached start over a job queue's ``defer`` / ``defer_sync``: the new queue saved as a draft first
    (it exists and `status` finds it before the answer), then its job deferred; returns (queue id, job id).
    A defer that fails leaves the draft, and the error says how to run it."""

    async def defer(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int:
        raise NotImplementedError

    def defer_sync(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int:
        raise NotImplementedError

    async def start(
        self,
        engine: SyncEngine,
        store_id: UUID,
        store_url: str,
        options: QueueOptions,
        queue_name: str | None = None,
    ) -> tuple[UUID, int]:
        queue_id = await asyncio.to_thread(engine.create_draft, store_url, options, queue_name)
        try:
            job_id = await self.defer("start", engine.org_id, queue_id, engine.actor, store_id)
        except StorageError as error:
            raise _draft_left(error, queue_id) from None
        return queue_id, job_id

    def start_sync(
        self,
        engine: SyncEngine,
        store_id: UUID,
        store_url: str,
        options: QueueOptions,
        queue_name: str | None = None,
    ) -> tuple[UUID, int]:
        """``start`` for synchronous callers (the CLI)."""
        queue_id = engine.create_draft(store_url, options, queue_name)
        try:
            job_id = self.defer_sync("start", engine.org_id, queue_id, engine.actor, store_id)
        except StorageError as error:
            raise _draft_left(error, queue_id) from None
        return queue_id, job_id


class SyncJobs(DetachedStarts):
    """Defer sync jobs and list jobs and workers, on the database of ``database`` (PostgreSQL). The HTTP
    server opens it once (``open_async``) and defers with ``defer``; the CLI defers with ``defer_sync``."""

    def __init__(self, database: DatabaseConfig) -> None:
        if database.backend != "postgres":
            raise ConfigurationError("detached runs need PostgreSQL workers; on SQLite run `wcsync serve`")
        self.database = database
        self._app: Any = None

    def _procrastinate(self) -> Any:
        if self._app is None:
            self._app = jobqueue.new_app(self.database, pool_size=2)
        return self._app

    async def open_async(self) -> None:
        await self._procrastinate().open_async()

    async def close_async(self) -> None:
        if self._app is not None:
            await self._app.close_async()

    async def defer(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int:
        """Defer a job (after ``open_async``); returns its id. The queue must exist already (a new one
        saved as a draft first: SyncEngine.create_draft), so the caller can answer with its id."""
        job = SyncJob(action, org_id, queue_id, actor, store_id)
        deferrer = self._procrastinate().configure_task(
            jobqueue.SYNC_TASK, lock=job.lock, queue=jobqueue.JOB_QUEUE
        )
        with StorageErrors(self.database):
            job_id = int(await deferrer.defer_async(**job.as_args()))
        log.info("job.deferred", job_id=job_id, **_fields(job))
        return job_id

    def defer_sync(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int:
        """``defer`` for synchronous callers (the CLI): opens and closes its own connection."""
        job = SyncJob(action, org_id, queue_id, actor, store_id)
        app = jobqueue.new_app(self.database, pool_size=1)
        with StorageErrors(self.database), app.open():
            deferrer = app.configure_task(jobqueue.SYNC_TASK, lock=job.lock, queue=jobqueue.JOB_QUEUE)
            job_id = int(deferrer.defer(**job.as_args()))
        log.info("job.deferred", job_id=job_id, **_fields(job))
        return job_id

    def pending_for(self, queue_id: UUID) -> bool:
        """Whether the queue has a job waiting or running (by its lock: not every org's jobs read)."""
        return jobqueue.has_pending(self.database, SyncJob.lock_of(queue_id))

    def jobs(self, statuses: tuple[str, ...] = LISTED_STATUSES) -> list[dict[str, Any]]:
        """The sync jobs waiting, running or failed, oldest first (every org's: an operator's view)."""
        rows = jobqueue.read_jobs(self.database, statuses)
        listed = []
        for job_id, _task, args, status, attempts, scheduled, worker_id, started, deferred in rows:
            listed.append(
                {
                    "jobId": job_id,
                    "action": args.get("action"),
                    "queueId": args.get("queue_id"),
                    "org": args.get("org_id"),
                    "status": STATUS_WORDS.get(status, status),
                    "attempts": attempts,
                    "workerId": worker_id,
                    "deferredAt": _iso(deferred),
                    "scheduledAt": _iso(scheduled),
                    "startedAt": _iso(started),
                }
            )
        return listed

    def workers(self) -> list[dict[str, Any]]:
        """The registered workers, their last heartbeat and the jobs they run."""
        return [
            {
                "workerId": worker_id,
                "lastHeartbeat": _iso(heartbeat),
                "secondsSinceHeartbeat": round(float(age), 1),
                "jobs": list(job_ids or []),
                "queues": list(queue_ids or []),
            }
            for worker_id, heartbeat, age, job_ids, queue_ids in jobqueue.read_workers(self.database)
        ]


class StorageErrors:
    """procrastinate's connection errors as a StorageError (exit 4), one line."""

    def __init__(self, database: DatabaseConfig) -> None:
        self.database = database

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        if error is None or isinstance(error, WcsyncError):
            return
        from procrastinate.exceptions import ConnectorException  # loaded already: the App raised it

        if isinstance(error, ConnectorException):
            cause = error.__cause__ or error
            text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            if "procrastinate_" in text and "does not exist" in text:
                raise StorageError(
                    f"the database {self.database.display} lacks the job tables: run `wcsync db migrate` once"
                ) from None
            raise StorageError(f"the database {self.database.display} failed: {text}") from None


# ----- running ---------------------------------------------------------------------------------------------

# An engine for one job: (org, actor, stop event, holder name) -> SyncEngine.
EngineFactory = Callable[[str, str, threading.Event, str], "SyncEngine"]


class SyncJobRunner:
    """Runs one sync job: the store's settings from the registry, then the engine's start (of the draft),
    retry or resume, with catch-up as the CLI's runs. Shared by the jobs of one worker."""

    def __init__(self, engine: EngineFactory, registry: StoreRegistry, client_options: ClientOptions) -> None:
        self.engine = engine
        self.registry = registry
        self.client_options = client_options
        self._secrets_lock = threading.Lock()  # the registry's secrets connection serves one thread at a time

    async def __call__(self, job: SyncJob, stop: threading.Event, holder: str) -> str:
        engine = self.engine(job.org_id, job.actor, stop, holder)
        queue = await asyncio.to_thread(engine.get_queue, job.queue_id)
        if queue.state == Q_DONE:
            log.info("job.queue_done", **_fields(job))
            return Q_DONE
        store = await asyncio.to_thread(self._settings, job)
        outcome: SyncOutcome
        kind = run_kind(job.action, queue.state, bool(queue.retryable_ids()))
        if kind == "start":
            outcome = await engine.start_draft(job.queue_id, store, self.client_options)
        elif kind == "retry":
            outcome = await engine.retry(job.queue_id, store, self.client_options)
        else:
            outcome = await engine.resume(job.queue_id, store, self.client_options)
        if outcome.store_error is not None:
            log.warning("job.store_error", error=str(outcome.store_error), **_fields(job))
        return outcome.state

    def _settings(self, job: SyncJob) -> Any:
        with self._secrets_lock:
            return self.registry.settings(job.org_id, job.store_id)


JobRunner = Callable[[SyncJob, threading.Event, str], Awaitable[str]]


def run_kind(action: str, state: str, retryable: bool) -> str:
    """How a job runs its queue (state ``state``; ``retryable``: it has failed lines to retry): a draft is
    started; a retry not applied yet retries (its failed lines still failed, a queue a stopped run left
    processing included, as the CLI's `retry` does); anything else resumes (a resume, a retry taken up again
    after its first run put the lines back and was stopped)."""
    if action == "start" or state == Q_DRAFT:
        return "start"
    if action == "retry" and (state != Q_PROCESSING or retryable):
        return "retry"
    return "resume"


def holder_name(worker_id: int | None) -> str:
    """Who processes a queue, as QueueBusyError and the lease name it: the worker and its process."""
    return f"worker {worker_id} (pid {os.getpid()}@{socket.gethostname()})"


def retry_delay(error: BaseException, attempts: int) -> float | None:
    """When a failed job runs again (seconds), or None: it ends failed (see the module docstring)."""
    from infrastructure.services.sync import RunStopped  # loaded already: a job's engine raised the error

    if isinstance(error, RunStopped | asyncio.CancelledError):
        return 0.0  # the worker stopped: give the job back at once
    # The lease's QueueBusyError (infrastructure.support.errors), by its code.
    if getattr(error, "error_code", None) == "queue_busy":
        return BUSY_RETRY_S if attempts < BUSY_ATTEMPTS else None
    if isinstance(error, StorageError) and attempts < STORAGE_ATTEMPTS:
        return STORAGE_RETRY_S * (attempts + 1)
    return None


# A worker's look at the due schedules (ScheduleRunner.run_due): starts what is due, once of all workers.
DueStep = Callable[[], Awaitable[object]]


async def run_due_schedules(
    due: DueStep | None, stopping: Callable[[], bool], every_s: float, what: str = "schedule"
) -> None:
    """A worker's side loop beside its jobs (as the stalled-job check, and for the same reason: a look
    queued behind long syncs would start a period late): ``due`` every ``every_s`` until ``stopping()``;
    a database hiccup is logged and the next look tries again. The webhook deliveries' applier runs in
    one too (``what``: the log's name for it)."""
    while due is not None and not stopping():
        try:
            await due()
        except Exception as error:
            log.warning(f"{what}.check_failed", error=type(error).__name__, message=str(error)[:200])
        await asyncio.sleep(every_s)


@dataclass(frozen=True)
class SideSteps:
    """What a worker does beside its jobs, each in a loop of its own (run_due_schedules): start the due
    schedules (``due``), apply the recorded webhook deliveries (``deliveries``), look at the stores'
    installed webhooks (``webhooks``). None: not that one."""

    due: DueStep | None = None
    deliveries: DueStep | None = None
    webhooks: DueStep | None = None

    def start(self, settings: WorkerSettings, stopping: Callable[[], bool]) -> list[asyncio.Future[None]]:
        """The three loops started; the caller cancels them when the worker stops."""
        loops = (
            (self.due, settings.schedule_check_s, "schedule"),
            (self.deliveries, settings.delivery_check_s, "webhooks.apply"),
            (self.webhooks, settings.webhook_check_s, "webhooks.watch"),
        )
        return [
            asyncio.ensure_future(run_due_schedules(step, stopping, every, what))
            for step, every, what in loops
        ]


class JobWorker:
    """One `wcsync worker`: procrastinate's worker running sync jobs with ``run``, the periodic
    stalled-job retry and its side steps (SideSteps). ``stop()`` (the CLI calls it on SIGTERM/SIGINT) stops
    every run after its batch and the worker after its jobs gave themselves back."""

    def __init__(
        self,
        database: DatabaseConfig,
        run: JobRunner,
        settings: WorkerSettings,
        side: SideSteps | None = None,
    ) -> None:
        self.database = database
        self.run_job = run
        self.settings = settings
        self.side = side or SideSteps()
        self._stops: set[threading.Event] = set()
        self._task: asyncio.Future[None] | None = None
        self._stopping = False
        self.app = jobqueue.new_app(database, pool_size=settings.concurrency + 4)
        self._register_tasks()

    def _register_tasks(self) -> None:
        app, settings = self.app, self.settings

        @app.task(
            name=jobqueue.SYNC_TASK,
            queue=jobqueue.JOB_QUEUE,
            pass_context=True,
            retry=jobqueue.retry_strategy(retry_delay),
        )
        async def sync(context: Any, /, **args: Any) -> str:
            return await self._sync(context, args)

        del sync, settings

    async def _sync(self, context: Any, args: dict[str, Any]) -> str:
        from infrastructure.services.sync import RunStopped  # loaded already: the worker's engines are its

        job = SyncJob.from_args(args)
        stop = threading.Event()
        if self._stopping:
            stop.set()
        self._stops.add(stop)
        holder = holder_name(context.job.worker_id)
        log.info(
            "job.started", job_id=context.job.id, attempts=context.job.attempts, holder=holder, **_fields(job)
        )
        try:
            state = await self.run_job(job, stop, holder)
        except RunStopped:
            log.info("job.stopped", job_id=context.job.id, **_fields(job))
            raise
        except WcsyncError as error:
            log.error("job.failed", job_id=context.job.id, error=str(error), **_fields(job))
            raise
        finally:
            self._stops.discard(stop)
        log.info("job.finished", job_id=context.job.id, state=state, **_fields(job))
        return state

    async def _retry_stalled(self) -> int:
        """Give back the jobs of workers whose heartbeat is stale (procrastinate's documented pattern,
        docs/howto/production/retry_stalled_jobs), then forget those workers. Several workers may check
        at once: a job another one gave back first is no longer stalled, and its retry is skipped."""
        from procrastinate.exceptions import ProcrastinateException

        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=self.settings.stalled_after_s)
        count = 0
        for job in stalled:
            if job.task_name == jobqueue.STALLED_TASK:
                continue  # a check of an older release, queued as a job: nothing to give back
            try:
                await manager.retry_job(job)
            except ProcrastinateException as error:
                log.info("job.stalled_retry_skipped", job_id=job.id, error=type(error).__name__)
                continue
            log.warning("job.stalled_retried", job_id=job.id, worker_id=job.worker_id, lock=job.lock)
            count += 1
        await manager.prune_stalled_workers(self.settings.stalled_after_s)
        return count

    async def _check_stalled(self) -> None:
        """Every ``stalled_check_s``, beside the jobs (not as a job: one behind a backlog of syncs, or
        waiting for a worker slot every long sync holds, would give a dead worker's job back only once the
        backlog drained). Every worker checks; what one gives back the others find given back."""
        while not self._stopping:
            await asyncio.sleep(self.settings.stalled_check_s)
            try:
                await self._retry_stalled()
            except Exception as error:  # a database hiccup: the next check tries again
                log.warning("job.stalled_check_failed", error=type(error).__name__)

    async def run(self) -> None:
        """Run jobs until ``stop()``; returns when every job in hand has ended (or given itself back)."""
        settings = self.settings
        with StorageErrors(self.database):
            await self._run(settings)

    async def _run(self, settings: WorkerSettings) -> None:
        async with self.app.open_async():
            if self._stopping:
                return
            # Without procrastinate's own signal handlers (the CLI's set the runs' stop events first): a
            # cancel of its run is its documented graceful stop, jobs in hand waited for.
            self._task = asyncio.ensure_future(
                self.app.run_worker_async(
                    concurrency=settings.concurrency,
                    name="wcsync",
                    install_signal_handlers=False,
                    update_heartbeat_interval=settings.heartbeat_s,
                    stalled_worker_timeout=settings.stalled_after_s,
                    shutdown_graceful_timeout=settings.shutdown_timeout_s,
                    fetch_job_polling_interval=settings.poll_s,
                    delete_jobs="successful",
                )
            )
            loops = [
                asyncio.ensure_future(self._check_stalled()),
                *self.side.start(settings, lambda: self._stopping),
            ]
            try:
                await self._task
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
            finally:
                for loop in loops:
                    loop.cancel()

    def stop(self) -> None:
        """Stop after the batches in hand: each run saves and its job is given back; no new job starts.
        Called on the worker's event loop (by a signal handler of the loop)."""
        self._stopping = True
        for stop in list(self._stops):
            stop.set()
        if self._task is not None:
            self._task.cancel()


def _draft_left(error: StorageError, queue_id: UUID) -> StorageError:
    return StorageError(
        f"{error}; queue {queue_id} is saved as a draft with no job: `wcsync resume {queue_id}` runs it here"
    )


def _fields(job: SyncJob) -> dict[str, str]:
    return {"action": job.action, "org_id": job.org_id, "queue_id": str(job.queue_id)}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
