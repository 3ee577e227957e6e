"""What a customer record must look like before it is mirrored: the boundary every store record crosses.

Pure: no I/O. A record that breaks a rule fails its own line with a message that names the field; the
other lines of the page go on. A record without a usable id cannot be a line at all: it is refused and
named in the queue's activity.

One rule for text on both backends: NUL and lone surrogates (which PostgreSQL cannot store, and which
SQLite and PostgreSQL would otherwise keep differently) are replaced by U+FFFD before anything is stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from domain.errors import WcsyncError

# Fields of a customer's answer that change without the customer changing (links carry the store's URL):
# left out of its canonical bytes, and so of its digest (domain/customer.py canonical_bytes).
VOLATILE_FIELDS = frozenset({"_links"})
MAX_TEXT_LENGTH = 1_000
MAX_EMAIL_LENGTH = 254
MAX_META_ENTRIES = 500
MAX_RECORD_BYTES = 64 * 1024
# A customer id is a JSON integer in 1..2^63-1: what a BIGINT column, and WordPress's own user ids, hold.
MAX_CUSTOMER_ID = 2**63 - 1
# Any other integer in a record must fit in 64 bits (signed or unsigned), as every JSON encoder we use writes.
MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**64 - 1
MAX_DEPTH = 64  # objects and lists nested in a record (meta_data values can be any JSON)
EXCERPT_CHARS = 300  # how much of a rejected record its event keeps
REPLACEMENT_CHARACTER = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# Deliberately simple: one @, no spaces, a dot in the domain. WordPress's own is_email() is of this strength.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_TEXT_FIELDS = ("first_name", "last_name", "username", "role")
_DATE_FIELDS = ("date_created", "date_created_gmt", "date_modified", "date_modified_gmt")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
# All four dates of a record, joined by a separator no date can hold, in ASCII digits: what a store writes.
# A record whose dates match this together has dates _DATE matches one by one (half the time: the four
# matches were a third of validate_customer); any other is looked at date by date.
_ASCII_DATE = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
_DATES_SEPARATOR = "\x1f"
_PLAIN_DATES = re.compile(
    f"(?:{_ASCII_DATE}{_DATES_SEPARATOR}){{{len(_DATE_FIELDS) - 1}}}{_ASCII_DATE}", re.ASCII
)
# The fields of a WooCommerce address, in the order the REST API writes them (a shipping address has no email).
ADDRESS_FIELDS = (
    "first_name",
    "last_name",
    "company",
    "address_1",
    "address_2",
    "city",
    "state",
    "postcode",
    "country",
    "email",
    "phone",
)


class InvalidCustomerRecord(WcsyncError, ValueError):
    """A customer record that cannot be mirrored; the message names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def customer_id_of(record: Any) -> int | None:
    """The record's WooCommerce id when it is a JSON integer in 1..MAX_CUSTOMER_ID (not a boolean, a
    string or a float), else None."""
    if type(record) is dict:
        value = record.get("id")
        if type(value) is int and 0 < value <= MAX_CUSTOMER_ID:
            return value
    return None


def describe_id(record: Any) -> str:
    """Why a record has no usable id, in a few words that quote (a bounded part of) what it had."""
    if not isinstance(record, dict):
        return f"{_kind(record)} instead of a customer object"
    if "id" not in record:
        return "a customer object without an id"
    value = record["id"]
    if type(value) is int:
        return f"id {_shorten(value, 30)} is outside 1..{MAX_CUSTOMER_ID}"
    return f"id {_shorten(json.dumps(value, ensure_ascii=True, default=str), 30)} is {_kind(value)}, not an integer"


@dataclass(frozen=True)
class RejectedRecord:
    """A record that will not be mirrored: its line (when it has an id) fails with ``error``, and the log
    keeps a bounded ``excerpt`` and the ``digest`` of its canonical bytes instead of the record itself."""

    customer_id: int | None
    error: str
    excerpt: str
    digest: str
    size: int  # bytes of its canonical form

    def as_entry(self) -> dict[str, Any]:
        return {
            "id": self.customer_id,
            "error": self.error,
            "excerpt": self.excerpt,
            "digest": self.digest,
            "bytes": self.size,
        }


@dataclass(frozen=True)
class CheckedRecords:
    """A page of store records after the boundary: ``records`` safe to store and process (text cleaned),
    ``rejected`` with their reasons (those with a ``customer_id`` fail their line, the others are refused)."""

    records: list[dict[str, Any]]
    rejected: list[RejectedRecord]


def check_records(
    raw: Iterable[Any], canonical: Callable[[Mapping[str, Any]], bytes] | None = None
) -> CheckedRecords:
    """Put each record of a store answer through check_record."""
    records: list[dict[str, Any]] = []
    rejected: list[RejectedRecord] = []
    for item in raw:
        outcome = check_record(item, canonical)
        if isinstance(outcome, RejectedRecord):
            rejected.append(outcome)
        else:
            records.append(outcome)
    return CheckedRecords(records, rejected)


