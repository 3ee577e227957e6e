"""The activity log an operator reads: ``woo_sync_activity``, one row per meaningful happening of a queue.

Rows are only ever appended. A row's id is derived from its event's notification id and its place among
that event's rows, so a rebuild writes the same ids, and applying an event twice would collide on the key
instead of logging it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from domain.queue import SyncQueue
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import BIGINT, JSON, TEXT, TS, UUID_, Column, Index, Table
from projections.base import Item, Projection, topics_of

ACTIVITY_TABLE = Table(
    "woo_sync_activity",
    (
        Column("id", BIGINT, not_null=True),
        Column("queue_id", UUID_, not_null=True),
        Column("org_id", TEXT, not_null=True),
        Column("activity_type", TEXT, not_null=True),
        Column("status", TEXT, not_null=True),
        Column("message", TEXT, not_null=True),
        Column("details", JSON),
        Column("created_at", TS, not_null=True),
    ),
    ("id",),
    (
        Index("woo_sync_activity_queue_idx", "queue_id, created_at"),
        Index("woo_sync_activity_org_idx", "org_id, created_at"),
    ),
)

# Room for this many rows per event in the id (notification id * ROWS_PER_EVENT + index).
ROWS_PER_EVENT = 1_000_000

QUEUE_CREATED = "queue_created"

_MODE_WORDS = {"start": "started", "resume": "resumed", "retry": "started for a retry"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe(event: Any) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(activity_type, status, message, details) rows for one queue event, in words for an operator."""
    if isinstance(event, SyncQueue.Created):
        options = dict(event.options)
        return [
            (
                QUEUE_CREATED,
                "info",
                f"Queue '{event.queue_name}' created for {event.store_url} by {event.started_by}",
                {"options": options, "store_url": event.store_url, "started_by": event.started_by},
            )
        ]
    if isinstance(event, SyncQueue.ProcessingStarted):
        words = _MODE_WORDS.get(event.mode, event.mode)
        return [("processing_started", "info", f"Processing {words}", {"mode": event.mode})]
    if isinstance(event, SyncQueue.LinesAdded):
        unchanged = [row[0] for row in getattr(event, "unchanged", None) or ()]
        ids = [record["id"] for record in event.records] + unchanged
        details: dict[str, Any] = {"page": event.page, "count": len(ids), "unchanged": len(unchanged)}
        if ids:
            details.update(first_customer_id=min(ids), last_customer_id=max(ids))
        text = _plural(len(ids), "customer") + (f" ({len(unchanged)} unchanged)" if unchanged else "")
        if event.page is None:
            return [("lines_added", "info", f"{text} added to the queue", details)]
        return [("page_fetched", "success", f"Page {event.page} fetched: {text}", details)]
    if isinstance(event, SyncQueue.LinesRefetched):
        count = len(event.records)
        return [
            (
                "lines_refetched",
                "info",
                f"{_plural(count, 'customer')} fetched again for a retry",
                {"count": count, "customer_ids": [r["id"] for r in event.records]},
            )
        ]
    if isinstance(event, SyncQueue.LinesRejected):
        return [
            (
                "line_failed",
                "error",
                f"Customer {entry['id']} failed (attempt 1): {entry['error']}",
                {
                    "woo_customer_id": entry["id"],
                    "attempt": 1,
                    "error": entry["error"],
                    "page": event.page,
                    "excerpt": entry["excerpt"],
                    "digest": entry["digest"],
                    "bytes": entry["bytes"],
                },
            )
            for entry in event.rejected
        ]
    if isinstance(event, SyncQueue.LinesDone):
        counts = {result: len(ids) for result, ids in event.results.items()}
        parts = [f"{n} {result}" for result, n in counts.items() if n]
        return [("batch_processed", "success", f"Batch processed: {', '.join(parts) or 'nothing'}", counts)]
    if isinstance(event, SyncQueue.LinesFailed):
        return [
            (
                "line_failed",
                "error",
                f"Customer {entry['id']} failed (attempt {entry['attempt']}): {entry['error']}",
                {"woo_customer_id": entry["id"], "attempt": entry["attempt"], "error": entry["error"]},
            )
            for entry in event.failures
        ]
    if isinstance(event, SyncQueue.LinesCancelled):
        count = len(event.ids)
        return [
            (
                "lines_cancelled",
                "warning",
                f"{_plural(count, 'line')} cancelled: {event.reason}",
                {"count": count, "reason": event.reason, "customer_ids": list(event.ids)},
            )
        ]
    if isinstance(event, SyncQueue.FetchFinished):
        text = f"Fetch finished: {_plural(event.total, 'customer')} in {_plural(event.pages, 'page')}"
        if not event.complete:
            text += " (incomplete: the scan of the store was cut short)"
        return [
            (
                "fetch_finished",
                "success" if event.complete else "warning",
                text,
                {"pages": event.pages, "total": event.total, "complete": event.complete},
            )
        ]
    if isinstance(event, SyncQueue.FetchFailed):
        return [
            (
                "fetch_failed",
                "error",
                f"Fetching page {event.next_page} failed: {event.error}",
                {"next_page": event.next_page, "error": event.error},
            )
        ]
    if isinstance(event, SyncQueue.StoreIncident):
        return [(event.activity_type, event.status, event.message, dict(event.details))]
    if isinstance(event, SyncQueue.RetryRequested):
        count = len(event.ids)
        return [
            (
                "retry_requested",
                "info",
                f"Retry requested by {event.requested_by} for {_plural(count, 'failed customer')}",
                {"count": count, "requested_by": event.requested_by, "customer_ids": list(event.ids)},
            )
        ]
    if isinstance(event, SyncQueue.ActionRequired):
        return [("action_required", "warning", f"Action required: {event.reason}", {"reason": event.reason})]
    if isinstance(event, SyncQueue.ForcedDone):
        count = len(event.cancelled)
        return [
            (
                "forced_done",
                "warning",
                f"Queue forced done by {event.forced_by}: {event.reason} ({_plural(count, 'line')} cancelled)",
                {"reason": event.reason, "forced_by": event.forced_by, "cancelled": count},
            )
        ]
    if isinstance(event, SyncQueue.Finished):
        if event.state == "done":
            return [("queue_done", "success", "Queue done: every customer processed", {"state": event.state})]
        return [
            (
                "queue_failed",
                "error",
                "Queue finished with failed customers: see the failed lines, then retry or force-done",
                {"state": event.state},
            )
        ]
    return []


