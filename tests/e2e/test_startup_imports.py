"""A command loads only the libraries its work needs (issue 13, start-up): `wcsync --help` and a usage error
load no database, HTTP or logging library, the read-only commands on SQLite no PostgreSQL driver, HTTP
client, job queue, metrics, cipher or cron parser, and a sync of a store given in the environment to a
SQLite database no PostgreSQL driver, job queue, metrics, cipher or cron parser either.

What a process imported is read from ``python -X importtime`` (one stderr line per module), so nothing here
is timed: a library that comes back on a command's path fails the test by name, on any machine. Which
module brought it in: ``python -X importtime -m cli.main ARGS`` shows the tree.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infrastructure.sandbox import RunningSandbox
from tests.support.cli import run_in_repo, wcsync, wcsync_env

# What each library costs a command's start, roughly (this machine, warm caches): aiohttp 0.1 s, psycopg
# 0.08 s, structlog 0.03 s, procrastinate 0.1 s, the others a few ms each (croniter also starts a process).
HTTP = {"aiohttp", "yarl", "multidict", "oauthlib"}
JOBS = {"procrastinate"}
METRICS = {"prometheus_client"}
CIPHER = {"cryptography"}
CRON = {"croniter"}
POSTGRES = {"psycopg", "psycopg_binary", "psycopg_pool"}
DATABASE = {*POSTGRES, "eventsourcing", "orjson"}
LOGGING = {"structlog"}

NO_QUEUE = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$")


def imported_by(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`wcsync ARGV` run under ``-X importtime``: its result and the top-level packages it imported."""
    result = run_in_repo([sys.executable, "-X", "importtime", "-m", "cli.main", *argv], env=env)
    names = {m.group(1).split(".")[0] for m in map(_IMPORT_LINE.match, result.stderr.splitlines()) if m}
    assert "cli" in names, result.stderr[-2000:]  # the lines were read: the command's own package shows
    return result, names


def _errors(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))


@pytest.fixture(scope="module")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty, migrated SQLite database (the state `wcsync status` reports "no queues yet" in)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('startup') / 'wcsync.db'}"
    migrated = wcsync("db", "migrate", env=wcsync_env(None, url))
    assert migrated.returncode == 0, migrated.stderr
    return url


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["status", "--help"], ["status", "not-a-queue-id"], ["no-such-command"]],
    ids=["help", "command-help", "usage-error", "unknown-command"],
)
def test_help_and_usage_errors_load_no_database_http_or_logging_library(
    argv: list[str], tmp_path: Path
) -> None:
    result, names = imported_by(argv, wcsync_env(None, f"sqlite:///{tmp_path / 'never.db'}"))
    assert result.returncode in (0, 2), _errors(result)
    heavy = HTTP | JOBS | METRICS | CIPHER | CRON | DATABASE | LOGGING
    assert not names & heavy, sorted(names & heavy)
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], "org 'default' has no queues yet"),
        (["status", NO_QUEUE], f"no queue {NO_QUEUE}"),
        (["queues"], "org 'default' has no queues yet"),
        (["activity", NO_QUEUE], f"no queue {NO_QUEUE}"),
        (["failed", NO_QUEUE], f"no queue {NO_QUEUE}"),
        (["projections", "status"], "customers"),
        (["tokens", "list"], ""),
        (["schedule", "list"], ""),
        (["jobs"], "no sync job is waiting, running or failed"),
        (["workers"], "no worker is running"),
        (["stores", "list"], ""),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else None,
)
def test_read_only_commands_on_sqlite_load_no_postgres_driver_http_client_job_queue_metrics_cipher_or_cron(
    argv: list[str], expected: str, migrated_sqlite: str
) -> None:
    result, names = imported_by(argv, wcsync_env(None, migrated_sqlite))
    assert result.returncode in (0, 2), _errors(result)
    assert expected in result.stdout + _errors(result)
    heavy = POSTGRES | HTTP | JOBS | METRICS | CIPHER | CRON
    assert not names & heavy, sorted(names & heavy)


@pytest.mark.sandbox(customers=30)
def test_a_sqlite_sync_of_a_store_in_the_environment_loads_no_postgres_driver_job_queue_metrics_cipher_or_cron(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    result, names = imported_by(["start", "--json"], wcsync_env(sandbox, f"sqlite:///{tmp_path / 'run.db'}"))
    assert result.returncode == 0, _errors(result)
    assert '"totalCount": 30' in result.stdout
    assert "aiohttp" in names  # it did talk to the store: the test reads the imports of a real sync
    heavy = POSTGRES | JOBS | METRICS | CIPHER | CRON
    assert not names & heavy, sorted(names & heavy)


@pytest.mark.sandbox(customers=450)
def test_a_start_sends_its_first_requests_before_it_loads_the_event_store(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """`wcsync start` of a store in the environment sends its scan's first requests (cli/sync.py, ScanAhead)
    before it imports the event store and opens the database: its stderr, in order, has the scan's "sent
    ahead" line before the import lines of eventsourcing and of the composition root."""
    env = wcsync_env(sandbox, f"sqlite:///{tmp_path / 'run.db'}")
    result = run_in_repo(
        [sys.executable, "-X", "importtime", "-m", "cli.main", "-vv", "start", "--json"], env=env
    )
    assert result.returncode == 0, _errors(result)
    assert '"totalCount": 450' in result.stdout
    lines = result.stderr.splitlines()
    sent = [n for n, line in enumerate(lines) if "scan.sent_ahead" in line]
    assert len(sent) == 1 and json.loads(lines[sent[0]])["pages"] == 4, _errors(result)
    loaded = {
        name: n
        for n, line in enumerate(lines)
        if (m := _IMPORT_LINE.match(line))
        and (name := m.group(1)) in ("eventsourcing", "infrastructure.wiring")
    }
    assert set(loaded) == {"eventsourcing", "infrastructure.wiring"}, sorted(loaded)
    assert sent[0] < min(loaded.values()), (sent, loaded)
