"""Queue leases (adapters/leases.py) on both backends: a live lease refuses a second holder and names it, a
stale heartbeat or a dead process of this host gives the queue up, release only drops our own row, and the
engine holds the lease around every run and force-done (issue 11, build 3)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from domain.errors import EXIT_USAGE, SyncError
from domain.queue_terms import QueueOptions
from infrastructure.adapters.leases import LEASE_STALE_S, QueueLeases, StaleLease, default_holder
from infrastructure.adapters.migrations import QUEUE_LEASES_TABLE, Connection, apply_migrations
from infrastructure.sandbox import RunningSandbox
from infrastructure.services.sync import RunStopped, SyncOutcome
from infrastructure.support.config import DatabaseConfig, StoreSettings
from infrastructure.support.errors import QueueBusyError, QueueNotFoundError
from infrastructure.wiring import Services
from tests.support.paths import ROOT
from tests.support.services import FAST, run_sync, store_of
from tests.support.waiting import wait_until

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(database_url: str) -> DatabaseConfig:
    config = DatabaseConfig.from_url(database_url)
    apply_migrations(config)
    return config


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def here(database: DatabaseConfig, clock: Clock) -> Iterator[QueueLeases]:
    """This process's leases, on the test's clock."""
    leases = QueueLeases(database, clock=clock)
    yield leases
    leases.close()


@pytest.fixture
def elsewhere(database: DatabaseConfig, clock: Clock) -> Iterator[QueueLeases]:
    """The leases of a process on another machine (its pid means nothing here), on the same clock."""
    leases = QueueLeases(database, clock=clock, host="host-b", pid=4242)
    yield leases
    leases.close()


def _rows(database: DatabaseConfig) -> list[tuple[object, ...]]:
    conn = Connection(database)
    try:
        return conn.execute(f"SELECT queue_id, holder FROM {QUEUE_LEASES_TABLE} ORDER BY holder")
    finally:
        conn.close()


# ----- the lease itself --------------------------------------------------------------------------------------


def test_a_live_lease_refuses_a_second_holder_in_one_line_naming_it_and_since(
    here: QueueLeases, elsewhere: QueueLeases
) -> None:
    queue_id = uuid.uuid4()
    elsewhere.acquire(queue_id, "acme", "worker 17 (pid 4242@host-b)")
    with pytest.raises(QueueBusyError) as raised:
        here.acquire(queue_id, "acme", "pid 1@host-a")
    busy = raised.value
    assert str(busy) == (
        f"queue {queue_id} is being processed by worker 17 (pid 4242@host-b) since 2027-01-15T08:00:00Z; "
        "wait for it to finish (a lease left by a process that died is taken over after 30 s)"
    )
    assert busy.exit_code == EXIT_USAGE and busy.http_status == 409 and busy.error_code == "queue_busy"
    assert busy.http_details() == {"holder": "worker 17 (pid 4242@host-b)", "since": "2027-01-15T08:00:00Z"}
    assert busy.org_id == "acme"


def test_this_processs_own_lease_is_live_too(here: QueueLeases, database: DatabaseConfig) -> None:
    """Two runs of one queue in one process (two engines of a server): the second is refused."""
    queue_id = uuid.uuid4()
    here.acquire(queue_id, "acme", default_holder())
    other = QueueLeases(database)
    try:
        with pytest.raises(QueueBusyError, match=f"by {default_holder()} since"):
            other.acquire(queue_id, "acme", "another run")
        assert other.stale_leases() == []
    finally:
        other.close()


def test_a_released_lease_frees_the_queue_at_once(here: QueueLeases, elsewhere: QueueLeases) -> None:
    queue_id = uuid.uuid4()
    with elsewhere.acquire(queue_id, "acme", "first"):
        assert elsewhere.lease_of(queue_id) is not None
    assert elsewhere.lease_of(queue_id) is None
    lease = here.acquire(queue_id, "acme", "second")
    assert lease.holder == "second" and not lease.lost


def test_a_stale_heartbeat_is_taken_over_and_the_old_holder_can_no_longer_touch_it(
    here: QueueLeases, elsewhere: QueueLeases, clock: Clock, database: DatabaseConfig
) -> None:
    queue_id = uuid.uuid4()
    lost = threading.Event()
    old = elsewhere.acquire(queue_id, "acme", "the old holder", on_lost=lost.set)
    clock.now += LEASE_STALE_S - 1
    with pytest.raises(QueueBusyError):
        here.acquire(queue_id, "acme", "too early")
    assert here.stale_leases() == []

    clock.now += 2  # 31 s without a heartbeat
    assert here.stale_leases() == [StaleLease(queue_id, "acme", "the old holder")]
    new = here.acquire(queue_id, "acme", "the new holder")
    assert new.since == datetime.fromtimestamp(clock.now, UTC).isoformat(timespec="microseconds")

    # The old holder's heartbeat finds the lease gone from it, and its release leaves the new one alone.
    assert not lost.is_set()
    assert old.heartbeat() is False and old.lost and lost.is_set()
    old.release()
    assert _rows(database) == [(str(queue_id), "the new holder")]
    assert new.heartbeat() is True


def test_a_heartbeat_keeps_a_lease_live_past_the_stale_time(
    here: QueueLeases, elsewhere: QueueLeases, clock: Clock
) -> None:
    queue_id = uuid.uuid4()
    lease = elsewhere.acquire(queue_id, "acme", "beating")
    clock.now += 25
    assert lease.heartbeat() is True
    clock.now += 25  # 50 s after the lease was taken, 25 s after its last beat
    with pytest.raises(QueueBusyError, match="by beating since 2027-01-15T08:00:00Z"):
        here.acquire(queue_id, "acme", "waiting")


def test_the_heartbeat_thread_refreshes_every_lease_held(database: DatabaseConfig, clock: Clock) -> None:
    leases = QueueLeases(database, clock=clock, heartbeat_s=0.01)
    try:
        first, second = uuid.uuid4(), uuid.uuid4()
        leases.acquire(first, "acme", "one")
        leases.acquire(second, "globex", "two")
        clock.now += 10

        def refreshed() -> bool:
            rows = [leases.lease_of(first), leases.lease_of(second)]
            return all(row is not None and row.heartbeat_at == clock.now for row in rows)

        wait_until(refreshed)
    finally:
        leases.close()


def test_a_dead_process_on_this_host_gives_its_lease_up_at_once_but_not_one_on_another_host(
    here: QueueLeases, database: DatabaseConfig
) -> None:
    """A pid that no longer exists: on this host the lease is taken over without waiting for its heartbeat
    to go stale; on another host that pid says nothing, so the lease stays live."""
    gone = _pid_of_a_process_that_ended()
    here_dead = QueueLeases(database, pid=gone)
    there_dead = QueueLeases(database, pid=gone, host="host-b")
    try:
        mine, theirs = uuid.uuid4(), uuid.uuid4()
        here_dead.acquire(mine, "acme", f"pid {gone}@here")
        there_dead.acquire(theirs, "acme", f"pid {gone}@host-b")
        live = QueueLeases(database)
        try:
            assert live.stale_leases() == [StaleLease(mine, "acme", f"pid {gone}@here")]
            assert live.acquire(mine, "acme", "the next run").holder == "the next run"
            with pytest.raises(QueueBusyError, match=f"by pid {gone}@host-b since"):
                live.acquire(theirs, "acme", "the next run")
        finally:
            live.close()
    finally:
        here_dead.close()
        there_dead.close()


def test_the_lease_of_a_sigkilled_process_is_taken_over_at_once(
    database_url: str, database: DatabaseConfig
) -> None:
    here = QueueLeases(database)  # the real clock: the dead process's heartbeat is fresh
    queue_id = uuid.uuid4()
    code = (
        "import sys, uuid\n"
        "from infrastructure.adapters.leases import QueueLeases, default_holder\n"
        "from infrastructure.support.config import DatabaseConfig\n"
        "leases = QueueLeases(DatabaseConfig.from_url(sys.argv[1]))\n"
        "leases.acquire(uuid.UUID(sys.argv[2]), 'acme', default_holder())\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, database_url, str(queue_id)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(QueueBusyError, match=f"pid {holder.pid}@"):
            here.acquire(queue_id, "acme", "while it lives")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    try:
        # Its heartbeat is a moment old, yet the lease is ours at once.
        assert here.acquire(queue_id, "acme", "after it died").holder == "after it died"
    finally:
        here.close()


def _pid_of_a_process_that_ended() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


# ----- the engine holds it -----------------------------------------------------------------------------------


@pytest.fixture
def other_process(services: Services) -> Iterator[QueueLeases]:
    """The leases of another wcsync process (on another machine) on the services' database."""
    leases = QueueLeases(services.database, host="host-b", pid=4242)
    yield leases
    leases.close()


