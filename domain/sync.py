"""Syncing one batch of fetched customers: which lines end created / updated / unchanged / failed, and
which Customer aggregates change. Pure: the caller loads the customers and saves the result."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from domain.customer import Customer, canonical_bytes, customer_keys_for
from domain.lines import DRAFT
from domain.queue import SyncQueue
from domain.validation import InvalidCustomerRecord, validate_customer


@dataclass
class BatchOutcome:
    results: dict[str, list[int]] = field(
        default_factory=lambda: {"created": [], "updated": [], "unchanged": []}
    )
    failures: dict[int, str] = field(default_factory=dict)
    changed: list[Customer] = field(default_factory=list)

    @property
    def line_count(self) -> int:
        return sum(len(ids) for ids in self.results.values()) + len(self.failures)


def customer_keys(queue: SyncQueue, records: Iterable[Mapping[str, Any]]) -> list[UUID]:
    return customer_keys_of(queue, (record["id"] for record in records))


def customer_keys_of(queue: SyncQueue, ids: Iterable[int]) -> list[UUID]:
    """customer_key of each of these customers of the queue's store (customer_keys_for: the hash of the
    part of the name shared by the whole queue computed once; a re-sync asks this of every customer)."""
    key = customer_keys_for(queue.org_id, queue.store_url)
    return [key(cid) for cid in ids]


class Mirrored(Protocol):
    """What deciding "unchanged" needs of a mirrored customer: a Customer, or a CustomerHead."""

    @property
    def digest(self) -> str | None: ...

    @property
    def deleted(self) -> bool: ...


def split_unchanged(
    records: Iterable[dict[str, Any]],
    customers: Mapping[int, Mirrored],
    canonical: Callable[[Mapping[str, Any]], bytes] = canonical_bytes,
    digest_of: Callable[[Mapping[str, Any]], str] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Split fetched records into those to process and (id, digest) of those identical to the mirror.

    ``customers``: what is mirrored of these records' customers, by WooCommerce id; ``digest_of``: a
    record's digest (SHA-256 of ``canonical``'s bytes) when the caller has it already."""
    to_process: list[dict[str, Any]] = []
    unchanged: list[tuple[int, str]] = []
    for record in records:
        customer = customers.get(record["id"])
        if customer is not None and not customer.deleted:
            digest = digest_of(record) if digest_of else hashlib.sha256(canonical(record)).hexdigest()
            if digest == customer.digest:
                unchanged.append((record["id"], digest))
                continue
        to_process.append(record)
    return to_process, unchanged


def sync_batch(
    queue: SyncQueue,
    records: Iterable[dict[str, Any]],
    customers: Mapping[int, Customer],
    canonical: Callable[[Mapping[str, Any]], bytes] = canonical_bytes,
    read_after: datetime | None = None,
    *,
    checked: bool = False,
    digest_of: Callable[[Mapping[str, Any]], str] | None = None,
) -> BatchOutcome:
    """Apply fetched records to their lines (only lines still draft) and to the mirrored customers.

    Triggers the queue's LinesDone / LinesFailed and the customers' events; returns what changed.
    ``customers``: the mirrored customers of these records, by WooCommerce id. ``read_after``: the earliest
    the records may have been fetched; a customer another writer changed since is left as it is unless the
    record is newer (Customer.sync). ``checked``: every record is what domain.validation.check_record
    returned, with ``canonical`` the encoder it was given (its rules, the record's size among them, passed),
    so they are not validated again; records read back from the log are (rules may have changed since).
    ``digest_of``: a record's digest (SHA-256 of ``canonical``'s bytes) when the caller has it already.
    """
    outcome = BatchOutcome()
    queue_id = str(queue.id)
    key = customer_keys_for(queue.org_id, queue.store_url)
    for record in records:
        cid = record["id"]
        line = queue.lines.get(cid)
        if line is None or line.state != DRAFT:
            continue
        encoded = canonical(record)
        if not checked:
            try:
                validate_customer(record, encoded_size=len(encoded))
            except InvalidCustomerRecord as error:
                outcome.failures[cid] = f"invalid customer record: {error}"
                continue
        digest = digest_of(record) if digest_of else hashlib.sha256(encoded).hexdigest()
        customer = customers.get(cid)
        if customer is None:
            customer = Customer.register(
                key(cid),
                org_id=queue.org_id,
                store_url=queue.store_url,
                woo_id=cid,
                record=record,
                digest=digest,
                queue_id=queue_id,
            )
            result = "created"
        else:
            result = customer.sync(record, digest, queue_id, read_after)
        outcome.results[result].append(cid)
        if customer.pending_events:
            outcome.changed.append(customer)
    queue.finish_lines(outcome.results)
    queue.fail_lines(outcome.failures)
    return outcome
