"""SQLite's one-machine sync jobs (issue 11, part 3), on a real SQLite file: the local job table's rules
(claim order, one job per queue at a time, one claimer per job, give_back after a delay, fail keeps the row,
a dead pid's job of this host given back), LocalJobWorker running real jobs against the sandbox (to done, a
stopped job given back, a job whose store was removed failed with its reason), and the pickup of queues a
dead process left (one resume job for a registered store's queue; none for a done queue, a queue with a job
pending or an unregistered store)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import pytest
import structlog

from domain.queue_terms import QueueOptions
from infrastructure.adapters.jobstats import JobStats
from infrastructure.adapters.leases import QueueLeases
from infrastructure.adapters.localjobs import FAILED, RUNNING, WAITING, LocalJob, LocalJobs
from infrastructure.adapters.secrets import SecretKey
from infrastructure.sandbox import RunningSandbox
from infrastructure.sandbox.config import Faults
from infrastructure.services.localjobs import LocalJobWorker, LocalSyncJobs
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.metrics import JobFigures
from infrastructure.wiring import Services, migrate, open_services
from projections import queries
from tests.support.services import FAST, run_sync
from tests.support.waiting import wait_until
from tests.support.workers import QUICK, WorkerThread, running


class Clock:
    """An injected clock (epoch seconds) a test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(sqlite_url: str) -> DatabaseConfig:
    config = DatabaseConfig.from_url(sqlite_url)
    migrate(config)
    return config


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(database: DatabaseConfig, clock: Clock) -> Iterator[LocalJobs]:
    jobs = LocalJobs(database, clock=clock)
    yield jobs
    jobs.close()


def defer(table: LocalJobs, queue_id: UUID, action: str = "start") -> int:
    return table.defer(action, "acme", queue_id, "ops", UUID(int=7))


def claimed(table: LocalJobs, pid: int = 4242) -> int | None:
    job = table.claim("worker (tests)", pid)
    return None if job is None else job.job_id


def job_of(table: LocalJobs, job_id: int) -> LocalJob:
    [job] = [row for row in table.list() if row.job_id == job_id]
    return job


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ----- the table's rules --------------------------------------------------------------------------------


def test_jobs_are_claimed_oldest_first_and_one_per_queue_at_a_time(table: LocalJobs) -> None:
    first_queue, second_queue = uuid4(), uuid4()
    a1 = defer(table, first_queue)
    a2 = defer(table, first_queue, "resume")
    b1 = defer(table, second_queue)
    assert claimed(table) == a1
    assert claimed(table) == b1  # a2 waits: its queue has a1 running
    assert claimed(table) is None
    assert job_of(table, a2).status == WAITING and table.pending_for(first_queue)
    table.finish(a1)
    assert a1 not in [job.job_id for job in table.list()]  # a finished job is deleted
    assert claimed(table) == a2
    running = job_of(table, a2)
    assert running.status == RUNNING and running.attempts == 1 and running.holder == "worker (tests)"
    assert running.pid == 4242 and running.host == table.host and running.started_at is not None


def test_a_later_job_of_a_queue_waits_for_an_earlier_one_that_waits(table: LocalJobs, clock: Clock) -> None:
    queue_id = uuid4()
    first = defer(table, queue_id)
    second = defer(table, queue_id, "resume")
    assert claimed(table) == first
    table.give_back(first, delay_s=30)  # waiting again, not before 30 s
    assert claimed(table) is None  # the second is not taken ahead of it
    clock.now += 30
    assert claimed(table) == first and job_of(table, second).status == WAITING


