"""Audit on both backends: timelines and time travel from the queue's own events, a customer's history,
export and its offline check, and the ledger catching an event edited, deleted, inserted or swapped with SQL
directly in the events table."""

from __future__ import annotations

import functools
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import psycopg
import pytest
from eventsourcing.utils import get_topic
from freezegun import freeze_time

from domain.customer import Customer
from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from infrastructure.sandbox import RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.services import audit
from infrastructure.services.sync import SyncOutcome
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import ConfigurationError, QueueNotFoundError
from infrastructure.support.times import parse_time
from infrastructure.wiring import Services, migrate, open_services
from projections.ledger import CHECKPOINT_TABLE_NAME, LEDGER_TABLE_NAME
from tests.support.services import run_sync

ORG = "acme"

pytestmark = pytest.mark.sandbox(customers=60, invalid=2)

# sync(services, store, org=ORG): a whole sync, then the projections caught up.
sync = functools.partial(run_sync, org=ORG, batch_size=20, per_page=25, catch_up=True)


# ----- raw SQL on the events table, as someone with database access would do it ---------------------------


class Sql:
    def __init__(self, database: DatabaseConfig) -> None:
        self.database = database
        self.pg = database.backend == "postgres"
        self.table = "wcsync_events" if self.pg else "stored_events"
        self.id = "notification_id" if self.pg else "rowid"

    def run(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.pg:
            with psycopg.connect(self.database.url, autocommit=True) as pg:
                cur = pg.execute(statement.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        lite = sqlite3.connect(str(self.database.sqlite_path), isolation_level=None)
        try:
            return lite.execute(statement, params).fetchall()
        finally:
            lite.close()

    def event(self, position: int) -> tuple[Any, int, str, bytes]:
        row = self.run(
            f"SELECT originator_id, originator_version, topic, state FROM {self.table} WHERE {self.id} = ?",
            (position,),
        )[0]
        return row[0], int(row[1]), str(row[2]), bytes(row[3])

    def positions(self, topic: str | None = None) -> list[int]:
        where = " WHERE topic = ?" if topic else ""
        rows = self.run(
            f"SELECT {self.id} FROM {self.table}{where} ORDER BY {self.id}", (topic,) if topic else ()
        )
        return [int(r[0]) for r in rows]

    def set_state(self, position: int, state: bytes, topic: str | None = None) -> None:
        if topic is None:
            self.run(f"UPDATE {self.table} SET state = ? WHERE {self.id} = ?", (state, position))
        else:
            self.run(
                f"UPDATE {self.table} SET state = ?, topic = ? WHERE {self.id} = ?", (state, topic, position)
            )

    def insert(
        self, position: int | None, originator_id: Any, version: int, topic: str, state: bytes
    ) -> None:
        if position is None:
            self.run(
                f"INSERT INTO {self.table} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
                (originator_id, version, topic, state),
            )
        else:
            self.run(
                f"INSERT INTO {self.table} ({self.id}, originator_id, originator_version, topic, state) "
                "VALUES (?, ?, ?, ?, ?)",
                (position, originator_id, version, topic, state),
            )


def new_id(sql: Sql) -> Any:
    return uuid4() if sql.pg else uuid4().hex


@pytest.fixture
def synced(services: Services, sandbox: RunningSandbox) -> SyncOutcome:
    return sync(services, sandbox)


# ----- the ledger and verify --------------------------------------------------------------------------------


def test_the_ledger_chains_every_event_once_and_an_untouched_log_verifies(
    services: Services, synced: SyncOutcome
) -> None:
    report = audit.verify_log(services.database)
    sql = Sql(services.database)
    assert report.ok, report.as_dict()
    assert report.events == report.ledger_rows == len(sql.positions()) > 10
    assert report.checkpoints >= 1
    # Catching up again, or rebuilding the ledger, changes nothing.
    services.catch_up()
    services.projections.rebuild(["ledger"])
    again = audit.verify_log(services.database)
    assert again.ok and again.chain_hash == report.chain_hash and again.ledger_rows == report.ledger_rows


def test_an_edited_event_is_named_by_position(services: Services, synced: SyncOutcome) -> None:
    sql = Sql(services.database)
    position = sql.positions(get_topic(Customer.Registered))[3]
    state = sql.event(position)[3]
    assert b"@" in state
    sql.set_state(position, state.replace(b"@", b"#", 1))

    report = audit.verify_log(services.database)
    assert not report.ok
    first = report.first
    assert first is not None and first.position == position and first.kind == "edited"
    assert f"position {position}: event edited: its data" in first.message


def test_a_deleted_event_is_named_by_position(services: Services, synced: SyncOutcome) -> None:
    sql = Sql(services.database)
    position = sql.positions()[5]
    sql.run(f"DELETE FROM {sql.table} WHERE {sql.id} = ?", (position,))

    report = audit.verify_log(services.database)
    first = report.first
    assert first is not None and (first.position, first.kind) == (position, "deleted")
    assert "event deleted" in first.message


def test_an_event_inserted_after_the_ledger_is_not_taken_for_part_of_the_record(
    services: Services, synced: SyncOutcome
) -> None:
    sql = Sql(services.database)
    head = sql.positions()[-1]
    _, _, topic, state = sql.event(head)
    sql.insert(None, new_id(sql), 1, topic, state)

    report = audit.verify_log(services.database)
    first = report.first
    assert first is not None and first.position == head + 1 and first.kind == "unledgered"
    assert "not in the ledger" in first.message and "inserted" in first.message


def test_a_gap_in_notification_ids_is_no_tampering_but_an_event_inserted_into_it_is(
    services: Services, synced: SyncOutcome
) -> None:
    sql = Sql(services.database)
    head = sql.positions()[-1]
    # A gap as eventsourcing leaves one after a failed insert: an id taken, then gone, before the ledger saw it.
    if sql.pg:  # the id sequence moves on, as after a failed insert
        sql.run("SELECT setval(pg_get_serial_sequence('wcsync_events', 'notification_id'), ?)", (head + 3,))
        services.app.save(SyncQueue("other", "gap", "https://gap.example.com", {}, "test"))
    else:  # SQLite takes max(rowid) + 1: an id taken by a row that is gone before the ledger saw it
        sql.insert(head + 3, new_id(sql), 1, get_topic(SyncQueue.Created), b"{}")
        services.app.save(SyncQueue("other", "gap", "https://gap.example.com", {}, "test"))
        sql.run(f"DELETE FROM {sql.table} WHERE {sql.id} = ?", (head + 3,))
    services.catch_up()
    assert head + 4 in sql.positions() and head + 3 not in sql.positions()
    assert audit.verify_log(services.database).ok

    _, _, topic, state = sql.event(head)
    sql.insert(head + 2, new_id(sql), 1, topic, state)
    report = audit.verify_log(services.database)
    first = report.first
    assert first is not None and (first.position, first.kind) == (head + 2, "inserted")
    assert f"position {head + 2}: event inserted" in first.message


def test_two_swapped_events_are_named_as_a_swap(services: Services, synced: SyncOutcome) -> None:
    sql = Sql(services.database)
    a, b = sql.positions(get_topic(Customer.Registered))[2:4]
    _, _, topic_a, state_a = sql.event(a)
    _, _, topic_b, state_b = sql.event(b)
    sql.set_state(a, state_b, topic_b)
    sql.set_state(b, state_a, topic_a)

    report = audit.verify_log(services.database)
    assert [(p.position, p.kind) for p in sorted(report.problems, key=lambda p: p.position)] == [
        (a, "swapped"),
        (b, "swapped"),
    ]
    assert f"swapped with position {b}" in report.first.message  # type: ignore[union-attr]


def test_an_edited_ledger_and_a_ledger_rebuilt_over_an_edited_log_are_caught(
    services: Services, synced: SyncOutcome
) -> None:
    sql = Sql(services.database)
    positions = sql.positions()
    sql.run(f"UPDATE {LEDGER_TABLE_NAME} SET chain_hash = ? WHERE position = ?", ("00" * 32, positions[4]))
    report = audit.verify_log(services.database)
    assert report.first is not None and (report.first.position, report.first.kind) == (positions[4], "ledger")

    # Edit an event, then rebuild the ledger so that it agrees: the checkpoints recorded earlier do not.
    target = sql.positions(get_topic(Customer.Registered))[1]
    sql.set_state(target, sql.event(target)[3].replace(b"@", b"#", 1))
    services.projections.rebuild(["ledger"])
    rebuilt = audit.verify_log(services.database)
    assert not rebuilt.ok
    assert {p.kind for p in rebuilt.problems} == {"checkpoint"}
    assert rebuilt.first is not None and rebuilt.first.position >= target


def test_signed_checkpoints_are_checked_with_the_audit_key(
    services: Services, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WCSYNC_AUDIT_KEY", "correct horse battery staple")
    sync(services, sandbox)
    report = audit.verify_log(services.database)
    assert report.ok and report.signed_checkpoints == report.checkpoints >= 1

    sql = Sql(services.database)
    sql.run(f"UPDATE {CHECKPOINT_TABLE_NAME} SET recorded_at = ?", ("2020-01-01T00:00:00+00:00",))
    forged = audit.verify_log(services.database)
    assert forged.first is not None and "signature does not match" in forged.first.message


# ----- export -------------------------------------------------------------------------------------------------


def test_export_holds_every_event_of_the_org_only_in_log_order_and_verifies_offline(
    services: Services, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    ours = sync(services, sandbox)
    with SandboxThread(SandboxConfig(customers=15)) as other_store:
        theirs = sync(services, other_store, org="other")
    output = tmp_path / "acme.jsonl"
    summary = audit.export_log(services.app, ORG, output)

    lines = output.read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines[:-1]]
    digest = orjson.loads(lines[-1])["digest"]
    assert summary.events == len(events) == digest["events"]
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    ids = {e["aggregateId"] for e in events}
    assert str(ours.queue_id) in ids and str(theirs.queue_id) not in ids
    assert all(e["time"].endswith("+00:00") for e in events)
    first = events[0]
    assert (first["aggregateType"], first["eventType"], first["version"]) == ("SyncQueue", "Created", 1)
    assert first["data"]["org_id"] == ORG
    assert sum(1 for e in events if e["eventType"] == "Registered") == 58
    assert sandbox.consumer_secret.encode() not in output.read_bytes()
    assert digest["ledgerChainAtLastPosition"] is not None

    assert audit.verify_export(output).ok

    since = events[len(events) // 2]["time"]
    partial = audit.export_log(services.app, ORG, tmp_path / "since.jsonl", parse_time(since))
    assert 0 < partial.events < summary.events


@pytest.mark.parametrize("damage", ["edit", "remove", "swap", "truncate"])
def test_a_damaged_export_is_caught_at_its_first_bad_position(
    services: Services, synced: SyncOutcome, tmp_path: Path, damage: str
) -> None:
    output = tmp_path / "export.jsonl"
    audit.export_log(services.app, ORG, output)
    lines = output.read_bytes().splitlines(keepends=True)
    position = orjson.loads(lines[4])["position"]
    if damage == "edit":
        lines[4] = lines[4].replace(b'"version":', b'"version": ', 1)
    elif damage == "remove":
        del lines[4]
        position = orjson.loads(lines[4])["position"]
    elif damage == "swap":
        lines[4], lines[5] = lines[5], lines[4]
        position = orjson.loads(lines[4])["position"]
    else:
        del lines[-3:]
    output.write_bytes(b"".join(lines))

    report = audit.verify_export(output)
    assert not report.ok
    first = report.first
    assert first is not None
    if damage == "truncate":
        assert "digest" in first.message
    else:
        assert first.position == position and f"position {position}" in first.message


# ----- timelines and time travel ----------------------------------------------------------------------------


def test_a_queue_timeline_comes_from_its_events_and_another_orgs_queue_is_no_queue(
    services: Services, synced: SyncOutcome
) -> None:
    rows = list(audit.queue_timeline(services.app, ORG, synced.queue_id))
    assert rows[0]["event"] == "Created" and rows[-1]["event"] == "Finished"
    # Invalid records fail their lines as they are recorded (LinesRejected), with the record's size and digest.
    failed = [row for row in rows if row["outcome"] == "failed" and row["event"] == "LinesRejected"]
    assert len(failed) == 2 and all("invalid customer record" in row["message"] for row in failed)
    assert all("sha256 " in row["message"] for row in failed)
    created = sum(len(row["lines"]) for row in rows if row["outcome"] == "created")
    assert created == 58
    assert all(row["time"].endswith("+00:00") for row in rows)
    with pytest.raises(QueueNotFoundError):
        list(audit.queue_timeline(services.app, "other", synced.queue_id))
    with pytest.raises(QueueNotFoundError):
        list(audit.queue_timeline(services.app, ORG, uuid4()))


def test_as_of_replays_the_queue_up_to_that_instant(services: Services) -> None:
    app = services.app

    def save(queue: SyncQueue) -> None:
        for event in queue.pending_events:
            object.__setattr__(event, "timestamp", datetime.fromisoformat(event.timestamp.isoformat()))
        app.save_batch(queue)

    with freeze_time("2026-03-01T10:00:00+00:00") as clock:
        queue = SyncQueue(ORG, "timed", "https://shop.example.com", QueueOptions().as_dict(), "auditor")
        queue.start_processing("start")
        queue.add_lines([{"id": 1}, {"id": 2}, {"id": 3}], page=1)
        clock.move_to("2026-03-01T10:05:00+00:00")
        queue.finish_lines({"created": [1, 2]})
        clock.move_to("2026-03-01T10:10:00+00:00")
        queue.fail_lines({3: "invalid customer record: email"})
        queue.finish()
    save(queue)  # outside the frozen clock: its datetime subclass is not a transcoded type

    def state_at(text: str) -> dict[str, Any]:
        rows = list(audit.queue_timeline(app, ORG, queue.id, parse_time(text)))
        assert rows[-1]["asOf"] == parse_time(text).isoformat()
        status: dict[str, Any] = rows[-1]["status"]
        return status

    early = state_at("2026-03-01T10:04:59Z")
    assert (early["state"], early["draftCount"], early["doneCount"], early["totalCount"]) == (
        "processing",
        3,
        0,
        3,
    )
    exact = state_at("2026-03-01T10:05:00+00:00")  # an event at the instant itself counts
    assert (exact["doneCount"], exact["createdCount"], exact["draftCount"]) == (2, 2, 1)
    late = state_at("2026-03-01T12:00:00+02:00")  # 10:00 UTC: offsets are honoured
    assert late["state"] == "processing" and late["doneCount"] == 0
    final = state_at("2026-03-01T11:00:00")
    assert (final["state"], final["failedCount"], final["createdAt"]) == (
        "failed",
        1,
        "2026-03-01T10:00:00+00:00",
    )
    with pytest.raises(audit.AuditError, match="did not exist yet"):
        state_at("2026-03-01T09:59:59Z")


def test_a_customers_history_across_queues_with_changes_old_and_new_and_deletion(
    services: Services, sandbox: RunningSandbox
) -> None:
    first = sync(services, sandbox)
    failed_ids = [
        row["lines"][0]
        for row in audit.queue_timeline(services.app, ORG, first.queue_id)
        if row["event"] == "LinesRejected"
    ]
    woo_id = next(cid for cid in sandbox.store.customer_ids() if cid not in failed_ids)
    old = sandbox.store.get(woo_id)
    assert old is not None
    sandbox.store.update(woo_id, {"first_name": "Renamed"})
    second = sync(services, sandbox)
    sandbox.store.delete(woo_id)
    third = sync(services, sandbox)

    history = audit.customer_history(services, ORG, woo_id, None)
    events = [entry["event"] for entry in history["history"]]
    assert events == ["Registered", "Changed", "Deleted"]
    changed = history["history"][1]
    assert "first_name" in changed["fields"]
    assert changed["changes"]["first_name"] == {"old": old["first_name"], "new": "Renamed"}
    assert changed["queueId"] == str(second.queue_id)
    assert history["history"][2]["queueId"] == str(third.queue_id)
    assert history["customer"]["firstQueueId"] == str(first.queue_id) and history["customer"]["deleted"]
    assert {row["queueId"] for row in history["lines"]} >= {str(first.queue_id), str(second.queue_id)}

    failures = audit.customer_history(services, ORG, failed_ids[0], sandbox.url)["failures"]
    assert len(failures) == 3  # one per queue
    assert all("invalid customer record" in row["message"] for row in failures)
    assert sandbox.consumer_secret not in str(history) + str(failures)

    with pytest.raises(audit.AuditError, match="never synced"):
        audit.customer_history(services, ORG, 10**9, sandbox.url)
    with pytest.raises(audit.AuditError, match="no stores"):
        audit.customer_history(services, "nobody", woo_id, None)


def test_times_are_utc_with_offset() -> None:
    assert parse_time("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert audit.iso(parse_time("2026-03-01T01:00:00+01:00")) == "2026-03-01T00:00:00+00:00"
    with pytest.raises(ConfigurationError):
        parse_time("yesterday")


def test_encrypted_events_audit_the_same_and_a_wrong_key_is_a_clear_error(
    database_url: str, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WCSYNC_CIPHER_KEY", "A" * 43 + "=")
    database = DatabaseConfig.from_url(database_url)
    if database.backend == "postgres":
        migrate(database)
    with open_services(database) as services:
        outcome = sync(services, sandbox)
        assert outcome.counts["created"] == 58
        # The projections went through the mapper: the read models are filled from encrypted events (never
        # by PostgreSQL parsing the stored states, which it cannot read).
        assert not services.projections.in_database
        assert services.projections.db.fetchall("SELECT COUNT(*) FROM woo_customers")[0][0] == 58
        sql = Sql(database)
        state = sql.event(sql.positions(get_topic(Customer.Registered))[0])[3]
        # Encrypted at rest: not JSON (its first byte is random: it is "{" one time in 256) and no field name.
        assert b'"email"' not in state and b'"record"' not in state
        with pytest.raises(ValueError):
            json.loads(state)
        assert audit.verify_log(database).ok
        summary = audit.export_log(services.app, ORG, tmp_path / "e.jsonl")
        assert summary.events > 0 and b"@" in (tmp_path / "e.jsonl").read_bytes()
        assert audit.verify_export(tmp_path / "e.jsonl").ok
        assert list(audit.queue_timeline(services.app, ORG, outcome.queue_id))

    monkeypatch.setenv("WCSYNC_CIPHER_KEY", "B" * 43 + "=")
    wrong = DatabaseConfig.from_url(database_url)
    assert audit.verify_log(wrong).ok  # the ledger hashes the stored bytes: no key needed
    with open_services(wrong) as services:
        with pytest.raises(ConfigurationError, match="cannot be decrypted with WCSYNC_CIPHER_KEY: wrong key"):
            list(audit.queue_timeline(services.app, ORG, outcome.queue_id))
        with pytest.raises(ConfigurationError, match="wrong key"):
            audit.export_log(services.app, ORG, tmp_path / "x.jsonl")
        with pytest.raises(ConfigurationError, match="wrong key"):
            services.app.get_queue(outcome.queue_id)

    monkeypatch.delenv("WCSYNC_CIPHER_KEY")
    with (
        open_services(DatabaseConfig.from_url(database_url)) as services,
        pytest.raises(ConfigurationError, match="set WCSYNC_CIPHER_KEY"),
    ):
        services.app.get_queue(outcome.queue_id)


def test_a_malformed_cipher_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WCSYNC_CIPHER_KEY", "too-short")
    with pytest.raises(ConfigurationError, match="base64 of 32"):
        DatabaseConfig.from_url("sqlite:///x.db")
    monkeypatch.setenv("WCSYNC_CIPHER_KEY", "A" * 43 + "=")
    env = DatabaseConfig.from_url("sqlite:///x.db").eventsourcing_env()
    assert env["WCSYNC_CIPHER_TOPIC"] == "eventsourcing.cryptography:AESCipher"
    assert env["WCSYNC_CIPHER_KEY"] == "A" * 43 + "="
    assert "A" * 43 not in repr(DatabaseConfig.from_url("sqlite:///x.db"))
