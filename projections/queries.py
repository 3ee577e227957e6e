"""The read side for the CLI and the API: plain dicts of JSON-ready values (times as ISO-8601 with offset).

Every function takes a ``source``: a ``ProjectionRunner`` (its connection is reused) or a
``DatabaseConfig`` (a connection is opened for the call and closed after). Results are whatever the
projections have applied so far; call ``runner.catch_up()`` first for read-your-writes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from typing import Any
from uuid import UUID

from domain import status
from domain.lines import IdSet
from infrastructure.adapters.projection_db import Database, iso
from infrastructure.adapters.schema import BOOL, POSTGRES, TS, UUID_, Table
from infrastructure.support.config import DatabaseConfig
from projections import quarantine
from projections.activity import ACTIVITY_TABLE
from projections.customers import CUSTOMER_TABLE
from projections.names import PROJECTION_NAMES
from projections.queues import LINE_TABLE, QUEUE_TABLE
from projections.runner import ProjectionRunner
from projections.stores import STORE_TABLE
from projections.webhooks import DELIVERY_TABLE, REFUSAL_TABLE

Source = ProjectionRunner | DatabaseConfig

_QUEUE_COLUMNS = (
    "id",
    "queue_name",
    "org_id",
    "store_url",
    "state",
    *(f"{name}_count" for name in status.COUNTS),
    "process_count",
    "is_action_required",
    "action_required_reason",
    "last_process_date",
    "created_at",
)


@contextmanager
def _database(source: Source) -> Iterator[Database]:
    if isinstance(source, ProjectionRunner):
        with source.db.reading() as db:
            yield db
        return
    db = Database(source)
    try:
        yield db
    finally:
        db.close()


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def _select(
    db: Database, table: Table, columns: tuple[str, ...], where: str, params: list[Any], tail: str = ""
) -> list[dict[str, Any]]:
    kinds = {c.name: c.kind for c in table.columns}
    decode = db.decoder([kinds[c] for c in columns])
    statement = f"SELECT {', '.join(columns)} FROM {table.name} WHERE {where} {tail}"
    return [
        {c: _json_ready(v) for c, v in zip(columns, decode(row), strict=True)}
        for row in db.fetchall(statement, params)
    ]


def _queue_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A queue row as its status (domain.status); with no lines, 100% once the queue is done."""
    finished = int(row["done_count"]) + int(row["cancelled_count"])
    return status.queue_status(
        queue_id=row["id"],
        queue_name=row["queue_name"],
        org_id=row["org_id"],
        store_url=row["store_url"],
        state=row["state"],
        counts={name: row[f"{name}_count"] for name in status.COUNTS},
        progress=status.progress(int(row["total_count"]), finished, done_when_empty=row["state"] == "done"),
        process_count=row["process_count"],
        is_action_required=row["is_action_required"],
        action_required_reason=row["action_required_reason"],
        last_process_date=row["last_process_date"],
        created_at=row["created_at"],
    )


def queue_status(source: Source, org_id: str, queue_id: UUID | None) -> dict[str, Any] | None:
    """The queue's status (the org's latest queue when ``queue_id`` is None); None when the org has no such queue."""
    with _database(source) as db:
        if queue_id is None:
            rows = _select(
                db,
                QUEUE_TABLE,
                _QUEUE_COLUMNS,
                "org_id = %s",
                [org_id],
                "ORDER BY created_at DESC, id DESC LIMIT 1",
            )
        else:
            rows = _select(
                db,
                QUEUE_TABLE,
                _QUEUE_COLUMNS,
                "org_id = %s AND id = %s",
                [org_id, db.value(UUID_, queue_id)],
            )
    return _queue_dict(rows[0]) if rows else None


