"""The fixtures integration tests use, from tests/support: the application on a test database, and the
sandbox store."""

from __future__ import annotations

from tests.support.sandbox import sandbox, shared_sandbox
from tests.support.services import app, pg_services, runner, services

__all__ = ["app", "pg_services", "runner", "sandbox", "services", "shared_sandbox"]
