"""The sync engine end to end against the sandbox store over real sockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from domain.customer import Customer, customer_key
from domain.errors import NothingToRetryError
from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from domain.validation import RejectedRecord, check_record
from infrastructure.adapters.transcoder import canonical_bytes
from infrastructure.adapters.woocommerce import ClientOptions, StoreRefused
from infrastructure.sandbox import Faults, RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.services import sync as sync_service
from infrastructure.services.sync import SyncOutcome
from infrastructure.support.config import DatabaseConfig, StoreSettings
from infrastructure.support.errors import QueueNotFoundError
from infrastructure.wiring import Services, migrate, open_services
from projections import queries
from tests.support.hostile_store import HostileStore, good
from tests.support.network import free_port
from tests.support.services import FAST, run_sync, store_of
from tests.support.waiting import wait_until


def mirrored(services: Services, sandbox: RunningSandbox, org: str = "acme") -> dict[int, dict[str, Any]]:
    services.catch_up()
    rows = queries.customers(services.projections, org, sandbox.url)
    return {row["woo_customer_id"]: row for row in rows if not row["is_deleted"]}


def events_of_type(services: Services, cls: type) -> list[Any]:
    recorder = services.app.recorder
    found = []
    for notification in recorder.select_notifications(start=1, limit=1_000_000):
        event = services.app.mapper.to_domain_event(notification)
        if isinstance(event, cls):
            found.append(event)
    return found


def test_a_full_sync_mirrors_exactly_the_stores_valid_customers(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=250, invalid=3, other_roles=5)) as sandbox:
        outcome = run_sync(services, sandbox, batch_size=40)
        store_ids = set(sandbox.store.customer_ids())
        invalid = {cid for cid in store_ids if "invalid" in str(sandbox.store.get(cid))} or None

        assert outcome.store_error is None
        assert outcome.state == "failed"  # three customers break a validation rule
        assert outcome.counts["total"] == 250
        assert outcome.counts["created"] == 247
        assert outcome.counts["failed"] == 3
        assert (
            set(mirrored(services, sandbox))
            | {
                row["wooCustomerId"]
                for row in queries.failed_lines(services.projections, "acme", outcome.queue_id)
            }
            == store_ids
        )
        status = queries.queue_status(services.projections, "acme", outcome.queue_id)
        assert status is not None
        assert status["createdCount"] == 247 and status["failedCount"] == 3 and status["totalCount"] == 250
        assert invalid is None or len(invalid) <= 3


def test_a_second_sync_of_an_unchanged_store_changes_nothing(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=120)) as sandbox:
        first = run_sync(services, sandbox)
        registered = len(events_of_type(services, Customer.Registered))
        second = run_sync(services, sandbox)

        assert first.counts["created"] == 120
        assert second.state == "done"
        assert second.counts == {**second.counts, "unchanged": 120, "created": 0, "updated": 0, "done": 120}
        assert len(events_of_type(services, Customer.Registered)) == registered == 120
        assert events_of_type(services, Customer.Changed) == []
        status = queries.queue_status(services.projections, "acme", second.queue_id)
        assert status is not None and status["unchangedCount"] == 120 and status["progress"] == 100.0


def test_an_edited_customer_is_updated_with_the_changed_fields(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=30)) as sandbox:
        run_sync(services, sandbox)
        target = sandbox.store.customer_ids()[7]
        sandbox.store.update(target, {"last_name": "Brzęczyszczykiewicz"})
        outcome = run_sync(services, sandbox)

        assert outcome.counts["updated"] == 1 and outcome.counts["unchanged"] == 29
        changed = events_of_type(services, Customer.Changed)
        assert len(changed) == 1 and "last_name" in changed[0].fields
        assert mirrored(services, sandbox)[target]["last_name"] == "Brzęczyszczykiewicz"


def test_retry_refetches_fixed_customers_and_cancels_deleted_ones(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=60, invalid=4)) as sandbox:
        first = run_sync(services, sandbox)
        failed = [
            row["wooCustomerId"] for row in queries.failed_lines(services.projections, "acme", first.queue_id)
        ]
        assert len(failed) == 4

        sandbox.store.fix_invalid()
        sandbox.store.delete(failed[0])
        engine = services.engine("acme")
        retried = asyncio.run(engine.retry(first.queue_id, store_of(sandbox), FAST))

        assert retried.state == "done"
        assert (
            retried.counts["created"] == 59
            and retried.counts["cancelled"] == 1
            and retried.counts["failed"] == 0
        )
        assert set(mirrored(services, sandbox)) == set(sandbox.store.customer_ids())
        status = queries.queue_status(services.projections, "acme", first.queue_id)
        assert status is not None and status["processCount"] == 2


def test_lines_that_keep_failing_require_action_then_force_done_closes_the_queue(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=20, invalid=2)) as sandbox:
        engine = services.engine("acme")
        outcome = asyncio.run(engine.start(store_of(sandbox), QueueOptions(max_retries=2), FAST))
        outcome = asyncio.run(engine.retry(outcome.queue_id, store_of(sandbox), FAST))

        assert outcome.state == "failed" and outcome.is_action_required
        assert "failed 2 times" in (outcome.action_required_reason or "")
        with pytest.raises(NothingToRetryError):
            asyncio.run(engine.retry(outcome.queue_id, store_of(sandbox), FAST))

        forced = engine.force_done(outcome.queue_id, "customers fixed by hand in the CRM")
        assert forced.state == "done" and forced.counts["cancelled"] == 2 and not forced.is_action_required
        activity = queries.activity(services.projections, "acme", outcome.queue_id)
        assert any("customers fixed by hand" in row["message"] for row in activity)


def test_another_orgs_queue_is_not_visible(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=5)) as sandbox:
        outcome = run_sync(services, sandbox, org="acme")
        with pytest.raises(QueueNotFoundError):
            services.engine("globex").get_queue(outcome.queue_id)
        assert queries.queue_status(services.projections, "globex", outcome.queue_id) is None
        assert queries.list_queues(services.projections, "globex") == []


def test_refused_credentials_leave_nothing_behind(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=5)) as sandbox:
        bad = StoreSettings(url=sandbox.url, consumer_key="ck_wrong", consumer_secret="cs_wrong")
        with pytest.raises(StoreRefused) as error:
            run_sync(services, bad)
        assert "Consumer key is invalid" in str(error.value)
        assert "cs_wrong" not in str(error.value)
        assert services.app.recorder.max_notification_id() in (None, 0)


def test_two_syncs_of_one_store_at_once_create_each_customer_once(database_url: str) -> None:
    database = DatabaseConfig.from_url(database_url)
    migrate(database)
    with (
        SandboxThread(SandboxConfig(customers=300)) as sandbox,
        open_services(database) as one,
        open_services(database) as two,
    ):

        async def both() -> list[SyncOutcome]:
            return list(
                await asyncio.gather(
                    one.engine("acme").start(store_of(sandbox), QueueOptions(batch_size=20), FAST),
                    two.engine("acme").start(store_of(sandbox), QueueOptions(batch_size=20), FAST),
                )
            )

        outcomes = asyncio.run(both())
        registered = events_of_type(one, Customer.Registered)
        assert len(registered) == 300
        assert len({event.originator_id for event in registered}) == 300
        assert sum(o.counts["created"] for o in outcomes) == 300
        assert all(o.counts["done"] == 300 and o.state == "done" for o in outcomes)


class _StopStoreAfter:
    """A progress sink that takes the store down once some lines are saved: a store that dies mid-sync."""

    def __init__(self, lines: int, stop: Any) -> None:
        self.lines = lines
        self.stop = stop
        self.done = 0

    def set_total(self, total: int) -> None:
        pass

    def advance(self, lines: int) -> None:
        self.done += lines
        if self.done >= self.lines and self.stop is not None:
            stop, self.stop = self.stop, None
            stop()

    def close(self) -> None:
        pass


@contextmanager
def sandbox_on(port: int, config: SandboxConfig) -> Iterator[tuple[RunningSandbox, Callable[[], None]]]:
    """A sandbox on a fixed port (so a restarted one has the same URL), with an idempotent stop."""
    thread = SandboxThread(config, port=port)
    running = thread.__enter__()
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            thread.__exit__(None, None, None)

    try:
        yield running, stop
    finally:
        stop()


def test_a_store_that_dies_mid_scan_is_resumed_from_the_first_page_not_recorded(services: Services) -> None:
    port = free_port()
    # 30 pages: more than the engine fetches ahead of what it has recorded (RECORD_PAGES_AT_ONCE and the
    # client's pages in flight), so the store dies mid-scan.
    config = SandboxConfig(customers=3000, faults=Faults(latency_ms=5))
    with sandbox_on(port, config) as (sandbox, stop):
        store = store_of(sandbox)
        store_ids = set(sandbox.store.customer_ids())
        engine = services.engine("acme", progress=_StopStoreAfter(300, stop))
        options = ClientOptions(backoff_base_s=0.01, backoff_max_s=0.02, max_retries=1, concurrency=2)
        outcome = asyncio.run(engine.start(store, QueueOptions(), options))

    assert outcome.store_error is not None
    queue = services.app.get_queue(outcome.queue_id)
    recorded = queue.pages_recorded
    assert 3 <= recorded < 30
    assert queue.lines.total == recorded * 100 and queue.lines.count("draft") == 0

    with sandbox_on(port, config) as (sandbox, _stop):
        resumed = asyncio.run(services.engine("acme").resume(outcome.queue_id, store, FAST))
        first_page_fetched = [
            e.page for e in services.app.queue_events(outcome.queue_id) if isinstance(e, SyncQueue.LinesAdded)
        ]
    assert resumed.state == "done" and resumed.counts["created"] == 3000
    assert first_page_fetched == list(range(1, 31))  # every page once, in order: nothing refetched
    assert set(mirrored(services, sandbox)) == store_ids


class _ChurnWhileSyncing:
    """A progress sink that changes the store after every saved batch, as shoppers do during a sync:
    deletes an early customer (shifting later pages back by one), edits one, registers a new one."""

    def __init__(self, sandbox: RunningSandbox) -> None:
        self.store = sandbox.store
        self.deleted: list[int] = []
        self.created: list[int] = []

    def set_total(self, total: int) -> None:
        pass

    def advance(self, lines: int) -> None:
        if not lines:
            return
        ids = self.store.customer_ids()
        victim = ids[len(self.deleted)]
        self.store.delete(victim)
        self.deleted.append(victim)
        self.store.update(ids[-1], {"first_name": f"Edited {len(self.deleted)}"})
        self.created.append(int(self.store.create()["id"]))

    def close(self) -> None:
        pass


def test_a_store_changing_under_the_scan_ends_equal_to_the_store_after_a_second_sync(
    services: Services,
) -> None:
    with SandboxThread(SandboxConfig(customers=400)) as sandbox:
        before = set(sandbox.store.customer_ids())
        churn = _ChurnWhileSyncing(sandbox)
        engine = services.engine("acme", progress=churn)
        first = asyncio.run(engine.start(store_of(sandbox), QueueOptions(batch_size=25), FAST))
        assert first.store_error is None and churn.deleted
        throughout = before - set(churn.deleted)
        # Every customer that existed throughout the scan was synced by the first run.
        assert throughout <= set(mirrored(services, sandbox)) | set(churn.deleted)
        synced_first = {cid for cid, _ in services.app.get_queue(first.queue_id).lines.items()}
        assert throughout <= synced_first

        second = run_sync(services, sandbox)
        assert second.store_error is None and second.state == "done"
        assert set(mirrored(services, sandbox)) == set(sandbox.store.customer_ids())
        deleted_rows = [
            row for row in queries.customers(services.projections, "acme", sandbox.url) if row["is_deleted"]
        ]
        assert {row["woo_customer_id"] for row in deleted_rows} <= set(churn.deleted)


def test_every_fault_at_once_still_ends_equal_to_the_store_and_shows_in_the_activity_log(
    services: Services,
) -> None:
    faults = Faults(
        latency_ms=2,
        rate_limit=8,
        error_rate=0.08,
        html_rate=0.05,
        truncated_rate=0.05,
        slow_rate=0.02,
        slow_ms=300,
    )
    with SandboxThread(SandboxConfig(customers=1500, faults=faults, seed=7)) as sandbox:
        # About one attempt in five fails here, more on a loaded machine (a normal answer past the 0.2 s
        # timeout): five in a row across four requests in flight then open the circuit, which stops the
        # run by design (tests/integration/test_woocommerce_client.py holds that). This test is about the
        # faults one by one, so the circuit opens only after many more.
        options = ClientOptions(
            backoff_base_s=0.01,
            backoff_max_s=0.05,
            circuit_reset_s=0.05,
            circuit_threshold=60,
            timeout_s=0.2,
            max_retries=8,
        )
        outcome = run_sync(services, sandbox, client=options, max_retries=8)
        assert outcome.store_error is None
        assert outcome.state == "done" and outcome.counts["created"] == 1500
        assert set(mirrored(services, sandbox)) == set(sandbox.store.customer_ids())
        stats = sandbox.store.stats
        assert stats.rate_limited > 0 and stats.by_status.get(200, 0) > 0
        kinds = {
            row["activityType"] for row in queries.activity(services.projections, "acme", outcome.queue_id)
        }
        assert "request_retried" in kinds
        assert "rate_limited" in kinds


def test_a_store_repeating_its_last_page_ends_with_a_warning_and_an_incomplete_fetch(
    services: Services,
) -> None:
    with SandboxThread(SandboxConfig(customers=300, faults=Faults(repeat_last_page=True))) as sandbox:
        outcome = run_sync(services, sandbox)
        assert outcome.state == "done" and outcome.counts["created"] == 300
        activity = queries.activity(services.projections, "acme", outcome.queue_id)
        warnings = [row for row in activity if row["activityType"] == "store_repeating_pages"]
        assert warnings and warnings[0]["status"] == "warning"
        queue = services.app.get_queue(outcome.queue_id)
        assert queue.fetch_finished and not queue.fetch_complete


def test_a_scan_stopped_by_the_page_cap_marks_no_customer_deleted(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        capped = dataclasses.replace(FAST, max_pages=2)  # 2 of the 3 pages of 100
        outcome = run_sync(services, sandbox, client=capped)

        queue = services.app.get_queue(outcome.queue_id)
        assert queue.fetch_finished and not queue.fetch_complete
        activity = queries.activity(services.projections, "acme", outcome.queue_id)
        assert "store_page_cap_reached" in {row["activityType"] for row in activity}
        assert len(mirrored(services, sandbox)) == 250  # the 50 past the cap are not "absent from the store"

        # A complete scan still marks a customer gone from the store as deleted.
        gone = sandbox.store.customer_ids()[-1]
        sandbox.store.delete(gone)
        run_sync(services, sandbox)
        assert set(mirrored(services, sandbox)) == set(sandbox.store.customer_ids())
        assert gone not in mirrored(services, sandbox)


def test_batch_delay_spaces_the_batches_out(services: Services) -> None:
    with SandboxThread(SandboxConfig(customers=120)) as sandbox:
        outcome = run_sync(services, sandbox, batch_size=40, batch_delay_ms=60)
        done = [e for e in services.app.queue_events(outcome.queue_id) if isinstance(e, SyncQueue.LinesDone)]
        assert len(done) == 4  # page 1: 40, 40, 20; page 2: 20
        gaps = [(b.timestamp - a.timestamp).total_seconds() for a, b in itertools.pairwise(done)]
        # Within a page the next batch waits the delay (a lower bound; pages are 100 lines, batches 40).
        assert max(gaps) >= 0.06


@pytest.fixture
def no_idle_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test about pages that wait to be saved with later ones: the sandbox answers at once, but on a
    loaded machine a gap between two of its pages can pass IDLE_SAVE_S, and the idle save (the slow
    store's) would then save what the test expects to wait."""
    monkeypatch.setattr(sync_service, "IDLE_SAVE_S", 60.0)


