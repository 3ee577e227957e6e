"""A WooCommerce webhook delivery received for a registered store, as an event-sourced aggregate.

A delivery is recorded (``Received``) by the server that answered it, before it answers 200: the store
does not send it again, so what was acknowledged must be durable. A worker then applies it to the
customer it names (``Applied``), or records why it could not (``Failed``): every delivery ends with exactly
one of the two, so a delivery still at version 1 is one to apply, and applying one twice is impossible
(its second outcome would be version 2 again: the event store lets one win).

Its id is derived from (org, store, topic, customer id, digest of the body): WooCommerce's own delivery id
is a hash of the webhook and the current second, shared by two deliveries of one second, so it cannot key
anything. The same delivery sent twice (a store retrying by hand, a proxy repeating a request) writes
version 1 of the same aggregate twice: it is recorded once.

Pure domain: stdlib and eventsourcing.domain only.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.customer import PUSHED_DELETION, Customer, is_older

DELIVERY_NAMESPACE = UUID("6f2b8c1e-9d3a-4b7f-a5e0-2c8d4f1b7a39")

CREATED = "customer.created"
UPDATED = "customer.updated"
DELETED = "customer.deleted"
# The topics wcsync installs and accepts (the WooCommerce customer webhooks).
TOPICS = (CREATED, UPDATED, DELETED)

# What applying a delivery did to its customer.
APPLIED_RESULTS = ("created", "updated", "unchanged", "deleted", "already deleted", "not mirrored", "older")


def delivery_key(org_id: str, store_id: str, topic: str, woo_id: int | None, body_digest: str) -> UUID:
    """The id of a delivery: the same for the same body of the same topic about the same customer."""
    return uuid5(DELIVERY_NAMESPACE, f"{org_id}\x1f{store_id}\x1f{topic}\x1f{woo_id}\x1f{body_digest}")


def deletion_reason(delivery_id: str) -> str:
    """The reason a pushed deletion records (it starts with domain.customer.PUSHED_DELETION)."""
    return f"{PUSHED_DELETION} {delivery_id or 'without an id'})"


class WebhookDelivery(Aggregate):
    """``Received`` -> ``Applied`` | ``Failed``."""

    class_version = 1

    class Event(Aggregate.Event):
        class_version = 1

    class Received(Event, Aggregate.Created):
        org_id: str
        store_id: str
        store_url: str
        topic: str
        woo_id: int | None  # None: the body named no usable customer id
        # The customer record as the store sent it, checked like a fetched record (text cleaned); a
        # deletion's is {"id": N}. None when it was refused: then ``problem`` says why and ``excerpt``
        # keeps a bounded part of it (as the sync's rejected records).
        record: dict[str, Any] | None
        problem: str | None
        excerpt: str | None
        body_digest: str  # SHA-256 of the exact body received (hex)
        delivery_id: str  # X-WC-Webhook-Delivery-ID as sent ("" when absent)
        webhook_id: int | None  # X-WC-Webhook-ID

    class Applied(Event):
        result: str  # one of APPLIED_RESULTS
        customer_version: int | None  # the customer's version after it (None: no such customer)

    class Failed(Event):
        reason: str

    @staticmethod
    def create_id(
        org_id: str, store_id: str, topic: str, woo_id: int | None, body_digest: str, **_: Any
    ) -> UUID:
        return delivery_key(org_id, store_id, topic, woo_id, body_digest)

    @event(Received)
    def __init__(
        self,
        org_id: str,
        store_id: str,
        store_url: str,
        topic: str,
        woo_id: int | None,
        record: dict[str, Any] | None,
        problem: str | None,
        excerpt: str | None,
        body_digest: str,
        delivery_id: str,
        webhook_id: int | None,
    ) -> None:
        self.org_id = org_id
        self.store_id = store_id
        self.store_url = store_url
        self.topic = topic
        self.woo_id = woo_id
        self.record = record
        self.problem = problem
        self.delivery_id = delivery_id
        self.outcome: str | None = None

    @property
    def pending(self) -> bool:
        return self.outcome is None

    @event(Applied)
    def _applied(self, result: str, customer_version: int | None) -> None:
        self.outcome = result

    @event(Failed)
    def _failed(self, reason: str) -> None:
        self.outcome = "failed"

    def fail(self, reason: str) -> None:
        if self.pending:
            self._failed(reason=reason)

    def apply_to(self, customer: Customer | None, digest: str | None) -> Customer | None:
        """Apply this delivery to its customer (None: not mirrored yet) and record the outcome.

        ``digest``: the SHA-256 of the record's canonical bytes (the caller's encoder, as a sync's). Returns
        the customer to save with this delivery (a new one for a first sight), or None when it has nothing
        to save. The customer's events name this delivery (its id, as ``queue_id``: the writer of the change).
        """
        if not self.pending:
            return None
        if self.record is None or self.woo_id is None:
            self._failed(reason=self.problem or "the delivery names no customer")
            return None
        writer = str(self.id)
        if self.topic == DELETED:
            if customer is None:
                self._applied(result="not mirrored", customer_version=None)
                return None
            result = "already deleted" if customer.deleted else "deleted"
            customer.delete(deletion_reason(self.delivery_id), writer)
            self._applied(result=result, customer_version=customer.version)
            return customer
        if digest is None:
            raise ValueError("a created or updated delivery is applied with its record's digest")
        if customer is None:
            customer = Customer(
                org_id=self.org_id,
                store_url=self.store_url,
                woo_id=self.woo_id,
                record=self.record,
                digest=digest,
                queue_id=writer,
            )
            self._applied(result="created", customer_version=customer.version)
            return customer
        if not customer.deleted and is_older(self.record, customer.record):
            # A delivery that overtook a later one (or a scan that read the customer after it changed).
            self._applied(result="older", customer_version=customer.version)
            return None
        result = customer.sync(self.record, digest, writer)
        self._applied(result=result, customer_version=customer.version)
        return customer


class RefusedDeliveries(Aggregate):
    """A store incident: requests to the store's receiver refused for their signature (missing, or not
    the store's). Never their bodies nor their headers: what was refused is not the store's to record.
    One aggregate per incident; ``count`` requests of one kind since ``first_at`` (a flood is one
    incident a period, not one event a request)."""

    class_version = 1

    class Event(Aggregate.Event):
        class_version = 1

    class Recorded(Event, Aggregate.Created):
        org_id: str
        store_id: str
        reason: str
        count: int
        first_at: str  # ISO 8601 UTC of the first refused request it counts

    @event(Recorded)
    def __init__(self, org_id: str, store_id: str, reason: str, count: int, first_at: str) -> None:
        self.org_id = org_id
        self.store_id = store_id
        self.reason = reason
        self.count = count
        self.first_at = first_at
