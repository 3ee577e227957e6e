"""The domain's first-sync code as it was before issue 13 made it cheaper, kept as oracles: the tests of
test_domain_equivalence.py hold the new code to giving exactly what these give (the same records, the same
refusals with the same messages, the same events, the same ids). Copied unchanged but for the names they
call; not used by the product."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from domain.customer import CUSTOMER_NAMESPACE, Customer, canonical_bytes
from domain.lines import DRAFT
from domain.queue import SyncQueue
from domain.sync import BatchOutcome
from domain.validation import (
    _DATE,
    _DATE_FIELDS,
    _EMAIL,
    _TEXT_FIELDS,
    ADDRESS_FIELDS,
    MAX_DEPTH,
    MAX_EMAIL_LENGTH,
    MAX_INTEGER,
    MAX_META_ENTRIES,
    MAX_RECORD_BYTES,
    MAX_TEXT_LENGTH,
    MIN_INTEGER,
    InvalidCustomerRecord,
    RejectedRecord,
    _canonical,
    _rejected,
    _shorten,
    clean_value,
    customer_id_of,
    describe_id,
)


def customer_key(org_id: str, store_url: str, woo_id: int) -> UUID:
    return uuid5(CUSTOMER_NAMESPACE, f"{org_id}\x1f{store_url}\x1f{woo_id}")


def check_record(
    raw: Any, canonical: Callable[[Mapping[str, Any]], bytes] | None = None
) -> dict[str, Any] | RejectedRecord:
    encode = canonical or _canonical
    cid = customer_id_of(raw)
    if cid is None:
        return _rejected(None, f"id: {describe_id(raw)}", raw, encode)
    record: dict[str, Any] = raw
    try:
        try:
            encoded = encode(record)
            dirty = b"\\u0000" in encoded or irregular(record)
        except (TypeError, ValueError, OverflowError, RecursionError):
            dirty = True
        if dirty:
            record = clean_value(record)
            encoded = encode(record)
        validate_customer(record, encoded_size=len(encoded))
    except InvalidCustomerRecord as error:
        return _rejected(cid, f"invalid customer record: {error}", raw, encode)
    except (TypeError, ValueError, OverflowError, RecursionError) as error:
        return _rejected(cid, f"invalid customer record: {type(error).__name__}", raw, encode)
    return record


def irregular(value: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return True
    kind = type(value)
    if kind is dict:
        return any(type(key) is not str or irregular(item, depth + 1) for key, item in value.items())
    if kind is list:
        return any(irregular(item, depth + 1) for item in value)
    if kind is int:
        return not MIN_INTEGER <= value <= MAX_INTEGER
    if kind is float:
        return not math.isfinite(value)
    return not (kind is str or kind is bool or value is None)


def validate_customer(record: Any, encoded_size: int | None = None) -> None:
    if not isinstance(record, dict):
        raise InvalidCustomerRecord("record", f"expected a JSON object, got {type(record).__name__}")
    if customer_id_of(record) is None:
        raise InvalidCustomerRecord("id", f"expected a positive integer, got {record.get('id')!r}")
    if encoded_size is not None and encoded_size > MAX_RECORD_BYTES:
        raise InvalidCustomerRecord(
            "record", f"{encoded_size} bytes is larger than the {MAX_RECORD_BYTES} bytes allowed"
        )
    email = record.get("email")
    if not isinstance(email, str):
        raise InvalidCustomerRecord("email", f"expected a string, got {type(email).__name__}")
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email):
        raise InvalidCustomerRecord("email", f"{_shorten(email)!r} is not a valid email address")
    for name in _TEXT_FIELDS:
        _check_text(record, name, name)
    for name in _DATE_FIELDS:
        value = record.get(name)
        if value is not None and (not isinstance(value, str) or not _DATE.match(value)):
            raise InvalidCustomerRecord(
                name, f"expected YYYY-MM-DDTHH:MM:SS or null, got {_shorten(value)!r}"
            )
    for section in ("billing", "shipping"):
        address = record.get(section, {})
        if address is None:
            continue
        if not isinstance(address, dict):
            raise InvalidCustomerRecord(section, f"expected an object, got {type(address).__name__}")
        for name in ADDRESS_FIELDS:
            _check_text(address, name, f"{section}.{name}")
    paying = record.get("is_paying_customer", False)
    if not isinstance(paying, bool):
        raise InvalidCustomerRecord("is_paying_customer", f"expected true or false, got {paying!r}")
    meta = record.get("meta_data", [])
    if not isinstance(meta, list):
        raise InvalidCustomerRecord("meta_data", f"expected a list, got {type(meta).__name__}")
    if len(meta) > MAX_META_ENTRIES:
        raise InvalidCustomerRecord("meta_data", f"{len(meta)} entries, more than {MAX_META_ENTRIES}")
    for index, entry in enumerate(meta):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise InvalidCustomerRecord(f"meta_data[{index}]", "expected an object with a string key")


def _check_text(container: dict[str, Any], name: str, label: str) -> None:
    value = container.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidCustomerRecord(label, f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidCustomerRecord(label, f"{len(value)} characters, more than {MAX_TEXT_LENGTH}")


def sync_batch(
    queue: SyncQueue,
    records: Iterable[dict[str, Any]],
    customers: Mapping[int, Customer],
    canonical: Callable[[Mapping[str, Any]], bytes] = canonical_bytes,
    read_after: datetime | None = None,
) -> BatchOutcome:
    outcome = BatchOutcome()
    for record in records:
        cid = record["id"]
        line = queue.lines.get(cid)
        if line is None or line.state != DRAFT:
            continue
        encoded = canonical(record)
        try:
            validate_customer(record, encoded_size=len(encoded))
        except InvalidCustomerRecord as error:
            outcome.failures[cid] = f"invalid customer record: {error}"
            continue
        digest = hashlib.sha256(encoded).hexdigest()
        customer = customers.get(cid)
        if customer is None:
            customer = Customer(
                org_id=queue.org_id,
                store_url=queue.store_url,
                woo_id=cid,
                record=record,
                digest=digest,
                queue_id=str(queue.id),
            )
            result = "created"
        else:
            result = customer.sync(record, digest, str(queue.id), read_after)
        outcome.results[result].append(cid)
        if customer.pending_events:
            outcome.changed.append(customer)
    queue.finish_lines(outcome.results)
    queue.fail_lines(outcome.failures)
    return outcome
