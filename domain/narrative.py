"""Every queue event put into words once, for both of its readers: the activity log an operator reads
(projections/activity.py, one table row per ``Activity``) and the audit timeline
(infrastructure/services/audit.py, one row per ``Step``).

Pure: no I/O, domain and stdlib only. ``describe`` returns what an event did as a list of ``Entry``, each
with the activity log's row, the timeline's row, or both when they tell the same thing. The two readers are
told things differently (a sentence for an operator with details for the table; for an auditor the lines
concerned, an outcome and a terse message), and both wordings stay as they have always been; they also
split some events differently (a page is one activity row, but a timeline row for its added customers and
one for its unchanged ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.queue import SyncQueue

# The activity type of a queue's first row (the activity projection finds a queue's org by it).
QUEUE_CREATED = "queue_created"

_MODE_WORDS = {"start": "started", "resume": "resumed", "retry": "started for a retry"}


@dataclass(frozen=True)
class Activity:
    """A row of the activity log: its type, status (info | success | warning | error), message, details."""

    type: str
    status: str
    message: str
    details: dict[str, Any] | None


@dataclass(frozen=True)
class Step:
    """A row of the audit timeline: the customer ids (lines) it names, its outcome, message, details."""

    lines: tuple[int, ...]
    outcome: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One thing an event did: its activity log row and its timeline row (None where that reader has none)."""

    activity: Activity | None = None
    step: Step | None = None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _ids(records: Iterable[Any]) -> list[int]:
    return [record["id"] for record in records if isinstance(record, dict) and "id" in record]


def _where(page: int | None) -> str:
    return f"page {page}" if page is not None else "reconciliation"


def _both(activity: Activity, step: Step) -> list[Entry]:
    return [Entry(activity, step)]


