"""Queues and their lines: ``woo_customer_sync_queue`` and ``woo_customer_sync_queue_line``.

A batch loads the rows it touches, applies every event in memory and writes each touched row once. Counts
move only with a line's actual change of state, so a queue's counts always equal a count of its lines.
Lines and counts follow the SyncQueue aggregate's own rules (domain/queue.py, domain/lines.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.lines import CANCELLED, DONE, DRAFT, FAILED
from domain.queue import SyncQueue
from domain.queue_terms import Q_DONE, Q_DRAFT, Q_PROCESSING, RESULTS
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import BIGINT, BOOL, INT, JSON, TEXT, TS, UUID_, Column, Index, Table
from projections.base import (
    AGGREGATE_VERSION,
    CREATED_AT,
    ORG_ID,
    QUEUE_ID,
    STORE_URL,
    WOO_CUSTOMER_ID,
    Item,
    Projection,
    topics_of,
)

# Columns the queue and line tables share.
_STATE = Column("state", TEXT, not_null=True)
_PROCESS_COUNT = Column("process_count", INT, not_null=True)
_UPDATED_AT = Column("updated_at", TS, not_null=True)

# A queue's counts of its lines: in each state, and done with each result.
_STATE_COUNT = {
    DRAFT: "draft_count",
    DONE: "done_count",
    FAILED: "failed_count",
    CANCELLED: "cancelled_count",
}
_RESULT_COUNT = {result: f"{result}_count" for result in RESULTS}

QUEUE_TABLE = Table(
    "woo_customer_sync_queue",
    (
        Column("id", UUID_, not_null=True),
        ORG_ID,
        Column("queue_name", TEXT, not_null=True),
        STORE_URL,
        _STATE,
        *(
            Column(name, INT, not_null=True)
            for name in ("total_count", *_STATE_COUNT.values(), *_RESULT_COUNT.values())
        ),
        _PROCESS_COUNT,
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
        AGGREGATE_VERSION,
        CREATED_AT,
        _UPDATED_AT,
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
        QUEUE_ID,
        WOO_CUSTOMER_ID,
        ORG_ID,
        _STATE,
        Column("result", TEXT),
        Column("error_message", TEXT),
        _PROCESS_COUNT,
        Column("last_error_timestamp", TS),
        CREATED_AT,
        _UPDATED_AT,
    ),
    ("queue_id", "woo_customer_id"),
    (
        # The failed lines of a queue, newest error first. Partial: state changes with every line, and an
        # index led by (queue_id, state) would also tempt planners away from the primary key in updates.
        Index(
            "woo_customer_sync_queue_line_failed_idx",
            "queue_id, last_error_timestamp DESC",
            where="state = 'failed'",
        ),
        Index("woo_customer_sync_queue_line_org_idx", "org_id"),
    ),
)


class QueuesProjection(Projection):
    name = "queues"
    version = 1
    tables = (QUEUE_TABLE, LINE_TABLE)
    topics = topics_of(
        SyncQueue.Created,
        SyncQueue.ProcessingStarted,
        SyncQueue.LinesAdded,
        SyncQueue.LinesRejected,
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
    record_ids_only = topics_of(SyncQueue.LinesAdded)

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        events = [event for _, event in items]
        created = {e.originator_id for e in events if isinstance(e, SyncQueue.Created)}
        queues: dict[UUID, dict[str, Any]] = {
            row["id"]: row
            for row in db.load(QUEUE_TABLE, suffix, "id", sorted({e.originator_id for e in events} - created))
        }
        batch = _Batch(db, suffix)
        batch.load_moved(events)
        for event in events:
            queue_id: UUID = event.originator_id
            if isinstance(event, SyncQueue.Created):
                queues[queue_id] = self._new_queue(event)
                continue
            queue = queues.get(queue_id)
            if queue is None:  # an event of a queue this table never saw created: nothing to attach it to
                continue
            queue["updated_at"] = event.timestamp
            queue["version"] = event.originator_version
            self._apply(event, queue, batch)

        db.upsert(QUEUE_TABLE, suffix, queues.values())
        db.insert_dicts(LINE_TABLE, suffix, batch.new_lines.values())
        batch.write_unchanged()
        batch.write_changed()

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

    @staticmethod
    def _apply(event: Any, queue: dict[str, Any], batch: _Batch) -> None:
        at: datetime = event.timestamp
        if isinstance(event, SyncQueue.ProcessingStarted):
            queue["state"] = Q_PROCESSING
            queue["process_count"] += 1
            queue["last_process_date"] = at
        elif isinstance(event, SyncQueue.LinesAdded):
            for record in event.records:
                batch.add(queue, record["id"], at)
            # Customers processed in the same save (their records are in their own events) are added draft
            # too: the LinesDone saved with this event moves them (version 1 events have none).
            for cid, _digest in getattr(event, "processed", None) or ():
                batch.add(queue, cid, at)
            # Customers fetched exactly as last synced are added done at once (events before this field
            # existed have none).
            batch.add_unchanged(queue, [cid for cid, _digest in getattr(event, "unchanged", None) or ()], at)
            if event.page is not None:
                queue["pages_fetched"] = max(queue["pages_fetched"], event.page)
        elif isinstance(event, SyncQueue.LinesRejected):
            for entry in event.rejected:
                batch.add(queue, entry["id"], at)
                changes = {"error_message": entry["error"], "process_count": 1, "last_error_timestamp": at}
                batch.move(queue, [entry["id"]], (DRAFT,), FAILED, at, changes)
        elif isinstance(event, SyncQueue.LinesDone):
            for result, ids in event.results.items():
                batch.move(queue, ids, (DRAFT,), DONE, at, {"result": result})
        elif isinstance(event, SyncQueue.LinesFailed):
            for entry in event.failures:
                changes = {
                    "error_message": entry["error"],
                    "process_count": entry["attempt"],
                    "last_error_timestamp": at,
                }
                batch.move(queue, [entry["id"]], (DRAFT,), FAILED, at, changes)
        elif isinstance(event, SyncQueue.LinesCancelled):
            batch.move(queue, event.ids, (DRAFT,), CANCELLED, at, {"error_message": event.reason})
        elif isinstance(event, SyncQueue.FetchFinished):
            queue["fetch_finished"] = True
            queue["fetch_complete"] = event.complete
        elif isinstance(event, SyncQueue.FetchFailed):
            queue["state"] = "failed"
            queue["fetch_error"] = event.error
        elif isinstance(event, SyncQueue.RetryRequested):
            batch.move(queue, event.ids, (FAILED,), DRAFT, at, {})
            queue["state"] = Q_PROCESSING
        elif isinstance(event, SyncQueue.ActionRequired):
            queue["is_action_required"] = True
            queue["action_required_reason"] = event.reason
        elif isinstance(event, SyncQueue.ForcedDone):
            changes = {"error_message": f"forced done: {event.reason}"}
            batch.move(queue, event.cancelled, (DRAFT, FAILED), CANCELLED, at, changes)
            queue["state"] = Q_DONE
            queue["forced_done_reason"] = event.reason
            queue["forced_by"] = event.forced_by
            queue["is_action_required"] = False
        elif isinstance(event, SyncQueue.Finished):
            queue["state"] = event.state


class _Batch:
    """The lines a batch touches, in memory: lines added in this batch (whole rows), and the states of the
    stored lines its events may move (read once at the start, a set-based read per queue). Written once at
    the end: new lines appended, and the columns that changed of stored lines set by one UPDATE per kind of
    change (a statement per moving event was 2,000 round trips for a 100,000-customer sync). A line moves
    only from the states the aggregate allows, and the queue's counts move by exactly the lines that moved,
    so counts always equal a count of the lines table."""

    def __init__(self, db: Database, suffix: str) -> None:
        self.db = db
        self.suffix = suffix
        self.new_lines: dict[tuple[UUID, int], dict[str, Any]] = {}
        # Lines added done and unchanged (add_unchanged), by queue: (org id, ids, their events' timestamps).
        # They never move again (every move is from draft or failed), so they are written by column.
        self.unchanged: dict[UUID, tuple[str, list[int], list[datetime]]] = {}
        self.unchanged_keys: set[tuple[UUID, int]] = set()
        # The stored lines' states, and then the columns each move set: {"state": ..., column: value}.
        self.stored_lines: dict[tuple[UUID, int], dict[str, Any]] = {}
        self.changed: set[tuple[UUID, int]] = set()

    def load_moved(self, events: Sequence[Any]) -> None:
        """Load the stored lines that the batch's events may move (not those the batch itself adds)."""
        added: dict[UUID, set[int]] = {}
        moved: dict[UUID, set[int]] = {}
        for event in events:
            queue_id: UUID = event.originator_id
            if isinstance(event, SyncQueue.LinesAdded):
                ids = added.setdefault(queue_id, set())
                ids.update(record["id"] for record in event.records)
                ids.update(cid for cid, _digest in getattr(event, "unchanged", None) or ())
                ids.update(cid for cid, _digest in getattr(event, "processed", None) or ())
            elif isinstance(event, SyncQueue.LinesRejected):
                added.setdefault(queue_id, set()).update(entry["id"] for entry in event.rejected)
            else:
                moved.setdefault(queue_id, set()).update(_moved_ids(event))
        table = f"{LINE_TABLE.name}{self.suffix}"
        for queue_id, ids in moved.items():
            wanted = sorted(ids - added.get(queue_id, set()))
            if not wanted:
                continue
            for condition, params in self.db.in_clause("woo_customer_id", wanted, BIGINT):
                for cid, state in self.db.fetchall(
                    f"SELECT woo_customer_id, state FROM {table} WHERE queue_id = %s AND {condition}",
                    [self.db.value(UUID_, queue_id), *params],
                ):
                    self.stored_lines[(queue_id, int(cid))] = {"state": state}

    def write_changed(self) -> None:
        """Set the changed columns of the stored lines that moved: one UPDATE per set of columns."""
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for key in self.changed:
            line = self.stored_lines[key]
            columns = tuple(sorted(line))
            by_columns.setdefault(columns, []).append((*key, *(line[c] for c in columns)))
        for columns, rows in by_columns.items():
            self.db.update(LINE_TABLE, self.suffix, columns, rows)

    def write_unchanged(self) -> None:
        """Append the unchanged lines, a statement per queue (Database.insert_columns)."""
        for queue_id, (org_id, ids, ats) in self.unchanged.items():
            same = {
                "queue_id": queue_id,
                "org_id": org_id,
                "state": DONE,
                "result": "unchanged",
                "error_message": None,
                "process_count": 0,
                "last_error_timestamp": None,
            }
            self.db.insert_columns(
                LINE_TABLE, self.suffix, same, {"woo_customer_id": ids, "created_at": ats, "updated_at": ats}
            )

    def add(self, queue: dict[str, Any], cid: int, at: datetime, result: str | None = None) -> None:
        key = (queue["id"], cid)
        if key in self.new_lines or key in self.unchanged_keys:
            return
        self.new_lines[key] = {
            "queue_id": queue["id"],
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
        if result is not None:
            self.move(queue, [cid], (DRAFT,), DONE, at, {"result": result})

    def add_unchanged(self, queue: dict[str, Any], ids: Iterable[int], at: datetime) -> None:
        """Lines added done with the result "unchanged" at once: what ``add`` then ``move`` leave, in one
        step and with the counts moved once for all (an unchanged re-sync adds a line per customer this way,
        100,000 for a 100,000-customer store)."""
        queue_id = queue["id"]
        new_lines, keys = self.new_lines, self.unchanged_keys
        _org, added_ids, ats = self.unchanged.setdefault(queue_id, (queue["org_id"], [], []))
        added = 0
        for cid in ids:
            key = (queue_id, cid)
            if key in new_lines or key in keys:
                continue
            keys.add(key)
            added_ids.append(cid)
            added += 1
        ats.extend([at] * added)
        queue["total_count"] += added
        queue[_STATE_COUNT[DONE]] += added
        queue[_RESULT_COUNT["unchanged"]] += added

    def move(
        self,
        queue: dict[str, Any],
        ids: Iterable[int],
        from_states: tuple[str, ...],
        state: str,
        at: datetime,
        changes: dict[str, Any],
    ) -> None:
        queue_id = queue["id"]
        result = changes.get("result")
        for cid in ids:
            key = (queue_id, cid)
            line = self.new_lines.get(key)
            if line is None:
                line = self.stored_lines.get(key)
                if line is None:  # a line this table never saw added: nothing to move
                    continue
            if line["state"] in from_states:
                _count(queue, line["state"], state, 1, result)
                line.update(changes, state=state, updated_at=at)
                if key in self.stored_lines:
                    self.changed.add(key)


def _moved_ids(event: Any) -> Iterable[int]:
    """The ids of the lines a queue event may move (see QueuesProjection._apply)."""
    if isinstance(event, SyncQueue.LinesDone):
        return [cid for ids in event.results.values() for cid in ids]
    if isinstance(event, SyncQueue.LinesFailed):
        return [entry["id"] for entry in event.failures]
    if isinstance(event, SyncQueue.LinesCancelled | SyncQueue.RetryRequested):
        return list(event.ids)
    if isinstance(event, SyncQueue.ForcedDone):
        return list(event.cancelled)
    return ()


def _count(queue: dict[str, Any], from_state: str, state: str, lines: int, result: str | None) -> None:
    queue[_STATE_COUNT[from_state]] -= lines
    queue[_STATE_COUNT[state]] += lines
    if result is not None:
        queue[_RESULT_COUNT[result]] += lines
