"""Every queue event put into words once, for both of its readers: the activity log an operator reads
(projections/activity.py, one table row per ``Activity``) and the audit timeline
(infrastructure/services/audit.py, one row per ``Step``).

Pure: no I/O, domain and stdlib only. ``describe`` returns what an event did as a list of ``Entry``, each
with the activity log's row, the timeline's row, or both when they tell the same thing. A customer's
history (``wcsync audit customer``) reads the timeline rows that name its line, as ``line_steps`` gives
them, and only of the events in ``LINE_EVENTS``: each event's describer says where it is registered
whether its rows name lines, and every event of SyncQueue has one (checked when this module is imported).

The two readers are told things differently (a sentence for an operator with details for the table; for an auditor the lines
concerned, an outcome and a terse message), and both wordings stay as they have always been; they also
split some events differently (a page is one activity row, but a timeline row for its added customers and
one for its unchanged ones).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from domain.queue import SyncQueue
from domain.store import WEBHOOK_ACTIVE, Store
from domain.webhook import RefusedDeliveries, WebhookDelivery

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
    """A row of the audit timeline: the customer ids (lines) it names, its outcome, message, details, and
    (``line_message``) its message in one customer's history where that differs from ``message``."""

    lines: tuple[int, ...]
    outcome: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    line_message: str | None = None


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


Describer = Callable[[Any], list[Entry]]
_DESCRIBERS: dict[type, Describer] = {}
_LINE_EVENTS: list[type] = []


def _describes(event_class: type, *, names_lines: bool) -> Callable[[Describer], Describer]:
    """Register the describer of ``event_class``; ``names_lines``: whether its timeline rows can name
    customers' lines (a customer's history reads only the events that can)."""

    def register(describer: Describer) -> Describer:
        _DESCRIBERS[event_class] = describer
        if names_lines:
            _LINE_EVENTS.append(event_class)
        return describer

    return register


def describe(event: Any) -> list[Entry]:
    """What one queue event did, in words, in order. An event of another kind has a timeline row of its
    name and no activity."""
    for cls in type(event).__mro__:
        describer = _DESCRIBERS.get(cls)
        if describer is not None:
            return describer(event)
    return [Entry(step=Step((), "", type(event).__name__))]


def line_steps(event: Any, woo_id: int) -> list[Step]:
    """The timeline rows of one event that name the customer ``woo_id``, as that customer's history shows
    them: its line alone, in the row's ``line_message`` where it has one."""
    return [
        replace(
            step, lines=(woo_id,), message=step.message if step.line_message is None else step.line_message
        )
        for entry in describe(event)
        if (step := entry.step) is not None and woo_id in step.lines
    ]


@_describes(SyncQueue.Created, names_lines=False)
def _created(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.ProcessingStarted, names_lines=False)
def _processing_started(event: Any) -> list[Entry]:
    words = _MODE_WORDS.get(event.mode, event.mode)
    return _both(
        Activity("processing_started", "info", f"Processing {words}", {"mode": event.mode}),
        Step((), "processing", f"processing started ({event.mode})"),
    )


@_describes(SyncQueue.LinesAdded, names_lines=True)
def _lines_added(event: Any) -> list[Entry]:
    # Lines processed in the same save (version 2) are recorded to process just as ``records``' are.
    processed = [int(row[0]) for row in getattr(event, "processed", None) or ()]
    return _added_lines(event.page, _ids(event.records) + processed, getattr(event, "unchanged", None) or ())


@_describes(SyncQueue.LinesRefetched, names_lines=True)
def _lines_refetched(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.LinesRejected, names_lines=True)
def _lines_rejected(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.LinesDone, names_lines=True)
def _lines_done(event: Any) -> list[Entry]:
    counts = {result: len(ids) for result, ids in event.results.items()}
    parts = [f"{n} {result}" for result, n in counts.items() if n]
    summary = Activity(
        "batch_processed", "success", f"Batch processed: {', '.join(parts) or 'nothing'}", counts
    )
    return [Entry(activity=summary)] + [
        Entry(
            step=Step(
                tuple(ids), result, f"{len(ids)} line(s) done: {result}", line_message=f"line done: {result}"
            )
        )
        for result, ids in event.results.items()
        if ids
    ]


@_describes(SyncQueue.LinesFailed, names_lines=True)
def _lines_failed(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.LinesCancelled, names_lines=True)
def _lines_cancelled(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.FetchFinished, names_lines=False)
def _fetch_finished(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.FetchFailed, names_lines=False)
def _fetch_failed(event: Any) -> list[Entry]:
    return _both(
        Activity(
            "fetch_failed",
            "error",
            f"Fetching page {event.next_page} failed: {event.error}",
            {"next_page": event.next_page, "error": event.error},
        ),
        Step((), "fetch failed", f"{event.error} (next page {event.next_page})"),
    )


@_describes(SyncQueue.StoreIncident, names_lines=False)
def _store_incident(event: Any) -> list[Entry]:
    return _both(
        Activity(event.activity_type, event.status, event.message, dict(event.details)),
        Step((), event.status, event.message, {"activity": event.activity_type}),
    )


