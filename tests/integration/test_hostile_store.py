"""What a hostile store can send, and what wcsync does with it, on SQLite and PostgreSQL: the good customers
sync, a bad record fails its own line (or, with no usable id, is refused and named), nothing unstorable or
oversized reaches the log, the read models and every other org stay unharmed, and memory stays bounded."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from domain.customer import Customer
from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from domain.validation import EXCERPT_CHARS, MAX_RECORD_BYTES
from infrastructure.adapters.woocommerce import ClientOptions
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import Services, migrate
from projections import queries
from tests.support.cli import run_in_repo
from tests.support.hostile_store import HostileStore, Raw, good
from tests.support.services import FAST, run_sync, store_of

# sync(services, store, org="acme", per_page=100, client=FAST): a whole sync in batches of 10.
sync = functools.partial(run_sync, batch_size=10, per_page=100)


def stored_events(services: Services) -> list[tuple[str, bytes]]:
    return [(n.topic, n.state) for n in services.app.recorder.select_notifications(start=1, limit=1_000_000)]


def assert_projections_caught_up(services: Services) -> None:
    services.catch_up()
    lags = {row["name"]: row["lag"] for row in services.projections.status()}
    assert lags == dict.fromkeys(lags, 0), lags


def test_records_without_a_usable_id_are_refused_and_named_and_the_rest_syncs(services: Services) -> None:
    with HostileStore([[good(1), good(2)]]) as other_store:
        other = sync(services, other_store, org="other")
    bad_ids: list[Any] = [
        {**good(0), "id": True},
        {**good(0), "id": "12"},
        {**good(0), "id": 2**63 + 5},
        {**good(0), "id": 7.0},
        {**good(0), "id": 0},
        "not a customer",
        {"email": "no-id@example.com"},
    ]
    with HostileStore([[good(10), *bad_ids, good(11)]]) as store:
        outcome = sync(services, store)

    assert outcome.store_error is None
    assert outcome.counts["total"] == 2 and outcome.counts["created"] == 2
    assert outcome.state == "done"
    activity = queries.activity(services.projections, "acme", outcome.queue_id)
    refused = [row for row in activity if row["activityType"] == "records_without_id"]
    assert len(refused) == 1
    message = refused[0]["message"]
    assert "7 record(s)" in message and "id true is a boolean" in message and "is a string" in message
    # The projections took every event, and the other org's reads are as they were.
    assert_projections_caught_up(services)
    status = queries.queue_status(services.projections, "other", other.queue_id)
    assert status is not None and status["createdCount"] == 2 and status["state"] == "done"
    customers = {row["woo_customer_id"] for row in queries.customers(services.projections, "acme")}
    assert customers == {10, 11}


def test_an_invalid_record_fails_its_own_line_and_the_log_keeps_an_excerpt_not_the_record(
    services: Services,
) -> None:
    huge = good(21, meta_data=[{"id": 1, "key": "blob", "value": "x" * 500_000}])
    records = [good(20), huge, good(22, email="not-an-email"), good(23)]
    with HostileStore([records]) as store:
        outcome = sync(services, store)

    assert outcome.counts == {
        "total": 4,
        "draft": 0,
        "done": 2,
        "failed": 2,
        "cancelled": 0,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
    }
    failed = {
        row["wooCustomerId"]: row
        for row in queries.failed_lines(services.projections, "acme", outcome.queue_id)
    }
    assert set(failed) == {21, 22}
    assert f"larger than the {MAX_RECORD_BYTES} bytes" in failed[21]["errorMessage"]
    assert "email" in failed[22]["errorMessage"]
    events = stored_events(services)
    assert max(len(state) for _, state in events) < 20_000  # no 500 KB record in the log
    rejected = [
        entry
        for topic, state in events
        if topic.endswith("SyncQueue.LinesRejected")
        for entry in json.loads(state)["rejected"]
    ]
    assert {entry["id"] for entry in rejected} == {21, 22}
    big = next(entry for entry in rejected if entry["id"] == 21)
    assert big["bytes"] > 500_000 and len(big["digest"]) == 64
    assert len(big["excerpt"]) <= EXCERPT_CHARS + 1 and big["excerpt"].startswith('{"billing"')
    assert_projections_caught_up(services)


def test_a_record_no_json_parser_reads_fails_its_own_line_and_the_page_syncs(services: Services) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    page = [
        good(50),
        Raw(b'{"id": 51, "meta_data": [{"key": "k", "value": ' + deep + b"}]}"),
        Raw(b'{"id": 52, "email": "x@y.co", "total": ' + b"9" * 5000 + b"}"),
        Raw(b'{"id": 53, "first_name": "\xff\xfe"}'),
        Raw(b'{"first_name": "\xed\xa0\x80"}'),
        good(54),
    ]
    with HostileStore([page]) as store:
        outcome = sync(services, store)

    assert outcome.store_error is None
    assert outcome.counts["created"] == 2 and outcome.counts["failed"] == 3 and outcome.counts["total"] == 5
    failed = {
        r["wooCustomerId"]: r["errorMessage"]
        for r in queries.failed_lines(services.projections, "acme", outcome.queue_id)
    }
    assert failed == {
        51: "invalid customer record: record: nested too deeply to read",
        52: "invalid customer record: record: holds an integer too long to read",
        53: "invalid customer record: record: holds bytes that are not UTF-8",
    }
    activity = queries.activity(services.projections, "acme", outcome.queue_id)
    refused = [row["message"] for row in activity if row["activityType"] == "records_without_id"]
    # (An encoded surrogate, b"\xed\xa0\x80", reads as one and is then cleaned: a record without an id.)
    assert len(refused) == 1 and "a customer object without an id" in refused[0]
    assert max(len(state) for _, state in stored_events(services)) < 20_000
    assert_projections_caught_up(services)


def _nested(levels: int) -> bytes:
    return b'{"k": ' * levels + b'"leaf"' + b"}" * levels


@pytest.mark.parametrize(
    "odd",
    [
        # orjson reads these pages (Page.strict_json): only the nesting is left to check, volatile fields too
        Raw(b'{"id": 61, "email": "x@y.co", "_links": ' + _nested(70) + b"}"),
        Raw(b'{"id": 61, "email": "x@y.co", "meta_data": [{"key": "k", "value": ' + _nested(70) + b"}]}"),
        # orjson refuses these (not JSON's, or past 64 bits): the lenient reader's records get the whole walk
        Raw(b'{"id": 61, "email": "x@y.co", "score": NaN}'),
        Raw(b'{"id": 61, "email": "x@y.co", "score": Infinity}'),
    ],
    ids=["deep-links", "deep-meta", "nan", "infinity"],
)
def test_what_either_reader_lets_through_is_still_refused_at_the_boundary(
    services: Services, odd: Raw
) -> None:
    with HostileStore([[good(60), odd, good(62)]]) as store:
        outcome = sync(services, store)

    assert outcome.counts["created"] == 2 and outcome.counts["failed"] == 1
    failed = {
        r["wooCustomerId"]: r["errorMessage"]
        for r in queries.failed_lines(services.projections, "acme", outcome.queue_id)
    }
    assert list(failed) == [61] and failed[61].startswith("invalid customer record: "), failed


def test_nul_and_lone_surrogates_are_stored_the_same_way_on_both_backends(services: Services) -> None:
    # orjson refuses a page with an escaped lone surrogate; the page must still be read.
    odd = good(
        31,
        first_name="a\x00b\ud800c",
        billing={"city": "\udfff", "email": "customer31@example.com"},
        meta_data=[{"id": 1, "key": "k\x00", "value": "\udfff"}],
    )
    with HostileStore([[good(30), odd]]) as store:
        outcome = sync(services, store)

    assert outcome.counts["created"] == 2 and outcome.state == "done"
    services.catch_up()
    rows = {row["woo_customer_id"]: row for row in queries.customers(services.projections, "acme")}
    assert rows[31]["first_name"] == "a\ufffdb\ufffdc"
    assert rows[31]["billing"]["city"] == "\ufffd"
    for _, state in stored_events(services):
        assert b"\\u0000" not in state and b"\\ud800" not in state.lower()


def test_an_answer_larger_than_the_limit_is_not_read_and_its_customers_come_one_by_one(
    services: Services,
) -> None:
    # 40 records of ~60 KB (over the 1 MB limit as a page); one of 1.5 MB is too large even alone.
    page = [good(100 + i, meta_data=[{"id": 1, "key": "note", "value": "y" * 60_000}]) for i in range(40)]
    page[5] = good(105, meta_data=[{"id": 1, "key": "note", "value": "z" * 1_500_000}])
    with HostileStore([page[:20], page[20:]]) as store:
        outcome = sync(
            services, store, per_page=20, client=dataclasses.replace(FAST, max_response_bytes=1024 * 1024)
        )
        one_by_one = [path for path in store.requests if "/customers/1" in path]

    assert outcome.store_error is None
    assert outcome.counts["total"] == 40 and outcome.counts["created"] == 39 and outcome.counts["failed"] == 1
    failed = queries.failed_lines(services.projections, "acme", outcome.queue_id)
    assert [row["wooCustomerId"] for row in failed] == [105]
    assert "larger than the 1048576 bytes a store answer may have" in failed[0]["errorMessage"]
    assert len(one_by_one) == 40
    activity = queries.activity(services.projections, "acme", outcome.queue_id)
    assert sum(row["activityType"] == "store_page_too_large" for row in activity) == 2
    assert_projections_caught_up(services)


def _hostile_env(database_url: str, store: HostileStore) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WCSYNC_", "WOO_"))}
    env.update(
        WCSYNC_DATABASE_URL=database_url,
        WCSYNC_LOG_LEVEL="warning",
        WOO_URL=store.url,
        WOO_CONSUMER_KEY="ck_hostile",
        WOO_CONSUMER_SECRET="cs_hostile",
    )
    return env


# Runs a command and writes the largest peak RSS of its children (KB) to a file. Measured from a fresh
# interpreter: a process forked from pytest counts pytest's own resident memory in its peak (Linux carries
# the pre-exec high-water mark into ru_maxrss), and pytest holds this test's 50 MB store.
_MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(done.returncode)
"""


