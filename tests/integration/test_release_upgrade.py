"""A database made by release 0.1.0 (before API tokens, queue leases and durable jobs), upgraded by
`wcsync db migrate`: every queue and event intact, the new tables there, and migrating again changes nothing.

The databases in tests/fixtures/release_0_1_0 were made by that release's own CLI
(tests/fixtures/make_release_databases.py), with what its `queues --json` and `audit verify` said of them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg

from infrastructure.adapters.migrations import MIGRATIONS, MIGRATIONS_TABLE
from tests.support.cli import as_json, wcsync, wcsync_env

FIXTURES = Path(__file__).parents[1] / "fixtures" / "release_0_1_0"
ORGS = ("acme", "beta")


def _expected(backend: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"expected-{backend}.json").read_text())
    return document


def _sqlite_copy(tmp_path: Path) -> str:
    target = tmp_path / "release.sqlite"
    shutil.copyfile(FIXTURES / "wcsync.sqlite", target)
    return f"sqlite:///{target}"


def _postgres_restored(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute((FIXTURES / "postgres.sql").read_text().encode())
    return postgres_url


def _migrations(url: str) -> list[int]:
    statement = f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version"
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return [row[0] for row in conn.execute(statement)]
    with psycopg.connect(url) as pg:
        return [row[0] for row in pg.execute(statement.encode())]


def _upgraded_intact(url: str, expected: dict[str, Any]) -> None:
    env = wcsync_env(None, url)
    for _ in range(2):  # the second run applies nothing and changes nothing
        migrated = wcsync("db", "migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert _migrations(url) == [m.version for m in MIGRATIONS]
    for org in ORGS:
        queues = as_json(wcsync("queues", "--org", org, "--json", env=env))
        old = expected[org]
        assert len(queues) == len(old) >= 1
        for now, then in zip(queues, old, strict=True):
            assert {key: now.get(key) for key in then} == then
    verified = wcsync("audit", "verify", "--json", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["events"] == expected["events"]
    # The new tables work on the upgraded database.
    created = wcsync("tokens", "create", "--org", "acme", "--name", "after-upgrade", "--json", env=env)
    assert created.returncode == 0, created.stderr
    listed = as_json(wcsync("tokens", "list", "--org", "acme", "--json", env=env))
    assert [row["name"] for row in listed] == ["after-upgrade"]


def test_a_release_0_1_0_sqlite_database_upgrades_with_every_queue_and_event_intact(tmp_path: Path) -> None:
    _upgraded_intact(_sqlite_copy(tmp_path), _expected("sqlite"))


def test_a_release_0_1_0_postgres_database_upgrades_with_every_queue_and_event_intact(
    postgres_url: str,
) -> None:
    _upgraded_intact(_postgres_restored(postgres_url), _expected("postgres"))
