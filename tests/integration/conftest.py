"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import Services, migrate, open_services
from projections import ProjectionRunner


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    """The application on a fresh, migrated database of each backend (as `wcsync db migrate` leaves it;
    on SQLite migrate does what opening it does anyway)."""
    database = DatabaseConfig.from_url(database_url)
    migrate(database)
    with open_services(database) as opened:
        yield opened


@pytest.fixture
def app(database_url: str) -> Iterator[SyncApplication]:
    """The event store alone on a fresh database of each backend (its tables created on first use)."""
    application = SyncApplication(DatabaseConfig.from_url(database_url))
    yield application
    application.close()


@pytest.fixture
def runner(app: SyncApplication) -> Iterator[ProjectionRunner]:
    """The projections over ``app``, migrated."""
    projection_runner = ProjectionRunner(app)
    projection_runner.migrate()
    yield projection_runner
    projection_runner.close()
