"""The mirrored customers: ``woo_customers``, one row per (org, store, WooCommerce id).

Keyed by the Customer aggregate's id (a uuid5 of org, store and WooCommerce id), which is what the events
name; the triple is also unique.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from domain.customer import Customer
from projections.base import Item, Projection, topics_of
from projections.db import Database
from projections.schema import BIGINT, BOOL, INT, JSON, TEXT, TS, UUID_, Column, Index, Table

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


def _gmt(value: Any) -> datetime | None:
    """WooCommerce's ``*_gmt`` dates are UTC without an offset ("2017-03-21T16:09:28")."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


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


class CustomersProjection(Projection):
    name = "customers"
    version = 1
    tables = (CUSTOMER_TABLE,)
    topics = topics_of(Customer.Registered, Customer.Changed, Customer.Deleted)

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
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