def draft_status(org_id: str, queue_id: UUID, store_url: str | None) -> dict[str, Any]:
    """The status of a queue whose run has started but saved nothing yet: a draft with no lines."""
    return status.queue_status(
        queue_id=str(queue_id),
        queue_name=f"customers {store_url}",
        org_id=org_id,
        store_url=store_url,
        state="draft",
        counts=dict.fromkeys(status.COUNTS, 0),
        progress=status.progress(0, 0, done_when_empty=False),
        process_count=0,
        is_action_required=False,
        action_required_reason=None,
        last_process_date=None,
        created_at=None,
    )


def org_stores(source: Source, org_id: str) -> list[str]:
    """The stores the org has synced (the queue table as an index), sorted."""
    with _database(source) as db:
        rows = db.fetchall(
            f"SELECT DISTINCT store_url FROM {QUEUE_TABLE.name} WHERE org_id = %s ORDER BY store_url",
            [org_id],
        )
    return [str(row[0]) for row in rows]


def queues_with_line(source: Source, org_id: str, store_url: str, woo_customer_id: int) -> list[UUID]:
    """The ids of the store's queues that have a line for the customer, oldest queue first."""
    with _database(source) as db:
        decode = db.decoder([UUID_])
        rows = db.fetchall(
            f"SELECT q.id FROM {LINE_TABLE.name} l JOIN {QUEUE_TABLE.name} q ON q.id = l.queue_id "
            "WHERE l.org_id = %s AND l.woo_customer_id = %s AND q.store_url = %s ORDER BY q.created_at",
            [org_id, woo_customer_id, store_url],
        )
    return [decode(row)[0] for row in rows]


def store_queue_ids(source: Source, org_id: str, store_url: str, limit: int = 5) -> list[UUID]:
    """The ids of the org's latest queues of a store, newest first."""
    with _database(source) as db:
        decode = db.decoder([UUID_])
        rows = db.fetchall(
            f"SELECT id FROM {QUEUE_TABLE.name} WHERE org_id = %s AND store_url = %s "
            "ORDER BY created_at DESC, id DESC LIMIT %s",
            [org_id, store_url, int(limit)],
        )
    return [decode(row)[0] for row in rows]