def describe(event: Any) -> list[Entry]:
    """What one queue event did, in words, in order. An event of another kind has a timeline row of its
    name and no activity."""
    if isinstance(event, SyncQueue.Created):
        created = f"'{event.queue_name}' created for {event.store_url} by {event.started_by}"
        return _both(
            Activity(
                QUEUE_CREATED,
                "info",
                f"Queue {created}",
                {
                    "options": dict(event.options),
                    "store_url": event.store_url,
                    "started_by": event.started_by,
                },
            ),
            Step((), "created", f"queue {created}", {"options": dict(event.options)}),
        )
    if isinstance(event, SyncQueue.ProcessingStarted):
        words = _MODE_WORDS.get(event.mode, event.mode)
        return _both(
            Activity("processing_started", "info", f"Processing {words}", {"mode": event.mode}),
            Step((), "processing", f"processing started ({event.mode})"),
        )
    if isinstance(event, SyncQueue.LinesAdded):
        return _lines_added(event.page, _ids(event.records), getattr(event, "unchanged", None) or ())
    if isinstance(event, SyncQueue.LinesRefetched):
        ids = _ids(event.records)
        return _both(
            Activity(
                "lines_refetched",
                "info",
                f"{_plural(len(ids), 'customer')} fetched again for a retry",
                {"count": len(ids), "customer_ids": ids},
            ),
            Step(tuple(ids), "refetched", f"{len(ids)} customer(s) fetched again for a retry"),
        )
    if isinstance(event, SyncQueue.LinesRejected):
        where = _where(event.page)
        return [
            Entry(
                Activity(
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
                ),
                Step(
                    (entry["id"],),
                    "failed",
                    f"{where}: attempt 1: {entry['error']} (record of {entry['bytes']} bytes, "
                    f"sha256 {entry['digest'] or 'not read'})",
                ),
            )
            for entry in event.rejected
        ]
    if isinstance(event, SyncQueue.LinesDone):
        counts = {result: len(ids) for result, ids in event.results.items()}
        parts = [f"{n} {result}" for result, n in counts.items() if n]
        summary = Activity(
            "batch_processed", "success", f"Batch processed: {', '.join(parts) or 'nothing'}", counts
        )
        return [Entry(activity=summary)] + [
            Entry(step=Step(tuple(ids), result, f"{len(ids)} line(s) done: {result}"))
            for result, ids in event.results.items()
            if ids
        ]
    if isinstance(event, SyncQueue.LinesFailed):
        return [
            Entry(
                Activity(
                    "line_failed",
                    "error",
                    f"Customer {entry['id']} failed (attempt {entry['attempt']}): {entry['error']}",
                    {"woo_customer_id": entry["id"], "attempt": entry["attempt"], "error": entry["error"]},
                ),
                Step((entry["id"],), "failed", f"attempt {entry['attempt']}: {entry['error']}"),
            )
            for entry in event.failures
        ]
    if isinstance(event, SyncQueue.LinesCancelled):
        count = len(event.ids)
        return _both(
            Activity(
                "lines_cancelled",
                "warning",
                f"{_plural(count, 'line')} cancelled: {event.reason}",
                {"count": count, "reason": event.reason, "customer_ids": list(event.ids)},
            ),
            Step(tuple(event.ids), "cancelled", event.reason),
        )
    if isinstance(event, SyncQueue.FetchFinished):
        text = f"Fetch finished: {_plural(event.total, 'customer')} in {_plural(event.pages, 'page')}"
        if not event.complete:
            text += " (incomplete: the scan of the store was cut short)"
        return _both(
            Activity(
                "fetch_finished",
                "success" if event.complete else "warning",
                text,
                {"pages": event.pages, "total": event.total, "complete": event.complete},
            ),
            Step(
                (),
                "fetched" if event.complete else "fetched (incomplete)",
                f"fetch finished: {event.total} customer(s) on {event.pages} page(s)",
            ),
        )
    if isinstance(event, SyncQueue.FetchFailed):
        return _both(
            Activity(
                "fetch_failed",
                "error",
                f"Fetching page {event.next_page} failed: {event.error}",
                {"next_page": event.next_page, "error": event.error},
            ),
            Step((), "fetch failed", f"{event.error} (next page {event.next_page})"),
        )
    if isinstance(event, SyncQueue.StoreIncident):
        return _both(
            Activity(event.activity_type, event.status, event.message, dict(event.details)),
            Step((), event.status, event.message, {"activity": event.activity_type}),
        )
    if isinstance(event, SyncQueue.RetryRequested):
        count = len(event.ids)
        return _both(
            Activity(
                "retry_requested",
                "info",
                f"Retry requested by {event.requested_by} for {_plural(count, 'failed customer')}",
                {"count": count, "requested_by": event.requested_by, "customer_ids": list(event.ids)},
            ),
            Step(tuple(event.ids), "retry", f"retry requested by {event.requested_by}"),
        )
    if isinstance(event, SyncQueue.ActionRequired):
        return _both(
            Activity(
                "action_required", "warning", f"Action required: {event.reason}", {"reason": event.reason}
            ),
            Step((), "action required", event.reason),
        )
    if isinstance(event, SyncQueue.ForcedDone):
        count = len(event.cancelled)
        return _both(
            Activity(
                "forced_done",
                "warning",
                f"Queue forced done by {event.forced_by}: {event.reason} ({_plural(count, 'line')} cancelled)",
                {"reason": event.reason, "forced_by": event.forced_by, "cancelled": count},
            ),
            Step(tuple(event.cancelled), "forced done", f"forced done by {event.forced_by}: {event.reason}"),
        )
    if isinstance(event, SyncQueue.Finished):
        if event.state == "done":
            finished = Activity(
                "queue_done", "success", "Queue done: every customer processed", {"state": event.state}
            )
        else:
            finished = Activity(
                "queue_failed",
                "error",
                "Queue finished with failed customers: see the failed lines, then retry or force-done",
                {"state": event.state},
            )
        return _both(finished, Step((), event.state, f"processing run finished: {event.state}"))
    return [Entry(step=Step((), "", type(event).__name__))]


def _lines_added(page: int | None, added: list[int], unchanged_rows: Sequence[Sequence[Any]]) -> list[Entry]:
    """A page of the store (or a reconciliation's customers): one activity row; timeline rows for the
    customers recorded to process and for those unchanged since the last sync (or one saying there were none)."""
    unchanged = [int(row[0]) for row in unchanged_rows]
    ids = added + unchanged
    details: dict[str, Any] = {"page": page, "count": len(ids), "unchanged": len(unchanged)}
    if ids:
        details.update(first_customer_id=min(ids), last_customer_id=max(ids))
    text = _plural(len(ids), "customer") + (f" ({len(unchanged)} unchanged)" if unchanged else "")
    if page is None:
        activity = Activity("lines_added", "info", f"{text} added to the queue", details)
    else:
        activity = Activity("page_fetched", "success", f"Page {page} fetched: {text}", details)
    where = _where(page)
    steps: list[Step] = []
    if added:
        steps.append(Step(tuple(added), "added", f"{where}: {len(added)} customer(s) recorded to process"))
    if unchanged:
        steps.append(
            Step(
                tuple(unchanged),
                "unchanged",
                f"{where}: {len(unchanged)} customer(s) unchanged since last sync",
            )
        )
    steps = steps or [Step((), "added", f"{where}: no customers")]
    return [Entry(activity, steps[0])] + [Entry(step=step) for step in steps[1:]]