@pytest.mark.sandbox(customers=30, invalid=2)
def test_the_engine_refuses_a_resume_retry_and_force_done_of_a_queue_another_process_holds(
    services: Services, sandbox: RunningSandbox, other_process: QueueLeases
) -> None:
    outcome = run_sync(services, sandbox, batch_size=10)
    assert outcome.state == "failed" and services.queue_leases().lease_of(outcome.queue_id) is None
    queue_id = outcome.queue_id
    events_before = services.app.recorder.max_notification_id()
    with other_process.acquire(queue_id, "acme", "worker 3 (pid 4242@host-b)"):
        engine = services.engine("acme")
        named = r"being processed by worker 3 \(pid 4242@host-b\) since"
        with pytest.raises(QueueBusyError, match=named):
            asyncio.run(engine.resume(queue_id, store_of(sandbox), FAST))
        with pytest.raises(QueueBusyError, match=named):
            asyncio.run(engine.retry(queue_id, store_of(sandbox), FAST))
        with pytest.raises(QueueBusyError, match=named):
            engine.force_done(queue_id, "closing it")
        # Another org is told what it is told of a queue that does not exist.
        with pytest.raises(QueueNotFoundError, match=f"no queue {queue_id} in org 'globex'"):
            asyncio.run(services.engine("globex").resume(queue_id, store_of(sandbox), FAST))
    assert services.app.recorder.max_notification_id() == events_before  # nothing was written
    # Released, the queue is the engine's again (and force-done is refused only by the queue's state).
    assert services.engine("acme").force_done(queue_id, "closing it").state == "done"
    assert services.queue_leases().lease_of(queue_id) is None