def list_queues(source: Source, org_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The org's queues, newest first, with the same keys as ``queue_status``."""
    with _database(source) as db:
        rows = _select(
            db,
            QUEUE_TABLE,
            _QUEUE_COLUMNS,
            "org_id = %s",
            [org_id, int(limit)],
            "ORDER BY created_at DESC, id DESC LIMIT %s",
        )
    return [_queue_dict(row) for row in rows]


def failed_lines(
    source: Source, org_id: str, queue_id: UUID, limit: int | None = None
) -> list[dict[str, Any]]:
    """The queue's failed lines, most recent error first (the first ``limit`` only, when given: the
    dashboard shows a page of them; the JSON API and the CLI every one)."""
    with _database(source) as db:
        params: list[Any] = [org_id, db.value(UUID_, queue_id)]
        tail = "ORDER BY last_error_timestamp DESC, woo_customer_id"
        if limit is not None:
            tail += " LIMIT %s"
            params.append(int(limit))
        rows = _select(
            db,
            LINE_TABLE,
            ("woo_customer_id", "error_message", "process_count", "last_error_timestamp"),
            "org_id = %s AND queue_id = %s AND state = 'failed'",
            params,
            tail,
        )
    return [
        {
            "wooCustomerId": row["woo_customer_id"],
            "errorMessage": row["error_message"],
            "processCount": row["process_count"],
            "lastErrorTimestamp": row["last_error_timestamp"],
        }
        for row in rows
    ]


def activity(source: Source, org_id: str, queue_id: UUID, limit: int = 1000) -> list[dict[str, Any]]:
    """The queue's activity log, oldest first (the first ``limit`` rows): the activity projection's rows and
    one "projection_quarantined" row for each of the queue's events a projection set aside (at the event's
    time; see projections/quarantine.py)."""
    with _database(source) as db:
        rows = _select(
            db,
            ACTIVITY_TABLE,
            ("created_at", "activity_type", "status", "message", "details"),
            "org_id = %s AND queue_id = %s",
            [org_id, db.value(UUID_, queue_id), int(limit)],
            "ORDER BY created_at, id LIMIT %s",
        )
        set_aside = (
            quarantine.of_queue(db, QUEUE_TABLE.name, org_id, queue_id, PROJECTION_NAMES, limit)
            if quarantine.exists(db)
            else []
        )
    entries = [{**_activity_entry(row), "details": row["details"]} for row in rows]
    if not set_aside:
        return entries
    entries += [_quarantined_entry(row) for row in set_aside]
    entries.sort(key=lambda entry: str(entry["createdAt"]))  # ISO-8601 UTC: text order is time order
    return entries[:limit]


def _quarantined_entry(row: quarantine.Quarantined) -> dict[str, Any]:
    event = row.topic.rpartition(":")[2] or row.topic  # "domain.customer:Customer.Registered"
    details = row.as_dict()
    return {
        "createdAt": details["eventAt"] or details["quarantinedAt"],
        "activityType": quarantine.ACTIVITY_TYPE,
        "status": "error",
        "message": (
            f"The {row.projection} projection could not apply event {row.position} ({event}) and set it "
            f"aside: {row.reason}; `wcsync projections rebuild {row.projection}` retries it once fixed"
        ),
        "details": details,
    }


_INT8_END = 2**63
# A store's mirrored customers, not deleted (absent_customer_ids adds the range of each query).
_MIRRORED_IDS = (
    f"SELECT woo_customer_id AS id FROM {CUSTOMER_TABLE.name} "
    "WHERE org_id = %s AND store_url = %s AND is_deleted = %s"
)


def absent_customer_ids(
    source: Source, org_id: str, store_url: str, seen: Collection[int], chunk: int = 10_000
) -> Iterator[int]:
    """The store's mirrored customers (not deleted) whose ids are not in ``seen``, in ascending order: what a
    complete scan that saw ``seen`` marks deleted. PostgreSQL answers it without sending the mirrored ids
    back (a re-sync of 100,000 customers read all 100,000 to find none absent), a range of ``chunk`` seen
    ids at a time: each range's mirrored ids less those seen ids, sent as one parameter, then every mirrored
    id past the last seen one. Memory stays that of one range: the million seen ids of a million-customer
    first sync, sent at once as one text, were ~40 MB of its peak. SQLite, local, streams the mirrored ids
    and leaves out the seen ones."""
    with _database(source) as db:
        postgres = db.dialect == POSTGRES
        not_deleted = db.value(BOOL, False)
    if not postgres:
        yield from (cid for cid in iter_known_customer_ids(source, org_id, store_url) if cid not in seen)
        return
    ordered: Iterable[int] = seen if isinstance(seen, IdSet) else sorted(seen)  # an IdSet iterates in order
    # Only ids a BIGINT column can hold (an older log's wider ids can match no row anyway).
    valid = (cid for cid in ordered if 0 < cid < _INT8_END)
    after: int | None = None  # the ranges so far covered every id up to this one
    while True:
        block = list(islice(valid, chunk))  # none left: the last range is every id past ``after``
        mirrored = _MIRRORED_IDS
        params: list[Any] = [org_id, store_url, not_deleted]
        if after is not None:
            mirrored += " AND woo_customer_id > %s"
            params.append(after)
        if block:
            # EXCEPT (a hashed or sorted set operation), not an anti-join: on a table without statistics
            # yet (a first sync's) the planner took the join for a nested loop, 100,000 x 100,000
            # comparisons (274 s).
            statement = (
                f"SELECT id FROM ({mirrored} AND woo_customer_id <= %s "
                "EXCEPT SELECT unnest(string_to_array(%s, ',')::int8[])) AS absent ORDER BY id"
            )
            params += [block[-1], ",".join(map(str, block))]
        else:
            statement = f"{mirrored} ORDER BY id"
        with _database(source) as db:
            rows = db.fetchall(statement, params)
        for row in rows:
            yield int(row[0])
        if not block:
            return
        after = block[-1]


def store_has_customers(source: Source, org_id: str, store_url: str) -> bool:
    """Whether the read model holds any customer of the store, deleted ones included (one index probe)."""
    with _database(source) as db:
        return bool(
            db.fetchall(
                f"SELECT 1 FROM {CUSTOMER_TABLE.name} WHERE org_id = %s AND store_url = %s LIMIT 1",
                [org_id, store_url],
            )
        )


def known_customer_ids(source: Source, org_id: str, store_url: str) -> set[int]:
    """WooCommerce ids of the store's mirrored customers that are not deleted."""
    return set(iter_known_customer_ids(source, org_id, store_url))


def iter_known_customer_ids(source: Source, org_id: str, store_url: str, page: int = 10_000) -> Iterator[int]:
    """known_customer_ids in ascending order, read ``page`` at a time (a million ids never sit in memory
    as one result)."""
    after = 0
    while True:
        with _database(source) as db:
            rows = db.fetchall(
                f"SELECT woo_customer_id FROM {CUSTOMER_TABLE.name} "
                "WHERE org_id = %s AND store_url = %s AND is_deleted = %s AND woo_customer_id > %s "
                "ORDER BY woo_customer_id LIMIT %s",
                [org_id, store_url, db.value(BOOL, False), after, page],
            )
        for row in rows:
            yield int(row[0])
        if len(rows) < page:
            return
        after = int(rows[-1][0])


def customers(source: Source, org_id: str, store_url: str | None = None) -> list[dict[str, Any]]:
    """The org's mirrored customers (of one store when ``store_url`` is given), by store and WooCommerce id.

    Keys are the ``woo_customers`` column names; JSON columns come back as dicts, times as ISO-8601."""
    where, params = "org_id = %s", [org_id]
    if store_url is not None:
        where += " AND store_url = %s"
        params.append(store_url)
    with _database(source) as db:
        return _select(
            db,
            CUSTOMER_TABLE,
            CUSTOMER_TABLE.column_names,
            where,
            params,
            "ORDER BY store_url, woo_customer_id",
        )


_STORE_COLUMNS = (
    "store_id",
    "url",
    "name",
    "key_fingerprint",
    "registered_at",
    "registered_by",
    "updated_at",
    "removed",
    "removed_at",
    "webhooks_installed",
    "webhooks_action_required",
)


def _store_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "storeId": row["store_id"],
        "url": row["url"],
        "name": row["name"],
        "keyFingerprint": row["key_fingerprint"],
        "registeredAt": row["registered_at"],
        "registeredBy": row["registered_by"],
        "updatedAt": row["updated_at"],
        "removed": bool(row["removed"]),
        "removedAt": row["removed_at"],
        "webhooksInstalled": bool(row["webhooks_installed"]),
        "actionRequired": row["webhooks_action_required"],
    }


