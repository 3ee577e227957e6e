"""Instants as users type them (ISO 8601, UTC when no offset is given)."""

from __future__ import annotations

from datetime import UTC, datetime

from infrastructure.support.errors import ConfigurationError, quoted


def parse_time(text: str) -> datetime:
    """An ISO 8601 instant; without an offset it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"{quoted(text)} is not an ISO 8601 time (e.g. 2026-03-01T12:00:00+00:00 or 2026-03-01)"
        ) from None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ConfigurationError(
            f"{quoted(text)} is outside the times UTC can represent (years 1 to 9999)"
        ) from None
