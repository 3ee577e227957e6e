"""An event a projection cannot apply is quarantined and the projection moves on, for every org's sake.

The bad events are saved through the application as a store's data would once have been (a customer id
past 2^63, which the engine's boundary now refuses, so they are made with the aggregates directly). On
SQLite they fail with OverflowError; on PostgreSQL with "bigint out of range" (the customers' rows made by
the server, see Projection.in_database_topics) or OverflowError (COPY of the queues' lines).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import MutableMapping, Sequence
from typing import Any
from uuid import UUID

import psycopg
import pytest
import structlog

import cli.main
import infrastructure.support.logging
from domain.customer import Customer
from domain.queue import SyncQueue
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import POSTGRES
from projections import quarantine as quarantine_module
from projections import queries
from projections import runner as runner_module
from projections.base import Item, topics_of
from projections.customers import CustomersProjection
from projections.names import PROJECTION_NAMES
from projections.queues import QueuesProjection
from projections.runner import ProjectionRunner
from tests.support.aggregates import ORG, OTHER_ORG, STORE, Sync, make_record
from tests.support.digests import content_hash

BIG = 2**63 + 5  # past the largest BIGINT
OTHER_STORE = "https://other.example.com"
REGISTERED = topics_of(Customer.Registered)[0]
LINES_ADDED = topics_of(SyncQueue.LinesAdded)[0]


def head(app: SyncApplication) -> int:
    return int(app.recorder.max_notification_id() or 0)


def save_bad_customer(app: SyncApplication, sync: Sync) -> tuple[int, UUID]:
    """A customer registered with an id past 2^63 by this queue; its position and aggregate id."""
    record = make_record(BIG)
    customer = Customer(
        org_id=sync.queue.org_id,
        store_url=sync.queue.store_url,
        woo_id=BIG,
        record=record,
        digest=content_hash(record),
        queue_id=str(sync.id),
    )
    app.save_batch(customer)
    return head(app), customer.id


def save_bad_page(app: SyncApplication, sync: Sync) -> int:
    """A page of one customer whose id is past 2^63 (bypassing add_lines' checks); its position."""
    sync.pages += 1
    sync.queue._lines_added(
        page=sync.pages,
        records=[make_record(BIG)],
        unchanged=[],
        processed=[],
        body_digest=None,
        answers=None,
    )
    app.save_batch(sync.queue)
    return head(app)


def synced(app: SyncApplication, org: str, store: str, ids: Sequence[int]) -> Sync:
    sync = Sync(app, org=org, store=store)
    records = [make_record(cid) for cid in ids]
    sync.fetch(records)
    sync.process(records)
    sync.finish()
    return sync


def woo_ids(runner: ProjectionRunner, org: str) -> list[int]:
    return [row["woo_customer_id"] for row in queries.customers(runner, org)]


def statuses(runner: ProjectionRunner) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in runner.status()}


def quarantined_events(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "projections.event_quarantined"]


# ----- the reason ------------------------------------------------------------------------------------------


def test_a_reason_is_one_bounded_line_without_the_values_quoted() -> None:
    assert (
        quarantine_module.reason(OverflowError("Python int too large to convert to SQLite INTEGER"))
        == "OverflowError: Python int too large to convert to SQLite INTEGER"
    )
    quoted = quarantine_module.reason(ValueError("bad email 'jane@example.com' in \"billing\"\nrow: {...}"))
    assert quoted == "ValueError: bad email '…' in \"…\""
    assert quarantine_module.reason(KeyError()) == "KeyError"
    assert quarantine_module.reason(ValueError("can't do it")) == "ValueError: can't do it"
    long = quarantine_module.reason(ValueError("x" * 1000 + "\x00\ud800"))
    assert len(long) == quarantine_module.MAX_REASON_CHARS and long.endswith("…")
    assert quarantine_module.reason(ValueError("a\x00b\ud800c")) == "ValueError: a?b?c"