def _stores(
    db: Database, org_id: str, where: str, params: list[Any], include_removed: bool
) -> list[dict[str, Any]]:
    if not include_removed:
        where += " AND removed = %s"
        params = [*params, db.value(BOOL, False)]
    rows = _select(
        db, STORE_TABLE, _STORE_COLUMNS, f"org_id = %s{where}", [org_id, *params], "ORDER BY url, store_id"
    )
    return [_store_dict(row) for row in rows]


def list_stores(source: Source, org_id: str, include_removed: bool = False) -> list[dict[str, Any]]:
    """The org's registered stores by URL (with the removed ones, ``removed`` true, on request)."""
    with _database(source) as db:
        return _stores(db, org_id, "", [], include_removed)


def store(
    source: Source, org_id: str, store_id: UUID, include_removed: bool = False
) -> dict[str, Any] | None:
    """The org's store ``store_id`` as ``list_stores`` gives it; None when the org has no such store (another
    org's store is the same answer), and for a removed one unless ``include_removed``."""
    with _database(source) as db:
        found = _stores(db, org_id, " AND store_id = %s", [db.value(UUID_, store_id)], include_removed)
    return found[0] if found else None


def store_by_url(
    source: Source, org_id: str, url: str, include_removed: bool = False
) -> dict[str, Any] | None:
    """The org's store registered at ``url`` (normalised as it was registered), as ``store`` gives it."""
    with _database(source) as db:
        found = _stores(db, org_id, " AND url = %s", [url], include_removed)
    return found[0] if found else None


