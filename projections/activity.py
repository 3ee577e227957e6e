"""The activity log an operator reads: ``woo_sync_activity``, one row per meaningful happening of a queue,
of a webhook delivery (``queue_id`` then holds the delivery's id, ``details`` its store) or of a store's
webhook receiver refusing requests (``queue_id``: the incident's id).

Rows are only ever appended. A row's id is derived from its event's notification id and its place among
that event's rows, so a rebuild writes the same ids, and applying an event twice would collide on the key
instead of logging it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from domain import narrative
from domain.narrative import QUEUE_CREATED, WEBHOOK_RECEIVED
from domain.queue import SyncQueue
from domain.store import Store
from domain.webhook import RefusedDeliveries, WebhookDelivery
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import BIGINT, JSON, TEXT, Column, Index, Table
from projections.base import CREATED_AT, ORG_ID, QUEUE_ID, Item, Projection, event_classes, topics_of

ACTIVITY_TABLE = Table(
    "woo_sync_activity",
    (
        Column("id", BIGINT, not_null=True),
        QUEUE_ID,
        ORG_ID,
        Column("activity_type", TEXT, not_null=True),
        Column("status", TEXT, not_null=True),
        Column("message", TEXT, not_null=True),
        Column("details", JSON),
        CREATED_AT,
    ),
    ("id",),
    (
        Index("woo_sync_activity_queue_idx", "queue_id, created_at"),
        Index("woo_sync_activity_org_idx", "org_id, created_at"),
    ),
)

# The queues' (and deliveries') orgs kept in memory at most; past it they are read from the table again.
MAX_KNOWN_ORGS = 100_000
# Room for this many rows per event in the id (notification id * ROWS_PER_EVENT + index).
ROWS_PER_EVENT = 1_000_000


def describe(event: Any) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(activity_type, status, message, details) rows for one event (domain.narrative's words)."""
    return [
        (entry.activity.type, entry.activity.status, entry.activity.message, entry.activity.details)
        for entry in narrative.describe(event)
        if entry.activity is not None
    ]


class ActivityProjection(Projection):
    name = "activity"
    version = 1
    tables = (ACTIVITY_TABLE,)
    # Every queue and delivery event: domain.narrative describes each (one with no activity row writes none).
    topics = (
        *topics_of(*event_classes(SyncQueue, WebhookDelivery, RefusedDeliveries)),
        *topics_of(Store.WebhookStatusSeen),
    )
    record_ids_only = topics_of(SyncQueue.LinesAdded, SyncQueue.LinesRefetched)

    def __init__(self) -> None:
        # queue id -> org id: facts of the event stream, true for every copy of the table.
        self._orgs: dict[UUID, str] = {}

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        if len(self._orgs) > MAX_KNOWN_ORGS:  # a delivery a row: bounded, the table has them all anyway
            self._orgs.clear()
        for _, event in items:
            if isinstance(
                event,
                SyncQueue.Created
                | WebhookDelivery.Received
                | RefusedDeliveries.Recorded
                | Store.WebhookStatusSeen,
            ):
                self._orgs[event.originator_id] = event.org_id
        missing = sorted({e.originator_id for _, e in items} - self._orgs.keys())
        for first in (QUEUE_CREATED, WEBHOOK_RECEIVED):
            if not missing:
                break
            for row in db.load(ACTIVITY_TABLE, suffix, "queue_id", missing, "activity_type = %s", [first]):
                self._orgs[row["queue_id"]] = row["org_id"]
            missing = [queue_id for queue_id in missing if queue_id not in self._orgs]

        rows: list[tuple[Any, ...]] = []
        for notification_id, event in items:
            org_id = self._orgs.get(event.originator_id)
            if org_id is None:  # a queue (or delivery) this table never saw created
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
