"""Stored events as JSON: what tests/fixtures/make_event_fixtures.py writes and test_event_fixtures.py reads."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID


def json_ready(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value
