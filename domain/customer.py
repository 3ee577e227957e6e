"""A mirrored WooCommerce customer, as an event-sourced aggregate.

Its id is derived from (org, store, WooCommerce id), so two queues or two processes that sync the same
customer at once both try to write version 1 of the same aggregate: the event store lets exactly one win,
and the loser reloads and finds the customer already there. That is what makes "created" happen once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic

from domain.validation import VOLATILE_FIELDS

CUSTOMER_NAMESPACE = UUID("0b7e7f0e-7c4a-4d0e-8a7e-3a1f2d9c6b51")

# The bits a name-based UUID 5 sets over the first 16 bytes of its SHA-1: the variant (RFC 4122) and version.
_UUID5_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID5_SET = (0x8000 << 48) | (5 << 76)


def customer_key(org_id: str, store_url: str, woo_id: int) -> UUID:
    """The customer's aggregate id: uuid.uuid5(CUSTOMER_NAMESPACE, f"{org_id}\\x1f{store_url}\\x1f{woo_id}"),
    made as customer_keys_for makes it."""
    name = CUSTOMER_NAMESPACE.bytes + f"{org_id}\x1f{store_url}\x1f{woo_id}".encode()
    return _uuid5(hashlib.sha1(name).digest())  # noqa: S324 - UUID 5 is defined with SHA-1 (an identifier)


def customer_keys_for(org_id: str, store_url: str) -> Callable[[int], UUID]:
    """customer_key of one store's customers, by WooCommerce id: the same UUIDs as uuid.uuid5 gives (SHA-1
    over the namespace and the name, version and variant bits set), with the hash of the part of the name
    shared by the whole store computed once, and the UUID made from its integer (uuid5's own way, from
    bytes, costs twice as much): every new customer of a sync needs its key."""
    # uuid5 hashes the name as UTF-8 (tests/unit/test_domain_equivalence.py holds the two equal on many names).
    shared = hashlib.sha1(  # noqa: S324 - UUID 5 is defined with SHA-1; an identifier, not a protection
        CUSTOMER_NAMESPACE.bytes + f"{org_id}\x1f{store_url}\x1f".encode()
    )

    def key(woo_id: int) -> UUID:
        name = shared.copy()
        name.update(f"{woo_id}".encode())
        return _uuid5(name.digest())

    return key


def _uuid5(sha1: bytes) -> UUID:
    """The UUID 5 of a name whose SHA-1 this is (as uuid.uuid5 makes it, from the integer instead of bytes)."""
    return UUID(int=(int.from_bytes(sha1[:16], "big") & _UUID5_CLEAR) | _UUID5_SET)


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """What the customer is, as bytes: equal records (key order aside) give equal bytes."""
    relevant = {k: v for k, v in record.items() if k not in VOLATILE_FIELDS}
    return json.dumps(relevant, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = (set(old) | set(new)) - VOLATILE_FIELDS
    return sorted(k for k in keys if old.get(k) != new.get(k))


# How much older than the mirrored record a fetched or pushed one may be and still be taken for a stale
# copy of it (a page fetched just before a webhook delivery was applied, processed just after): such a
# record leaves the mirror as it is. A record older than that is the store's word (a store restored from
# a backup; a mirrored date far in the future from a store's wrong clock must not freeze the mirror).
STALE_WINDOW = timedelta(hours=1)
# The start of the reason of a deletion a webhook delivery pushed (domain.webhook.deletion_reason).
PUSHED_DELETION = "deleted in the store (webhook delivery"


def _modified(record: Mapping[str, Any]) -> datetime | None:
    value = record.get("date_modified_gmt")
    if not isinstance(value, str) or len(value) != 19:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def is_older(record: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether ``record`` is a stale copy of ``than``: last modified (the store's ``date_modified_gmt``)
    before it, by at most STALE_WINDOW. Unknown either side: not older."""
    new, old = _modified(record), _modified(than)
    return new is not None and old is not None and old - STALE_WINDOW <= new < old


