"""Projections against real databases: equivalence of live and rebuilt tables, crash safety, concurrent
followers, automatic rebuild, and the seed guide's SQL verbatim on PostgreSQL.

Events are made by driving the real aggregates (SyncQueue, Customer via domain.sync.sync_batch) and saved
through SyncApplication, exactly as the sync engine does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest
import structlog

from domain.customer import customer_key
from domain.lines import IdSet
from domain.queue import SyncQueue
from infrastructure.adapters.eventstore import SyncApplication, chunks
from infrastructure.adapters.projection_db import Database
from infrastructure.support.config import DatabaseConfig
from projections import queries
from projections import runner as runner_module
from projections.activity import ActivityProjection
from projections.base import topics_of
from projections.names import PROJECTION_NAMES
from projections.queues import QueuesProjection
from projections.runner import ProjectionRunner
from tests.support.aggregates import ORG, OTHER_ORG, STORE, Sync, make_record
from tests.support.paths import FIXTURE_DIR, ROOT
from tests.support.waiting import wait_until

# ----- making events with the real aggregates ------------------------------------------------------------


def sync_with_failures(app: SyncApplication, count: int = 250, bad: frozenset[int] = frozenset()) -> Sync:
    """A full sync where the ``bad`` customers fail twice (max_retries=2), then the queue is forced done."""
    bad = bad or frozenset({7, 42, 199})
    sync = Sync(app)
    sync.incident()
    records = [make_record(cid, bad=cid in bad) for cid in range(1, count + 1)]
    sync.fetch(records)
    sync.process(records)
    sync.finish()
    sync.retry(records)
    sync.finish()
    sync.force_done()
    return sync


def resync_with_changes(app: SyncApplication, count: int) -> Sync:
    """A second, clean sync of the same store where every tenth customer changed and one was deleted."""
    sync = Sync(app)
    records = [make_record(cid, revision=1 if cid % 10 == 0 else 0) for cid in range(1, count + 1)]
    sync.fetch(records[: count // 2], split=True)  # half the pages add unchanged customers done at once
    sync.fetch(records[count // 2 :])
    sync.process(records)
    sync.finish()
    gone = app.load_customers([customer_key(ORG, STORE, 3)])[customer_key(ORG, STORE, 3)]
    gone.delete("not in the store any more", sync.id)
    app.save_batch(gone)
    return sync


# ----- reading the tables ---------------------------------------------------------------------------------

TABLES = {
    "woo_customer_sync_queue": "id",
    "woo_customer_sync_queue_line": "queue_id, woo_customer_id",
    "woo_sync_activity": "id",
    "woo_customers": "customer_id",
}


def dump(runner: ProjectionRunner, suffix: str = "") -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every projection table, in key order."""
    with runner.db.reading() as db:
        return {
            table: [tuple(row) for row in db.fetchall(f"SELECT * FROM {table}{suffix} ORDER BY {order}")]
            for table, order in TABLES.items()
        }


def assert_matches_aggregate(runner: ProjectionRunner, app: SyncApplication, queue_id: UUID) -> None:
    """The queue row and its lines say what the aggregate itself says."""
    queue = app.get_queue(queue_id)
    status = queries.queue_status(runner, queue.org_id, queue_id)
    assert status is not None
    counts = queue.counts()
    assert {k: status[f"{k}Count"] for k in counts} == counts
    assert status["state"] == queue.state
    assert status["processCount"] == queue.process_count
    assert status["isActionRequired"] == queue.is_action_required
    assert status["progress"] == queue.progress
    with runner.db.reading() as db:
        rows = db.fetchall(
            "SELECT woo_customer_id, state, result, process_count, error_message FROM woo_customer_sync_queue_line "
            "WHERE queue_id = %s",
            [db.value("uuid", queue_id)],
        )
    lines = {row[0]: tuple(row[1:]) for row in rows}
    expected = {
        cid: (line.state, line.result, line.attempts, line.error) for cid, line in queue.lines.items()
    }
    assert lines == expected