def test_a_second_claimer_gets_nothing_of_a_job_another_took(database: DatabaseConfig) -> None:
    LocalJobs(database).defer("start", "acme", uuid4(), "ops", UUID(int=7))
    claimers = [LocalJobs(database) for _ in range(6)]  # each its own connection, as processes have
    start = threading.Barrier(len(claimers))
    won: list[LocalJob | None] = [None] * len(claimers)

    def claim(index: int) -> None:
        start.wait()
        won[index] = claimers[index].claim(f"worker {index}", 1000 + index)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(claimers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        winners = [job for job in won if job is not None]
        assert len(winners) == 1, won
        [job] = claimers[0].list()
        assert job.status == RUNNING and job.attempts == 1 and job.holder == winners[0].holder
        assert claimers[1].claim("late", 99) is None
    finally:
        for claimer in claimers:
            claimer.close()


def test_give_back_waits_out_its_delay_on_the_injected_clock(table: LocalJobs, clock: Clock) -> None:
    job_id = defer(table, uuid4())
    assert claimed(table) == job_id
    table.give_back(job_id, delay_s=12.5)
    back = job_of(table, job_id)
    assert back.status == WAITING and back.holder is None and back.pid is None and back.host is None
    clock.now += 12.4
    assert claimed(table) is None
    clock.now += 0.1
    assert claimed(table) == job_id and job_of(table, job_id).attempts == 2


def test_a_failed_job_keeps_its_row_and_reason_and_blocks_nothing(table: LocalJobs) -> None:
    queue_id = uuid4()
    failing = defer(table, queue_id)
    later = defer(table, queue_id, "resume")
    assert claimed(table) == failing
    table.fail(failing, "no such store: 0000")
    failed = job_of(table, failing)
    assert failed.status == FAILED and failed.error == "no such store: 0000" and failed.holder is None
    assert [job.job_id for job in table.list((FAILED,))] == [failing]
    assert claimed(table) == later  # the failed one is not run again, nor does it hold its queue
    table.finish(later)
    assert not table.pending_for(queue_id)
    assert [job.job_id for job in table.list()] == [failing]  # kept until someone deals with it
    table.fail(defer(table, uuid4()), "x" * 5000)
    assert {len(job.error or "") for job in table.list((FAILED,))} == {len("no such store: 0000"), 1000}


def test_reset_dead_gives_back_a_dead_pids_job_of_this_host_only(database: DatabaseConfig) -> None:
    here = LocalJobs(database, host="host-a", alive=lambda pid: pid != 111)
    there = LocalJobs(database, host="host-b", alive=lambda pid: False)
    try:
        dead_here = here.defer("start", "acme", uuid4(), "ops", UUID(int=7))
        alive_here = here.defer("start", "acme", uuid4(), "ops", UUID(int=7))
        dead_there = here.defer("start", "acme", uuid4(), "ops", UUID(int=7))
        assert here.claim("worker 111", 111) is not None
        assert here.claim("worker 222", 222) is not None
        assert there.claim("worker 111 of b", 111) is not None  # the same pid on another machine
        with structlog.testing.capture_logs() as logs:
            assert here.reset_dead() == 1
        states = {job.job_id: (job.status, job.pid, job.host) for job in here.list()}
        assert states == {
            dead_here: (WAITING, None, None),
            alive_here: (RUNNING, 222, "host-a"),
            dead_there: (RUNNING, 111, "host-b"),  # host-b's own workers judge its pids
        }
        assert [(e["event"], e["job_id"]) for e in logs] == [("job.dead_worker_job_given_back", dead_here)]
        assert here.reset_dead() == 0
        assert [job.job_id for job in here.list((WAITING,))] == [dead_here]
    finally:
        here.close()
        there.close()


# ----- the worker, against the sandbox -------------------------------------------------------------------


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate()


@pytest.fixture
def lite(database: DatabaseConfig) -> Iterator[Services]:
    with open_services(database) as opened:
        yield opened


def register(services: Services, key: SecretKey, sandbox: RunningSandbox, org: str = "acme") -> UUID:
    registry = services.store_registry(key, FAST)
    added = asyncio.run(
        registry.add(org, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, None, "ops")
    )
    return UUID(added["storeId"])


def detached_start(services: Services, store_id: UUID, url: str, **options: Any) -> tuple[UUID, int]:
    jobs = services.sync_jobs()
    assert isinstance(jobs, LocalSyncJobs)
    return jobs.start_sync(services.engine("acme", actor="ops"), store_id, url, QueueOptions(**options))


def listed(services: Services, queue_id: UUID) -> list[dict[str, Any]]:
    return [job for job in services.sync_jobs().jobs() if job["queueId"] == str(queue_id)]


def state(services: Services, queue_id: UUID) -> str | None:
    services.catch_up()
    status = queries.queue_status(services.projections, "acme", queue_id)
    return None if status is None else str(status["state"])


@contextmanager
def worker_running(services: Services, key: SecretKey) -> Iterator[WorkerThread[LocalJobWorker]]:
    """SQLite's worker, as `wcsync worker` makes it, running (tests.support.workers)."""
    worker = services.job_worker(key, FAST, QUICK)
    assert isinstance(worker, LocalJobWorker)
    with running(worker) as started:
        yield started


@pytest.mark.sandbox(customers=150)
def test_the_worker_runs_a_detached_start_to_done(
    lite: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(lite, key, sandbox)
    queue_id, job_id = detached_start(lite, store_id, sandbox.url)
    assert state(lite, queue_id) == "draft"
    [job] = listed(lite, queue_id)
    assert (job["jobId"], job["status"], job["action"], job["attempts"]) == (job_id, "waiting", "start", 0)
    with worker_running(lite, key):
        wait_until(lambda: state(lite, queue_id) == "done")
        wait_until(lambda: not listed(lite, queue_id))  # finished: deleted
    queue = lite.app.get_queue(queue_id)
    assert queue.lines.count("done") == 150 and queue.process_count == 1
    ids = [c["woo_customer_id"] for c in queries.customers(lite.projections, "acme", sandbox.url)]
    assert sorted(ids) == sorted(sandbox.store.customer_ids())
    assert lite.queue_leases().lease_of(queue_id) is None  # released


@pytest.mark.sandbox(customers=400, faults=Faults(latency_ms=20))
def test_a_stopped_worker_gives_its_job_back_and_the_next_finishes_it(
    lite: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(lite, key, sandbox)
    # A batch delay: each batch is saved on its own (pages are otherwise saved together, 500 lines at a
    # time), so the worker is stopped mid-run.
    queue_id, job_id = detached_start(
        lite, store_id, sandbox.url, per_page=20, batch_size=10, batch_delay_ms=30
    )
    with worker_running(lite, key) as first:
        wait_until(lambda: lite.app.get_queue(queue_id).lines.count("done") >= 30)
        [job] = listed(lite, queue_id)
        assert job["status"] == "running" and job["workerId"] == first.worker.holder
        assert [w["queues"] for w in lite.sync_jobs().workers()] == [[str(queue_id)]]
        first.stop()
    queue = lite.app.get_queue(queue_id)
    assert queue.state == "processing" and queue.lines.count("done") < 400
    [job] = listed(lite, queue_id)
    assert (job["jobId"], job["status"], job["attempts"], job["workerId"]) == (job_id, "waiting", 1, None)
    assert lite.queue_leases().lease_of(queue_id) is None  # the stopped run let go of its queue

    with worker_running(lite, key):
        wait_until(lambda: state(lite, queue_id) == "done")
        wait_until(lambda: not listed(lite, queue_id))
    done = lite.app.get_queue(queue_id)
    assert done.lines.count("done") == 400 and done.process_count == 2
    customers = queries.customers(lite.projections, "acme", sandbox.url)
    assert len(customers) == 400 == len({c["woo_customer_id"] for c in customers})


@pytest.mark.sandbox(customers=10)
def test_a_job_whose_store_was_removed_fails_with_the_reason_logged(
    lite: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(lite, key, sandbox)
    queue_id, job_id = detached_start(lite, store_id, sandbox.url)
    lite.store_registry(key, None).remove("acme", store_id, "ops")
    with structlog.testing.capture_logs() as logs, worker_running(lite, key):
        wait_until(lambda: [j["status"] for j in listed(lite, queue_id)] == ["failed"])
    [failed] = LocalJobs(lite.database).list((FAILED,))
    assert failed.job_id == job_id and failed.error and str(store_id) in failed.error, failed
    [event] = [e for e in logs if e["event"] == "job.failed"]
    assert event["job_id"] == job_id and event["error"] == failed.error and event["queue_id"] == str(queue_id)
    assert state(lite, queue_id) == "draft"  # nothing ran


# ----- queues a dead process left ------------------------------------------------------------------------


def abandon(services: Services, queue_id: UUID, org: str = "acme") -> None:
    """Leave ``queue_id`` leased to a process of this host that has died (as a SIGKILLed server does)."""
    leases = QueueLeases(services.database, pid=dead_pid())
    leases.acquire(queue_id, org, "pid gone@here")
    leases.close()
    assert queue_id in [lease.queue_id for lease in services.queue_leases().stale_leases()]


def draft(services: Services, url: str) -> UUID:
    return services.engine("acme", actor="ops").create_draft(url, QueueOptions())


@pytest.mark.sandbox(customers=40)
def test_a_stale_lease_of_a_registered_stores_queue_gets_exactly_one_resume_job(
    lite: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(lite, key, sandbox)
    queue_id = draft(lite, sandbox.url)
    abandon(lite, queue_id)
    with structlog.testing.capture_logs() as logs:
        assert lite.pickup_abandoned(key) == [queue_id]
    [job] = listed(lite, queue_id)
    assert (job["action"], job["status"], job["org"]) == ("resume", "waiting", "acme")
    [row] = LocalJobs(lite.database).list()
    assert row.store_id == store_id and row.actor == "wcsync"
    assert "jobs.abandoned_queue_picked_up" in [e["event"] for e in logs]
    assert lite.pickup_abandoned(key) == []  # a job is pending now: not a second one
    assert len(listed(lite, queue_id)) == 1

    with worker_running(lite, key):  # the job takes the dead process's lease over and finishes the queue
        wait_until(lambda: state(lite, queue_id) == "done")
        wait_until(lambda: not listed(lite, queue_id))
    assert lite.app.get_queue(queue_id).lines.count("done") == 40


@pytest.mark.sandbox(customers=5)
def test_no_resume_job_for_a_done_queue_or_one_with_a_job_pending(
    lite: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(lite, key, sandbox)
    done = run_sync(lite, sandbox).queue_id
    abandon(lite, done)
    assert lite.pickup_abandoned(key) == []
    assert listed(lite, done) == []

    pending, _ = detached_start(lite, store_id, sandbox.url)
    abandon(lite, pending)
    assert lite.pickup_abandoned(key) == []
    assert [j["action"] for j in listed(lite, pending)] == ["start"]  # only its own start job


@pytest.mark.sandbox(customers=5)
def test_no_resume_job_for_an_unregistered_store_and_the_log_says_what_to_do(
    lite: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    register(lite, key, sandbox, org="other")  # another org's registration is not acme's
    queue_id = draft(lite, sandbox.url)
    abandon(lite, queue_id)
    with structlog.testing.capture_logs() as logs:
        assert lite.pickup_abandoned(key) == []
    assert listed(lite, queue_id) == []
    [left] = [e for e in logs if e["event"] == "jobs.abandoned_queue_left"]
    assert left["queue_id"] == str(queue_id) and f"wcsync resume {queue_id}" in left["advice"]
    assert sandbox.consumer_secret not in repr(logs)


# ----- what /metrics reads of them ---------------------------------------------------------------------


def test_the_metrics_figures_count_local_jobs_and_see_a_worker_by_its_lease(
    database: DatabaseConfig, table: LocalJobs
) -> None:
    stats = JobStats(database)
    try:
        assert stats.read() == JobFigures()
        running_queue = uuid4()
        defer(table, running_queue)
        defer(table, uuid4())
        defer(table, uuid4())
        job = table.claim("worker (pid 1@test)", 1)
        assert job is not None and job.queue_id == running_queue
        leases = QueueLeases(database, pid=1, host="elsewhere")
        try:
            leases.acquire(running_queue, "acme", "worker (pid 1@test)")
            figures = stats.read()
        finally:
            leases.close()
        assert (figures.waiting, figures.running) == (2, 1)
        assert figures.oldest_waiting_age_s >= 0.0
        assert list(figures.heartbeat_age_s) == ["worker (pid 1@test)"]
    finally:
        stats.close()