@_describes(SyncQueue.RetryRequested, names_lines=True)
def _retry_requested(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.ActionRequired, names_lines=False)
def _action_required(event: Any) -> list[Entry]:
    return _both(
        Activity("action_required", "warning", f"Action required: {event.reason}", {"reason": event.reason}),
        Step((), "action required", event.reason),
    )


@_describes(SyncQueue.ForcedDone, names_lines=True)
def _forced_done(event: Any) -> list[Entry]:
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


@_describes(SyncQueue.Finished, names_lines=False)
def _finished(event: Any) -> list[Entry]:
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


def _added_lines(page: int | None, added: list[int], unchanged_rows: Sequence[Sequence[Any]]) -> list[Entry]:
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
        steps.append(
            Step(
                tuple(added),
                "added",
                f"{where}: {len(added)} customer(s) recorded to process",
                line_message=f"{where}: recorded to process",
            )
        )
    if unchanged:
        steps.append(
            Step(
                tuple(unchanged),
                "unchanged",
                f"{where}: {len(unchanged)} customer(s) unchanged since last sync",
                line_message="line done: unchanged",
            )
        )
    steps = steps or [Step((), "added", f"{where}: no customers")]
    return [Entry(activity, steps[0])] + [Entry(step=step) for step in steps[1:]]


# ----- webhook deliveries (their activity rows name the delivery, not a queue) ----------------------------

# The activity type of a delivery's first row (the activity projection finds a delivery's org by it).
WEBHOOK_RECEIVED = "webhook_received"
WEBHOOK_REFUSED = "webhook_refused"

_RESULT_WORDS = {
    "created": "created",
    "updated": "updated",
    "unchanged": "unchanged (the mirror already had it)",
    "deleted": "marked deleted",
    "already deleted": "already marked deleted",
    "not mirrored": "not mirrored (nothing to delete)",
    "older": "left as mirrored (the delivery is older than the mirror)",
}


def _customer_of(woo_id: int | None) -> str:
    return f"customer {woo_id}" if woo_id is not None else "a customer with no usable id"


@_describes(WebhookDelivery.Received, names_lines=False)
def _delivery_received(event: Any) -> list[Entry]:
    what = f"{event.topic} of {_customer_of(event.woo_id)} from {event.store_url}"
    details: dict[str, Any] = {
        "store_id": event.store_id,
        "store_url": event.store_url,
        "topic": event.topic,
        "customer_id": event.woo_id,
        "delivery_id": event.delivery_id,
        "webhook_id": event.webhook_id,
    }
    return _both(
        Activity(WEBHOOK_RECEIVED, "info", f"Webhook delivery received: {what}", details),
        Step((), "received", f"webhook delivery {event.delivery_id or '(no id)'}: {what}", details),
    )


@_describes(WebhookDelivery.Applied, names_lines=False)
def _delivery_applied(event: Any) -> list[Entry]:
    words = _RESULT_WORDS.get(event.result, event.result)
    return _both(
        Activity(
            "webhook_applied",
            "success",
            f"Webhook delivery applied: customer {words}",
            {"result": event.result, "customer_version": event.customer_version},
        ),
        Step((), event.result, f"webhook delivery applied: {words}"),
    )


@_describes(WebhookDelivery.Failed, names_lines=False)
def _delivery_failed(event: Any) -> list[Entry]:
    return _both(
        Activity("line_failed", "error", f"Webhook delivery failed: {event.reason}", {"error": event.reason}),
        Step((), "failed", f"webhook delivery failed: {event.reason}"),
    )


@_describes(RefusedDeliveries.Recorded, names_lines=False)
def _deliveries_refused(event: Any) -> list[Entry]:
    count = _plural(event.count, "request")
    message = (
        f"Webhook receiver refused {count} for store {event.store_id} since {event.first_at}: {event.reason}"
    )
    details = {
        "store_id": event.store_id,
        "reason": event.reason,
        "count": event.count,
        "since": event.first_at,
    }
    return _both(
        Activity(WEBHOOK_REFUSED, "warning", message, details),
        Step((), "refused", message, details),
    )


@_describes(Store.WebhookStatusSeen, names_lines=False)
def _webhook_status_seen(event: Any) -> list[Entry]:
    details = {"topic": event.topic, "status": event.status, "seen_by": event.actor}
    if event.status == WEBHOOK_ACTIVE:
        message = f"The store's {event.topic} webhook is active again"
        return _both(Activity("webhook_active", "info", message, details), Step((), "active", message))
    message = f"The store's {event.topic} webhook is {event.status}: the store pushes none of those changes"
    return _both(Activity("webhook_not_active", "warning", message, details), Step((), event.status, message))


# The events whose timeline rows can name customers' lines, in the order their describers are registered.
LINE_EVENTS: tuple[type, ...] = tuple(_LINE_EVENTS)

_UNDESCRIBED = [
    name
    for name, value in vars(SyncQueue).items()
    if isinstance(value, type)
    and issubclass(value, SyncQueue.Event)
    and value is not SyncQueue.Event
    and value not in _DESCRIBERS
]
if _UNDESCRIBED:  # a new event must be put into words here, and say whether it names lines
    raise TypeError(f"domain.narrative describes no SyncQueue.{', SyncQueue.'.join(_UNDESCRIBED)}")