def assert_counts_match_lines(runner: ProjectionRunner) -> None:
    with runner.db.reading() as db:
        mismatched = db.fetchall(
            """
            SELECT q.id FROM woo_customer_sync_queue q
            LEFT JOIN (
              SELECT queue_id, COUNT(*) AS total,
                SUM(CASE WHEN state = 'draft' THEN 1 ELSE 0 END) AS draft,
                SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS done,
                SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed,
                SUM(CASE WHEN state = 'cancelled' THEN 1 ELSE 0 END) AS cancelled,
                SUM(CASE WHEN result = 'created' THEN 1 ELSE 0 END) AS created
              FROM woo_customer_sync_queue_line GROUP BY queue_id
            ) l ON l.queue_id = q.id
            WHERE q.total_count <> COALESCE(l.total, 0) OR q.draft_count <> COALESCE(l.draft, 0)
               OR q.done_count <> COALESCE(l.done, 0) OR q.failed_count <> COALESCE(l.failed, 0)
               OR q.cancelled_count <> COALESCE(l.cancelled, 0) OR q.created_count <> COALESCE(l.created, 0)
            """
        )
    assert mismatched == []


# ----- tests ----------------------------------------------------------------------------------------------


def test_live_tables_equal_a_rebuild_row_for_row(app: SyncApplication, runner: ProjectionRunner) -> None:
    # Catch up between every step, in small batches, so the live tables are built incrementally.
    first = sync_with_failures(app, count=250)
    runner.catch_up(batch_size=7)
    second = resync_with_changes(app, count=120)
    runner.catch_up(batch_size=13)
    other = Sync(app, org=OTHER_ORG, store="https://other.example.com")
    other.fetch([make_record(cid) for cid in range(1, 31)])  # left half-processed
    runner.catch_up(batch_size=1)

    for sync in (first, second, other):
        assert_matches_aggregate(runner, app, sync.id)
    assert_counts_match_lines(runner)
    live = dump(runner)
    assert all(live.values())

    replayed = runner.rebuild()

    assert replayed == app.recorder.max_notification_id()
    assert dump(runner) == live
    statuses = {s["name"]: s for s in runner.status()}
    assert set(statuses) == set(PROJECTION_NAMES)
    assert all(
        s["lag"] == 0 and s["version"] == s["codeVersion"] and not s["rebuilding"] for s in statuses.values()
    )


