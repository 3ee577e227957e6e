"""Durable sync jobs on procrastinate (issue 11, part 3), in-process on a real PostgreSQL: migration 4
creates procrastinate's schema in the URL's schema; a detached start is a draft queue before its job runs;
a worker runs it to done; a stop gives the job back for another worker; a dead worker's job is taken up
again by the stalled-job retry; a job whose store cannot be opened fails with a clear reason."""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from uuid import UUID

import pytest

import infrastructure.services.sync as sync_service
from domain.errors import WcsyncError
from domain.queue_terms import QueueOptions
from infrastructure.adapters.migrations import Connection, applied_migrations, apply_migrations
from infrastructure.adapters.secrets import SecretKey
from infrastructure.sandbox import RunningSandbox
from infrastructure.sandbox.config import Faults
from infrastructure.services.jobs import (
    BUSY_RETRY_S,
    SyncJob,
    SyncJobs,
    WorkerSettings,
    retry_delay,
    run_kind,
)
from infrastructure.services.sync import RunStopped
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import ConfigurationError, StorageError
from infrastructure.wiring import Services, migrate
from projections import queries
from tests.support.services import FAST
from tests.support.waiting import wait_until
from tests.support.workers import QUICK, WorkerThread, worker_running


def rows(database: DatabaseConfig, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = Connection(database)
    try:
        return conn.execute(statement, params)
    finally:
        conn.close()


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate()


def register(services: Services, key: SecretKey, sandbox: RunningSandbox, org: str = "acme") -> UUID:
    registry = services.store_registry(key, FAST)
    added = asyncio.run(
        registry.add(org, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, None, "ops")
    )
    return UUID(added["storeId"])


def detached_start(services: Services, store_id: UUID, org: str = "acme", **options: Any) -> tuple[UUID, int]:
    engine = services.engine(org, actor="ops")
    url = queries.store(services.projections, org, store_id)
    assert url is not None
    return services.sync_jobs().start_sync(engine, store_id, url["url"], QueueOptions(**options))


def state(services: Services, queue_id: UUID, org: str = "acme") -> str | None:
    services.catch_up()
    status = queries.queue_status(services.projections, org, queue_id)
    return None if status is None else str(status["state"])


def jobs_of(services: Services, queue_id: UUID) -> list[dict[str, Any]]:
    return [job for job in SyncJobs(services.database).jobs() if job["queueId"] == str(queue_id)]


def fake_dead_worker(database: DatabaseConfig, job_id: int) -> int:
    """A worker that took ``job_id`` and died: its heartbeat an hour old, the job still 'doing' in its name;
    that worker's id."""
    [(dead,)] = rows(
        database,
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') RETURNING id",
    )
    rows(
        database,
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
        (dead, job_id),
    )
    return int(dead)


# ----- migration 4 -------------------------------------------------------------------------------------


def test_migration_4_creates_procrastinates_tables_in_the_urls_schema_once(postgres_url: str) -> None:
    rows(DatabaseConfig.from_url(postgres_url), "CREATE SCHEMA tenant_jobs")
    tenant = DatabaseConfig.from_url(f"{postgres_url}?schema=tenant_jobs")
    migrate(tenant)
    migrate(tenant)  # idempotent: nothing applied twice, no error
    assert apply_migrations(tenant) == []
    assert 4 in [version for version, _, _ in applied_migrations(tenant)]
    found = rows(
        tenant,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_name LIKE 'procrastinate%%' ORDER BY 2",
    )
    assert found == [
        ("tenant_jobs", "procrastinate_events"),
        ("tenant_jobs", "procrastinate_jobs"),
        ("tenant_jobs", "procrastinate_periodic_defers"),
        ("tenant_jobs", "procrastinate_workers"),
    ]


def test_migration_4_creates_nothing_on_sqlite(sqlite_url: str) -> None:
    database = DatabaseConfig.from_url(sqlite_url)
    migrate(database)
    assert 4 in [version for version, _, _ in applied_migrations(database)]
    assert rows(database, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'procrastinate%%'") == [(0,)]
    with pytest.raises(ConfigurationError, match="PostgreSQL workers"):
        SyncJobs(database)


# ----- running jobs ------------------------------------------------------------------------------------


@pytest.mark.sandbox(customers=250)
def test_a_detached_start_is_a_draft_then_a_worker_runs_it_to_done(
    pg_services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(pg_services, key, sandbox)
    queue_id, job_id = detached_start(pg_services, store_id)
    assert state(pg_services, queue_id) == "draft"  # it exists before any worker ran it
    [job] = jobs_of(pg_services, queue_id)
    assert job["jobId"] == job_id and job["status"] == "waiting" and job["action"] == "start"
    assert job["org"] == "acme" and job["attempts"] == 0
    args = rows(pg_services.database, "SELECT args::text FROM procrastinate_jobs WHERE id = %s", (job_id,))
    assert sandbox.consumer_key not in args[0][0] and sandbox.consumer_secret not in args[0][0]
    jobs = pg_services.sync_jobs()
    assert jobs.pending_for(queue_id) and not jobs.pending_for(UUID(int=9))

    with worker_running(pg_services, key):
        wait_until(lambda: state(pg_services, queue_id) == "done")
        wait_until(lambda: not jobs_of(pg_services, queue_id))  # succeeded (and deleted)
    assert not jobs.pending_for(queue_id)
    status = queries.queue_status(pg_services.projections, "acme", queue_id)
    assert status is not None and status["doneCount"] == 250 and status["processCount"] == 1
    customers = queries.customers(pg_services.projections, "acme", sandbox.url)
    assert sorted(c["woo_customer_id"] for c in customers) == sorted(sandbox.store.customer_ids())


@pytest.mark.sandbox(customers=30)
def test_the_async_api_defers_as_the_cli_does(
    pg_services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(pg_services, key, sandbox)
    jobs = pg_services.sync_jobs()

    async def defer_two() -> tuple[UUID, int, int]:
        await jobs.open_async()
        try:
            engine = pg_services.engine("acme", actor="api-user")
            queue_id, first = await jobs.start(engine, store_id, sandbox.url, QueueOptions())
            second = await jobs.defer("resume", "acme", queue_id, "api-user", store_id)
        finally:
            await jobs.close_async()
        return queue_id, first, second

    queue_id, first, second = asyncio.run(defer_two())
    assert state(pg_services, queue_id) == "draft"
    listed = jobs_of(pg_services, queue_id)
    assert [(j["jobId"], j["action"]) for j in listed] == [(first, "start"), (second, "resume")]
    with worker_running(pg_services, key):  # one lock: the start runs, then the resume finds it done
        wait_until(lambda: not jobs_of(pg_services, queue_id))
    assert state(pg_services, queue_id) == "done"
    assert pg_services.app.get_queue(queue_id).process_count == 1


@pytest.mark.sandbox(customers=600, faults=Faults(latency_ms=40))
def test_a_stopped_worker_gives_its_job_back_and_another_finishes_the_queue(
    pg_services: Services, key: SecretKey, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_id = register(pg_services, key, sandbox)
    queue_id, _ = detached_start(pg_services, store_id, per_page=20, batch_size=10)
    first = WorkerThread(pg_services.job_worker(key, FAST, QUICK))
    # The stop comes as SIGTERM's does (the worker's stop, on its loop), asked for by the run's own save
    # once 40 lines are done: mid-run however fast the machine (a test that polled for the 40 lines and
    # then stopped the worker saw the run end first, on a quick machine).
    asked = threading.Event()
    save = sync_service.SyncEngine._save

    def save_then_stop(self: sync_service.SyncEngine, run: Any) -> None:
        save(self, run)
        if not asked.is_set() and run.queue.lines.count("done") >= 40:
            asked.set()
            assert first.loop is not None
            first.loop.call_soon_threadsafe(first.worker.stop)

    monkeypatch.setattr(sync_service.SyncEngine, "_save", save_then_stop)
    first.thread.start()
    wait_until(asked.is_set)
    first.join()  # not stop(): a second stop while it gives its job back would cut that short
    queue = pg_services.app.get_queue(queue_id)
    assert queue.state == "processing" and queue.lines.count("done") < 600
    [job] = jobs_of(pg_services, queue_id)
    assert job["status"] == "waiting" and job["attempts"] == 1  # given back, not failed

    with worker_running(pg_services, key):
        wait_until(lambda: state(pg_services, queue_id) == "done")
    done = pg_services.app.get_queue(queue_id)
    assert done.lines.count("done") == 600 and done.process_count == 2
    customers = queries.customers(pg_services.projections, "acme", sandbox.url)
    assert len(customers) == 600 == len({c["woo_customer_id"] for c in customers})


@pytest.mark.sandbox(customers=120)
def test_a_dead_workers_job_is_retried_by_the_stalled_job_check(
    pg_services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(pg_services, key, sandbox)
    queue_id, job_id = detached_start(pg_services, store_id)
    database = pg_services.database
    dead = fake_dead_worker(database, job_id)
    assert jobs_of(pg_services, queue_id)[0]["status"] == "running"

    with worker_running(pg_services, key):
        wait_until(lambda: state(pg_services, queue_id) == "done", deadline_s=30)
    assert rows(database, "SELECT count(*) FROM procrastinate_workers WHERE id = %s", (dead,)) == [(0,)]


@pytest.mark.sandbox(customers=300)
def test_the_stalled_job_check_runs_while_every_slot_of_the_worker_is_busy(
    pg_services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(pg_services, key, sandbox)
    # The worker's one slot: a sync that takes a while (30 batches, 200 ms apart).
    busy_queue, _ = detached_start(pg_services, store_id, batch_size=10, batch_delay_ms=200)
    stalled_queue, stalled_job = detached_start(pg_services, store_id)
    fake_dead_worker(pg_services.database, stalled_job)
    with worker_running(pg_services, key):
        wait_until(lambda: state(pg_services, busy_queue) == "processing")
        # Given back while the slot is still taken: the check is not a job waiting for that slot.
        wait_until(
            lambda: [j["status"] for j in jobs_of(pg_services, stalled_queue)] == ["waiting"], deadline_s=15
        )
        assert state(pg_services, busy_queue) == "processing"
        wait_until(lambda: state(pg_services, stalled_queue) == "done", deadline_s=60)


@pytest.mark.sandbox(customers=10)
def test_a_job_whose_store_secret_cannot_be_opened_fails_with_the_reason(
    pg_services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(pg_services, key, sandbox)
    queue_id, _ = detached_start(pg_services, store_id)
    with worker_running(pg_services, SecretKey.generate()):  # not the key the secret was sealed with
        wait_until(lambda: [j["status"] for j in jobs_of(pg_services, queue_id)] == ["failed"])
    assert state(pg_services, queue_id) == "draft"  # nothing ran; a worker with the right key can resume it


# ----- the rules, without a database --------------------------------------------------------------------


def test_a_job_starts_a_draft_retries_what_is_still_failed_and_resumes_the_rest() -> None:
    assert run_kind("start", "draft", False) == "start"
    assert run_kind("resume", "draft", False) == "start"  # a draft whose start job was lost: started
    assert run_kind("retry", "failed", True) == "retry"
    assert run_kind("retry", "done", True) == "retry"  # the engine refuses it, as the CLI's retry is
    # A queue a stopped run left processing, with failed lines: the retry asked for retries them ...
    assert run_kind("retry", "processing", True) == "retry"
    # ... and once its first run put them back to draft and was stopped, the job taken up again resumes.
    assert run_kind("retry", "processing", False) == "resume"
    assert run_kind("resume", "processing", True) == "resume"


def test_which_failures_give_a_job_back() -> None:
    assert retry_delay(RunStopped(None, saved=True), 7) == 0.0
    assert retry_delay(asyncio.CancelledError(), 0) == 0.0
    busy = WcsyncError("busy")
    busy.error_code = "queue_busy"
    assert retry_delay(busy, 3) == BUSY_RETRY_S
    assert retry_delay(StorageError("gone"), 0) is not None
    assert retry_delay(StorageError("gone"), 99) is None
    assert retry_delay(ConfigurationError("no such store"), 0) is None


def test_a_jobs_arguments_are_checked_and_hold_no_credential() -> None:
    job = SyncJob("resume", "acme", UUID(int=1), "ops", UUID(int=2))
    assert SyncJob.from_args(job.as_args()) == job
    assert set(job.as_args()) == {"action", "org_id", "queue_id", "actor", "store_id"}
    assert job.lock == f"queue:{UUID(int=1)}"
    with pytest.raises(ConfigurationError):
        SyncJob("delete", "acme", UUID(int=1), "ops", UUID(int=2))
    with pytest.raises(ConfigurationError):
        SyncJob.from_args({"action": "start"})
    with pytest.raises(ConfigurationError):
        WorkerSettings(stalled_check_s=7)
