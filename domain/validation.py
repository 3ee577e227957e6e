"""What a customer record must look like before it is mirrored.

Pure: no I/O. A record that breaks a rule fails its own line with a message that names the field;
the other lines of the batch go on.
"""

from __future__ import annotations

import re
from typing import Any

MAX_TEXT_LENGTH = 1_000
MAX_EMAIL_LENGTH = 254
MAX_META_ENTRIES = 500
MAX_RECORD_BYTES = 64 * 1024

# Deliberately simple: one @, no spaces, a dot in the domain. WordPress's own is_email() is of this strength.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_TEXT_FIELDS = ("first_name", "last_name", "username", "role")
_DATE_FIELDS = ("date_created", "date_created_gmt", "date_modified", "date_modified_gmt")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
_ADDRESS_FIELDS = (
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


class InvalidCustomerRecord(ValueError):
    """A customer record that cannot be mirrored; the message names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def customer_id_of(record: Any) -> int | None:
    """The record's WooCommerce id when it is a positive integer, else None."""
    if isinstance(record, dict):
        value = record.get("id")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def validate_customer(record: Any, encoded_size: int | None = None) -> None:
    """Raise InvalidCustomerRecord for the first rule the record breaks."""
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
        for name in _ADDRESS_FIELDS:
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


def _shorten(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
