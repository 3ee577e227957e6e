"""`wcsync worker` inside a test, and what a queue that passed between workers must end as.

``worker_running`` runs the database's job worker (procrastinate's JobWorker on PostgreSQL, the local job
table's LocalJobWorker on SQLite, as ``Services.job_worker`` makes it) on a thread and event loop of its own,
and stops it as SIGTERM stops `wcsync worker`: so a test can run detached jobs to their end, or stop a worker
mid-job and look at what it gave back. ``check_mirror`` is what every run that survived a dead or stopped
worker (or server) must leave: exactly the store's customers, each registered once, no line finished twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Generic, Protocol, TypeVar
from uuid import UUID

from domain.customer import Customer
from domain.queue import SyncQueue
from infrastructure.adapters.secrets import SecretKey
from infrastructure.sandbox import RunningSandbox
from infrastructure.services.jobs import JobWorker, WorkerSettings
from infrastructure.services.localjobs import LocalJobWorker
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import Services, open_services
from projections import queries
from tests.support.services import FAST
from tests.support.waiting import wait_until

# A worker on a test's time scale: dead after 2 s of silence, checked every second (SQLite's workers poll
# every 0.2 s, and look for dead pids every second).
QUICK = WorkerSettings(heartbeat_s=0.5, stalled_after_s=2.0, stalled_check_s=1, poll_s=0.2)


class Worker(Protocol):
    """What a test needs of a job worker: it runs until told to stop."""

    async def run(self) -> None: ...
    def stop(self) -> None: ...


W = TypeVar("W", bound=Worker)


class WorkerThread(Generic[W]):
    """A job worker running on its own thread and event loop, stopped as SIGTERM stops `wcsync worker`
    (``worker.stop`` called on the worker's own loop); an error it ended with fails ``stop``."""

    def __init__(self, worker: W) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self.loop = asyncio.get_running_loop()
            await self.worker.run()

        try:
            asyncio.run(run())
        except BaseException as error:  # reported by stop() and join()
            self.error = error

    def stop(self) -> None:
        loop = wait_until(lambda: self.loop)
        loop.call_soon_threadsafe(self.worker.stop)
        self.join()

    def join(self) -> None:
        """Until the worker has ended (stopped by ``stop`` or from within: a test's hook on its run)."""
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert self.error is None, self.error


@contextmanager
def running(worker: W) -> Iterator[WorkerThread[W]]:
    """``worker`` started on its thread, and stopped at the end unless the test stopped it already."""
    started = WorkerThread(worker)
    started.thread.start()
    try:
        yield started
    finally:
        if started.thread.is_alive():
            started.stop()


def worker_running(
    services: Services, key: SecretKey, settings: WorkerSettings = QUICK
) -> AbstractContextManager[WorkerThread[JobWorker | LocalJobWorker]]:
    """The database's worker, as `wcsync worker` makes it (opening store secrets with ``key``), running."""
    return running(services.job_worker(key, FAST, settings))


def check_mirror(database: DatabaseConfig, org: str, queue_id: str, store: RunningSandbox) -> int:
    """Exactly the store's customers, each registered once, no line of the queue finished twice; how many
    customers that is."""
    with open_services(database) as services:
        services.catch_up()
        ids = [row["woo_customer_id"] for row in queries.customers(services.projections, org, store.url)]
        assert sorted(ids) == sorted(store.store.customer_ids())
        registered: Counter[int] = Counter()
        for notification in services.app.recorder.select_notifications(start=1, limit=10**7):
            event = services.app.mapper.to_domain_event(notification)
            if isinstance(event, Customer.Registered) and event.org_id == org:
                registered[event.woo_id] += 1
        assert set(registered) == set(ids) and set(registered.values()) == {1}
        finished = Counter(
            customer
            for event in services.app.queue_events(UUID(queue_id))
            if isinstance(event, SyncQueue.LinesDone)
            for customers in event.results.values()
            for customer in customers
        )
        assert len(finished) == len(ids) and set(finished.values()) == {1}
        return len(ids)
