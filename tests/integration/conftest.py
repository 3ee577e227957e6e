"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infrastructure.bootstrap import Services, migrate, open_services
from infrastructure.config import DatabaseConfig


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    """The application on a fresh, migrated database of each backend (as `wcsync db migrate` leaves it;
    on SQLite migrate does what opening it does anyway)."""
    database = DatabaseConfig.from_url(database_url)
    migrate(database)
    with open_services(database) as opened:
        yield opened