def run_measured(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], int]:
    """(the finished `wcsync ARGS`, the peak RSS in KB of its whole process tree)."""
    report = tmp_path / "peak-rss-kb"
    done = run_in_repo(
        [sys.executable, "-c", _MEASURE, str(report), sys.executable, "-m", "cli.main", *args],
        env=env,
        timeout=300,
    )
    return done, int(report.read_text())


def test_a_50_mb_page_keeps_the_sync_in_bounded_memory(database_url: str, tmp_path: Path) -> None:
    migrate(DatabaseConfig.from_url(database_url))
    # 95 records of 500 KB and 5 good ones on page 1 (about 50 MB as one answer), 3 good ones on page 2.
    blob = "x" * 500_000
    first = [good(i, meta_data=[{"id": 1, "key": "blob", "value": blob}]) for i in range(1, 101)]
    for i in (10, 30, 50, 70, 90):
        first[i - 1] = good(i)
    with HostileStore([first, [good(201), good(202), good(203)]]) as store:
        done, peak_kb = run_measured(
            ["start", "--json", "--batch-size", "20"], _hostile_env(database_url, store), tmp_path
        )
    stdout, stderr, status = done.stdout, done.stderr, done.returncode
    assert status == 1, stderr  # finished with failed lines
    document = json.loads(stdout)
    assert document["createdCount"] == 8 and document["failedCount"] == 95 and document["totalCount"] == 103
    peak_mb = peak_kb / 1024
    print(f"peak RSS of the sync: {peak_mb:.0f} MB")
    # Before the answer cap and the one-by-one fetch this page took the process to ~485 MB.
    assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize("batch_delay_ms", [0, 1])
