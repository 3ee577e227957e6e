"""Sync jobs on the embedded SQLite default (one machine), and the pickup of queues a dead process left.

procrastinate holds the jobs on PostgreSQL (infrastructure.services.jobs); SQLite has no procrastinate, so
there the jobs are rows of ``wcsync_local_jobs`` (infrastructure.adapters.localjobs) and the same
SyncJobRunner runs them. ``LocalSyncJobs`` defers and lists like SyncJobs; ``LocalJobWorker`` runs like
JobWorker: one job per queue at a time, stop after the batch in hand and give the job back, a job of a
worker that died given back to the next (same host: by its pid).

``pickup_abandoned`` (both backends, at `wcsync serve`'s start): a queue whose lease is stale (its holder
died: a SIGKILLed server, a crashed CLI run) and that has no job waiting or running gets a ``resume`` job,
when its store is registered (the credentials are needed and only the registry keeps them); otherwise the
log says how to resume it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

import structlog

from domain.errors import WcsyncError
from domain.queue import SyncQueue
from domain.queue_terms import Q_DONE
from infrastructure.adapters.leases import StaleLease
from infrastructure.adapters.localjobs import FAILED, RUNNING, WAITING, LocalJob, LocalJobs
from infrastructure.services.jobs import (
    LISTED_STATUSES,
    DetachedStarts,
    JobRunner,
    SideSteps,
    SyncJob,
    WorkerSettings,
    retry_delay,
)
from infrastructure.support.config import DatabaseConfig

log = structlog.get_logger("wcsync.jobs")

# SQLite has no LISTEN/NOTIFY: an idle worker looks for a job this often.
LOCAL_POLL_S = 0.5
# procrastinate's status names (SyncJobs.jobs' `statuses`) -> the local table's.
_STATUSES = {"todo": WAITING, "doing": RUNNING, "failed": FAILED}


def local_holder() -> str:
    """The lease holder's name of a local worker: the process, as QueueBusyError shows it."""
    return f"worker (pid {os.getpid()}@{socket.gethostname()})"