def test_a_long_catch_up_in_parallel_processes_equals_one_in_order(
    app: SyncApplication, runner: ProjectionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_with_failures(app, count=250)
    resync_with_changes(app, count=120)
    runner.catch_up(batch_size=11)  # in this process, in order
    expected = dump(runner)

    monkeypatch.setattr(runner_module, "PARALLEL_MIN_LAG", 1)  # every group of projections but one in a child
    assert runner.rebuild(batch_size=11) == app.recorder.max_notification_id()
    assert dump(runner) == expected
    runner.rebuild(["customers"])  # a single group: no child
    assert dump(runner) == expected


def test_records_are_trimmed_only_when_every_reader_needs_ids_alone() -> None:
    lines_added = topics_of(SyncQueue.LinesAdded)[0]
    queues, activity = runner_module._Target(QueuesProjection()), runner_module._Target(ActivityProjection())

    class WantsRecords(QueuesProjection):
        name = "wants_records"
        record_ids_only = ()

    assert lines_added in runner_module._trimmed_topics([queues, activity])
    assert lines_added not in runner_module._trimmed_topics([queues, runner_module._Target(WantsRecords())])


def test_a_projection_that_reads_no_events_gets_a_pass_of_its_own() -> None:
    class IdsOnly(QueuesProjection):
        name = "ids_only"
        reads_events = False

    queues, activity = runner_module._Target(QueuesProjection()), runner_module._Target(ActivityProjection())
    ids_only = runner_module._Target(IdsOnly())

    groups = runner_module._groups([queues, ids_only, activity])

    assert [[t.projection.name for t in group] for group in groups] == [["ids_only"], ["queues", "activity"]]
    assert runner_module._applied(groups, [120, 80]) == 120  # the events of one log, not 200


def test_a_projection_knows_whether_it_has_applied_every_event_of_one_aggregate(
    app: SyncApplication, runner: ProjectionRunner
) -> None:
    sync = Sync(app)
    other = Sync(app)
    assert not runner.applied_all_of("queues", sync.id)  # saved, not applied yet
    runner.catch_up()
    assert runner.applied_all_of("queues", sync.id) and runner.applied_all_of("queues", other.id)
    sync.queue.record_incident("note", "info", "one more event of this queue", {})
    app.save_batch(sync.queue)
    assert not runner.applied_all_of("queues", sync.id)
    assert runner.applied_all_of("queues", other.id)  # nothing new of that one
    assert runner.applied_all_of("queues", UUID(int=1))  # no events at all: nothing to wait for
    runner.catch_up()
    assert runner.applied_all_of("queues", sync.id)


def test_queries_answer_for_the_cli(app: SyncApplication, runner: ProjectionRunner) -> None:
    sync = sync_with_failures(app, count=120, bad=frozenset({5, 77}))
    resync_with_changes(app, count=120)
    runner.catch_up()

    status = queries.queue_status(runner, ORG, sync.id)
    assert status is not None
    assert list(status) == [
        "queueId", "queueName", "orgId", "storeUrl", "state", "totalCount", "draftCount", "doneCount",
        "failedCount", "cancelledCount", "createdCount", "updatedCount", "unchangedCount", "processCount",
        "isActionRequired", "actionRequiredReason", "lastProcessDate", "createdAt", "progress",
    ]  # fmt: skip
    assert status["queueId"] == str(sync.id)
    assert (status["state"], status["totalCount"], status["doneCount"], status["cancelledCount"]) == (
        "done",
        120,
        118,
        2,
    )
    assert status["progress"] == 100.0
    assert datetime.fromisoformat(status["createdAt"]).tzinfo is not None
    json.dumps(status)

    latest = queries.queue_status(runner, ORG, None)
    assert latest is not None and latest["queueId"] != str(sync.id)
    # The re-sync: 5 and 77 created, every tenth customer updated, the rest unchanged (half of them added
    # done straight from the page).
    assert (latest["createdCount"], latest["updatedCount"], latest["unchangedCount"]) == (2, 12, 106)
    assert (latest["doneCount"], latest["draftCount"], latest["progress"]) == (120, 0, 100.0)
    assert queries.queue_status(runner, OTHER_ORG, sync.id) is None
    assert [q["queueId"] for q in queries.list_queues(runner, ORG)] == [latest["queueId"], str(sync.id)]

    log = queries.activity(runner, ORG, sync.id)
    kinds = [row["activityType"] for row in log]
    assert kinds[:3] == ["queue_created", "processing_started", "circuit_opened"]
    assert kinds.count("page_fetched") == 2
    assert kinds.count("line_failed") == 4  # two customers, two attempts each
    assert [row["message"] for row in log if row["activityType"] == "batch_processed"][:3] == [
        "Batch processed: 49 created",
        "Batch processed: 49 created",
        "Batch processed: 20 created",
    ]
    assert kinds[-1] == "forced_done"
    failures = [row["message"] for row in log if row["activityType"] == "line_failed"]
    assert failures[0].startswith("Customer 5 failed (attempt 1): invalid customer record: email")
    json.dumps(log)

    # 5 and 77 failed in the first sync and were created by the second; 3 was deleted.
    assert queries.known_customer_ids(runner, ORG, STORE) == set(range(1, 121)) - {3}
    # What a complete scan that saw these ids would mark deleted: the mirrored ones it did not see, in order
    # (the deleted 3 is not mirrored; 500 was never a customer).
    seen = IdSet([*range(1, 100), 500])
    assert list(queries.absent_customer_ids(runner, ORG, STORE, seen)) == list(range(100, 121))
    assert list(queries.absent_customer_ids(runner, ORG, STORE, IdSet())) == sorted(set(range(1, 121)) - {3})
    assert list(queries.absent_customer_ids(runner, OTHER_ORG, STORE, IdSet())) == []
    # The seen ids go a range at a time: the same answer whatever the range, holes between and inside
    # ranges, mirrored ids below the first seen one and past the last, a plain set as well as an IdSet.
    gappy = [2, 4, 5, 9, 10, 11, 50, 51, 60, 99, 100, 115]
    expected = sorted(set(range(1, 121)) - {3} - set(gappy))
    for chunk in (1, 2, 3, 5, 10_000):
        assert list(queries.absent_customer_ids(runner, ORG, STORE, IdSet(gappy), chunk=chunk)) == expected
    assert list(queries.absent_customer_ids(runner, ORG, STORE, set(gappy), chunk=2)) == expected
    # Ids beyond the table's BIGINT (an older log's, 2**63 and past 64 bits) match no row, break nothing.
    wide = IdSet([*range(1, 100), 2**63, 2**70])
    assert list(queries.absent_customer_ids(runner, ORG, STORE, wide, chunk=7)) == list(range(100, 121))
    mirrored = {c["woo_customer_id"]: c for c in queries.customers(runner, ORG, STORE)}
    assert mirrored[10]["last_name"] == "Changed10-1" and mirrored[11]["last_name"] == "Last11"
    assert mirrored[3]["is_deleted"] is True
    assert mirrored[9]["billing"]["city"] == "Springfield"
    assert mirrored[9]["date_created_gmt"] == "2024-03-01T09:00:00.000000+00:00"

    # A DatabaseConfig works as a source too.
    by_config = queries.queue_status(app.database, ORG, sync.id)
    assert by_config is not None and by_config["orgId"] == ORG


def test_catch_up_killed_mid_batch_then_restarted_gives_the_same_tables(
    app: SyncApplication, runner: ProjectionRunner, database_url: str
) -> None:
    sync_with_failures(app, count=300)
    resync_with_changes(app, count=100)
    # The child applies batches of 50 and, in the third batch, stops with its writes done and its tracking
    # not yet committed; it is killed there.
    child = textwrap.dedent(
        f"""
        import sys
        from infrastructure.support.config import DatabaseConfig
        from infrastructure.adapters.eventstore import SyncApplication
        from projections.runner import ProjectionRunner
        from projections.customers import CustomersProjection

        batches = 0
        real_apply = CustomersProjection.apply

        def apply(self, db, suffix, items):
            global batches
            real_apply(self, db, suffix, items)
            batches += 1
            if batches == 3:
                print("in-batch", flush=True)
                sys.stdin.readline()  # wait here, transaction open, until killed

        CustomersProjection.apply = apply
        runner = ProjectionRunner(SyncApplication(DatabaseConfig.from_url({database_url!r})))
        runner.catch_up(batch_size=50)
        print("finished", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in-batch"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    positions = {s["name"]: s["position"] for s in runner.status()}
    assert 0 < positions["customers"] < app.recorder.max_notification_id()

    runner.catch_up()
    restarted = dump(runner)
    runner.rebuild()
    assert dump(runner) == restarted
    assert_counts_match_lines(runner)


# One pass over the log each (the ledger reads no events and has a pass of its own): within one pass, every
# notification is applied by exactly one of the two followers, so their counts add up to the head.
@pytest.mark.parametrize(
    "names", [("queues", "activity", "customers"), ("ledger",)], ids=["read-models", "ledger"]
)
def test_two_followers_never_apply_an_event_twice(
    app: SyncApplication, database_url: str, names: tuple[str, ...]
) -> None:
    sync_with_failures(app, count=200)
    resync_with_changes(app, count=200)
    runners = [ProjectionRunner(SyncApplication(DatabaseConfig.from_url(database_url))) for _ in range(2)]
    runners[0].migrate()

    # Both runners read a batch, then meet at the barrier before either locks: they collide on every batch.
    barrier = threading.Barrier(2, timeout=30)
    original_transaction = Database.transaction

    def transaction(self: Database) -> Any:
        if threading.current_thread().name.startswith("follower") and not barrier.broken:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return original_transaction(self)

    applied: dict[int, int] = {}
    errors: list[BaseException] = []

    def follow(index: int) -> None:
        try:
            applied[index] = runners[index].catch_up(names, batch_size=100)
        except BaseException as error:  # surfaced below
            errors.append(error)
        finally:
            barrier.abort()  # the other follower goes on alone

    with pytest.MonkeyPatch.context() as patch, structlog.testing.capture_logs() as logs:
        patch.setattr(Database, "transaction", transaction)
        threads = [threading.Thread(target=follow, args=(i,), name=f"follower-{i}") for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    head = app.recorder.max_notification_id()
    # Every notification applied exactly once between the two (each batch read by both, applied by one).
    assert sum(applied.values()) == head
    assert any(entry["event"] == "projections.concurrent_update" for entry in logs)

    check = runners[0]
    check.catch_up()  # the projections this test did not race (none, or the read models for the ledger run)
    assert_counts_match_lines(check)
    live = dump(check)
    check.rebuild()
    assert dump(check) == live
    for r in runners:
        r.close()


def test_a_changed_table_definition_is_rebuilt_on_the_next_catch_up(
    app: SyncApplication, runner: ProjectionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = sync_with_failures(app, count=80)
    runner.catch_up()
    with runner.db.transaction() as db:  # a stray row that only a rebuild would remove
        db.execute("UPDATE woo_customer_sync_queue SET queue_name = 'tampered'")
    before = {s["name"]: s["version"] for s in runner.status()}

    monkeypatch.setattr(QueuesProjection, "version", QueuesProjection.version + 1)
    bumped = ProjectionRunner(app)
    try:
        bumped.catch_up()
        after = {s["name"]: s["version"] for s in bumped.status()}
        assert after == {**before, "queues": before["queues"] + 1}
        status = queries.queue_status(bumped, ORG, sync.id)
        assert status is not None and status["queueName"] == f"customers {STORE}"
        assert_matches_aggregate(bumped, app, sync.id)
    finally:
        bumped.close()


class QueueNoted(SyncQueue.Event):
    """An event type the projections do not know (as if the aggregate gained it after they were written)."""

    note: str


def test_events_of_unknown_topics_are_walked_over(app: SyncApplication, runner: ProjectionRunner) -> None:
    sync = Sync(app)
    sync.fetch([make_record(cid) for cid in range(1, 11)])
    runner.catch_up()
    sync.queue.trigger_event(QueueNoted, note="something new")
    app.save_batch(sync.queue)
    head = app.recorder.max_notification_id()

    assert runner.catch_up() == 0
    assert all(s["position"] == head for s in runner.status())
    sync.process([make_record(cid) for cid in range(1, 11)])
    assert runner.catch_up() > 0
    assert runner.catch_up() == 0
    assert_matches_aggregate(runner, app, sync.id)


# ----- the seed guide's SQL, verbatim, on PostgreSQL ------------------------------------------------------

# The design note's SQL, copied verbatim into the repository (a clone has no design note beside it).
SEED_QUERIES = FIXTURE_DIR / "seed_queries.sql"


def seed_queries() -> list[str]:
    _header, _, body = SEED_QUERIES.read_text(encoding="utf-8").partition("\n\n")
    return [statement.strip() for statement in body.split("\n-- next --\n")]


def test_seed_queries_run_unchanged_on_postgres(postgres_url: str) -> None:
    app = SyncApplication(DatabaseConfig.from_url(postgres_url))
    runner = ProjectionRunner(app)
    try:
        sync = sync_with_failures(app, count=150, bad=frozenset({11, 12}))
        # A second queue that ends in action-required (failed twice, not forced done).
        stuck = Sync(app)
        records = [make_record(cid, bad=cid == 2) for cid in range(1, 6)]
        stuck.fetch(records)
        stuck.process(records)
        stuck.finish()
        stuck.retry(records)
        stuck.finish()
        runner.catch_up()
        logged = queries.activity(runner, ORG, sync.id)
    finally:
        runner.close()
    statements = seed_queries()
    assert len(statements) == 8, statements

    def run(sql: str, queue_id: UUID) -> list[tuple[Any, ...]]:
        sql = sql.replace("your-org-id", ORG).replace("queue-uuid", str(queue_id))
        with psycopg.connect(postgres_url) as conn:
            return conn.execute(sql).fetchall()

    status, activity, failed, stuck_rows, feed, state, recent, failed_short = statements
    rows = run(status, sync.id)
    assert [(r[0], r[2], r[3], r[4], r[5], r[6], float(r[9])) for r in rows] == [
        (stuck.id, "failed", 5, 0, 4, 1, 80.0),
        (sync.id, "done", 150, 0, 148, 0, 100.0),
    ]
    assert [r[0] for r in run(stuck_rows, sync.id)] == [stuck.id]

    rows = run(activity, sync.id)
    assert len(logged) < 100
    # Rows of one event share created_at, and the seed's ORDER BY leaves their order open: compare as sets.
    assert sorted(rows) == sorted(
        (r["activityType"], r["status"], r["message"], datetime.fromisoformat(r["createdAt"])) for r in logged
    )
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)
    assert rows[0][0] == "forced_done"

    rows = run(failed, stuck.id)
    assert [(r[0], r[2]) for r in rows] == [(2, 2)]
    error = rows[0][1]
    assert error.startswith("invalid customer record: email")
    assert run(failed, sync.id) == []  # forced done: nothing failed any more

    rows = run(feed, sync.id)
    by_type: dict[tuple[str, str], int] = {}
    for _, activity_type, activity_status, count in rows:
        by_type[(activity_type, activity_status)] = by_type.get((activity_type, activity_status), 0) + count
    assert by_type[("line_failed", "error")] == 4
    assert by_type[("page_fetched", "success")] == 2
    assert sum(by_type.values()) == len(logged)
    assert all(isinstance(r[0], float) and 0 <= r[0] < 24 for r in rows)

    assert run(state, stuck.id) == [("failed", True)]
    assert run(recent, sync.id)[0][0].startswith("Queue forced done by operator")
    assert run(failed_short, stuck.id) == [(2, error)]
    app.close()


def test_follow_survives_a_lost_connection(postgres_url: str) -> None:
    app = SyncApplication(DatabaseConfig.from_url(postgres_url))
    runner = ProjectionRunner(app)
    observer = ProjectionRunner(app)
    stop = threading.Event()
    sync = Sync(app)
    sync.fetch([make_record(cid) for cid in range(1, 51)])

    def caught_up() -> bool:
        return all(s["lag"] == 0 for s in observer.status())

    with structlog.testing.capture_logs() as logs:
        follower = threading.Thread(target=runner.follow, args=(stop, 0.02))
        follower.start()
        try:
            wait_until(caught_up, deadline_s=30, interval_s=0.02)
            # Cut every other session to the database: the follower's and the application's.
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            sync.process([make_record(cid) for cid in range(1, 51)])
            sync.finish()
            wait_until(
                lambda: caught_up() and queries.queue_status(observer, ORG, sync.id)["state"] == "done",  # type: ignore[index]
                deadline_s=30,
                interval_s=0.02,
            )
        finally:
            stop.set()
            follower.join(timeout=30)
    assert not follower.is_alive()
    events = {entry["event"] for entry in logs}
    # Noticed and survived: a read retried on a new connection, or the loop's backoff and reconnect.
    assert events & {"projections.connection_lost", "projections.database_unavailable"}, events
    assert_matches_aggregate(observer, app, sync.id)
    runner.close()
    observer.close()
    app.close()


# ----- customers made by PostgreSQL from the stored events, against the same made in Python -----------------

# Values a stored record may hold (events are the truth, whatever the validation of their day was).
ODD_DATES = [
    None,
    12345,
    "",
    "2024-06-01T07:00:00Z",
    "2024-06-01 07:00:00",
    "2024-06-01T07:00:00\n",
    "2024-06-01T07:00",
    "\u0662\u0660\u0662\u0664-06-01T07:00:00",  # Arabic-Indic digits: Python's \d matches them, [0-9] not
    *[
        f"{year}-{month}-{day}T{hour}:{minute}:{second}"
        for year in ("0000", "0001", "1900", "2000", "2023", "2024", "9999")
        for month in ("00", "01", "02", "04", "12", "13")
        for day in ("00", "01", "28", "29", "30", "31", "32")
        for hour, minute, second in (
            ("00", "00", "00"),
            ("23", "59", "59"),
            ("24", "00", "00"),
            ("23", "60", "00"),
            ("23", "59", "60"),
        )
    ],
]
ODD_VALUES: list[dict[str, Any]] = [
    {},  # every field missing
    {"email": 123, "first_name": None, "last_name": True, "username": {"a": 1}, "role": ["x"]},
    {"email": "zoë@例え.jp", "first_name": 'Zoë 北京 "quoted" \\ back\\slash', "avatar_url": ""},
    {"billing": "not an object", "shipping": [], "is_paying_customer": "yes"},
    {"billing": None, "shipping": {}, "is_paying_customer": 1},
    {"billing": {"nested": {"deep": [1, 2.5, None, "ü"]}, "n": -0.0}, "is_paying_customer": False},
    {"shipping": {"phone": "+1 555", "big": 9007199254740993, "small": 1e-7}, "is_paying_customer": True},
    # NUL characters, which PostgreSQL cannot store: such events are made in Python, NUL as U+FFFD
    {"first_name": "nul\x00here", "billing": {"k\x00": "v\x00", "text": "\\u0000 is not a NUL"}},
]


def odd_records() -> list[dict[str, Any]]:
    records = []
    for index, values in enumerate(ODD_VALUES):
        records.append({"id": 10_000 + index, **values})
    for index, value in enumerate(ODD_DATES):
        records.append(
            {
                "id": 20_000 + index,
                "email": f"d{index}@example.com",
                "date_created_gmt": value,
                "date_modified_gmt": value,
            }
        )
    return records


def test_customers_made_by_postgresql_equal_those_made_in_python(postgres_url: str) -> None:
    from domain.customer import Customer

    app = SyncApplication(DatabaseConfig.from_url(postgres_url))
    try:
        sync_with_failures(app, count=120)
        resync_with_changes(app, count=60)  # Changed events, in batches with the Registered of others
        queue_id = str(UUID(int=7))
        odd = [
            Customer(org_id=ORG, store_url=STORE, woo_id=r["id"], record=r, digest="d", queue_id=queue_id)
            for r in odd_records()
        ]
        for batch in chunks(odd, 100):
            app.save(*batch)
        odd[0].delete("gone", queue_id)
        odd[2].sync({**odd[2].record, "email": "changed@example.com"}, "d2", queue_id)
        app.save(odd[0], odd[2])

        in_database = ProjectionRunner(app)
        in_database.migrate()
        assert in_database.in_database  # plain states on PostgreSQL: Registered rows made by the server
        in_database.catch_up(batch_size=37)
        made_by_server = dump(in_database)["woo_customers"]

        in_python = ProjectionRunner(app)
        in_python.in_database = False  # as with a cipher: every event decoded, every row made in Python
        in_python.rebuild(["customers"], batch_size=37)
        made_in_python = dump(in_python)["woo_customers"]
        in_database.close()
        in_python.close()

        assert len(made_by_server) == 120 + len(odd)
        assert made_by_server == made_in_python
        rows = {row[3]: row for row in made_by_server}
        assert rows[10_000][19] is True  # deleted after being registered
        assert rows[10_001][4:9] == (None,) * 5  # no text from a number, null, boolean, object or list
        assert rows[10_002][4] == "changed@example.com"
        dates = {
            value: rows[20_000 + index][13] for index, value in enumerate(ODD_DATES) if isinstance(value, str)
        }
        assert dates["2024-02-29T23:59:59"] == datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
        assert dates["2000-02-29T00:00:00"] is not None
        for value in (
            "2023-02-29T00:00:00",
            "1900-02-29T00:00:00",
            "2024-04-31T00:00:00",
            "0000-01-01T00:00:00",
        ):
            assert dates[value] is None
        assert dates["0001-01-01T00:00:00"] == datetime(1, 1, 1, tzinfo=UTC)
        with_nul = rows[10_000 + len(ODD_VALUES) - 1]
        assert with_nul[5] == "nul\ufffdhere"
        assert with_nul[9] == {"k\ufffd": "v\ufffd", "text": "\\u0000 is not a NUL"}
    finally:
        app.close()


def test_a_nul_character_from_the_store_does_not_stop_the_projections(
    app: SyncApplication, runner: ProjectionRunner, database_url: str
) -> None:
    sync = Sync(app)
    record = make_record(2)
    records = [
        make_record(1),
        {**record, "first_name": "Nul\x00", "billing": {**record["billing"], "company": "A\x00B"}},
    ]
    sync.fetch(records)
    sync.process(records)

    assert runner.catch_up() == app.recorder.max_notification_id()

    with runner.db.reading() as db:
        first_name, billing = db.fetchall(
            "SELECT first_name, billing FROM woo_customers WHERE woo_customer_id = 2"
        )[0]
    nul = "\ufffd" if database_url.startswith("postgresql") else "\x00"  # PostgreSQL cannot store one
    assert first_name == f"Nul{nul}"
    billing = json.loads(billing) if isinstance(billing, str) else billing
    assert billing["company"] == f"A{nul}B"
    assert_matches_aggregate(runner, app, sync.id)


def test_rows_written_by_column_equal_rows_written_one_by_one(runner: ProjectionRunner) -> None:
    """Database.insert_columns (the queues projection's unchanged lines) writes exactly the rows that
    insert_dicts writes for the same values, NUL-free text included, and refuses a column given twice or
    not at all and varying columns of different lengths."""
    from projections.queues import LINE_TABLE

    queue_a, queue_b = UUID(int=1), UUID(int=2)
    at = [datetime(2026, 1, 2, 3, 4, 5, i * 1000, tzinfo=UTC) for i in range(3)]
    same = {
        "org_id": ORG,
        "state": "done",
        "result": "unchanged",
        "error_message": "no\x00nul",
        "process_count": 0,
        "last_error_timestamp": None,
    }
    runner.catch_up()
    with runner.db.transaction() as db:
        db.insert_columns(
            LINE_TABLE,
            "",
            {**same, "queue_id": queue_a},
            {"woo_customer_id": [7, 8, 9], "created_at": at, "updated_at": at},
        )
        db.insert_dicts(
            LINE_TABLE,
            "",
            [
                {**same, "queue_id": queue_b, "woo_customer_id": 7 + i, "created_at": t, "updated_at": t}
                for i, t in enumerate(at)
            ],
        )
        with pytest.raises(ValueError, match="exactly one"):
            db.insert_columns(LINE_TABLE, "", same, {"woo_customer_id": [1]})
        with pytest.raises(ValueError, match="length"):
            db.insert_columns(
                LINE_TABLE,
                "",
                {**same, "queue_id": queue_a},
                {"woo_customer_id": [1, 2], "created_at": at, "updated_at": at},
            )
    with runner.db.reading() as db:
        rows = db.fetchall(
            "SELECT queue_id, woo_customer_id, org_id, state, result, error_message, process_count, "
            "last_error_timestamp, created_at, updated_at FROM woo_customer_sync_queue_line "
            "WHERE queue_id IN (%s, %s) ORDER BY woo_customer_id, queue_id",
            [db.value("uuid", queue_a), db.value("uuid", queue_b)],
        )
    by_queue: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_queue.setdefault(str(row[0]), []).append(tuple(row[1:]))
    assert len(by_queue) == 2
    written_by_column, written_by_row = by_queue.values()
    assert written_by_column == written_by_row and len(written_by_column) == 3
    assert [r[0] for r in written_by_column] == [7, 8, 9]