def is_newer(record: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether ``record`` was modified after ``than`` by the store's clock (unknown either side: not)."""
    new, old = _modified(record), _modified(than)
    return new is not None and old is not None and new > old


@dataclass(frozen=True)
class CustomerHead:
    """A mirrored customer as its latest event tells it, without replaying the aggregate: enough to
    decide that a fetched record is unchanged (the common case of a re-sync)."""

    version: int
    digest: str | None
    deleted: bool


class Customer(Aggregate):
    class_version = 1

    class Event(Aggregate.Event):
        class_version = 1

    class Registered(Event, Aggregate.Created):
        org_id: str
        store_url: str
        woo_id: int
        record: dict[str, Any]
        digest: str
        queue_id: str  # the queue that wrote this change

    class Changed(Event):
        record: dict[str, Any]
        digest: str
        fields: list[str]
        queue_id: str  # the queue that wrote this change

    class Deleted(Event):
        reason: str
        queue_id: str  # the queue that wrote this change

    @staticmethod
    def create_id(org_id: str, store_url: str, woo_id: int, **_: Any) -> UUID:
        return customer_key(org_id, store_url, woo_id)

    @classmethod
    def register(
        cls,
        key: UUID,
        org_id: str,
        store_url: str,
        woo_id: int,
        record: dict[str, Any],
        digest: str,
        queue_id: str,
    ) -> Customer:
        """A new customer, as ``Customer(org_id=..., ...)`` makes it (the same Registered event, the same
        state; tests/unit/test_domain_equivalence.py holds the two equal), for ``key``, its customer_key,
        which the caller computed (customer_keys_for). Half the CPU: the library's generic path matches
        the arguments to the signatures of __init__ and create_id, derives the id, and filters the event's
        fields for __base_init__ and __init__, for every customer of a first sync; here the event is made
        from the fields, and the aggregate from the event as CanInitAggregate.mutate makes it (a replay
        still goes through the library)."""
        fields: dict[str, Any] = {
            "org_id": org_id,
            "store_url": store_url,
            "woo_id": woo_id,
            "record": record,
            "digest": digest,
            "queue_id": queue_id,
        }
        # The library's metaclass makes the event a dataclass of these fields, which mypy does not see.
        registered = cls.Registered(
            originator_topic=get_topic(cls),
            originator_id=key,
            originator_version=cls.INITIAL_VERSION,
            timestamp=cls.Registered.create_timestamp(),
            **fields,
        )
        customer = cls.__new__(cls)
        customer.__base_init__(key, cls.INITIAL_VERSION, registered.timestamp)
        customer.__init__(**fields)  # type: ignore[misc]
        registered.apply(customer)
        customer.pending_events.append(registered)
        return customer

    @event(Registered)
    def __init__(
        self, org_id: str, store_url: str, woo_id: int, record: dict[str, Any], digest: str, queue_id: str
    ) -> None:
        self.org_id = org_id
        self.store_url = store_url
        self.woo_id = woo_id
        self.record = record
        self.digest = digest
        self.last_queue_id = queue_id
        self.deleted = False
        self.deleted_reason = ""

    def sync(
        self, record: dict[str, Any], digest: str, queue_id: str, read_after: datetime | None = None
    ) -> str:
        """Bring the mirror up to date with ``record``; returns the line's result. A record the store
        modified before the one mirrored (a page fetched before a webhook delivery applied a later change,
        then processed after it; a queue resumed hours later) leaves the mirror as it is: "unchanged"."""
        if digest == self.digest and not self.deleted:
            return "unchanged"
        if (
            read_after is not None
            and self.last_queue_id != queue_id
            and self.modified_on > read_after
            and not is_newer(record, self.record)
        ):
            # Another writer (a webhook delivery, mostly) changed the customer after ``record`` may have
            # been read (``read_after``: the earliest it was): it is a stale copy unless the store shows it
            # modified later than what the mirror holds.
            return "unchanged"
        if not self.deleted and is_older(record, self.record):
            return "unchanged"
        if (
            self.deleted
            and self.deleted_reason.startswith(PUSHED_DELETION)
            and not is_newer(record, self.record)
        ):
            # The store said it deleted this customer; a copy from before (a page fetched before the
            # deletion arrived) brings it back only once the store shows it changed since.
            return "unchanged"
        self._changed(
            record=record, digest=digest, fields=changed_fields(self.record, record), queue_id=queue_id
        )
        return "updated"

    @event(Changed)
    def _changed(self, record: dict[str, Any], digest: str, fields: list[str], queue_id: str) -> None:
        self.record = record
        self.digest = digest
        self.last_queue_id = queue_id
        self.deleted = False

    def delete(self, reason: str, queue_id: str) -> None:
        if not self.deleted:
            self._deleted(reason=reason, queue_id=queue_id)

    @event(Deleted)
    def _deleted(self, reason: str, queue_id: str) -> None:
        self.deleted = True
        self.deleted_reason = reason
        self.last_queue_id = queue_id
