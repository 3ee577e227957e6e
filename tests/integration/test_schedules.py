"""Schedules (issue 12, item 4) on real PostgreSQL and SQLite against the sandbox over sockets: two workers
start one sync per period; a period whose last scheduled queue is not done is skipped; missed periods run
once; a scheduled (complete) scan marks a customer deleted in the store deleted, a partial one never does.
Time is an injected clock the test moves, so a period passes without anyone sleeping through it."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from domain.queue_terms import Q_DONE, Q_DRAFT, Q_PROCESSING
from infrastructure.adapters.schedules import ScheduleTable
from infrastructure.adapters.secrets import SecretKey
from infrastructure.adapters.woocommerce import ClientOptions
from infrastructure.sandbox import RunningSandbox
from infrastructure.services.schedules import DueOutcome, ScheduleRunner, next_due, parse_every
from infrastructure.services.sync import RunStopped
from infrastructure.support.errors import ConfigurationError
from infrastructure.wiring import Services
from projections import queries
from tests.support.api import SETTINGS, ApiThread
from tests.support.sandbox_admin import admin
from tests.support.services import FAST, store_of
from tests.support.waiting import wait_until
from tests.support.workers import QUICK, WorkerThread, running

pytestmark = pytest.mark.sandbox(customers=250)

ORG = "acme"
START = 1_900_000_000.0  # the injected clock starts past the real one: a worker on real time sees nothing due
# Workers looking for due schedules every 50 ms.
LOOKING = dataclasses.replace(QUICK, schedule_check_s=0.05)


class Clock:
    """An injected clock (epoch seconds) the test moves; ``looks`` counts the workers' looks at it (each
    look at the due schedules reads it once, first)."""

    def __init__(self, shared: list[float]) -> None:
        self.shared = shared
        self.looks = 0

    def __call__(self) -> float:
        self.looks += 1
        return self.shared[0]


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate()


@pytest.fixture
def now() -> list[float]:
    return [START]


def register(services: Services, key: SecretKey, sandbox: RunningSandbox) -> UUID:
    registry = services.store_registry(key, FAST)
    added = asyncio.run(
        registry.add(ORG, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, None, "ops")
    )
    return UUID(added["storeId"])


def schedule_of(services: Services, store_id: UUID, now: list[float], every: str = "1h") -> dict[str, Any]:
    return services.schedules(clock=lambda: now[0], min_every_s=1).add(ORG, store_id, every, None, "ops")


@pytest.fixture
def table(services: Services) -> Iterator[ScheduleTable]:
    """The schedules as the test reads them (one connection for all its looks)."""
    opened = ScheduleTable(services.database)
    yield opened
    opened.close()


def last_queue(table: ScheduleTable, schedule_id: str) -> str | None:
    [found] = [s for s in table.listed(ORG) if str(s.schedule_id) == schedule_id]
    return None if found.last_queue_id is None else str(found.last_queue_id)


def due_at(table: ScheduleTable, schedule_id: str) -> float:
    [found] = [s for s in table.listed(ORG) if str(s.schedule_id) == schedule_id]
    return found.next_due_at


def queue_ids(services: Services) -> list[str]:
    services.catch_up()
    return [q["queueId"] for q in queries.list_queues(services.projections, ORG, limit=1000)]


def state_of(services: Services, queue_id: str | None) -> str | None:
    if queue_id is None:
        return None
    return services.app.get_queue(UUID(queue_id)).state


def mirrored(services: Services, sandbox: RunningSandbox) -> dict[int, dict[str, Any]]:
    services.catch_up()
    return {row["woo_customer_id"]: row for row in queries.customers(services.projections, ORG, sandbox.url)}


@contextmanager
def worker(
    services: Services, key: SecretKey, clock: Clock, client: ClientOptions = FAST
) -> Iterator[WorkerThread[Any]]:
    with running(services.job_worker(key, client, LOOKING, clock=clock)) as started:
        yield started


def run_period(
    services: Services, table: ScheduleTable, schedule_id: str, now: list[float], clocks: list[Clock]
) -> str:
    """Move the clock to the schedule's next due time, and wait until its sync is done and every worker has
    looked at the due schedules at least once since (so a second start of the period would be there)."""
    before = last_queue(table, schedule_id)
    now[0] = due_at(table, schedule_id)
    marks = [clock.looks for clock in clocks]

    def finished() -> str | None:
        last = last_queue(table, schedule_id)
        if last == before or state_of(services, last) != Q_DONE:
            return None
        return last if all(c.looks >= m + 2 for c, m in zip(clocks, marks, strict=True)) else None

    return wait_until(finished)


def test_two_workers_start_exactly_one_sync_per_period(
    services: Services, table: ScheduleTable, key: SecretKey, sandbox: RunningSandbox, now: list[float]
) -> None:
    store_id = register(services, key, sandbox)
    schedule = schedule_of(services, store_id, now, "10s")  # below the CLI's 1 minute: the test's minimum
    assert due_at(table, schedule["scheduleId"]) == START + 10
    clocks = [Clock(now), Clock(now)]
    with worker(services, key, clocks[0]), worker(services, key, clocks[1]):
        started = [run_period(services, table, schedule["scheduleId"], now, clocks) for _ in range(3)]
        assert len(set(started)) == 3
        assert sorted(queue_ids(services)) == sorted(started)  # one queue per period, no more
        # Between periods (the clock still at the last due time) nothing more starts, whoever looks.
        marks = [clock.looks for clock in clocks]
        wait_until(lambda: all(c.looks >= m + 2 for c, m in zip(clocks, marks, strict=True)))
        assert len(queue_ids(services)) == 3
    assert due_at(table, schedule["scheduleId"]) == START + 40
    engine_queue = services.app.get_queue(UUID(started[-1]))
    assert engine_queue.state == Q_DONE
    customers = mirrored(services, sandbox)
    assert sorted(customers) == sorted(sandbox.store.customer_ids())


def test_a_period_whose_scheduled_queue_is_not_done_is_skipped(
    services: Services, table: ScheduleTable, key: SecretKey, sandbox: RunningSandbox, now: list[float]
) -> None:
    store_id = register(services, key, sandbox)
    schedule = schedule_of(services, store_id, now)
    schedule_id = UUID(schedule["scheduleId"])
    runner = services.schedule_runner(lambda: now[0])  # no worker: its queues stay as the test leaves them

    now[0] = START + 3600
    first = runner.run_due_sync()
    assert len(first.started) == 1 and first.skipped == ()
    [queue_id] = first.started
    assert services.app.get_queue(queue_id).state == Q_DRAFT

    now[0] = START + 7200  # the next period, the draft not run yet: skipped, said in the log
    with capture_logs() as logs:
        second = runner.run_due_sync()
    assert second.started == () and second.skipped == (schedule_id,)
    [skipped] = [entry for entry in logs if entry["event"] == "schedule.skipped"]
    assert skipped["queue_id"] == str(queue_id) and "not done" in skipped["reason"]
    assert queue_ids(services) == [str(queue_id)]
    assert due_at(table, str(schedule_id)) == START + 3 * 3600  # the period is spent, not retried

    # Still processing (its run stopped after a batch): skipped as well.
    stop = threading.Event()
    stop.set()
    engine = services.engine(ORG, stop=stop)
    with pytest.raises(RunStopped):
        asyncio.run(engine.start_draft(queue_id, store_of(sandbox), FAST))
    assert services.app.get_queue(queue_id).state == Q_PROCESSING
    now[0] = START + 3 * 3600
    assert runner.run_due_sync().skipped == (schedule_id,)

    # Done: the next period starts a new sync.
    asyncio.run(services.engine(ORG).resume(queue_id, store_of(sandbox), FAST))
    assert services.app.get_queue(queue_id).state == Q_DONE
    now[0] = START + 4 * 3600
    third = runner.run_due_sync()
    assert len(third.started) == 1 and third.started[0] != queue_id
    assert last_queue(table, str(schedule_id)) == str(third.started[0])


def test_missed_periods_run_once(
    services: Services, table: ScheduleTable, key: SecretKey, sandbox: RunningSandbox, now: list[float]
) -> None:
    store_id = register(services, key, sandbox)
    schedule = schedule_of(services, store_id, now)
    runners = [services.schedule_runner(lambda: now[0]) for _ in range(2)]

    now[0] = START + 24 * 3600 + 1800  # every worker down for a day: 24 periods missed
    outcomes = [runner.run_due_sync() for runner in runners]
    assert sum(len(outcome.started) for outcome in outcomes) == 1
    assert due_at(table, schedule["scheduleId"]) == START + 25 * 3600  # the rhythm kept, once
    assert [runner.run_due_sync() for runner in runners] == [DueOutcome(), DueOutcome()]  # nothing more
    assert len(queue_ids(services)) == 1


def test_the_claim_is_taken_by_one_of_many_at_once(
    services: Services, table: ScheduleTable, key: SecretKey, sandbox: RunningSandbox, now: list[float]
) -> None:
    store_id = register(services, key, sandbox)
    schedule_of(services, store_id, now)
    runners: list[ScheduleRunner] = [services.schedule_runner(lambda: now[0]) for _ in range(4)]
    now[0] = START + 3600
    barrier = threading.Barrier(len(runners))
    started: list[int] = []

    def look(runner: ScheduleRunner) -> None:
        barrier.wait()
        started.append(len(runner.run_due_sync().started))

    threads = [threading.Thread(target=look, args=(runner,)) for runner in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(started) == [0, 0, 0, 1]
    assert len(queue_ids(services)) == 1


def test_a_schedule_of_a_removed_store_starts_nothing_and_says_so(
    services: Services, table: ScheduleTable, key: SecretKey, sandbox: RunningSandbox, now: list[float]
) -> None:
    store_id = register(services, key, sandbox)
    schedule_id = schedule_of(services, store_id, now)["scheduleId"]
    services.store_registry(key, None).remove(ORG, store_id, "ops")
    now[0] = START + 3600
    with capture_logs() as logs:
        outcome = services.schedule_runner(lambda: now[0]).run_due_sync()
    assert outcome == DueOutcome() and queue_ids(services) == []
    [missing] = [entry for entry in logs if entry["event"] == "schedule.store_missing"]
    assert missing["schedule_id"] == schedule_id and "schedule remove" in missing["advice"]
    assert due_at(table, schedule_id) == START + 7200  # the period is spent: no retry every few seconds


def delete_in_store(sandbox: RunningSandbox, customer_id: int) -> None:
    """The sandbox's admin endpoint, as a shop manager deleting a customer."""
    url = f"{sandbox.url}/_sandbox/customers/{customer_id}"
    assert url.startswith("http://127.0.0.1:")
    # S310: the scheme and host are checked just above; only the sandbox is ever opened.
    request = urllib.request.Request(url, method="DELETE")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        assert answer.status == 200


