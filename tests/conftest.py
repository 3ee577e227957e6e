"""What every test layer shares: an isolated environment, and SQLite and PostgreSQL databases.

The fixtures live in tests/support (environment.py, databases.py) and are registered here by name. Structlog
is left unconfigured so ``structlog.testing.capture_logs()`` works in any test.
"""

from __future__ import annotations

import pytest

from tests.support import sandbox
from tests.support.databases import (
    POSTGRES_FIXTURES,
    database_url,
    pg_admin,
    pg_dropper,
    pg_instance,
    pg_server,
    pg_template,
    postgres_url,
    sqlite_url,
)
from tests.support.environment import allow_bytecode_cache, isolated_environment

__all__ = [  # the fixtures every layer may use
    "database_url",
    "isolated_environment",
    "pg_admin",
    "pg_dropper",
    "pg_instance",
    "pg_server",
    "pg_template",
    "postgres_url",
    "sqlite_url",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", sandbox.MARK_HELP)
    allow_bytecode_cache()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs PostgreSQL, so ``-m 'not postgres'`` runs without a server."""
    for item in items:
        # database_url's postgres case carries the mark from its param; its sqlite case needs no server.
        if POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