@pytest.mark.sandbox(customers=30)
def test_a_run_holds_its_queues_lease_under_its_holder_until_it_ends(
    services: Services, sandbox: RunningSandbox
) -> None:
    seen: list[tuple[str, str] | None] = []
    leases = services.queue_leases()
    engine = services.engine("acme", holder="worker 9 (pid 1@host-z)")

    def saved(force: bool) -> None:
        row = leases.lease_of(queue_ids[0])
        seen.append(None if row is None else (row.holder, row.org_id))

    queue_ids: list[uuid.UUID] = []
    engine.on_saved = saved

    async def run() -> SyncOutcome:
        return await engine.start(
            store_of(sandbox), QueueOptions(batch_size=10), FAST, on_created=queue_ids.append
        )

    outcome = asyncio.run(run())
    assert outcome.state == "done"
    assert seen and set(seen) == {("worker 9 (pid 1@host-z)", "acme")}
    assert leases.lease_of(outcome.queue_id) is None


@pytest.mark.sandbox(customers=30)
def test_a_run_that_fails_releases_its_lease(services: Services, sandbox: RunningSandbox) -> None:
    outcome = run_sync(services, sandbox)
    with pytest.raises(QueueNotFoundError):
        asyncio.run(services.engine("acme").resume(uuid.uuid4(), store_of(sandbox), FAST))
    wrong_store = StoreSettings(url="http://127.0.0.1:9", consumer_key="ck", consumer_secret="cs")
    with pytest.raises(SyncError, match="pass --url with the queue's store"):
        asyncio.run(services.engine("acme").retry(outcome.queue_id, wrong_store, FAST))
    assert _rows(services.database) == []


@pytest.mark.sandbox(customers=60)
def test_a_run_whose_lease_is_taken_over_stops_after_its_batch_and_leaves_the_new_holders_lease(
    services: Services, sandbox: RunningSandbox
) -> None:
    """Our heartbeat went stale (the database out of reach, the process suspended) and another process took
    the queue over: the run's next heartbeat finds the lease gone, and the run stops instead of racing it."""
    later = QueueLeases(
        services.database, clock=lambda: time.time() + LEASE_STALE_S + 1, host="host-b", pid=7
    )
    queue_ids: list[uuid.UUID] = []
    engine = services.engine("acme")

    def first_saved(force: bool) -> None:
        row = later.lease_of(queue_ids[0])
        if row is not None and row.holder != "the new holder":
            later.acquire(queue_ids[0], "acme", "the new holder")
            services.queue_leases().heartbeat()  # what the heartbeat thread does every 5 s

    engine.on_saved = first_saved
    try:
        with pytest.raises(RunStopped):
            asyncio.run(
                engine.start(
                    store_of(sandbox),
                    QueueOptions(batch_size=10, per_page=20),
                    FAST,
                    on_created=queue_ids.append,
                )
            )
        row = later.lease_of(queue_ids[0])
        assert row is not None and row.holder == "the new holder"
    finally:
        later.close()
