"""The mirrored customers: ``woo_customers``, one row per (org, store, WooCommerce id).

Keyed by the Customer aggregate's id (a uuid5 of org, store and WooCommerce id), which is what the events
name; the triple is also unique.

A sync is mostly ``Customer.Registered`` events (one per new customer, ~1.5 KB of JSON each). On PostgreSQL
with plain stored states, their rows are made by the server from the stored events (``REGISTERED_SELECT``: one
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
from infrastructure.adapters import eventlog
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import (
    BOOL,
    JSON,
    POSTGRES,
    TEXT,
    TS,
    UUID_,
    Column,
    Index,
    Table,
    as_uuid,
)
from projections.base import (
    AGGREGATE_VERSION,
    ORG_ID,
    STORE_URL,
    WOO_CUSTOMER_ID,
    Item,
    Projection,
    topics_of,
)

# The fields of the store's record the table keeps, each in a column of its own (NULL when the record has
# no value of the kind): their order is the columns', _record_values' and REGISTERED_SELECT's.
RECORD_KINDS = {
    "email": TEXT,
    "first_name": TEXT,
    "last_name": TEXT,
    "username": TEXT,
    "role": TEXT,
    "billing": JSON,
    "shipping": JSON,
    "is_paying_customer": BOOL,
    "avatar_url": TEXT,
    "date_created_gmt": TS,  # WooCommerce's UTC dates (_gmt)
    "date_modified_gmt": TS,
}
RECORD_COLUMNS = tuple(RECORD_KINDS)

CUSTOMER_TABLE = Table(
    "woo_customers",
    (
        Column("customer_id", UUID_, not_null=True),
        ORG_ID,
        STORE_URL,
        WOO_CUSTOMER_ID,
        *(Column(name, kind) for name, kind in RECORD_KINDS.items()),
        Column("digest", TEXT, not_null=True),
        Column("first_synced_at", TS, not_null=True),
        Column("last_synced_at", TS, not_null=True),
        Column("last_queue_id", UUID_),
        Column("is_deleted", BOOL, not_null=True),
        Column("deleted_at", TS),
        Column("deleted_reason", TEXT),
        AGGREGATE_VERSION,
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


# Each field is looked up once (the middle query, ``j #> '{record,field}'``); the outer query keeps a value
# only when it has the type _record_values keeps.
_SQL_STRING = "CASE WHEN jsonb_typeof({0}) = 'string' THEN {0} #>> '{{}}' END"
_SQL_OBJECT = "CASE WHEN jsonb_typeof({0}) = 'object' THEN {0} END"
_SQL_BOOLEAN = "CASE WHEN jsonb_typeof({0}) = 'boolean' THEN {0}::boolean END"


def _sql_gmt(value: str) -> str:
    """``_gmt()`` in SQL, of a field's text (``#>>``: a non-string's text never has the form). The form,
    then the ranges fromisoformat checks (year 0, month, the day in its month, hour, minute, second), in
    nested CASEs so that nothing is cast before it is known castable (a CASE evaluates its branches only as
    needed)."""
    part = f"substr({value}, {{0}}, {{1}})::int"
    year, month, day = part.format(1, 4), part.format(6, 2), part.format(9, 2)
    leap = f"({year} %% 4 = 0 AND ({year} %% 100 <> 0 OR {year} %% 400 = 0))"  # %% : a psycopg statement
    last_day = f"CASE {month} WHEN 2 THEN CASE WHEN {leap} THEN 29 ELSE 28 END WHEN 4 THEN 30 WHEN 6 THEN 30 WHEN 9 THEN 30 WHEN 11 THEN 30 ELSE 31 END"
    in_range = (
        f"{year} >= 1 AND {month} BETWEEN 1 AND 12 AND {day} >= 1 AND {day} <= {last_day} "
        f"AND {part.format(12, 2)} <= 23 AND {part.format(15, 2)} <= 59 AND {part.format(18, 2)} <= 59"
    )
    return (
        f"CASE WHEN {value} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}$' THEN "
        f"CASE WHEN {in_range} THEN {value}::timestamp AT TIME ZONE 'UTC' END END"
    )


# The row of each Registered event among the given notification ids, as _registered_row makes it. The
# range lets the notification id index find them. Three levels, each computed once (OFFSET 0 keeps
# PostgreSQL from inlining a level into the next and so parsing or looking up again for every use): the
# state parsed; its fields looked up; the row.
_SQL_FORMS = {TEXT: _SQL_STRING, JSON: _SQL_OBJECT, BOOL: _SQL_BOOLEAN}
_RECORD_FIELDS = {name: _SQL_FORMS[kind] for name, kind in RECORD_KINDS.items() if kind != TS}
_GMT_FIELDS = tuple(name for name, kind in RECORD_KINDS.items() if kind == TS)
_REGISTERED_VALUES = (
    "originator_id",
    "org_id",
    "store_url",
    "woo_id",
    *(form.format(f"f_{name}") for name, form in _RECORD_FIELDS.items()),
    *(_sql_gmt(f"f_{name}") for name in _GMT_FIELDS),
    "digest",
    "at",
    "at",
    "queue_id",
    "false",
    "NULL",
    "NULL",
    "originator_version",
)
assert len(_REGISTERED_VALUES) == len(CUSTOMER_TABLE.columns)
_FIELDS = ", ".join(
    [
        *(f"j #> '{{record,{name}}}' AS f_{name}" for name in _RECORD_FIELDS),
        *(f"j #>> '{{record,{name}}}' AS f_{name}" for name in _GMT_FIELDS),
    ]
)
REGISTERED_SELECT = (
    f"SELECT {', '.join(_REGISTERED_VALUES)} FROM ("
    "SELECT originator_id, originator_version, j->>'org_id' AS org_id, j->>'store_url' AS store_url, "
    "(j->>'woo_id')::bigint AS woo_id, j->>'digest' AS digest, (j->>'queue_id')::uuid AS queue_id, "
    f"(j->'timestamp'->>'_data_')::timestamptz AS at, {_FIELDS} "
    f"FROM ({eventlog.JSONB_STATES} OFFSET 0) AS stored OFFSET 0) AS event"
)
_COLUMNS = ", ".join(CUSTOMER_TABLE.column_names)
# The stored form REGISTERED_SELECT reads: a change of the event's class (its class_version) needs it changed.
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
            db.execute(
                f"INSERT INTO {CUSTOMER_TABLE.name}{suffix} ({_COLUMNS}) {REGISTERED_SELECT}",
                [in_database[0], in_database[-1], in_database, self.in_database_topics[0]],
            )
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
