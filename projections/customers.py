"""The mirrored customers: ``woo_customers``, one row per (org, store, WooCommerce id).

Keyed by the Customer aggregate's id (a uuid5 of org, store and WooCommerce id), which is what the events
name; the triple is also unique.

A sync is mostly ``Customer.Registered`` events (one per new customer, ~1.5 KB of JSON each). On PostgreSQL
with plain stored states, their rows are made by the server from the stored events (``REGISTERED_SQL``: one
INSERT ... SELECT a batch), so their JSON never crosses the connection twice nor is parsed in Python: that
took the catch-up of a 100,000-customer sync from ~6 s to ~2 s (bench/RESULTS.md, "Projections"). Everywhere
else (SQLite, a cipher or compressor, a changed or deleted customer) rows are made in Python from the
decoded events, by the same rules; tests/integration/test_projections.py holds the two to the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from domain.customer import Customer
from projections.base import Item, Projection, topics_of
from projections.db import Database
from projections.schema import (
    BIGINT,
    BOOL,
    EVENTS_TABLE,
    INT,
    JSON,
    POSTGRES,
    TEXT,
    TS,
    UUID_,
    Column,
    Index,
    Table,
)

CUSTOMER_TABLE = Table(
    "woo_customers",
    (
        Column("customer_id", UUID_, not_null=True),
        Column("org_id", TEXT, not_null=True),
        Column("store_url", TEXT, not_null=True),
        Column("woo_customer_id", BIGINT, not_null=True),
        Column("email", TEXT),
        Column("first_name", TEXT),
        Column("last_name", TEXT),
        Column("username", TEXT),
        Column("role", TEXT),
        Column("billing", JSON),
        Column("shipping", JSON),
        Column("is_paying_customer", BOOL),
        Column("avatar_url", TEXT),
        Column("date_created_gmt", TS),
        Column("date_modified_gmt", TS),
        Column("digest", TEXT, not_null=True),
        Column("first_synced_at", TS, not_null=True),
        Column("last_synced_at", TS, not_null=True),
        Column("last_queue_id", UUID_),
        Column("is_deleted", BOOL, not_null=True),
        Column("deleted_at", TS),
        Column("deleted_reason", TEXT),
        Column("version", INT, not_null=True),  # the aggregate version last applied
    ),
    ("customer_id",),
    (
        Index("woo_customers_org_store_woo_idx", "org_id, store_url, woo_customer_id", unique=True),
        Index("woo_customers_org_email_idx", "org_id, email"),
        Index("woo_customers_last_queue_idx", "last_queue_id"),
    ),
)


# WooCommerce's ``*_gmt`` dates: UTC, to the second, without an offset ("2017-03-21T16:09:28"), the one
# form domain.validation accepts. A string of that form naming a real date and time is that moment in UTC;
# anything else is NULL (the store's value stays in the event). Exactly this rule twice: here, and in SQL
# (_sql_gmt) for the rows PostgreSQL makes itself.
_GMT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")


def _gmt(value: Any) -> datetime | None:
    if type(value) is not str or _GMT.fullmatch(value) is None:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:  # no such day or time (2023-02-30, 24:00:00), or year 0
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


RECORD_COLUMNS = (
    "email",
    "first_name",
    "last_name",
    "username",
    "role",
    "billing",
    "shipping",
    "is_paying_customer",
    "avatar_url",
    "date_created_gmt",
    "date_modified_gmt",
)


def _record_values(record: dict[str, Any]) -> tuple[Any, ...]:
    """The values of RECORD_COLUMNS taken from a customer record as the store sent it."""
    get = record.get
    billing, shipping, paying = get("billing"), get("shipping"), get("is_paying_customer")
    return (
        _text(get("email")),
        _text(get("first_name")),
        _text(get("last_name")),
        _text(get("username")),
        _text(get("role")),
        billing if isinstance(billing, dict) else None,
        shipping if isinstance(shipping, dict) else None,
        paying if isinstance(paying, bool) else None,
        _text(get("avatar_url")),
        _gmt(get("date_created_gmt")),
        _gmt(get("date_modified_gmt")),
    )


def _registered_row(event: Any, queue_id: UUID) -> tuple[Any, ...]:
    """A customer's row right after its Registered event, in CUSTOMER_TABLE's column order."""
    at = event.timestamp
    return (
        event.originator_id,
        event.org_id,
        event.store_url,
        event.woo_id,
        *_record_values(event.record),
        event.digest,
        at,
        at,
        queue_id,
        False,
        None,
        None,
        event.originator_version,
    )


# --- the same rows, made by PostgreSQL from the stored events (see the module docstring) ----------------


def _sql_text(field: str) -> str:
    """``_text(record[field])``: the value when a JSON string, else NULL."""
    return f"CASE WHEN jsonb_typeof(r->'{field}') = 'string' THEN r->>'{field}' END"


def _sql_object(field: str) -> str:
    return f"CASE WHEN jsonb_typeof(r->'{field}') = 'object' THEN r->'{field}' END"


# _GMT, with the ranges fromisoformat checks spelled out (month, day, hour, minute, second; year 0 refused);
# whether the day exists in its month is checked in _sql_gmt. Nested CASEs: nothing is cast before it is
# known to be castable (PostgreSQL evaluates a CASE's branches only as needed).
_SQL_GMT_PATTERN = (
    "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$"
)


def _sql_gmt(field: str) -> str:
    """``_gmt(record[field])`` in SQL (``r->>field`` of a non-string never has the pattern's form)."""
    value = f"(r->>'{field}')"
    last_day = f"extract(day from (left({value}, 7) || '-01')::date + interval '1 month' - interval '1 day')"
    return (
        f"CASE WHEN {value} ~ '{_SQL_GMT_PATTERN}' AND left({value}, 4) <> '0000' THEN "
        f"CASE WHEN substr({value}, 9, 2)::int <= {last_day} "
        f"THEN {value}::timestamp AT TIME ZONE 'UTC' END END"
    )


# The row of each Registered event among the given notification ids, as _registered_row makes it. The
# range lets the notification id index find them; the inner queries parse each state once (OFFSET 0 keeps
# PostgreSQL from inlining them and parsing again for every field read).
_REGISTERED_VALUES = (
    "originator_id",
    "j->>'org_id'",
    "j->>'store_url'",
    "(j->>'woo_id')::bigint",
    _sql_text("email"),
    _sql_text("first_name"),
    _sql_text("last_name"),
    _sql_text("username"),
    _sql_text("role"),
    _sql_object("billing"),
    _sql_object("shipping"),
    "CASE WHEN jsonb_typeof(r->'is_paying_customer') = 'boolean' THEN (r->'is_paying_customer')::boolean END",
    _sql_text("avatar_url"),
    _sql_gmt("date_created_gmt"),
    _sql_gmt("date_modified_gmt"),
    "j->>'digest'",
    "at",
    "at",
    "(j->>'queue_id')::uuid",
    "false",
    "NULL",
    "NULL",
    "originator_version",
)
assert len(_REGISTERED_VALUES) == len(CUSTOMER_TABLE.columns)
REGISTERED_SQL = (
    "INSERT INTO {table} ({columns}) SELECT {values} FROM ("
    "SELECT originator_id, originator_version, j, j->'record' AS r, (j->'timestamp'->>'_data_')::timestamptz AS at "
    "FROM (SELECT originator_id, originator_version, convert_from(state, 'UTF8')::jsonb AS j FROM {events} "
    "WHERE notification_id >= %s AND notification_id <= %s AND notification_id = ANY(%s::bigint[]) AND topic = %s "
    "OFFSET 0) AS stored OFFSET 0) AS event"
)
# The stored form REGISTERED_SQL reads: a change of the event's class (its class_version) needs it changed.
REGISTERED_CLASS_VERSION = 1


class CustomersProjection(Projection):
    name = "customers"
    version = 1
    tables = (CUSTOMER_TABLE,)
    topics = topics_of(Customer.Registered, Customer.Changed, Customer.Deleted)
    in_database_topics = topics_of(Customer.Registered)

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        # Registered events left to the database (None: see Projection.in_database_topics) become rows
        # first, so the changes of the batch below find them like any stored row (a customer's Registered
        # always comes before its other events).
        in_database = [nid for nid, event in items if event is None]
        if in_database:
            assert db.dialect == POSTGRES
            statement = REGISTERED_SQL.format(
                table=CUSTOMER_TABLE.name + suffix,
                columns=", ".join(CUSTOMER_TABLE.column_names),
                values=", ".join(_REGISTERED_VALUES),
                events=EVENTS_TABLE[POSTGRES],
            )
            db.execute(statement, [in_database[0], in_database[-1], in_database, self.in_database_topics[0]])
            items = [item for item in items if item[1] is not None]
        # Most events of a sync register a customer that nothing else in the batch touches: their rows go
        # straight to tuples in column order. Customers changed or deleted in the batch go through dicts.
        queue_ids: dict[str, UUID] = {}  # events carry their queue's id as text: converted once a queue
        touched = {e.originator_id for _, e in items if not isinstance(e, Customer.Registered)}
        registered = {e.originator_id for _, e in items if isinstance(e, Customer.Registered)}
        wanted = sorted(touched - registered)
        rows: dict[UUID, dict[str, Any]] = {
            row["customer_id"]: row for row in db.load(CUSTOMER_TABLE, suffix, "customer_id", wanted)
        }
        names = CUSTOMER_TABLE.column_names
        new_rows: list[tuple[Any, ...]] = []
        for _, event in items:
            queue_id = queue_ids.get(event.queue_id)
            if queue_id is None:
                queue_id = queue_ids[event.queue_id] = as_uuid(event.queue_id)
            if isinstance(event, Customer.Registered):
                row = _registered_row(event, queue_id)
                if event.originator_id in touched:
                    rows[event.originator_id] = dict(zip(names, row, strict=True))
                else:
                    new_rows.append(row)
                continue
            found = rows.get(event.originator_id)
            if found is None:  # a customer this table never saw registered
                continue
            at: datetime = event.timestamp
            found["version"] = event.originator_version
            found["last_queue_id"] = queue_id
            if isinstance(event, Customer.Changed):
                found.update(zip(RECORD_COLUMNS, _record_values(event.record), strict=True))
                found.update(digest=event.digest, last_synced_at=at, is_deleted=False, deleted_at=None)
                found["deleted_reason"] = None
            elif isinstance(event, Customer.Deleted):
                found.update(is_deleted=True, deleted_at=at, deleted_reason=event.reason)
        db.upsert(CUSTOMER_TABLE, suffix, (row for key, row in rows.items() if key not in registered))
        db.insert(CUSTOMER_TABLE, suffix, new_rows)
        db.insert_dicts(CUSTOMER_TABLE, suffix, (row for key, row in rows.items() if key in registered))


def as_uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