def test_a_scheduled_scan_marks_deleted_what_a_complete_scan_misses_and_a_partial_one_never(
    services: Services, table: ScheduleTable, key: SecretKey, sandbox: RunningSandbox, now: list[float]
) -> None:
    store_id = register(services, key, sandbox)
    schedule_id = schedule_of(services, store_id, now)["scheduleId"]
    clock = Clock(now)
    with worker(services, key, clock):
        run_period(services, table, schedule_id, now, [clock])
    assert len(mirrored(services, sandbox)) == 250

    gone = sandbox.store.customer_ids()[-1]  # on the third page of 100
    delete_in_store(sandbox, gone)

    capped = dataclasses.replace(FAST, max_pages=2)
    with worker(services, key, clock, client=capped):
        partial = run_period(services, table, schedule_id, now, [clock])
    queue = services.app.get_queue(UUID(partial))
    assert queue.fetch_finished and not queue.fetch_complete
    assert not mirrored(services, sandbox)[gone]["is_deleted"]  # a partial scan proves no absence

    with worker(services, key, clock):
        complete = run_period(services, table, schedule_id, now, [clock])
    assert services.app.get_queue(UUID(complete)).fetch_complete
    customers = mirrored(services, sandbox)
    assert customers[gone]["is_deleted"] and "complete scan" in customers[gone]["deleted_reason"]
    assert {i for i, c in customers.items() if not c["is_deleted"]} == set(sandbox.store.customer_ids())