def _counting_saves(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of LinesAdded each save of the event store carries, in order (the real save runs)."""
    saves: list[int] = []
    real = services.app.save_batch

    def save_batch(*aggregates: Any) -> None:
        saves.append(sum(isinstance(e, SyncQueue.LinesAdded) for a in aggregates for e in a.pending_events))
        real(*aggregates)

    monkeypatch.setattr(services.app, "save_batch", save_batch)
    return saves


def test_pages_recorded_while_a_slow_store_is_awaited_are_saved_before_its_next_answer(
    services: Services,
) -> None:
    """Pages wait to be saved with later ones (a fast store's commits are few), but not for a store that is
    slow to send the next: with page 5 held, pages 1-4 reach the log while the run waits for it. Before,
    pages 2-4 were saved with page 5, and the wait below ran out."""
    pages = [[good(page * 100 + n + 1) for n in range(100)] for page in range(6)]
    held = threading.Event()
    outcome: list[SyncOutcome] = []
    with HostileStore(pages, held={5: held}) as store:
        run = threading.Thread(target=lambda: outcome.append(run_sync(services, store)))
        run.start()
        try:
            added = wait_until(
                lambda: found if len(found := events_of_type(services, SyncQueue.LinesAdded)) >= 4 else None,
                deadline_s=20,
            )
        finally:
            held.set()
            run.join(timeout=60)
    assert [event.page for event in added] == [1, 2, 3, 4]
    assert outcome and outcome[0].state == "done" and outcome[0].counts["created"] == 600


@pytest.mark.parametrize("edited_pages", [0, 6])
@pytest.mark.usefixtures("no_idle_save")
def test_a_resync_saves_its_pages_together(
    services: Services, monkeypatch: pytest.MonkeyPatch, edited_pages: int
) -> None:
    """Pages that change no customer, or a few, are saved several in one transaction."""
    with SandboxThread(SandboxConfig(customers=1200)) as sandbox:
        run_sync(services, sandbox)
        ids = sandbox.store.customer_ids()
        for page in range(edited_pages):
            sandbox.store.update(ids[page * 100 + 50], {"first_name": "Edited"})
        saves = _counting_saves(services, monkeypatch)
        second = run_sync(services, sandbox)
        mirror = mirrored(services, sandbox)

    assert second.state == "done" and second.counts["unchanged"] == 1200 - edited_pages
    assert second.counts["updated"] == edited_pages
    assert (
        sum(mirror[ids[page * 100 + 50]]["first_name"] == "Edited" for page in range(edited_pages))
        == edited_pages
    )
    pages = [
        e.page for e in services.app.queue_events(second.queue_id) if isinstance(e, SyncQueue.LinesAdded)
    ]
    assert pages == list(range(1, 13))  # every page recorded once, in order
    assert sum(saves) == 12
    # The first page is saved at once (the queue exists from then on); the others wait for each other.
    assert len(saves) <= 6 and max(saves) >= 2


@pytest.mark.parametrize("edited_pages", [0, 4])
@pytest.mark.usefixtures("no_idle_save")
def test_a_lost_race_while_pages_wait_records_them_again(
    services: Services, monkeypatch: pytest.MonkeyPatch, edited_pages: int
) -> None:
    """Another writer saves to the queue while pages recorded in memory wait for their save (unchanged
    ones, or ones with a changed customer whose event waits too): the engine reloads the queue, which
    lacks them, and records them again before going on; each change is stored once."""
    monkeypatch.setattr(sync_service, "PAGES_PER_SAVE", 3)
    with SandboxThread(SandboxConfig(customers=1200)) as sandbox, open_services(services.database) as other:
        run_sync(services, sandbox)
        ids = sandbox.store.customer_ids()
        edited = [ids[page * 100 + 7] for page in range(1, 1 + edited_pages)]  # on pages 2, 3, ...
        for cid in edited:
            sandbox.store.update(cid, {"last_name": f"Edited {cid}"})
        real = services.app.save_batch
        raced: list[int] = []

        def save_batch(*aggregates: Any) -> None:
            queue = aggregates[0]
            waiting = sum(isinstance(e, SyncQueue.LinesAdded) for e in queue.pending_events)
            if waiting >= 2 and not raced:
                theirs = other.app.get_queue(queue.id)
                theirs.record_incident("note", "info", "another writer", {})
                other.app.save_batch(theirs)
                raced.append(waiting)
            real(*aggregates)

        monkeypatch.setattr(services.app, "save_batch", save_batch)
        second = run_sync(services, sandbox)

        mirror = mirrored(services, sandbox)

    assert raced, "the race was not run"
    assert second.state == "done" and second.counts == {
        **second.counts,
        "unchanged": 1200 - edited_pages,
        "updated": edited_pages,
        "done": 1200,
    }
    events = list(services.app.queue_events(second.queue_id))
    assert [e.page for e in events if isinstance(e, SyncQueue.LinesAdded)] == list(range(1, 13))
    assert [e.message for e in events if isinstance(e, SyncQueue.StoreIncident)] == ["another writer"]
    changed = events_of_type(services, Customer.Changed)
    assert sorted(e.record["id"] for e in changed) == sorted(edited)
    assert all(mirror[cid]["last_name"] == f"Edited {cid}" for cid in edited)


def _lose_a_race_once(
    services: Services, other: Services, monkeypatch: pytest.MonkeyPatch, from_page: int
) -> list[int]:
    """Once, at the first save of a queue with ``from_page`` pages recorded or more: another writer saves to
    it first, so this save loses the race. Returns the pages recorded then (empty until it happened)."""
    real = services.app.save_batch
    raced: list[int] = []

    def save_batch(*aggregates: Any) -> None:
        queue = aggregates[0]
        if isinstance(queue, SyncQueue) and queue.pages_recorded >= from_page and not raced:
            theirs = other.app.get_queue(queue.id)
            theirs.record_incident("note", "info", "another writer", {})
            other.app.save_batch(theirs)
            raced.append(queue.pages_recorded)
        real(*aggregates)

    monkeypatch.setattr(services.app, "save_batch", save_batch)
    return raced


@pytest.mark.usefixtures("no_idle_save")
def test_a_lost_race_after_a_partly_known_page_waited_records_all_its_customers_again(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages whose answers changed hold customers recorded unparsed (their bytes the earlier scan's); one of
    them, recorded after the pages before it were saved to bound a save's lines, waits; then another writer
    wins a save. Recorded again, the page must name all its customers, not only the parsed ones."""
    monkeypatch.setattr(sync_service, "_save_lines", lambda _options: 3)
    with SandboxThread(SandboxConfig(customers=1200)) as sandbox, open_services(services.database) as other:
        run_sync(services, sandbox)
        ids = sandbox.store.customer_ids()
        # Two on each of pages 2 to 11: a page's two processed lines and the waiting page's pass the bound.
        edited = [ids[page * 100 + at] for page in range(1, 11) for at in (7, 57)]
        for cid in edited:
            sandbox.store.update(cid, {"last_name": f"Edited {cid}"})
        raced = _lose_a_race_once(services, other, monkeypatch, from_page=6)
        second = run_sync(services, sandbox)
        mirror = mirrored(services, sandbox)

    assert raced, "the race was not run"
    assert second.state == "done" and second.counts == {
        **second.counts,
        "total": 1200,
        "done": 1200,
        "updated": len(edited),
        "unchanged": 1200 - len(edited),
    }, second.counts
    events = list(services.app.queue_events(second.queue_id))
    added = [e for e in events if isinstance(e, SyncQueue.LinesAdded)]
    assert [e.page for e in added] == list(range(1, 13))
    assert sum(len(e.processed) + len(e.unchanged) + len(e.records) for e in added) == 1200
    assert all(mirror[cid]["last_name"] == f"Edited {cid}" for cid in edited)


@pytest.mark.usefixtures("no_idle_save")
def test_a_lost_race_while_a_page_s_last_batch_waits_processes_it_again(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first sync's page is saved with its first batches and its last one waits for the next pages'
    save; another writer (a webhook delivery creating a customer of a later page, say) wins a save
    meanwhile. The reloaded queue has that page recorded and its last batch's lines draft: they are
    processed again, and the queue ends done (it failed with "lines are still draft")."""
    with SandboxThread(SandboxConfig(customers=600)) as sandbox, open_services(services.database) as other:
        raced = _lose_a_race_once(services, other, monkeypatch, from_page=3)
        outcome = run_sync(services, sandbox, batch_size=40)
        mirror = mirrored(services, sandbox)

    assert raced, "the race was not run"
    assert outcome.state == "done", outcome
    assert outcome.counts["created"] == 600 and outcome.counts["done"] == 600
    assert len(events_of_type(services, Customer.Registered)) == 600
    assert sorted(mirror) == sorted(sandbox.store.customer_ids())


@pytest.mark.usefixtures("no_idle_save")
def test_two_lost_races_in_a_row_while_pages_are_recorded_again_lose_no_page(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A race lost while pages wait, then another during their recording again (a save the 1 s timer made
    part-way through): the pages not yet recorded again were in neither the queue nor the waiting list,
    and the re-sync ended done with 1000 of its 1200 lines missing."""
    with SandboxThread(SandboxConfig(customers=1200)) as sandbox, open_services(services.database) as other:
        run_sync(services, sandbox)
        real, real_heads = services.app.save_batch, services.app.customer_heads
        races: list[int] = []
        heads_after: list[int] = []

        def race(queue: SyncQueue) -> None:
            theirs = other.app.get_queue(queue.id)
            theirs.record_incident("note", "info", "another writer", {})
            other.app.save_batch(theirs)
            races.append(queue.pages_recorded)

        def save_batch(*aggregates: Any) -> None:
            queue = aggregates[0]
            if isinstance(queue, SyncQueue):
                waiting = sum(isinstance(e, SyncQueue.LinesAdded) for e in queue.pending_events)
                if (not races and waiting >= 5) or (len(races) == 1 and waiting >= 1):
                    race(queue)
            real(*aggregates)

        def customer_heads(keys: Any) -> Any:
            if len(races) == 1:
                heads_after.append(1)
                if len(heads_after) == 2:  # the re-recording's pages outlast the 1 s wait: a save comes
                    monkeypatch.setattr(sync_service, "PAGES_SAVE_MAX_S", 0.0)
            return real_heads(keys)

        monkeypatch.setattr(services.app, "save_batch", save_batch)
        monkeypatch.setattr(services.app, "customer_heads", customer_heads)
        second = run_sync(services, sandbox)

    assert len(races) == 2, races
    assert second.state == "done" and second.counts["done"] == second.counts["total"] == 1200, second.counts
    events = list(services.app.queue_events(second.queue_id))
    assert sorted(e.page for e in events if isinstance(e, SyncQueue.LinesAdded)) == list(range(1, 13))


@pytest.mark.usefixtures("no_idle_save")
def test_a_stop_whose_save_loses_a_race_while_pages_wait_still_stops_resumably(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a page with a changed customer waits, and a webhook delivery changes that customer
    meanwhile: the stop's save lost its race and the run ended exit 2, "changed by another process",
    with nothing of the stop recorded. Now the waiting pages are dropped (resume fetches them again) and
    the stop is recorded: exit 130, resumable, and the resume ends done."""
    with SandboxThread(SandboxConfig(customers=1200)) as sandbox, open_services(services.database) as other:
        run_sync(services, sandbox)
        edited = sandbox.store.customer_ids()[150]  # on page 2
        sandbox.store.update(edited, {"last_name": "Edited in store"})
        stop = threading.Event()
        engine = services.engine("acme", stop=stop)
        real_wait, real_stop = engine._may_wait, engine._record_stop
        waiting_at_stop: list[int] = []

        def may_wait(run: Any, page: Any, lines: int) -> bool:
            waits = real_wait(run, page, lines)
            if waits and page[0] == 3:
                stop.set()
            return waits

        def record_stop(run: Any) -> None:
            if not waiting_at_stop:
                waiting_at_stop.extend(entry[0] for entry in run.unsaved_pages)
                pushed = other.app.repository.get(customer_key("acme", sandbox.url, edited))
                pushed.sync({**pushed.record, "last_name": "Pushed"}, "p" * 64, str(uuid.uuid4()))
                other.app.save_batch(pushed)
            real_stop(run)

        monkeypatch.setattr(engine, "_may_wait", may_wait)
        monkeypatch.setattr(engine, "_record_stop", record_stop)
        with pytest.raises(sync_service.RunStopped) as stopped:
            asyncio.run(engine.start(store_of(sandbox), QueueOptions(), FAST))
        assert waiting_at_stop == [2, 3]
        assert stopped.value.exit_code == 130
        queue_id = stopped.value.queue_id
        events = list(services.app.queue_events(queue_id))
        assert [e.activity_type for e in events if isinstance(e, SyncQueue.StoreIncident)][
            -1
        ] == "run_stopped"
        resumed = asyncio.run(services.engine("acme").resume(queue_id, store_of(sandbox), FAST))
    assert resumed.state == "done" and resumed.counts["done"] == 1200


def test_a_resync_checks_only_the_records_that_are_not_exactly_as_last_synced(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged record is what was checked when it was stored: the boundary's checks run again only
    for changed records, and for records with a null (the canonical form writes infinity as null too)."""
    checked: list[int] = []
    real = sync_service.check_record

    def counting(raw: Any, canonical: Any = None, *, strict_json: bool = False) -> Any:
        checked.append(raw["id"])
        return real(raw, canonical, strict_json=strict_json)

    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        edited, nulled = sandbox.store.customer_ids()[3], sandbox.store.customer_ids()[9]
        sandbox.store.update(edited, {"last_name": "Changed"})
        sandbox.store.update(nulled, {"first_name": None})
        with_null = {
            cid
            for cid in sandbox.store.customer_ids()
            if b"null" in canonical_bytes(sandbox.store.api_object(cid) or {})
        }
        assert nulled in with_null and edited not in with_null and len(with_null) < 20
        monkeypatch.setattr(sync_service, "check_record", counting)
        second = run_sync(services, sandbox)
        assert second.counts == {**second.counts, "updated": 2, "unchanged": 248}
        # Page 2 is byte for byte the first sync's: nothing on it is read (a known page). On page 1 only
        # the two edited customers' bytes changed: only they are parsed and checked. Page 3, short, is cut
        # into its customers (a short page ends the scan: a known one's ids must not), each one's bytes
        # the first sync's: none is parsed.
        assert second.known_pages == 1 and second.partly_known_pages == 2
        assert sorted(checked) == sorted({edited, nulled})

        checked.clear()
        third = run_sync(services, sandbox)
        assert third.counts == {**third.counts, "unchanged": 250, "done": 250}
        assert third.known_pages == 2 and third.partly_known_pages == 1 and checked == []
        assert mirrored(services, sandbox)[edited]["last_name"] == "Changed"

        # Without the last scan's digests (another listing: per page 50), the records are read and only
        # those that are not exactly as last synced, or hold a null, are checked.
        checked.clear()
        fourth = run_sync(services, sandbox, per_page=50)
        assert fourth.counts == {**fourth.counts, "unchanged": 250, "done": 250}
        assert fourth.known_pages == 0 and sorted(checked) == sorted(with_null)


def _sandbox_post(url: str, body: Any) -> tuple[int, Any]:
    """POST to the sandbox's admin routes: (status, JSON answer)."""
    assert url.startswith("http://127.0.0.1:")
    # S310: the scheme and host are checked just above; only the test's sandbox is ever opened.
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_customers_edited_through_the_sandboxs_edit_random_are_what_a_resync_updates(
    services: Services,
) -> None:
    """POST /_sandbox/customers/edit-random (bench/side_by_side.py's 1%) edits that many customers, each
    as an admin's edit would: a re-sync updates exactly those."""
    with SandboxThread(SandboxConfig(customers=300)) as sandbox:
        run_sync(services, sandbox)
        route = f"{sandbox.url}/_sandbox/customers/edit-random"
        status, answer = _sandbox_post(route, {"count": 7, "seed": 3})
        refused, _ = _sandbox_post(route, {"count": -1})
        second = run_sync(services, sandbox)

    assert status == 200 and answer["edited"] == 7 and len(set(answer["ids"])) == 7
    assert refused == 400
    assert second.counts == {**second.counts, "updated": 7, "unchanged": 293}
    changed = events_of_type(services, Customer.Changed)
    assert sorted(e.record["id"] for e in changed) == sorted(answer["ids"])


def test_a_known_page_is_read_again_when_a_customer_on_it_changed_in_the_mirror_since_the_last_scan(
    services: Services,
) -> None:
    """A known page (the store's answer byte for byte the last scan's) is all unchanged only while every
    customer on it is mirrored as that scan left it: one another writer changed since (a webhook delivery,
    say) makes the page read and checked as any other, and the store's record wins back."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        first = run_sync(services, sandbox)
        assert first.known_pages == 0
        target = sandbox.store.customer_ids()[150]  # on page 2
        record = sandbox.store.api_object(target)
        assert record is not None
        key = customer_key("acme", sandbox.url, target)
        customer = services.app.load_customers([key])[key]
        altered = {**record, "first_name": "Changed in the mirror only"}
        customer.sync(altered, hashlib.sha256(canonical_bytes(altered)).hexdigest(), "another-writer")
        services.app.save_batch(customer)

        second = run_sync(services, sandbox)
        assert second.state == "done" and second.known_pages == 1  # page 1 (3 is short: always read)
        assert second.counts == {**second.counts, "updated": 1, "unchanged": 249}
        assert mirrored(services, sandbox)[target]["first_name"] == record["first_name"]
        # The page read again names its answer's digest too: the next scan takes all three as known.
        third = run_sync(services, sandbox)
        assert third.known_pages == 2 and third.counts == {**third.counts, "unchanged": 250}


def test_a_page_saved_whole_names_its_customers_once_and_its_answer_by_digest(services: Services) -> None:
    """Without a batch delay a page is one save: its LinesAdded names the lines it processes by id and
    digest (the records are in the customers' Registered events of the same save) and its answer by
    SHA-256; every line of it is finished by that save."""
    with SandboxThread(SandboxConfig(customers=150)) as sandbox:
        outcome = run_sync(services, sandbox, batch_size=40)
        assert outcome.state == "done" and outcome.counts["created"] == 150
    added = events_of_type(services, SyncQueue.LinesAdded)
    registered = {e.woo_id: e for e in events_of_type(services, Customer.Registered)}
    assert [e.page for e in added] == [1, 2]
    assert all(e.records == [] and e.unchanged == [] for e in added)
    assert all(e.body_digest is not None and len(e.body_digest) == 64 for e in added)
    assert [cid for e in added for cid, _ in e.processed] == sorted(registered)
    assert all(digest == registered[cid].digest for e in added for cid, digest in e.processed)
    # One transaction a page: each page's LinesAdded and its batches' LinesDone share a save.
    done = events_of_type(services, SyncQueue.LinesDone)
    assert len(done) == 3 + 2  # page 1: 100 lines in batches of 40; page 2: 50 lines


def test_a_page_with_a_refused_record_that_is_a_line_already_names_no_answer_digest(
    services: Services,
) -> None:
    """body_digest says every record of that answer is a line of the event (what lets the next scan skip
    reading it): a refused record, even one whose id is a line already, means the event names no digest."""
    engine = services.engine("acme")
    queue = engine.new_queue("https://store.example", QueueOptions())
    queue.start_processing("start")
    good = [{"id": i, "email": f"c{i}@example.com", "first_name": "A"} for i in range(1, 4)]
    queue.add_lines([{"id": 9, "email": "x@example.com"}], page=1)  # id 9 a line already
    refused = check_record({"id": 9, "email": "x" * 10_000_000})
    assert isinstance(refused, RejectedRecord)
    run = sync_service._Run(queue=queue, progress=sync_service.NoProgress(), saved=False)
    checked = [check_record(r) for r in good]
    engine._record_checked(run, 2, checked, [refused], [{}], "d" * 64)  # type: ignore[arg-type]
    [added] = [
        e for e in services.app.queue_events(queue.id) if isinstance(e, SyncQueue.LinesAdded) and e.page == 2
    ]
    assert [cid for cid, _ in added.processed] == [1, 2, 3] and added.body_digest is None


def test_a_known_page_that_names_fewer_customers_than_a_page_never_ends_the_scan(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short page ends a scan (and a complete scan marks the customers it did not see deleted), so a
    short answer is always read, never taken from a known page's ids: even were those ids wrong (here one
    is dropped on purpose, with the store's totals headers gone too), no customer is marked deleted."""
    from infrastructure.adapters import woocommerce

    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        assert run_sync(services, sandbox).state == "done"
        original = sync_service.SyncEngine._load_known_pages

        def short_by_one(self: Any, run: Any) -> Any:
            known = original(self, run)
            first = known[1]
            ids = list(first.page.ids[:-1])
            heads = self._heads(run.queue, ids)
            pairs = [(cid, heads[cid].digest) for cid in ids]
            known[1] = sync_service._Known.of(first.page.digest, pairs)
            return known

        monkeypatch.setattr(sync_service.SyncEngine, "_load_known_pages", short_by_one)
        monkeypatch.setattr(woocommerce, "_int_header", lambda headers, name: None)
        second = run_sync(services, sandbox)
        assert second.state == "done" and second.counts["unchanged"] == 250
        assert len(mirrored(services, sandbox)) == 250  # none marked deleted


def test_queues_without_answer_digests_are_given_up_after_a_few_events(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue run with a batch delay digests no page (its records wait in LinesAdded): a re-sync looking
    for known pages gives each such earlier queue up after its first pages, instead of reading it whole."""
    with SandboxThread(SandboxConfig(customers=500)) as sandbox:
        for _ in range(3):
            assert run_sync(services, sandbox, batch_delay_ms=1, batch_size=100, per_page=20).state == "done"
        read: list[int] = []
        original = services.app.recorder.select_events

        def counting(*args: Any, **kwargs: Any) -> Any:
            found = original(*args, **kwargs)
            read.extend(len(e.state) for e in found)
            return found

        monkeypatch.setattr(services.app.recorder, "select_events", counting)
        fourth = run_sync(services, sandbox, batch_delay_ms=1, batch_size=100, per_page=20)
        assert fourth.state == "done" and fourth.known_pages == 0
        # Each of the three earlier queues (25 pages of 20 records each) read a first slice of 8 events.
        assert len(read) <= 3 * 8 + 10, len(read)


def _counting_heads(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many customers each customer_heads call asked for, from now on."""
    asked: list[int] = []
    original = services.app.customer_heads

    def counting(ids: Any) -> Any:
        asked.append(len(ids))
        return original(ids)

    monkeypatch.setattr(services.app, "customer_heads", counting)
    return asked


def _change_in_mirror_only(services: Services, sandbox: RunningSandbox, target: int) -> dict[str, Any]:
    """Another writer (a webhook delivery, say) changes a customer in the mirror, not in the store;
    returns the store's record, which a reconciling scan must bring back."""
    record = sandbox.store.api_object(target)
    assert record is not None
    key = customer_key("acme", sandbox.url, target)
    customer = services.app.load_customers([key])[key]
    altered = {**record, "first_name": "Changed in the mirror only"}
    customer.sync(altered, hashlib.sha256(canonical_bytes(altered)).hexdigest(), str(uuid.uuid4()))
    services.app.save_batch(customer)
    return record


def test_an_unchanged_resync_takes_known_pages_on_the_logs_word_without_reading_their_heads(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the earlier scan wrote no customer event (the log has nothing for them since it began), a
    known page's customers are as it left them: no head of theirs is read. Nor of the short last page's,
    which is always read: its customers were on the earlier scan's last page too."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)  # its Registered events are after its own start: the next reads heads
        second = run_sync(services, sandbox)
        assert second.known_pages == 2
        asked = _counting_heads(services, monkeypatch)
        third = run_sync(services, sandbox)
    assert third.state == "done" and third.known_pages == 2
    assert third.counts == {**third.counts, "unchanged": 250}
    assert sum(asked) == 0, asked
    started = events_of_type(services, SyncQueue.ProcessingStarted)
    assert len(started) == 3 and all(isinstance(e.log_position, int) for e in started)
    assert [e.log_position for e in started] == sorted(e.log_position for e in started)


def test_a_customer_another_writer_changes_during_the_scan_is_read_before_its_known_page_is_taken(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is read again before each step's known pages: a change stored after the scan looked at the
    log (here, right after it loaded the known pages) still sends its page to be read. The change came
    after the scan began, so the mirror keeps it (Customer.sync's read_after rule: a delivery beats an older
    copy); the next scan, which began after it, brings the store's record back."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        run_sync(services, sandbox)
        target = sandbox.store.customer_ids()[120]  # on page 2
        original = sync_service.SyncEngine._load_known_pages
        store_record: list[dict[str, Any]] = []

        def then_changed(self: Any, run: Any) -> Any:
            known = original(self, run)
            assert run.vouched is not None and not run.vouched.changed
            store_record.append(_change_in_mirror_only(services, sandbox, target))
            return known

        monkeypatch.setattr(sync_service.SyncEngine, "_load_known_pages", then_changed)
        asked = _counting_heads(services, monkeypatch)
        third = run_sync(services, sandbox)
        assert third.state == "done" and third.known_pages == 1  # page 1; page 2 read (3 is short)
        assert 1 in asked  # the one customer the log could not vouch for, then the pages read
        assert mirrored(services, sandbox)[target]["first_name"] == "Changed in the mirror only"
        monkeypatch.setattr(sync_service.SyncEngine, "_load_known_pages", original)
        fourth = run_sync(services, sandbox)
        assert fourth.state == "done" and fourth.known_pages == 1
        assert fourth.counts == {**fourth.counts, "updated": 1, "unchanged": 249}
        assert mirrored(services, sandbox)[target]["first_name"] == store_record[0]["first_name"]


@pytest.mark.parametrize("why", ["an older version's scan", "too much stored since"])
def test_known_pages_the_log_cannot_vouch_for_have_every_head_read(
    services: Services, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """An earlier scan with no log position (an older version wrote it), or more events stored since it
    began than worth reading: every known customer's head is read, as before, and a customer changed in
    the mirror still sends its page to be read."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        if why == "an older version's scan":
            positions = monkeypatch.context()
            with positions as patch:
                patch.setattr(sync_service.SyncEngine, "_log_position", _no_position)
                run_sync(services, sandbox)
        else:
            run_sync(services, sandbox)
            monkeypatch.setattr(sync_service, "KNOWN_CHANGED_EVENTS", 0)
            monkeypatch.setattr(sync_service, "KNOWN_CHANGED_SHARE", 10**9)
        target = sandbox.store.customer_ids()[30]  # on page 1
        record = _change_in_mirror_only(services, sandbox, target)
        asked = _counting_heads(services, monkeypatch)
        outcome = run_sync(services, sandbox)
        assert outcome.state == "done" and outcome.known_pages == 1  # page 2; page 1 read (3 is short)
        assert outcome.counts == {**outcome.counts, "updated": 1, "unchanged": 249}
        assert mirrored(services, sandbox)[target]["first_name"] == record["first_name"]
    assert sum(asked) >= 250, asked  # every known customer's head (and the pages read again)


async def _no_position(self: Any) -> None:
    return None


def test_the_deletion_check_reads_a_mirror_current_to_the_runs_start_without_catching_up(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complete scan marks deleted the customers mirrored before it began that it did not see. When the
    customers read model has applied the log up to the run's start, the check reads it at once instead of
    waiting for the run's own events to be projected; the customers gone from the store are still marked
    deleted."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox, catch_up=True)
        gone = sandbox.store.customer_ids()[:3]
        for cid in gone:
            sandbox.store.delete(cid)
        forced: list[bool] = []  # the catch-ups forced during the deletion check
        checking: list[bool] = []
        original_saved, original_check = services._saved, sync_service.SyncEngine._mark_deleted

        def saved(force: bool) -> None:
            if checking:
                forced.append(force)
            original_saved(force)

        def mark_deleted(self: Any, run: Any, seen: Any) -> None:
            checking.append(True)
            try:
                original_check(self, run, seen)
            finally:
                checking.clear()

        monkeypatch.setattr(services, "_saved", saved)
        monkeypatch.setattr(sync_service.SyncEngine, "_mark_deleted", mark_deleted)
        second = run_sync(services, sandbox)
        assert second.state == "done" and second.counts["total"] == 247
        assert True not in forced
        services.catch_up()
        rows = {
            row["woo_customer_id"]: row
            for row in queries.customers(services.projections, "acme", sandbox.url)
        }
    assert sorted(cid for cid, row in rows.items() if row["is_deleted"]) == sorted(gone)
    assert len(rows) == 250


def test_a_page_whose_answer_changed_reads_no_head_the_log_vouches_for(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer edited in the store changes its page's answer, so the page is read; its other customers,
    with no event since the earlier scan began, take that scan's digests as their heads (none is read),
    and the edited one is updated from its mirrored history as any other."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        run_sync(services, sandbox)
        target = sandbox.store.customer_ids()[130]  # on page 2
        sandbox.store.update(target, {"first_name": "Edited in the store"})
        asked = _counting_heads(services, monkeypatch)
        third = run_sync(services, sandbox)
        assert third.state == "done" and third.known_pages == 1  # page 1 (2 changed, 3 is short)
        assert third.counts == {**third.counts, "updated": 1, "unchanged": 249}
        assert mirrored(services, sandbox)[target]["first_name"] == "Edited in the store"
        assert sum(asked) == 0, asked
        # The edit is an event since the third scan began: the fourth reads that one customer's head only.
        asked.clear()
        fourth = run_sync(services, sandbox)
    assert fourth.state == "done" and fourth.counts == {**fourth.counts, "unchanged": 250}
    assert sum(asked) == 1, asked


def _counting_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the records put through the boundary's checks from now on."""
    checked: list[int] = []
    real = sync_service.check_record

    def counting(raw: Any, canonical: Any = None, *, strict_json: bool = False) -> Any:
        checked.append(raw["id"])
        return real(raw, canonical, strict_json=strict_json)

    monkeypatch.setattr(sync_service, "check_record", counting)
    return checked


def test_a_changed_answer_reads_only_the_customers_whose_bytes_changed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer edited in the store changes its page's answer. The answer is cut into its customers and
    only the edited one is parsed and checked: the others are byte for byte as the known page had them,
    with no event since (the log's word), so their lines are unchanged with no head read. The page's
    LinesAdded names each customer's answer digest again, so the next edit on it is read the same way."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        run_sync(services, sandbox)
        ids = sandbox.store.customer_ids()
        sandbox.store.update(ids[130], {"first_name": "Edited in the store"})
        checked = _counting_checks(monkeypatch)
        asked = _counting_heads(services, monkeypatch)
        third = run_sync(services, sandbox)
        # Page 1 is known; page 2 holds the edit; page 3, short, is cut too (its bytes the same).
        assert third.state == "done" and third.known_pages == 1 and third.partly_known_pages == 2
        assert third.counts == {**third.counts, "updated": 1, "unchanged": 249}
        assert checked == [ids[130]] and sum(asked) == 0
        assert mirrored(services, sandbox)[ids[130]]["first_name"] == "Edited in the store"

        checked.clear()
        sandbox.store.update(ids[170], {"last_name": "Edited too"})
        fourth = run_sync(services, sandbox)
    assert fourth.state == "done" and fourth.partly_known_pages == 2
    assert fourth.counts == {**fourth.counts, "updated": 1, "unchanged": 249}
    assert checked == [ids[170]]
    assert sum(asked) == 1  # the third scan's edit is an event since it began: that one head is read
    assert mirrored(services, sandbox)[ids[170]]["last_name"] == "Edited too"


def test_a_first_sync_keeps_no_set_of_the_customers_it_saved(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customers a run saved are kept only while the log vouches for known pages' customers (to leave
    the run's own saves out): a first sync has none to vouch for, and kept a UUID for every customer (240
    bytes each: a million-customer sync's peak RSS 101 -> 312 MB). A re-sync keeps the ones it changed."""
    runs: list[Any] = []
    real = sync_service.SyncEngine._save

    def saving(self: Any, run: Any) -> None:
        real(self, run)
        runs.append(run)

    monkeypatch.setattr(sync_service.SyncEngine, "_save", saving)
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        first = runs[-1]
        assert first.vouched is None and first.own_customers == set()
        target = sandbox.store.customer_ids()[130]
        sandbox.store.update(target, {"first_name": "Edited in the store"})
        run_sync(services, sandbox)
    again = runs[-1]
    assert again is not first and again.vouched is not None
    assert again.own_customers == {customer_key("acme", sandbox.url, target)}


def test_a_customer_whose_bytes_are_the_known_pages_but_whose_mirror_changed_is_read_after_all(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer changed a customer in the mirror only: its bytes in the store's answer are the known
    page's, but the log does not vouch for it and its head is not that page's digest, so the page is read
    whole and the customer brought back to the store's record, as any reconciling scan does."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        run_sync(services, sandbox)
        ids = sandbox.store.customer_ids()
        record = _change_in_mirror_only(services, sandbox, ids[120])
        sandbox.store.update(ids[140], {"first_name": "Edited in the store"})
        checked = _counting_checks(monkeypatch)
        third = run_sync(services, sandbox)
    # Page 2 read whole; page 1 known; page 3, short, cut with its bytes the same.
    assert third.state == "done" and third.partly_known_pages == 1 and third.known_pages == 1
    assert third.counts == {**third.counts, "updated": 2, "unchanged": 248}
    assert {ids[120], ids[140]} <= set(checked)
    rows = mirrored(services, sandbox)
    assert rows[ids[120]]["first_name"] == record["first_name"]
    assert rows[ids[140]]["first_name"] == "Edited in the store"


def test_a_first_sync_of_a_new_store_asks_for_no_absent_customer_and_a_later_one_does(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complete scan of a store none of whose customers was mirrored as the run began has nothing to
    mark deleted (what it did not see was mirrored since, by another writer): the read model is not asked.
    The next complete scan is asked, and marks deleted the customer gone from the store."""
    import infrastructure.wiring as wiring

    asked: list[int] = []
    original = wiring.projection_queries.absent_customer_ids

    def absent(source: Any, org_id: str, store_url: str, seen: Any) -> Any:
        asked.append(len(seen))
        return original(source, org_id, store_url, seen)

    monkeypatch.setattr(wiring.projection_queries, "absent_customer_ids", absent)
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        first = run_sync(services, sandbox, catch_up=True)
        assert first.state == "done" and first.counts["total"] == 250
        assert asked == []
        gone = sandbox.store.customer_ids()[7]
        sandbox.store.delete(gone)
        second = run_sync(services, sandbox, catch_up=True)
        assert second.state == "done"
        assert asked == [249]
        rows = {
            row["woo_customer_id"]: row
            for row in queries.customers(services.projections, "acme", sandbox.url)
        }
    assert [cid for cid, row in rows.items() if row["is_deleted"]] == [gone]


def test_a_customer_another_writer_created_during_a_complete_scan_is_not_marked_deleted(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer created by another writer (a delivery) after the queue began may be one the scan passed
    before it existed: the complete scan that did not list it leaves it for the next scan instead of
    marking it deleted, even once the read model shows it; a customer gone from the store still is."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox, catch_up=True)
        gone = sandbox.store.customer_ids()[5]
        sandbox.store.delete(gone)
        original = sync_service.SyncEngine._load_known_pages

        def then_created(self: Any, run: Any) -> Any:
            known = original(self, run)
            record = {"id": 987_654, "email": "new@example.com", "first_name": "Webhook", "last_name": "Made"}
            key = customer_key("acme", sandbox.url, 987_654)
            created = Customer.register(
                key,
                org_id="acme",
                store_url=sandbox.url,
                woo_id=987_654,
                record=record,
                digest=hashlib.sha256(canonical_bytes(record)).hexdigest(),
                queue_id=str(uuid.uuid4()),
            )
            services.app.save_batch(created)
            services.catch_up()  # the read model shows it before the scan's end
            return known

        monkeypatch.setattr(sync_service.SyncEngine, "_load_known_pages", then_created)
        second = run_sync(services, sandbox)
        assert second.state == "done"
        services.catch_up()
        rows = {
            row["woo_customer_id"]: row
            for row in queries.customers(services.projections, "acme", sandbox.url)
        }
    assert rows[987_654]["is_deleted"] is False
    assert rows[gone]["is_deleted"] is True


def test_a_log_that_cannot_be_read_for_vouching_means_every_head_is_read(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's word is a hint: when reading it fails, the scan reads every known customer's head
    instead, and a customer changed in the mirror still sends its page to be read."""
    from infrastructure.support.errors import StorageError

    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        run_sync(services, sandbox)
        run_sync(services, sandbox)
        target = sandbox.store.customer_ids()[30]
        record = _change_in_mirror_only(services, sandbox, target)

        def failing(*_: Any) -> Any:
            raise StorageError("the database went away for a moment")

        monkeypatch.setattr(services.app, "changed_after", failing)
        asked = _counting_heads(services, monkeypatch)
        third = run_sync(services, sandbox)
        assert third.state == "done" and third.counts == {**third.counts, "updated": 1, "unchanged": 249}
        assert mirrored(services, sandbox)[target]["first_name"] == record["first_name"]
    assert sum(asked) >= 250, asked


def test_a_first_sync_of_a_store_with_no_customer_reads_no_head(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the read model, current to the run's start, holds no customer of the store, its pages'
    customers are new: no head is read. Another writer registering one of them meanwhile makes that save
    conflict; the step is redone with heads read, and every customer is still created once."""
    with SandboxThread(SandboxConfig(customers=250)) as sandbox:
        asked = _counting_heads(services, monkeypatch)
        first = run_sync(services, sandbox)
        assert first.state == "done" and first.counts == {**first.counts, "created": 250}
        assert sum(asked) == 0, asked

    with SandboxThread(SandboxConfig(customers=250)) as other:
        target = other.store.customer_ids()[10]  # on page 1
        original = sync_service.SyncEngine._is_new_store

        def then_registered(self: Any, run: Any) -> bool:
            new = original(self, run)
            record = other.store.api_object(target)
            assert record is not None
            key = customer_key("acme", other.url, target)
            customer = Customer.register(
                key,
                org_id="acme",
                store_url=other.url,
                woo_id=target,
                record=record,
                digest=hashlib.sha256(canonical_bytes(record)).hexdigest(),
                queue_id=str(uuid.uuid4()),
            )
            services.app.save_batch(customer)
            return new

        monkeypatch.setattr(sync_service.SyncEngine, "_is_new_store", then_registered)
        asked.clear()
        second = run_sync(services, other)
        assert second.state == "done"
        assert second.counts == {**second.counts, "created": 249, "unchanged": 1}
        assert len(mirrored(services, other)) == 250
    assert sum(asked) > 0  # after the conflict, heads were read
    registered = [e for e in events_of_type(services, Customer.Registered) if e.store_url == other.url]
    assert sorted(e.woo_id for e in registered) == sorted(other.store.customer_ids())
