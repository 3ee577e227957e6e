"""The SyncQueue aggregate: state machine, invariants, counts, snapshots and event versions. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from freezegun import freeze_time

from domain.errors import (
    DuplicateLineError,
    LineAlreadyFinishedError,
    NothingToRetryError,
    QueueFinishedError,
    UnknownLineError,
)
from domain.lines import LineBook
from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions


def new_queue(max_retries: int = 3) -> SyncQueue:
    return SyncQueue(
        org_id="acme",
        queue_name="customers",
        store_url="http://shop.test",
        options=QueueOptions(max_retries=max_retries).as_dict(),
        started_by="tester",
    )


def records(*ids: int) -> list[dict[str, object]]:
    return [{"id": i, "email": f"c{i}@example.com"} for i in ids]


def test_a_new_queue_is_draft_with_no_lines() -> None:
    queue = new_queue()
    assert queue.state == "draft"
    assert queue.counts()["total"] == 0
    assert queue.process_count == 0
    assert queue.progress == 0.0


@freeze_time("2026-03-01T10:00:00Z")
def test_processing_counts_runs_and_dates_them_from_the_event() -> None:
    queue = new_queue()
    queue.start_processing("start")
    assert queue.state == "processing"
    assert queue.process_count == 1
    assert queue.last_process_date == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def test_lines_move_draft_to_done_and_failed_with_consistent_counts() -> None:
    queue = new_queue()
    queue.start_processing("start")
    queue.add_lines(records(1, 2, 3, 4), page=1)
    queue.finish_lines({"created": [1], "updated": [2], "unchanged": [3]})
    queue.fail_lines({4: "email: 'x' is not a valid email address"})
    assert queue.counts() == {
        "total": 4,
        "draft": 0,
        "done": 3,
        "failed": 1,
        "cancelled": 0,
        "created": 1,
        "updated": 1,
        "unchanged": 1,
    }
    assert queue.progress == 75.0
    line = queue.lines.get(4)
    assert line is not None and line.attempts == 1 and "email" in (line.error or "")


def test_a_customer_is_added_once_per_queue() -> None:
    queue = new_queue()
    queue.add_lines(records(1, 2), page=1)
    with pytest.raises(DuplicateLineError):
        queue.add_lines(records(2), page=2)
    with pytest.raises(DuplicateLineError):
        queue.add_lines(records(7, 7), page=2)


def test_pages_are_recorded_in_order() -> None:
    queue = new_queue()
    queue.add_lines(records(1), page=1)
    with pytest.raises(ValueError, match="out of order"):
        queue.add_lines(records(5), page=3)
    assert queue.next_page == 2


def test_a_line_is_finished_once() -> None:
    queue = new_queue()
    queue.add_lines(records(1), page=1)
    queue.finish_lines({"created": [1]})
    with pytest.raises(LineAlreadyFinishedError):
        queue.finish_lines({"updated": [1]})
    with pytest.raises(LineAlreadyFinishedError):
        queue.fail_lines({1: "late"})
    with pytest.raises(UnknownLineError):
        queue.finish_lines({"created": [99]})


def test_retry_reopens_only_failed_lines_under_max_retries() -> None:
    queue = new_queue(max_retries=2)
    queue.start_processing("start")
    queue.add_lines(records(1, 2), page=1)
    queue.fail_lines({1: "bad", 2: "bad"})
    assert queue.request_retry("op") == [1, 2]
    queue.fail_lines({1: "still bad"})
    queue.finish_lines({"created": [2]})
    # Line 1 has now failed twice = max_retries: nothing is left to retry.
    with pytest.raises(NothingToRetryError, match="used all 2 attempts"):
        queue.request_retry("op")


def test_finishing_with_exhausted_lines_requires_action() -> None:
    queue = new_queue(max_retries=1)
    queue.start_processing("start")
    queue.add_lines(records(1, 2), page=1)
    queue.finish_lines({"created": [1]})
    queue.fail_lines({2: "bad"})
    assert queue.finish() == "failed"
    assert queue.is_action_required
    assert "1 line(s) failed 1 times" in (queue.action_required_reason or "")


def test_finishing_clean_is_done() -> None:
    queue = new_queue()
    queue.start_processing("start")
    queue.add_lines(records(1), page=1)
    queue.finish_lines({"unchanged": [1]})
    queue.finish_fetch(pages=1, total=1, complete=True)
    assert queue.finish() == "done"
    assert not queue.is_action_required


def test_cannot_finish_with_draft_lines() -> None:
    queue = new_queue()
    queue.add_lines(records(1), page=1)
    with pytest.raises(ValueError, match="still draft"):
        queue.finish()


def test_force_done_cancels_unfinished_lines_and_records_who_and_why() -> None:
    queue = new_queue()
    queue.start_processing("start")
    queue.add_lines(records(1, 2, 3), page=1)
    queue.finish_lines({"created": [1]})
    queue.fail_lines({2: "bad"})
    cancelled = queue.force_done("store migrated", "ops@acme")
    assert sorted(cancelled) == [2, 3]
    assert queue.state == "done"
    assert queue.counts()["cancelled"] == 2
    assert queue.progress == 100.0
    events = queue.collect_events()
    forced = [e for e in events if isinstance(e, SyncQueue.ForcedDone)]
    assert forced[0].forced_by == "ops@acme" and forced[0].reason == "store migrated"


def test_force_done_only_on_an_unfinished_queue() -> None:
    queue = new_queue()
    queue.force_done("first", "op")
    with pytest.raises(QueueFinishedError):
        queue.force_done("again", "op")
    with pytest.raises(QueueFinishedError):
        queue.add_lines(records(1), page=None)


def test_force_done_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        new_queue().force_done("  ", "op")


def test_replaying_the_events_rebuilds_the_same_state() -> None:
    queue = new_queue()
    queue.start_processing("start")
    queue.add_lines(records(1, 2, 3), page=1)
    queue.finish_lines({"created": [1, 2]})
    queue.fail_lines({3: "bad"})
    events = queue.collect_events()
    replayed: SyncQueue | None = None
    for event in events:
        replayed = event.mutate(replayed)  # type: ignore[arg-type]
    assert replayed is not None
    assert replayed.counts() == queue.counts()
    assert replayed.lines == queue.lines
    assert replayed.version == queue.version


def test_line_book_round_trips_through_rows() -> None:
    queue = new_queue()
    queue.add_lines(records(1, 2, 3), page=1)
    queue.finish_lines({"updated": [1]})
    queue.fail_lines({2: "bad"})
    # The first snapshot format, as the first version wrote it: one list of plain values per line.
    rows = [
        [cid, line.state, line.result, line.attempts, line.error, line.error_at and line.error_at.isoformat()]
        for cid, line in queue.lines.items()
    ]
    again = LineBook.from_rows(rows)
    assert again == queue.lines
    assert again.count("draft") == 1 and again.result_count("updated") == 1


def test_every_event_class_declares_its_version() -> None:
    event_classes = [
        value
        for value in vars(SyncQueue).values()
        if isinstance(value, type) and issubclass(value, SyncQueue.Event)
    ]
    assert len(event_classes) >= 14
    for cls in event_classes:
        assert cls.class_version >= 1, cls


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"per_page": 101}, "per_page"),
        ({"max_retries": 0}, "max_retries"),
        ({"batch_delay_ms": -1}, "batch_delay_ms"),
    ],
)
def test_options_are_checked(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueueOptions(**kwargs)


def test_line_book_round_trips_through_its_compact_snapshot_form() -> None:
    queue = new_queue()
    queue.start_processing("start")
    queue.add_lines(records(1, 2, 3, 4), page=1, unchanged=[(9, "d")])
    queue.finish_lines({"updated": [1]})
    queue.fail_lines({2: "bad"})
    queue.cancel_lines([3], "deleted in the store")
    compact = queue.lines.to_compact()
    assert set(compact) == {"ids", "codes", "details"} and isinstance(compact["ids"], str)
    assert [row[0] for row in compact["details"]] == [2, 3]  # only lines with attempts or an error
    again = LineBook.from_compact(compact)
    assert again == queue.lines
    assert (again.count("draft"), again.count("failed"), again.count("cancelled")) == (1, 1, 1)
    assert again.result_count("updated") == 1 and again.result_count("unchanged") == 1
    line = again.get(2)
    assert line is not None and line.attempts == 1 and line.error == "bad" and line.error_at is not None