_DELIVERY_COLUMNS = (
    "delivery_key",
    "topic",
    "woo_customer_id",
    "delivery_id",
    "webhook_id",
    "received_at",
    "state",
    "result",
    "error",
    "applied_at",
)


def webhook_deliveries(source: Source, org_id: str, store_id: UUID, limit: int = 100) -> list[dict[str, Any]]:
    """The store's latest webhook deliveries, newest first (camelCase keys, as the API and --json show)."""
    with _database(source) as db:
        rows = _select(
            db,
            DELIVERY_TABLE,
            _DELIVERY_COLUMNS,
            "org_id = %s AND store_id = %s",
            [org_id, db.value(UUID_, store_id)],
            f"ORDER BY received_at DESC, delivery_key LIMIT {int(limit)}",
        )
    return [{_camel(name): value for name, value in row.items()} for row in rows]


def webhook_summary(source: Source, org_id: str, store_id: UUID) -> dict[str, Any]:
    """What the receiving side knows of a store's webhooks: the last delivery received, the deliveries by
    state, and the requests refused for their signature (with the last incident's time and reason)."""
    with _database(source) as db:
        key = db.value(UUID_, store_id)
        states = {
            str(state): int(count)
            for state, count in db.fetchall(
                f"SELECT state, count(*) FROM {DELIVERY_TABLE.name} WHERE org_id = %s AND store_id = %s "
                "GROUP BY state",
                [org_id, key],
            )
        }
        by_topic: dict[str, dict[str, Any]] = {}
        for topic, state, count, last_at in db.fetchall(
            f"SELECT topic, state, count(*), max(received_at) FROM {DELIVERY_TABLE.name} "
            "WHERE org_id = %s AND store_id = %s GROUP BY topic, state",
            [org_id, key],
        ):
            shown = by_topic.setdefault(str(topic), {"lastDeliveryAt": None, "failed": 0})
            when = _json_ready(db.decoder([TS])([last_at])[0])
            if shown["lastDeliveryAt"] is None or (when is not None and when > shown["lastDeliveryAt"]):
                shown["lastDeliveryAt"] = when
            if state == "failed":
                shown["failed"] = int(count)
        last = max((t["lastDeliveryAt"] for t in by_topic.values() if t["lastDeliveryAt"]), default=None)
        refused = _select(
            db,
            REFUSAL_TABLE,
            ("requests", "reason", "recorded_at"),
            "org_id = %s AND store_id = %s",
            [org_id, key],
            "ORDER BY recorded_at DESC LIMIT 1",
        )
        total = db.fetchall(
            f"SELECT COALESCE(SUM(requests), 0) FROM {REFUSAL_TABLE.name} WHERE org_id = %s AND store_id = %s",
            [org_id, key],
        )
    return {
        "lastDeliveryAt": last,
        "byTopic": by_topic,
        "deliveries": {name: states.get(name, 0) for name in ("pending", "applied", "failed")},
        "refused": int(total[0][0]),
        "lastRefusal": (
            {"at": refused[0]["recorded_at"], "reason": refused[0]["reason"]} if refused else None
        ),
    }


