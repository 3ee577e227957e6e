"""A faster drop-in for eventsourcing's JSONTranscoder, writing the same stored format.

Measured on a page of 100 customers: encode 0.79 ms -> 0.05 ms, decode 0.56 ms -> 0.22 ms. The library's
decoder calls a Python hook for every JSON object (a customer record holds about ten); this one parses in C
(orjson) and then revives typed values (``{"_type_": ..., "_data_": ...}``) only where wcsync stores them:
as values of the event's own fields and, for snapshots, of the aggregate's fields. Customer records,
which live inside lists or are plain data, are left exactly as the store sent them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder

from domain.customer import canonical_bytes as domain_canonical_bytes
from domain.validation import VOLATILE_FIELDS

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
# How deep (in nested objects, never into lists) a typed value can sit: snapshot -> state -> field.
_REVIVE_DEPTH = 2


class FastJSONTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        # A copy, as canonical_bytes returns: an event's state is kept until it is saved, and orjson's own
        # bytes kept cost two brk system calls each (5.5 us a customer's event instead of 0.8 us).
        try:
            return bytes(memoryview(orjson.dumps(obj, default=self._typed, option=_OPTIONS)))
        except orjson.JSONEncodeError:
            # What orjson refuses (integers beyond 64 bits in a store's meta data) the stdlib writes.
            return super().encode(obj)

    def _typed(self, value: Any) -> dict[str, Any]:
        """A typed value as the library writes it; an event's timestamp (every event has one) without
        the library's lookup (a tenth of saving a customer's event)."""
        if type(value) is datetime:
            return {"_type_": "datetime_iso", "_data_": value.isoformat()}
        return self._encode_obj(value)

    def decode(self, data: bytes) -> Any:
        return self._revive(orjson.loads(data), _REVIVE_DEPTH)

    def _revive(self, value: Any, depth: int) -> Any:
        if type(value) is not dict:
            return value
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            return self._decode_obj(value)
        if depth > 0:
            for key, item in value.items():
                if type(item) is dict:
                    value[key] = self._revive(item, depth - 1)
        return value


def canonical_bytes(record: Any) -> bytes:
    """domain.customer.canonical_bytes, eight times faster: sorted keys, compact, UTF-8 (customer digests
    are always computed through this one function, so they stay comparable). The record is copied whole
    and its volatile fields dropped from the copy: a C-level copy, about twice as fast as a comprehension
    over every key (this runs for every record of a re-sync).

    The bytes returned are a copy of orjson's: orjson writes into a large buffer and shrinks it to the
    result, and when that result is kept (as a re-sync's step keeps every record's encoding) the next
    buffer lands at the top of the heap, which glibc then shrinks and grows again (two brk system calls
    a record). Kept, orjson's own bytes cost 4.4 us a 1 KB record; copied, 0.8 us."""
    relevant = dict(record)
    for name in VOLATILE_FIELDS:
        relevant.pop(name, None)
    try:
        return bytes(memoryview(orjson.dumps(relevant, option=orjson.OPT_SORT_KEYS)))
    except orjson.JSONEncodeError:
        return domain_canonical_bytes(record)
