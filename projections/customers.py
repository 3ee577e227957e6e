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


def _record_columns(record: dict[str, Any]) -> dict[str, Any]:
    paying = record.get("is_paying_customer")
    return {
        "email": _text(record.get("email")),
        "first_name": _text(record.get("first_name")),
        "last_name": _text(record.get("last_name")),
        "username": _text(record.get("username")),
        "role": _text(record.get("role")),
        "billing": record.get("billing") if isinstance(record.get("billing"), dict) else None,
        "shipping": record.get("shipping") if isinstance(record.get("shipping"), dict) else None,
        "is_paying_customer": paying if isinstance(paying, bool) else None,
        "avatar_url": _text(record.get("avatar_url")),
        "date_created_gmt": _gmt(record.get("date_created_gmt")),
        "date_modified_gmt": _gmt(record.get("date_modified_gmt")),
    }


class CustomersProjection(Projection):
    name = "customers"
    version = 1
    tables = (CUSTOMER_TABLE,)
    topics = topics_of(Customer.Registered, Customer.Changed, Customer.Deleted)

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        registered = {e.originator_id for _, e in items if isinstance(e, Customer.Registered)}
        wanted = sorted({e.originator_id for _, e in items} - registered)
        rows: dict[UUID, dict[str, Any]] = {
            row["customer_id"]: row for row in db.load(CUSTOMER_TABLE, suffix, "customer_id", wanted)
        }
        for _, event in items:
            at: datetime = event.timestamp
            if isinstance(event, Customer.Registered):
                rows[event.originator_id] = {
                    "customer_id": event.originator_id,
                    "org_id": event.org_id,
                    "store_url": event.store_url,
                    "woo_customer_id": event.woo_id,
                    **_record_columns(event.record),
                    "digest": event.digest,
                    "first_synced_at": at,
                    "last_synced_at": at,
                    "last_queue_id": event.queue_id,
                    "is_deleted": False,
                    "deleted_at": None,
                    "deleted_reason": None,
                    "version": event.originator_version,
                }
                continue
            row = rows.get(event.originator_id)
            if row is None:  # a customer this table never saw registered
                continue
            row["version"] = event.originator_version
            row["last_queue_id"] = event.queue_id
            if isinstance(event, Customer.Changed):
                row.update(_record_columns(event.record))
                row.update(digest=event.digest, last_synced_at=at, is_deleted=False, deleted_at=None)
                row["deleted_reason"] = None
            elif isinstance(event, Customer.Deleted):
                row.update(is_deleted=True, deleted_at=at, deleted_reason=event.reason)
        db.upsert(CUSTOMER_TABLE, suffix, (row for key, row in rows.items() if key not in registered))
        db.insert_dicts(CUSTOMER_TABLE, suffix, (row for key, row in rows.items() if key in registered))