def test_records_read_back_for_a_resume_are_the_cleaned_ones(services: Services, batch_delay_ms: int) -> None:
    """What the log holds is what may be stored: a queue's drafts replay from its events unchanged. A
    page saved whole (no batch delay) holds the record once, in the customer's event, and names it in
    LinesAdded by id and digest; with a delay the page's records wait in LinesAdded itself."""
    with HostileStore([[good(40, first_name="x\x00y")]]) as store:
        outcome = sync(services, store, batch_delay_ms=batch_delay_ms)
    events = [
        services.app.mapper.to_domain_event(n)
        for n in services.app.recorder.select_notifications(start=1, limit=1000)
    ]
    added = [e for e in events if isinstance(e, SyncQueue.LinesAdded)]
    [registered] = [e for e in events if isinstance(e, Customer.Registered)]
    assert outcome.state == "done"
    assert registered.record["first_name"] == "x\ufffdy"
    if batch_delay_ms:
        assert [r["first_name"] for e in added for r in e.records] == ["x\ufffdy"]
        assert [e.processed for e in added] == [[]]
    else:
        assert [e.records for e in added] == [[]]
        assert [e.processed for e in added] == [[[40, registered.digest]]]


@pytest.mark.parametrize("options", [{"per_page": 0}, {"timeout_s": 0}, {"concurrency": 33}, {"role": ""}])
def test_client_options_out_of_bounds_are_refused_with_the_field_named(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options)).removesuffix("_s")):
        ClientOptions(**options)


