"""FastJSONTranscoder writes what eventsourcing's own JSONTranscoder writes for the values wcsync's events
hold (a timestamp, plain JSON: ids are kept as text) and reads it back to the same values: old logs and
other readers depend on the stored format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, UUIDAsHex

from infrastructure.adapters.transcoder import FastJSONTranscoder

STATES: list[dict[str, Any]] = [
    {"timestamp": datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=UTC), "page": 1, "records": []},
    {"timestamp": datetime(2026, 1, 15, 9, 30, tzinfo=timezone(timedelta(hours=-5))), "ids": [1, 2]},
    {"timestamp": datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), "x": None, "n": [1.5, True, "é\u0000"]},
    {"timestamp": datetime(2026, 2, 1, 0, 0, 0, 1, tzinfo=UTC), "record": {"id": 3, "name": "Zoë"}},
]


def _library() -> JSONTranscoder:
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    return transcoder


def _fast() -> FastJSONTranscoder:
    transcoder = FastJSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    return transcoder


@pytest.mark.parametrize("state", STATES)
def test_the_stored_format_is_the_librarys(state: dict[str, Any]) -> None:
    fast, library = _fast().encode(state), _library().encode(state)
    assert json.loads(fast) == json.loads(library)
    assert _fast().decode(fast) == state == _library().decode(library)