def check_record(
    raw: Any, canonical: Callable[[Mapping[str, Any]], bytes] | None = None, *, strict_json: bool = False
) -> dict[str, Any] | RejectedRecord:
    """The record, with unstorable text replaced, when it may be mirrored; else why not. Never raises.

    ``canonical`` encodes a record to its canonical bytes (sorted keys, compact UTF-8); the fast encoder of
    the infrastructure layer is passed in, the stdlib one is the default. ``strict_json``: the caller read
    the record with a parser that gives JSON's own types only, string keys, finite floats and integers
    within 64 bits (larger ones as floats), as orjson does: of what _irregular looks for, only the nesting
    can then be wrong (_may_nest_too_deep), and the same outcome costs a fraction of the walk."""
    encode = canonical or _canonical
    cid = customer_id_of(raw)
    if cid is None:
        return _rejected(None, f"id: {describe_id(raw)}", raw, encode)
    record: dict[str, Any] = raw
    try:
        try:
            encoded = encode(record)
            dirty = b"\\u0000" in encoded or (
                _may_nest_too_deep(record, encoded) if strict_json else _irregular(record)
            )
        except (TypeError, ValueError, OverflowError, RecursionError):
            # Lone surrogates, integers past 64 bits, nesting too deep for the encoder: the slow path names it.
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


def clean_value(value: Any, path: str = "record", depth: int = 0) -> Any:
    """A copy of a JSON value with NUL and lone surrogates in every string (keys too) replaced by U+FFFD;
    raises InvalidCustomerRecord for what JSON cannot hold or we cannot store (depth, huge or non-finite
    numbers, non-string keys)."""
    if depth > MAX_DEPTH:
        raise InvalidCustomerRecord(path, f"nested more than {MAX_DEPTH} levels deep")
    kind = type(value)
    if kind is str:
        return _UNSTORABLE.sub(REPLACEMENT_CHARACTER, value)
    if kind is dict:
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidCustomerRecord(path, f"has a key that is not a string ({_kind(key)})")
            name = _UNSTORABLE.sub(REPLACEMENT_CHARACTER, key)
            cleaned[name] = clean_value(item, _child(path, f".{_shorten(name, 40)}"), depth + 1)
        return cleaned
    if kind is list:
        return [clean_value(item, _child(path, f"[{index}]"), depth + 1) for index, item in enumerate(value)]
    if kind is int:
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            raise InvalidCustomerRecord(path, "an integer too large to store (more than 64 bits)")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise InvalidCustomerRecord(path, "a number that is not finite")
        return value
    if value is None or kind is bool:
        return value
    raise InvalidCustomerRecord(path, f"{_kind(value)} is not a JSON value")


def _irregular(value: Any, depth: int = 0) -> bool:
    """Whether clean_value would change or refuse anything but text (nesting, numbers, keys).

    One pass over a stack of the containers still to look into, each item's type tested in line: this
    runs for every record of a first sync, where the recursive walk it replaces (a function call and a
    generator for every value) was an eighth of the recording thread's CPU."""
    if depth > MAX_DEPTH:
        return True
    kind = type(value)
    if kind is not dict and kind is not list:
        return _irregular_scalar(value, kind)
    # Containers to look into, with the depth of their items.
    todo: list[tuple[Any, int]] = [(value, depth + 1)]
    while todo:
        container, depth = todo.pop()
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    return True
            items = container.values()
        else:
            items = container
        if depth > MAX_DEPTH:
            # Any item this deep is too deep, whatever it is (as clean_value refuses it).
            if items:
                return True
            continue
        for item in items:
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is dict or kind is list:
                todo.append((item, depth + 1))
            elif kind is int:
                if not MIN_INTEGER <= item <= MAX_INTEGER:
                    return True
            elif kind is float:
                if not math.isfinite(item):
                    return True
            else:
                return True
    return False


def _may_nest_too_deep(record: dict[str, Any], encoded: bytes) -> bool:
    """For a record a strict parser read (check_record's ``strict_json``): whether _irregular could find
    anything, i.e. containers nested deeper than MAX_DEPTH. Its canonical bytes hold a bracket for every
    container but those of its volatile fields (brackets inside strings only add to the count), so a
    record with no more than MAX_DEPTH of them is shallow enough; the volatile fields, left out of those
    bytes, are walked. Otherwise the whole record is (_irregular)."""
    if encoded.count(b"{") + encoded.count(b"[") > MAX_DEPTH:
        return _irregular(record)
    return any(_irregular(record[name], 1) for name in VOLATILE_FIELDS if name in record)


def _irregular_scalar(value: Any, kind: type) -> bool:
    if kind is int:
        return not MIN_INTEGER <= value <= MAX_INTEGER
    if kind is float:
        return not math.isfinite(value)
    return not (kind is str or kind is bool or value is None)