class ActivityProjection(Projection):
    name = "activity"
    version = 1
    tables = (ACTIVITY_TABLE,)
    topics = topics_of(
        SyncQueue.Created,
        SyncQueue.ProcessingStarted,
        SyncQueue.LinesAdded,
        SyncQueue.LinesRefetched,
        SyncQueue.LinesRejected,
        SyncQueue.LinesDone,
        SyncQueue.LinesFailed,
        SyncQueue.LinesCancelled,
        SyncQueue.FetchFinished,
        SyncQueue.FetchFailed,
        SyncQueue.StoreIncident,
        SyncQueue.RetryRequested,
        SyncQueue.ActionRequired,
        SyncQueue.ForcedDone,
        SyncQueue.Finished,
    )
    record_ids_only = topics_of(SyncQueue.LinesAdded, SyncQueue.LinesRefetched)

    def __init__(self) -> None:
        # queue id -> org id: facts of the event stream, true for every copy of the table.
        self._orgs: dict[UUID, str] = {}

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        for _, event in items:
            if isinstance(event, SyncQueue.Created):
                self._orgs[event.originator_id] = event.org_id
        missing = sorted({e.originator_id for _, e in items} - self._orgs.keys())
        for row in db.load(
            ACTIVITY_TABLE, suffix, "queue_id", missing, "activity_type = %s", [QUEUE_CREATED]
        ):
            self._orgs[row["queue_id"]] = row["org_id"]

        rows: list[tuple[Any, ...]] = []
        for notification_id, event in items:
            org_id = self._orgs.get(event.originator_id)
            if org_id is None:  # a queue this table never saw created
                continue
            described = describe(event)
            if len(described) > ROWS_PER_EVENT:
                extra = len(described) - ROWS_PER_EVENT + 1
                described = described[: ROWS_PER_EVENT - 1]
                described.append(("line_failed", "error", f"... and {extra} more failed customers", None))
            for index, (activity_type, status, message, details) in enumerate(described):
                rows.append(
                    (
                        notification_id * ROWS_PER_EVENT + index,
                        event.originator_id,
                        org_id,
                        activity_type,
                        status,
                        message,
                        details,
                        event.timestamp,
                    )
                )
        db.insert(ACTIVITY_TABLE, suffix, rows)