def test_the_batch_delay_comes_between_batches_across_pages_too(services: Services) -> None:
    """batch_size >= per_page once meant no pause at all: each page's one batch is the first of its step."""
    pages = [[good(60 + 5 * p + i) for i in range(5)] for p in range(3)]
    with HostileStore(pages) as store:
        engine = services.engine("acme")
        settings = store_of(store)
        options = QueueOptions(batch_size=5, per_page=5, batch_delay_ms=300)
        outcome = asyncio.run(engine.start(settings, options, FAST))
    assert outcome.counts["created"] == 15
    done = [
        services.app.mapper.to_domain_event(n).timestamp
        for n in services.app.recorder.select_notifications(start=1, limit=1000)
        if n.topic.endswith("SyncQueue.LinesDone")
    ]
    assert len(done) == 3
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(done)]
    assert all(gap >= 0.3 for gap in gaps), gaps


def test_a_failure_nobody_foresaw_leaves_the_queue_resumable_and_saying_why(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import infrastructure.services.sync as engine_module

    real = engine_module.sync_batch
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a bug in a batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "sync_batch", flaky)
    # The second page's batch fails: the first page is saved, the second (saved whole or not at all) is not.
    with HostileStore([[good(70 + i) for i in range(10)], [good(80 + i) for i in range(10)]]) as store:
        with pytest.raises(
            engine_module.RunFailed, match="unexpected error: RuntimeError: a bug in a batch"
        ) as failed:
            sync(services, store, per_page=10)
        assert "wcsync resume" in str(failed.value) and failed.value.exit_code == 70
        services.catch_up()
        [queue] = queries.list_queues(services.projections, "acme")
        assert queue["state"] == "processing" and queue["doneCount"] == 10 and queue["draftCount"] == 0
        assert services.app.get_queue(UUID(queue["queueId"])).pages_recorded == 1
        activity = queries.activity(services.projections, "acme", queue["queueId"])
        stopped = [row for row in activity if row["activityType"] == "run_stopped"]
        assert len(stopped) == 1 and "unexpected error: RuntimeError" in stopped[0]["message"]

        monkeypatch.setattr(engine_module, "sync_batch", real)
        settings = store_of(store)
        resumed = asyncio.run(services.engine("acme").resume(UUID(queue["queueId"]), settings, FAST))
    assert resumed.state == "done" and resumed.counts["created"] == 20