def _rejected(
    cid: int | None, error: str, raw: Any, encode: Callable[[Mapping[str, Any]], bytes]
) -> RejectedRecord:
    encoded = _bytes_for_excerpt(raw, encode)
    excerpt = encoded[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
    excerpt = _UNSTORABLE.sub(REPLACEMENT_CHARACTER, excerpt)
    if len(encoded) > len(excerpt.encode("utf-8")):
        excerpt += "…"
    return RejectedRecord(
        customer_id=cid,
        error=_UNSTORABLE.sub(REPLACEMENT_CHARACTER, error),
        excerpt=excerpt,
        digest=hashlib.sha256(encoded).hexdigest(),
        size=len(encoded),
    )


def _bytes_for_excerpt(raw: Any, encode: Callable[[Mapping[str, Any]], bytes]) -> bytes:
    """Canonical bytes of anything a store sent, valid or not (never raises)."""
    if isinstance(raw, dict):
        try:
            return encode(raw)
        except (TypeError, ValueError, OverflowError, RecursionError):
            pass
    try:
        return json.dumps(
            raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr
        ).encode()
    except (TypeError, ValueError, OverflowError, RecursionError):
        return repr(type(raw)).encode()


def _child(path: str, step: str) -> str:
    """A field's path for messages, kept short: a path nested many levels deep names its start only."""
    return path + step if len(path) < 80 else path if path.endswith("…") else path + "…"


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a fractional number"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate_customer(record: Any, encoded_size: int | None = None) -> None:
    """Raise InvalidCustomerRecord for the first rule the record breaks.

    The text fields of a record and of its addresses are looked at together first (_plain_text): when all
    are plain strings short enough, or absent, none breaks a rule; only otherwise is each one checked in
    turn, to name the first that does. Every record of a sync comes here."""
    if not isinstance(record, dict):
        raise InvalidCustomerRecord("record", f"expected a JSON object, got {type(record).__name__}")
    if customer_id_of(record) is None:
        raise InvalidCustomerRecord("id", f"expected a positive integer, got {record.get('id')!r}")
    if encoded_size is not None and encoded_size > MAX_RECORD_BYTES:
        raise InvalidCustomerRecord(
            "record", f"{encoded_size} bytes is larger than the {MAX_RECORD_BYTES} bytes allowed"
        )
    get = record.get
    email = get("email")
    if not isinstance(email, str):
        raise InvalidCustomerRecord("email", f"expected a string, got {type(email).__name__}")
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email):
        raise InvalidCustomerRecord("email", f"{_shorten(email)!r} is not a valid email address")
    if not _plain_text(map(get, _TEXT_FIELDS)):
        for name in _TEXT_FIELDS:
            _check_text(record, name, name)
    if not _plain_dates(record):
        for name in _DATE_FIELDS:
            value = get(name)
            if value is not None and (not isinstance(value, str) or not _DATE.match(value)):
                raise InvalidCustomerRecord(
                    name, f"expected YYYY-MM-DDTHH:MM:SS or null, got {_shorten(value)!r}"
                )
    for section in ("billing", "shipping"):
        address = get(section, {})
        if address is None:
            continue
        if not isinstance(address, dict):
            raise InvalidCustomerRecord(section, f"expected an object, got {type(address).__name__}")
        if not _plain_text(map(address.get, ADDRESS_FIELDS)):
            for name in ADDRESS_FIELDS:
                _check_text(address, name, f"{section}.{name}")
    paying = get("is_paying_customer", False)
    if not isinstance(paying, bool):
        raise InvalidCustomerRecord("is_paying_customer", f"expected true or false, got {paying!r}")
    meta = get("meta_data", [])
    if not isinstance(meta, list):
        raise InvalidCustomerRecord("meta_data", f"expected a list, got {type(meta).__name__}")
    if len(meta) > MAX_META_ENTRIES:
        raise InvalidCustomerRecord("meta_data", f"{len(meta)} entries, more than {MAX_META_ENTRIES}")
    for index, entry in enumerate(meta):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise InvalidCustomerRecord(f"meta_data[{index}]", "expected an object with a string key")


def _plain_dates(record: dict[str, Any]) -> bool:
    """Whether the record's four dates are there and pass for sure (see _PLAIN_DATES; False says only
    that they must be looked at one by one)."""
    try:
        dates = _DATES_SEPARATOR.join(map(record.get, _DATE_FIELDS))  # type: ignore[arg-type]
    except TypeError:  # one is missing or null, or not text: what the join refuses
        return False
    return _PLAIN_DATES.fullmatch(dates) is not None


def _plain_text(values: Iterable[Any]) -> bool:
    """Whether every one of these values passes _check_text for sure: a str no longer than
    MAX_TEXT_LENGTH, or None. (False says only that one of them must be checked.)"""
    for value in values:
        if value is not None and (type(value) is not str or len(value) > MAX_TEXT_LENGTH):
            return False
    return True


def _check_text(container: dict[str, Any], name: str, label: str) -> None:
    value = container.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidCustomerRecord(label, f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidCustomerRecord(label, f"{len(value)} characters, more than {MAX_TEXT_LENGTH}")


def _shorten(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
