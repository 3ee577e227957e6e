"""The stores' webhook deliveries: ``woo_webhook_deliveries`` (one row per delivery recorded, its outcome
once a worker applied it) and ``woo_webhook_refusals`` (one row per store incident: requests the receiver
refused for their signature).

Built from the WebhookDelivery and RefusedDeliveries events (domain/webhook.py). What `wcsync webhooks
status` shows of the receiving side (the last delivery, the failures) and what a reporting tool joins to
``woo_customers.last_queue_id`` (a customer last changed by a delivery names the delivery there).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.webhook import RefusedDeliveries, WebhookDelivery
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import BIGINT, INT, TEXT, TS, UUID_, Column, Index, Table
from projections.base import ORG_ID, Item, Projection, event_classes, topics_of

PENDING, APPLIED, FAILED = "pending", "applied", "failed"

DELIVERY_TABLE = Table(
    "woo_webhook_deliveries",
    (
        Column("delivery_key", UUID_, not_null=True),  # the WebhookDelivery aggregate's id
        ORG_ID,
        Column("store_id", UUID_, not_null=True),
        Column("store_url", TEXT, not_null=True),
        Column("topic", TEXT, not_null=True),
        Column("woo_customer_id", BIGINT),  # NULL: the body named no usable id
        Column("delivery_id", TEXT, not_null=True),  # X-WC-Webhook-Delivery-ID ("" when absent)
        Column("webhook_id", BIGINT),
        Column("received_at", TS, not_null=True),
        Column("state", TEXT, not_null=True),  # pending | applied | failed
        Column("result", TEXT),  # applied: created | updated | unchanged | deleted | ...
        Column("error", TEXT),  # failed: why
        Column("applied_at", TS),
        Column("customer_version", INT),
    ),
    ("delivery_key",),
    (Index("woo_webhook_deliveries_store_idx", "org_id, store_id, received_at"),),
)

REFUSAL_TABLE = Table(
    "woo_webhook_refusals",
    (
        Column("incident_id", UUID_, not_null=True),
        ORG_ID,
        Column("store_id", UUID_, not_null=True),
        Column("reason", TEXT, not_null=True),
        Column("requests", INT, not_null=True),
        Column("first_at", TS, not_null=True),
        Column("recorded_at", TS, not_null=True),
    ),
    ("incident_id",),
    (Index("woo_webhook_refusals_store_idx", "org_id, store_id, recorded_at"),),
)


def _received_row(event: WebhookDelivery.Received) -> dict[str, Any]:
    return {
        "delivery_key": event.originator_id,
        "org_id": event.org_id,
        "store_id": UUID(event.store_id),
        "store_url": event.store_url,
        "topic": event.topic,
        "woo_customer_id": event.woo_id,
        "delivery_id": event.delivery_id,
        "webhook_id": event.webhook_id,
        "received_at": event.timestamp,
        "state": PENDING,
        "result": None,
        "error": None,
        "applied_at": None,
        "customer_version": None,
    }


class WebhooksProjection(Projection):
    name = "webhooks"
    version = 1
    tables = (DELIVERY_TABLE, REFUSAL_TABLE)
    topics = topics_of(*event_classes(WebhookDelivery, RefusedDeliveries))

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        events = [event for _, event in items]
        received = {e.originator_id for e in events if isinstance(e, WebhookDelivery.Received)}
        wanted = sorted({e.originator_id for e in events if isinstance(e, WebhookDelivery.Event)} - received)
        rows: dict[UUID, dict[str, Any]] = {
            row["delivery_key"]: row for row in db.load(DELIVERY_TABLE, suffix, "delivery_key", wanted)
        }
        refusals: list[tuple[Any, ...]] = []
        for event in events:
            if isinstance(event, RefusedDeliveries.Recorded):
                refusals.append(
                    (
                        event.originator_id,
                        event.org_id,
                        UUID(event.store_id),
                        event.reason,
                        event.count,
                        datetime.fromisoformat(event.first_at),
                        event.timestamp,
                    )
                )
                continue
            if isinstance(event, WebhookDelivery.Received):
                rows[event.originator_id] = _received_row(event)
                continue
            row = rows.get(event.originator_id)
            if row is None:  # a delivery this table never saw received
                continue
            row["applied_at"] = event.timestamp
            if isinstance(event, WebhookDelivery.Applied):
                row.update(state=APPLIED, result=event.result, customer_version=event.customer_version)
            elif isinstance(event, WebhookDelivery.Failed):
                row.update(state=FAILED, error=event.reason)
        db.upsert(DELIVERY_TABLE, suffix, rows.values())
        db.insert(REFUSAL_TABLE, suffix, refusals)