def test_only_errors_of_the_data_are_quarantinable() -> None:
    assert quarantine_module.quarantinable(OverflowError("too big"))
    assert quarantine_module.quarantinable(psycopg.errors.NumericValueOutOfRange("bigint out of range"))
    assert quarantine_module.quarantinable(psycopg.errors.UniqueViolation("duplicate key"))
    assert quarantine_module.quarantinable(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert quarantine_module.quarantinable(sqlite3.ProgrammingError("Error binding parameter 1: type"))
    # The database's or the connection's: never the event's fault.
    assert not quarantine_module.quarantinable(psycopg.errors.UndefinedTable("relation does not exist"))
    assert not quarantine_module.quarantinable(psycopg.errors.DiskFull("no space left"))
    assert not quarantine_module.quarantinable(
        sqlite3.ProgrammingError("Cannot operate on a closed database.")
    )
    assert not quarantine_module.quarantinable(sqlite3.DatabaseError("database disk image is malformed"))
    assert not quarantine_module.quarantinable(MemoryError())
    assert not quarantine_module.quarantinable(KeyboardInterrupt())


# ----- a customer id past 2^63 -----------------------------------------------------------------------------


def test_a_bad_customer_event_is_quarantined_and_every_other_event_applies(
    app: SyncApplication, runner: ProjectionRunner, database_url: str
) -> None:
    sync = Sync(app)
    records = [make_record(cid) for cid in range(1, 7)]
    sync.fetch(records)
    sync.process(records[:3])
    bad_position, bad_customer = save_bad_customer(app, sync)
    sync.process(records[3:])  # after it, in the same batch of the catch-up
    sync.finish()
    other = synced(app, OTHER_ORG, OTHER_STORE, range(1, 5))
    if database_url.startswith("postgresql"):
        assert runner.in_database  # the customers' rows are made by PostgreSQL: "bigint out of range"

    with structlog.testing.capture_logs() as logs:
        applied = runner.catch_up()  # one batch holds everything: the bad event amid good ones

    assert applied == head(app)
    listed = runner.quarantined()
    assert [(q["projection"], q["position"], q["topic"]) for q in listed] == [
        ("customers", bad_position, REGISTERED)
    ]
    (entry,) = listed
    assert entry["originatorId"] == str(bad_customer)
    assert entry["originatorVersion"] == 1
    assert entry["queueId"] == str(sync.id)
    assert entry["eventAt"] is not None
    expected_reason = (
        'NumericValueOutOfRange: value "…" is out of range for type bigint'
        if database_url.startswith("postgresql")
        else "OverflowError: Python int too large to convert to SQLite INTEGER"
    )
    assert entry["reason"] == expected_reason
    assert str(BIG) not in repr(listed)

    # Everything else applied: the customers after the bad one, the queues, the other org.
    assert woo_ids(runner, ORG) == [1, 2, 3, 4, 5, 6]
    assert woo_ids(runner, OTHER_ORG) == [1, 2, 3, 4]
    state = statuses(runner)
    assert {name: (row["lag"], row["quarantined"]) for name, row in state.items()} == {
        "customers": (0, 1),
        "queues": (0, 0),
        "activity": (0, 0),
        "ledger": (0, 0),
        "stores": (0, 0),
        "webhooks": (0, 0),
    }
    other_status = queries.queue_status(runner, OTHER_ORG, other.id)
    assert other_status is not None
    assert (other_status["state"], other_status["doneCount"]) == ("done", 4)
    assert [q["queueId"] for q in queries.list_queues(runner, OTHER_ORG)] == [str(other.id)]
    mine = queries.queue_status(runner, ORG, sync.id)
    assert mine is not None
    assert (mine["state"], mine["doneCount"]) == ("done", 6)

    # One log line for it, naming the projection and the position; nothing of the record.
    (line,) = quarantined_events(logs)
    assert (line["log_level"], line["projection"], line["position"], line["reason"]) == (
        "error",
        "customers",
        bad_position,
        expected_reason,
    )
    assert str(BIG) not in repr(logs)
    assert "example.com" not in repr(line)

    # The queue's activity says so, at the event's place; the other org's queue's does not.
    activity = queries.activity(runner, ORG, sync.id)
    flagged = [row for row in activity if row["activityType"] == "projection_quarantined"]
    assert len(flagged) == 1
    assert flagged[0]["status"] == "error"
    assert "customers projection" in flagged[0]["message"]
    assert f"event {bad_position}" in flagged[0]["message"]
    assert expected_reason in flagged[0]["message"]
    assert flagged[0]["details"]["position"] == bad_position
    assert flagged[0]["createdAt"] == entry["eventAt"]
    assert [row["activityType"] for row in activity][
        -1
    ] == "queue_done"  # ordered by time, the bad one inside
    assert not [r for r in queries.activity(runner, OTHER_ORG, other.id) if r["status"] == "error"]
    # Org isolation in the query itself: another org naming this queue sees none of it.
    assert queries.activity(runner, OTHER_ORG, sync.id) == []

    # Nothing is applied twice nor quarantined twice.
    assert runner.catch_up() == 0
    assert len(runner.quarantined()) == 1

    # A rebuild retries it: still failing, it is recorded again, once.
    live_customers = queries.customers(runner, ORG)
    runner.rebuild(["customers"])
    assert [(q["projection"], q["position"]) for q in runner.quarantined()] == [("customers", bad_position)]
    assert queries.customers(runner, ORG) == live_customers


def test_a_fix_in_code_heals_the_quarantine_on_rebuild(
    app: SyncApplication, runner: ProjectionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = Sync(app)
    records = [make_record(cid) for cid in range(1, 4)]
    sync.fetch(records)
    bad_position, _ = save_bad_customer(app, sync)
    sync.process(records)
    sync.finish()
    runner.catch_up(batch_size=5)
    assert [q["position"] for q in runner.quarantined()] == [bad_position]

    original = CustomersProjection.apply

    def fixed(self: CustomersProjection, db: Database, suffix: str, items: Sequence[Item]) -> None:
        # "The fix": ids past the column's range are kept out of the table (the event stays in the log).
        kept = [(nid, e) for nid, e in items if nid != bad_position and getattr(e, "woo_id", 0) < 2**63]
        if kept:
            original(self, db, suffix, kept)

    monkeypatch.setattr(CustomersProjection, "apply", fixed)
    runner.rebuild(["customers"])

    assert runner.quarantined() == []
    assert statuses(runner)["customers"]["quarantined"] == 0
    assert woo_ids(runner, ORG) == [1, 2, 3]


# ----- a failure you control -------------------------------------------------------------------------------


class Flag:
    on = True


@pytest.fixture
def failing_fetch_finished(monkeypatch: pytest.MonkeyPatch) -> type[Flag]:
    """The queues projection refuses FetchFinished events while the flag is on (a bug, say)."""
    original = QueuesProjection.apply

    def apply(self: QueuesProjection, db: Database, suffix: str, items: Sequence[Item]) -> None:
        if Flag.on and any(isinstance(e, SyncQueue.FetchFinished) for _, e in items):
            raise ValueError("cannot apply 'jane@example.com' today")
        original(self, db, suffix, items)

    Flag.on = True
    monkeypatch.setattr(QueuesProjection, "apply", apply)
    return Flag


def fetch_finished(runner: ProjectionRunner, queue_id: UUID) -> Any:
    with runner.db.reading() as db:
        rows = db.fetchall(
            "SELECT fetch_finished FROM woo_customer_sync_queue WHERE id = %s", [db.value("uuid", queue_id)]
        )
    return bool(rows[0][0])


def test_the_failing_events_alone_are_set_aside_and_a_version_bump_retries_them(
    app: SyncApplication,
    runner: ProjectionRunner,
    failing_fetch_finished: type[Flag],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = synced(app, ORG, STORE, range(1, 11))
    second = synced(app, OTHER_ORG, OTHER_STORE, range(1, 4))
    finished = [
        n.id for n in app.recorder.select_notifications(1, 1000, topics=topics_of(SyncQueue.FetchFinished))
    ]
    assert len(finished) == 2

    runner.catch_up(batch_size=1000)

    assert [(q["projection"], q["position"], q["reason"]) for q in runner.quarantined()] == [
        ("queues", finished[0], "ValueError: cannot apply '…' today"),
        ("queues", finished[1], "ValueError: cannot apply '…' today"),
    ]
    assert [q["queueId"] for q in runner.quarantined()] == [str(first.id), str(second.id)]
    # Every other event of the batch applied: the queues are done, their lines too.
    for sync, org, done in ((first, ORG, 10), (second, OTHER_ORG, 3)):
        status = queries.queue_status(runner, org, sync.id)
        assert status is not None
        assert (status["state"], status["doneCount"]) == ("done", done)
        assert not fetch_finished(runner, sync.id)
    assert statuses(runner)["queues"]["quarantined"] == 2

    # Fixed, and the projection's version bumped: the next catch-up rebuilds it, and the quarantine heals.
    failing_fetch_finished.on = False
    monkeypatch.setattr(QueuesProjection, "version", QueuesProjection.version + 1)
    runner.catch_up()

    assert runner.quarantined() == []
    assert statuses(runner)["queues"]["quarantined"] == 0
    assert statuses(runner)["queues"]["version"] == QueuesProjection.version
    assert fetch_finished(runner, first.id) and fetch_finished(runner, second.id)
    assert not [r for r in queries.activity(runner, ORG, first.id) if r["status"] == "error"]


def test_the_happy_path_takes_no_savepoint(
    app: SyncApplication, runner: ProjectionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced(app, ORG, STORE, range(1, 21))

    def refused(self: Database) -> Any:
        raise AssertionError("a savepoint on the happy path")

    monkeypatch.setattr(Database, "savepoint", refused)
    assert runner.catch_up(batch_size=7) == head(app)
    assert woo_ids(runner, ORG) == list(range(1, 21))
    assert all(row["quarantined"] == 0 for row in runner.status())


def test_errors_of_the_database_are_not_quarantined(
    app: SyncApplication, runner: ProjectionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced(app, ORG, STORE, range(1, 4))
    before = {name: row["position"] for name, row in statuses(runner).items()}
    transient = (
        psycopg.OperationalError("server closed the connection")
        if runner.db.dialect == POSTGRES
        else sqlite3.OperationalError("database is locked")
    )
    schema = (
        psycopg.errors.UndefinedTable("relation does not exist")
        if runner.db.dialect == POSTGRES
        else sqlite3.DatabaseError("database disk image is malformed")
    )
    for error in (transient, schema):

        def broken(self: CustomersProjection, db: Database, suffix: str, items: Sequence[Item]) -> None:
            raise error  # noqa: B023 - called within this iteration

        monkeypatch.setattr(CustomersProjection, "apply", broken)
        with pytest.raises(type(error)):
            runner.catch_up(["customers"])
        assert runner.quarantined() == []
        assert statuses(runner)["customers"]["position"] == before["customers"]


# ----- a queue event, in a child process -------------------------------------------------------------------


def test_a_bad_queue_event_is_quarantined_in_a_child_process_and_logged_by_the_parent(
    app: SyncApplication, runner: ProjectionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = Sync(app)
    good = [make_record(cid) for cid in range(1, 6)]
    bad_position = save_bad_page(app, sync)
    sync.fetch(good)  # page 2 onwards
    sync.process(good)  # the bad line stays draft in the aggregate: the queue is left processing
    other = synced(app, OTHER_ORG, OTHER_STORE, range(1, 4))
    # Far enough behind for every group of projections but the first (customers) to run in a child.
    monkeypatch.setattr(runner_module, "PARALLEL_MIN_LAG", 1)
    children: list[Any] = []
    real = runner_module._GroupProcess

    def spawned(*args: Any) -> Any:
        child = real(*args)
        children.append(child)
        return child

    monkeypatch.setattr(runner_module, "_GroupProcess", spawned)

    with structlog.testing.capture_logs() as logs:
        assert runner.catch_up() == head(app)

    assert children  # the queues were projected in another process
    assert [(q["projection"], q["position"], q["topic"]) for q in runner.quarantined()] == [
        ("queues", bad_position, LINES_ADDED)
    ]
    assert runner.quarantined()[0]["reason"].startswith("OverflowError: ")
    assert [(e["projection"], e["position"]) for e in quarantined_events(logs)] == [("queues", bad_position)]
    status = queries.queue_status(runner, ORG, sync.id)
    assert status is not None
    assert (status["totalCount"], status["doneCount"]) == (5, 5)
    other_status = queries.queue_status(runner, OTHER_ORG, other.id)
    assert other_status is not None and other_status["doneCount"] == 3
    flagged = [
        r for r in queries.activity(runner, ORG, sync.id) if r["activityType"] == "projection_quarantined"
    ]
    assert [r["details"]["projection"] for r in flagged] == ["queues"]
    assert statuses(runner)["queues"]["quarantined"] == 1
    assert all(row["lag"] == 0 for row in runner.status())


# ----- the command line ------------------------------------------------------------------------------------


def test_projections_status_counts_and_lists_the_quarantined_events(
    app: SyncApplication,
    runner: ProjectionRunner,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sync = Sync(app)
    bad_position, bad_customer = save_bad_customer(app, sync)
    runner.catch_up()
    # Leave structlog as the tests have it (cli.main imports configure_logging once the arguments parse).
    monkeypatch.setattr(infrastructure.support.logging, "configure_logging", lambda **_: None)

    assert cli.main.main(["projections", "status", "--database-url", database_url]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert any(line.startswith("customers ") and line.endswith("quarantined 1") for line in lines)
    assert any(line.startswith("queues ") and line.endswith("quarantined 0") for line in lines)
    listed = [line for line in lines if f"position {bad_position} " in line and str(bad_customer) in line]
    assert len(listed) == 1 and "customers" in listed[0] and REGISTERED in listed[0]
    assert str(BIG) not in text

    assert cli.main.main(["projections", "status", "--json", "--database-url", database_url]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(PROJECTION_NAMES)
    assert rows["customers"]["quarantined"] == 1
    assert [q["position"] for q in rows["customers"]["quarantinedEvents"]] == [bad_position]
    assert rows["ledger"]["quarantinedEvents"] == []
