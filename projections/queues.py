"""Queues and their lines: ``woo_customer_sync_queue`` and ``woo_customer_sync_queue_line``.

A batch loads the rows it touches, applies every event in memory and writes each touched row once. Counts
move only with a line's actual change of state, so a queue's counts always equal a count of its lines.
Lines and counts follow the SyncQueue aggregate's own rules (domain/queue.py, domain/lines.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.lines import CANCELLED, DONE, DRAFT, FAILED
from domain.queue import Q_DONE, Q_DRAFT, Q_PROCESSING, RESULTS, SyncQueue
from projections.base import Item, Projection, topics_of
from projections.db import Database
from projections.schema import BIGINT, BOOL, INT, JSON, TEXT, TS, UUID_, Column, Index, Table

QUEUE_TABLE = Table(
    "woo_customer_sync_queue",
    (
        Column("id", UUID_, not_null=True),
        Column("org_id", TEXT, not_null=True),
        Column("queue_name", TEXT, not_null=True),
        Column("store_url", TEXT, not_null=True),
        Column("state", TEXT, not_null=True),
        Column("total_count", INT, not_null=True),
        Column("draft_count", INT, not_null=True),
        Column("done_count", INT, not_null=True),
        Column("failed_count", INT, not_null=True),
        Column("cancelled_count", INT, not_null=True),
        Column("created_count", INT, not_null=True),
        Column("updated_count", INT, not_null=True),
        Column("unchanged_count", INT, not_null=True),
        Column("process_count", INT, not_null=True),
        Column("is_action_required", BOOL, not_null=True),
        Column("action_required_reason", TEXT),
        Column("last_process_date", TS),
        Column("started_by", TEXT),
        Column("options", JSON),
        Column("pages_fetched", INT, not_null=True),
        Column("fetch_finished", BOOL, not_null=True),
        Column("fetch_complete", BOOL),
        Column("fetch_error", TEXT),
        Column("forced_done_reason", TEXT),
        Column("forced_by", TEXT),
        Column("version", INT, not_null=True),  # the aggregate version last applied
        Column("created_at", TS, not_null=True),
        Column("updated_at", TS, not_null=True),
    ),
    ("id",),
    (
        Index("woo_customer_sync_queue_org_created_idx", "org_id, created_at DESC"),
        Index("woo_customer_sync_queue_action_idx", "org_id, is_action_required"),
    ),
)

LINE_TABLE = Table(
    "woo_customer_sync_queue_line",
    (
        Column("queue_id", UUID_, not_null=True),
        Column("woo_customer_id", BIGINT, not_null=True),
        Column("org_id", TEXT, not_null=True),
        Column("state", TEXT, not_null=True),
        Column("result", TEXT),
        Column("error_message", TEXT),
        Column("process_count", INT, not_null=True),
        Column("last_error_timestamp", TS),
        Column("created_at", TS, not_null=True),
        Column("updated_at", TS, not_null=True),
    ),
    ("queue_id", "woo_customer_id"),
    (
        Index("woo_customer_sync_queue_line_state_idx", "queue_id, state, last_error_timestamp DESC"),
        Index("woo_customer_sync_queue_line_org_idx", "org_id"),
    ),
)

_STATE_COUNT = {
    DRAFT: "draft_count",
    DONE: "done_count",
    FAILED: "failed_count",
    CANCELLED: "cancelled_count",
}
_RESULT_COUNT = {result: f"{result}_count" for result in RESULTS}


def _referenced_ids(event: Any) -> list[int]:
    if isinstance(event, SyncQueue.LinesDone):
        return [cid for ids in event.results.values() for cid in ids]
    if isinstance(event, SyncQueue.LinesFailed):
        return [entry["id"] for entry in event.failures]
    if isinstance(event, SyncQueue.LinesCancelled | SyncQueue.RetryRequested):
        return list(event.ids)
    if isinstance(event, SyncQueue.ForcedDone):
        return list(event.cancelled)
    return []


class QueuesProjection(Projection):
    name = "queues"
    version = 1
    tables = (QUEUE_TABLE, LINE_TABLE)
    topics = topics_of(
        SyncQueue.Created,
        SyncQueue.ProcessingStarted,
        SyncQueue.LinesAdded,
        SyncQueue.LinesDone,
        SyncQueue.LinesFailed,
        SyncQueue.LinesCancelled,
        SyncQueue.FetchFinished,
        SyncQueue.FetchFailed,
        SyncQueue.RetryRequested,
        SyncQueue.ActionRequired,
        SyncQueue.ForcedDone,
        SyncQueue.Finished,
    )

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        events = [event for _, event in items]
        created = {e.originator_id for e in events if isinstance(e, SyncQueue.Created)}
        queues: dict[UUID, dict[str, Any]] = {
            row["id"]: row
            for row in db.load(QUEUE_TABLE, suffix, "id", sorted({e.originator_id for e in events} - created))
        }
        lines: dict[tuple[UUID, int], dict[str, Any]] = {}
        self._load_lines(db, suffix, events, lines)

        for event in events:
            queue_id: UUID = event.originator_id
            at: datetime = event.timestamp
            if isinstance(event, SyncQueue.Created):
                queues[queue_id] = self._new_queue(event)
                continue
            queue = queues.get(queue_id)
            if queue is None:  # an event of a queue this table never saw created: nothing to attach it to
                continue
            queue["updated_at"] = at
            queue["version"] = event.originator_version
            self._apply(event, queue, lines, at)

        db.upsert(QUEUE_TABLE, suffix, queues.values())
        db.upsert(LINE_TABLE, suffix, lines.values())

    # ----- loading -------------------------------------------------------------------------------------

    @staticmethod
    def _load_lines(
        db: Database, suffix: str, events: list[Any], lines: dict[tuple[UUID, int], dict[str, Any]]
    ) -> None:
        added: set[tuple[UUID, int]] = set()
        wanted: dict[UUID, set[int]] = {}
        for event in events:
            if isinstance(event, SyncQueue.LinesAdded):
                added.update((event.originator_id, record["id"]) for record in event.records)
                continue
            for cid in _referenced_ids(event):
                if (event.originator_id, cid) not in added:
                    wanted.setdefault(event.originator_id, set()).add(cid)
        for queue_id, ids in wanted.items():
            for row in db.load(
                LINE_TABLE,
                suffix,
                "woo_customer_id",
                sorted(ids),
                "queue_id = %s",
                [db.value(UUID_, queue_id)],
            ):
                lines[(queue_id, row["woo_customer_id"])] = row

    @staticmethod
    def _new_queue(event: SyncQueue.Created) -> dict[str, Any]:
        return {
            "id": event.originator_id,
            "org_id": event.org_id,
            "queue_name": event.queue_name,
            "store_url": event.store_url,
            "state": Q_DRAFT,
            "total_count": 0,
            "draft_count": 0,
            "done_count": 0,
            "failed_count": 0,
            "cancelled_count": 0,
            "created_count": 0,
            "updated_count": 0,
            "unchanged_count": 0,
            "process_count": 0,
            "is_action_required": False,
            "action_required_reason": None,
            "last_process_date": None,
            "started_by": event.started_by,
            "options": dict(event.options),
            "pages_fetched": 0,
            "fetch_finished": False,
            "fetch_complete": None,
            "fetch_error": None,
            "forced_done_reason": None,
            "forced_by": None,
            "version": event.originator_version,
            "created_at": event.timestamp,
            "updated_at": event.timestamp,
        }

    # ----- applying ------------------------------------------------------------------------------------

    def _apply(
        self, event: Any, queue: dict[str, Any], lines: dict[tuple[UUID, int], dict[str, Any]], at: datetime
    ) -> None:
        queue_id = queue["id"]

        def line(cid: int) -> dict[str, Any] | None:
            return lines.get((queue_id, cid))

        if isinstance(event, SyncQueue.ProcessingStarted):
            queue["state"] = Q_PROCESSING
            queue["process_count"] += 1
            queue["last_process_date"] = at
        elif isinstance(event, SyncQueue.LinesAdded):
            for record in event.records:
                cid = record["id"]
                if (queue_id, cid) in lines:
                    continue
                lines[(queue_id, cid)] = {
                    "queue_id": queue_id,
                    "woo_customer_id": cid,
                    "org_id": queue["org_id"],
                    "state": DRAFT,
                    "result": None,
                    "error_message": None,
                    "process_count": 0,
                    "last_error_timestamp": None,
                    "created_at": at,
                    "updated_at": at,
                }
                queue["total_count"] += 1
                queue["draft_count"] += 1
            if event.page is not None:
                queue["pages_fetched"] = max(queue["pages_fetched"], event.page)
        elif isinstance(event, SyncQueue.LinesDone):
            for result, ids in event.results.items():
                for cid in ids:
                    if (row := line(cid)) is not None:
                        _move(queue, row, DONE, at)
                        _set_result(queue, row, result)
        elif isinstance(event, SyncQueue.LinesFailed):
            for entry in event.failures:
                if (row := line(entry["id"])) is not None:
                    _move(queue, row, FAILED, at)
                    row["error_message"] = entry["error"]
                    row["process_count"] = entry["attempt"]
                    row["last_error_timestamp"] = at
        elif isinstance(event, SyncQueue.LinesCancelled):
            for cid in event.ids:
                if (row := line(cid)) is not None:
                    _move(queue, row, CANCELLED, at)
                    row["error_message"] = event.reason
        elif isinstance(event, SyncQueue.FetchFinished):
            queue["fetch_finished"] = True
            queue["fetch_complete"] = event.complete
        elif isinstance(event, SyncQueue.FetchFailed):
            queue["state"] = "failed"
            queue["fetch_error"] = event.error
        elif isinstance(event, SyncQueue.RetryRequested):
            for cid in event.ids:
                if (row := line(cid)) is not None:
                    _move(queue, row, DRAFT, at)
            queue["state"] = Q_PROCESSING
        elif isinstance(event, SyncQueue.ActionRequired):
            queue["is_action_required"] = True
            queue["action_required_reason"] = event.reason
        elif isinstance(event, SyncQueue.ForcedDone):
            for cid in event.cancelled:
                if (row := line(cid)) is not None:
                    _move(queue, row, CANCELLED, at)
                    row["error_message"] = f"forced done: {event.reason}"
            queue["state"] = Q_DONE
            queue["forced_done_reason"] = event.reason
            queue["forced_by"] = event.forced_by
            queue["is_action_required"] = False
        elif isinstance(event, SyncQueue.Finished):
            queue["state"] = event.state


def _move(queue: dict[str, Any], line: dict[str, Any], state: str, at: datetime) -> None:
    queue[_STATE_COUNT[line["state"]]] -= 1
    queue[_STATE_COUNT[state]] += 1
    line["state"] = state
    line["updated_at"] = at


def _set_result(queue: dict[str, Any], line: dict[str, Any], result: str) -> None:
    if line["result"] in _RESULT_COUNT:
        queue[_RESULT_COUNT[line["result"]]] -= 1
    queue[_RESULT_COUNT[result]] += 1
    line["result"] = result