def test_a_dropped_webhook_delivery_is_reconciled_by_the_next_scheduled_scan(
    services: Services, table: ScheduleTable, key: SecretKey, sandbox: RunningSandbox, now: list[float]
) -> None:
    store_id = register(services, key, sandbox)
    schedule_id = schedule_of(services, store_id, now)["scheduleId"]
    clock = Clock(now)
    with (
        ApiThread(services, dataclasses.replace(SETTINGS, secret_key=key)) as api,
        worker(services, key, clock),
    ):
        run_period(services, table, schedule_id, now, [clock])
        asyncio.run(services.store_webhooks(key, FAST).install(ORG, store_id, api.url))
        missed, pushed = sandbox.store.customer_ids()[10:12]
        admin(sandbox, "POST", "/_sandbox/deliveries/drop-next", {"count": 1})
        admin(sandbox, "PUT", f"/_sandbox/customers/{missed}", {"last_name": "Missed"})
        wait_until(lambda: _outcomes(sandbox).count("dropped") == 1 or None)
        admin(sandbox, "PUT", f"/_sandbox/customers/{pushed}", {"last_name": "Pushed"})
        # The delivered one is applied by the worker within seconds; the dropped one is not there.
        wait_until(lambda: mirrored(services, sandbox)[pushed]["last_name"] == "Pushed" or None)
        assert mirrored(services, sandbox)[missed]["last_name"] != "Missed"

        scan = run_period(services, table, schedule_id, now, [clock])
    customers = mirrored(services, sandbox)
    assert customers[missed]["last_name"] == "Missed"
    assert str(customers[missed]["last_queue_id"]) == scan  # the scheduled scan wrote it
    assert customers[pushed]["last_name"] == "Pushed"
    assert str(customers[pushed]["last_queue_id"]) != scan  # already current: the scan left it unchanged


def _outcomes(sandbox: RunningSandbox) -> list[str]:
    return [entry["outcome"] for entry in admin(sandbox, "GET", "/_sandbox/deliveries")["deliveries"]]


def test_every_and_cron_bounds() -> None:
    assert parse_every("15m") == 900 and parse_every("1h") == 3600 and parse_every("1d") == 86400
    assert parse_every("5s", min_every_s=1) == 5
    for bad in ("30s", "32d", "0m", "1.5h", "", "15 minutes"):
        with pytest.raises(ConfigurationError):
            parse_every(bad)
    assert next_due(3600, None, START, START + 10 * 3600) == START + 11 * 3600
    assert next_due(None, "0 * * * *", START, START + 1) == START + 3600 - START % 3600 + 0
