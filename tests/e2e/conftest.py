"""The fixtures end-to-end tests use, from tests/support: the sandbox store (the `wcsync` command itself is
run by tests.support.cli)."""

from __future__ import annotations

from tests.support.sandbox import sandbox, shared_sandbox

__all__ = ["sandbox", "shared_sandbox"]
