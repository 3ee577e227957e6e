"""The application on a test database, and one way to run a sync with it.

Fixtures: ``services`` (the whole application, migrated, on each backend; ``pg_services`` on PostgreSQL
only), ``app`` (the event store alone), ``runner`` (the projections over ``app``). ``run_sync`` runs one sync
to its end the way the CLI does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from domain.queue_terms import QueueOptions
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.adapters.woocommerce import ClientOptions
from infrastructure.services.sync import SyncOutcome
from infrastructure.support.config import DatabaseConfig, StoreSettings
from infrastructure.wiring import Services, migrate, open_services
from projections.runner import ProjectionRunner

# Retries and the circuit breaker on a test's time scale, not a real store's.
FAST = ClientOptions(backoff_base_s=0.01, backoff_max_s=0.05, circuit_reset_s=0.05)


class Store(Protocol):
    """A store a test runs (the sandbox, the hostile store): where it is and the credentials it takes."""

    @property
    def url(self) -> str: ...
    @property
    def consumer_key(self) -> str: ...
    @property
    def consumer_secret(self) -> str: ...


def store_of(store: Store) -> StoreSettings:
    return StoreSettings(
        url=store.url, consumer_key=store.consumer_key, consumer_secret=store.consumer_secret
    )


def run_sync(
    services: Services,
    store: Store | StoreSettings,
    org: str = "acme",
    *,
    client: ClientOptions = FAST,
    catch_up: bool = False,
    **options: Any,
) -> SyncOutcome:
    """`wcsync start` for ``org`` against ``store``, with QueueOptions(**options); with ``catch_up``, the
    projections are brought up to date after it."""
    settings = store if isinstance(store, StoreSettings) else store_of(store)
    outcome = asyncio.run(services.engine(org).start(settings, QueueOptions(**options), client))
    if catch_up:
        services.catch_up()
    return outcome


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    """The application on a fresh, migrated database of each backend (as `wcsync db migrate` leaves it;
    on SQLite migrate does what opening it does anyway)."""
    database = DatabaseConfig.from_url(database_url)
    migrate(database)
    with open_services(database) as opened:
        yield opened


@pytest.fixture
def pg_services(postgres_url: str) -> Iterator[Services]:
    """The application on a fresh, migrated PostgreSQL database (for what only PostgreSQL can show)."""
    database = DatabaseConfig.from_url(postgres_url)
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