class LocalSyncJobs(DetachedStarts):
    """SyncJobs' interface over the local job table (SQLite)."""

    def __init__(self, database: DatabaseConfig) -> None:
        self.database = database
        self.table = LocalJobs(database)

    async def open_async(self) -> None:
        return None

    async def close_async(self) -> None:
        self.table.close()

    async def defer(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int:
        return await asyncio.to_thread(self.defer_sync, action, org_id, queue_id, actor, store_id)

    def defer_sync(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int:
        job = SyncJob(action, org_id, queue_id, actor, store_id)  # checks the action
        job_id = self.table.defer(job.action, job.org_id, job.queue_id, job.actor, job.store_id)
        log.info("job.deferred", job_id=job_id, action=action, org_id=org_id, queue_id=str(queue_id))
        return job_id

    def pending_for(self, queue_id: UUID) -> bool:
        return self.table.pending_for(queue_id)

    def jobs(self, statuses: tuple[str, ...] = LISTED_STATUSES) -> list[dict[str, Any]]:
        return [_job_document(job) for job in self.table.list(tuple(_STATUSES.get(s, s) for s in statuses))]

    def workers(self) -> list[dict[str, Any]]:
        """The workers running a job now (SQLite keeps no heartbeat table: a worker is seen by its jobs)."""
        holders: dict[str, list[LocalJob]] = {}
        for job in self.table.list((RUNNING,)):
            holders.setdefault(job.holder or "?", []).append(job)
        return [
            {
                "workerId": holder,
                "lastHeartbeat": None,
                "secondsSinceHeartbeat": None,
                "jobs": [job.job_id for job in jobs],
                "queues": [str(job.queue_id) for job in jobs],
            }
            for holder, jobs in holders.items()
        ]


def _job_document(job: LocalJob) -> dict[str, Any]:
    return {
        "jobId": job.job_id,
        "action": job.action,
        "queueId": str(job.queue_id),
        "org": job.org_id,
        "status": job.status,
        "attempts": job.attempts,
        "workerId": job.holder,
        "deferredAt": job.deferred_at,
        "scheduledAt": None,
        "startedAt": job.started_at,
    }


class LocalJobWorker:
    """A worker of the local job table: claims a job when it has room (``settings.concurrency``), runs it
    with ``run`` and ends it: deleted when its run ended, given back when the worker stopped it or it is to
    be tried again (retry_delay, as on procrastinate), failed otherwise; beside them, the due schedules
    and the webhooks' work (SideSteps). ``stop()`` on the worker's loop."""

    def __init__(
        self, jobs: LocalJobs, run: JobRunner, settings: WorkerSettings, side: SideSteps | None = None
    ) -> None:
        self.jobs = jobs
        self.run_job = run
        self.settings = settings
        self.side = side or SideSteps()
        self.holder = local_holder()
        self._stops: set[threading.Event] = set()
        self._stopping = False
        self._wake: asyncio.Event | None = None

    async def run(self) -> None:
        self._wake = asyncio.Event()
        running: set[asyncio.Task[None]] = set()
        next_check = 0.0
        loops = self.side.start(self.settings, lambda: self._stopping)
        while not self._stopping:
            if time.monotonic() >= next_check:  # a job of a worker of this host that died: given back
                await asyncio.to_thread(self.jobs.reset_dead)
                next_check = time.monotonic() + self.settings.stalled_check_s
            job = None
            if len(running) < self.settings.concurrency:
                job = await asyncio.to_thread(self.jobs.claim, self.holder, os.getpid())
            if job is not None:
                task = asyncio.create_task(self._run_one(job))
                running.add(task)
                task.add_done_callback(running.discard)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOCAL_POLL_S)
            self._wake.clear()
        for loop in loops:
            loop.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _run_one(self, job: LocalJob) -> None:
        # Imported here, not at the top: `wcsync jobs` lists the jobs without the engine's HTTP client.
        from infrastructure.services.sync import RunStopped  # loaded already: the worker's engines are its

        sync = SyncJob(job.action, job.org_id, job.queue_id, job.actor, job.store_id)
        stop = threading.Event()
        if self._stopping:
            stop.set()
        self._stops.add(stop)
        fields = {
            "job_id": job.job_id,
            "action": job.action,
            "org_id": job.org_id,
            "queue_id": str(job.queue_id),
        }
        log.info("job.started", attempts=job.attempts, holder=self.holder, **fields)
        try:
            state = await self.run_job(sync, stop, self.holder)
        except RunStopped:
            log.info("job.stopped", **fields)
            await asyncio.to_thread(self.jobs.give_back, job.job_id)
        except Exception as error:
            delay = retry_delay(error, job.attempts)
            reason = str(error) if isinstance(error, WcsyncError) else type(error).__name__
            if delay is None:
                log.error("job.failed", error=reason, **fields)
                await asyncio.to_thread(self.jobs.fail, job.job_id, reason)
            else:
                log.info("job.retry_later", error=reason, delay_s=delay, **fields)
                await asyncio.to_thread(self.jobs.give_back, job.job_id, delay)
        else:
            log.info("job.finished", state=state, **fields)
            await asyncio.to_thread(self.jobs.finish, job.job_id)
        finally:
            self._stops.discard(stop)
            if self._wake is not None:
                self._wake.set()  # room for the next job

    def stop(self) -> None:
        """Stop after the batches in hand: each run saves and its job is given back; no new job starts."""
        self._stopping = True
        for stop in list(self._stops):
            stop.set()
        if self._wake is not None:
            self._wake.set()


# ----- queues left by a process that died --------------------------------------------------------------


class Deferrer(Protocol):
    def defer_sync(self, action: str, org_id: str, queue_id: UUID, actor: str, store_id: UUID) -> int: ...
    def pending_for(self, queue_id: UUID) -> bool: ...


def pickup_abandoned(
    stale: list[StaleLease],
    get_queue: Callable[[UUID], SyncQueue],
    registered_store: Callable[[str, str], UUID | None],
    jobs: Deferrer,
) -> list[UUID]:
    """A ``resume`` job for each queue of ``stale`` (leases whose holder died) that is not done, has no
    job waiting or running, and whose store its org registered (``registered_store(org, url)``: its id).
    Returns the queues picked up; the others are logged with what to do."""
    picked = []
    for lease in stale:
        try:
            queue = get_queue(lease.queue_id)
        except WcsyncError:
            continue  # a lease of a start that never saved its queue
        if queue.state == Q_DONE or jobs.pending_for(queue.id):
            continue
        try:
            store_id = registered_store(queue.org_id, queue.store_url)
        except WcsyncError as error:
            # One org's store that cannot be read (a secret sealed under another key) stops no other pickup.
            log.warning(
                "jobs.abandoned_queue_left", queue_id=str(queue.id), org_id=queue.org_id, error=str(error)
            )
            continue
        if store_id is None:
            log.warning(
                "jobs.abandoned_queue_left",
                queue_id=str(queue.id),
                org_id=queue.org_id,
                holder=lease.holder,
                advice=f"its store is not registered: `wcsync resume {queue.id}` with the store's key continues it",
            )
            continue
        jobs.defer_sync("resume", queue.org_id, queue.id, "wcsync", store_id)
        log.warning(
            "jobs.abandoned_queue_picked_up", queue_id=str(queue.id), org_id=queue.org_id, holder=lease.holder
        )
        picked.append(queue.id)
    return picked
