"""The harness itself: a fresh database per test, both backends reachable, the server gone afterwards."""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.support import pgserver
from tests.support.cli import run_in_repo

# Read at import: the autouse fixture hides these names from the tests themselves.
PROBE_FILE = os.environ.get("HARNESS_PROBE_FILE", "")
PROBE_FAIL = os.environ.get("HARNESS_PROBE_FAIL", "")

seen_databases: list[str] = []


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_a_fresh_postgres_database(postgres_url: str, round_: int) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        conn.execute("CREATE TABLE leftover (id int)")
    assert name is not None and tables is not None
    assert tables[0] == 0, "a table from an earlier test is visible"
    assert name[0] not in seen_databases
    assert name[0].startswith("t_")
    seen_databases.append(name[0])


def test_postgres_url_names_host_port_and_database(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    assert parts.scheme == "postgresql"
    assert parts.hostname and parts.port and parts.path.startswith("/t_")


def test_database_url_reaches_each_backend(database_url: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["database_url"]
    if backend == "sqlite":
        assert database_url.startswith("sqlite:////")
        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE probe (id int)")
        assert Path(path).exists()
    else:
        assert request.node.get_closest_marker("postgres") is not None
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE probe (id int)")


def test_environment_is_isolated(tmp_path: Path) -> None:
    leaked = [n for n in os.environ if n.startswith(("WCSYNC_", "WOO_", "POSTGRES_", "SQLITE_"))]
    assert leaked == []
    assert "PERSISTENCE_MODULE" not in os.environ
    assert Path(os.environ["XDG_DATA_HOME"]).is_relative_to(tmp_path)


def test_probe_records_server(pg_instance: pgserver.PostgresServer | None) -> None:
    """Helper for the subprocess test below: tells the parent where the child's server lived."""
    if not PROBE_FILE:
        pytest.skip("only runs inside test_server_is_removed_after_the_run")
    assert pg_instance is not None
    Path(PROBE_FILE).write_text(f"{pg_instance.base_dir}\n{pg_instance.port}\n")


def test_probe_fails_on_purpose(postgres_url: str) -> None:
    """Helper for the subprocess test below: cleanup must also happen when a test fails."""
    if not PROBE_FAIL:
        pytest.skip("only runs inside test_server_is_removed_after_the_run")
    raise AssertionError("deliberate failure")


@pytest.mark.slow
def test_server_is_removed_after_the_run(tmp_path: Path) -> None:
    probe = tmp_path / "probe.txt"
    env = {**os.environ, "HARNESS_PROBE_FILE": str(probe), "HARNESS_PROBE_FAIL": "1"}
    env.pop(pgserver.EXTERNAL_URL_VARIABLE, None)  # make the child start (and stop) its own server
    result = run_in_repo(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "probe"], env=env
    )
    assert result.returncode == 1, result.stdout + result.stderr  # the deliberate failure, nothing else
    assert "1 failed, 1 passed" in result.stdout, result.stdout
    base_dir, port = probe.read_text().split()
    assert not Path(base_dir).exists(), "the server's temp dir outlived the run"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(port)), timeout=2):
        pass