def stores_with_webhooks(source: Source) -> list[tuple[str, UUID]]:
    """(org, store id) of every org's registered store whose webhooks wcsync installed (a worker watches
    them: it serves every org)."""
    with _database(source) as db:
        rows = db.fetchall(
            f"SELECT org_id, store_id FROM {STORE_TABLE.name} WHERE webhooks_installed = %s AND removed = %s "
            "ORDER BY org_id, store_id",
            [db.value(BOOL, True), db.value(BOOL, False)],
        )
        decode = db.decoder(["text", UUID_])
    return [(str(org), store) for org, store in (decode(row) for row in rows)]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


__all__ = [
    "PROGRESS_ACTIVITY_TYPES",
    "Source",
    "absent_customer_ids",
    "activity",
    "activity_types",
    "customers",
    "draft_status",
    "failed_lines",
    "iter_known_customer_ids",
    "known_customer_ids",
    "list_queues",
    "list_stores",
    "org_stores",
    "progress_buckets",
    "queue_status",
    "queues_with_line",
    "recent_activity",
    "store",
    "store_by_url",
    "store_has_customers",
    "store_webhook_states",
    "stores_with_webhooks",
    "webhook_deliveries",
    "webhook_summary",
]


# ----- the dashboard's reads (infrastructure/api/dashboard) ---------------------------------------------

# The activity rows that say how many lines a moment finished, and how (the queue page's chart).
PROGRESS_ACTIVITY_TYPES = ("batch_processed", "page_fetched", "lines_added", "line_failed")


def progress_buckets(source: Source, org_id: str, queue_id: UUID, buckets: int = 120) -> list[dict[str, Any]]:
    """Lines the queue finished by outcome in each of at most ``buckets`` equal slices of time between its
    first and last progress row, oldest first: ``{"at": the slice's last row's time, "created",
    "updated", "unchanged", "failed"}`` (a batch's counts by result, a page's lines added unchanged, one
    per failed attempt). Summed by the database (two aggregates over the queue's index), so it reads the
    same few rows for a queue of any size."""
    with _database(source) as db:
        epoch = _epoch_seconds(db)
        kinds = ", ".join(["%s"] * len(PROGRESS_ACTIVITY_TYPES))
        where = f"org_id = %s AND queue_id = %s AND activity_type IN ({kinds})"
        params = [org_id, db.value(UUID_, queue_id), *PROGRESS_ACTIVITY_TYPES]
        [(low, high)] = db.fetchall(
            f"SELECT min({epoch}), max({epoch}) FROM {ACTIVITY_TABLE.name} WHERE {where}", params
        )
        if low is None:
            return []
        low, high = float(low), float(high)
        width = max((high - low) / max(int(buckets), 1), 1e-6)
        # A slice's number (never negative: CAST truncates toward zero, as floor does here).
        slot = (
            f"floor(({epoch} - %s) / %s)"
            if db.dialect == POSTGRES
            else f"CAST(({epoch} - %s) / %s AS INTEGER)"
        )
        sums = ", ".join(f"sum({_progress_count(db, name)})" for name in PROGRESS_OUTCOMES)
        rows = db.fetchall(
            f"SELECT {slot} AS slot, max({epoch}), {sums} FROM {ACTIVITY_TABLE.name} WHERE {where} "
            "GROUP BY slot ORDER BY slot",
            [low, width, *params],
        )
    merged: dict[int, list[float]] = {}
    for slot_number, at, *counts in rows:
        # The last row's slot is ``buckets`` exactly: it belongs to the last slice.
        key = min(int(slot_number), max(int(buckets), 1) - 1)
        found = merged.setdefault(key, [float(at), *(0.0 for _ in PROGRESS_OUTCOMES)])
        found[0] = max(found[0], float(at))
        for index, count in enumerate(counts, start=1):
            found[index] += float(count or 0)
    return [
        {
            "at": iso(datetime.fromtimestamp(values[0], UTC)),
            **{name: int(value) for name, value in zip(PROGRESS_OUTCOMES, values[1:], strict=True)},
        }
        for _, values in sorted(merged.items())
    ]


# The chart's outcomes, and which progress rows count toward each (the details key counted, or None: 1).
PROGRESS_OUTCOMES = ("created", "updated", "unchanged", "failed")
_PROGRESS_SOURCES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "created": (("batch_processed",), "created"),
    "updated": (("batch_processed",), "updated"),
    "unchanged": (("batch_processed", "page_fetched", "lines_added"), "unchanged"),
    "failed": (("line_failed",), None),
}


def _epoch_seconds(db: Database) -> str:
    """created_at as seconds since the epoch (SQLite keeps ISO-8601 text with an offset)."""
    if db.dialect == POSTGRES:
        return "extract(epoch FROM created_at)::float8"
    return "((julianday(created_at) - 2440587.5) * 86400.0)"


def _progress_count(db: Database, outcome: str) -> str:
    """What one activity row adds to ``outcome``: its details' whole positive count (anything else is 0)."""
    types, key = _PROGRESS_SOURCES[outcome]
    kinds = ", ".join(f"'{kind}'" for kind in types)  # constants of this module, never input
    if key is None:
        return f"CASE WHEN activity_type IN ({kinds}) THEN 1 ELSE 0 END"
    if db.dialect == POSTGRES:
        value = (
            f"CASE WHEN jsonb_typeof(details -> '{key}') = 'number' "
            f"THEN greatest(floor((details ->> '{key}')::numeric), 0) ELSE 0 END"
        )
    else:
        value = (
            f"CASE WHEN json_type(details, '$.{key}') = 'integer' "
            f"THEN max(json_extract(details, '$.{key}'), 0) ELSE 0 END"
        )
    return f"CASE WHEN activity_type IN ({kinds}) THEN {value} ELSE 0 END"


def recent_activity(
    source: Source, org_id: str, queue_id: UUID, limit: int = 200, activity_type: str | None = None
) -> list[dict[str, Any]]:
    """The queue's latest activity rows, newest first (of one type when ``activity_type`` is given), as
    ``activity`` shapes them."""
    where, params = "org_id = %s AND queue_id = %s", [org_id]
    with _database(source) as db:
        params.append(db.value(UUID_, queue_id))
        if activity_type is not None:
            where += " AND activity_type = %s"
            params.append(activity_type)
        rows = _select(
            db,
            ACTIVITY_TABLE,
            ("created_at", "activity_type", "status", "message"),
            where,
            [*params, int(limit)],
            "ORDER BY created_at DESC, id DESC LIMIT %s",
        )
    return [_activity_entry(row) for row in rows]


def _activity_entry(row: dict[str, Any]) -> dict[str, Any]:
    """An activity row as the queries answer it (``activity`` adds its details)."""
    return {
        "createdAt": row["created_at"],
        "activityType": row["activity_type"],
        "status": row["status"],
        "message": row["message"],
    }


def activity_types(source: Source, org_id: str, queue_id: UUID) -> list[str]:
    """The activity types the queue's log holds, sorted (the dashboard's filter offers these)."""
    with _database(source) as db:
        rows = db.fetchall(
            f"SELECT DISTINCT activity_type FROM {ACTIVITY_TABLE.name} WHERE org_id = %s AND queue_id = %s "
            "ORDER BY activity_type",
            [org_id, db.value(UUID_, queue_id)],
        )
    return [str(row[0]) for row in rows]


def store_webhook_states(source: Source, org_id: str) -> dict[str, dict[str, str]]:
    """The org's stores' installed webhooks not active in the store, as last seen: {store id: {topic:
    status}} (a store whose webhooks are all active, or not installed, has none)."""
    with _database(source) as db:
        rows = _select(
            db, STORE_TABLE, ("store_id", "webhooks_not_active"), "org_id = %s", [org_id], "ORDER BY store_id"
        )
    return {str(row["store_id"]): dict(row["webhooks_not_active"] or {}) for row in rows}
