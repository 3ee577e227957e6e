"""What the benchmark scripts share: their command line, a PostgreSQL to measure on, fresh databases, a
sandbox store process, and the environment `wcsync` runs in."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
WCSYNC = [sys.executable, "-m", "cli.main"]


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark script's command line, with its module docstring (as written) for --help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


@contextlib.contextmanager
def postgres_server(durable: bool = True) -> Iterator[str]:
    """An admin URL: WCSYNC_BENCH_DATABASE_URL when set, else a throwaway server (tests/support/pgserver.py) —
    with PostgreSQL's durable defaults unless ``durable`` is False (the test suite's fsync-off settings)."""
    external = os.environ.get("WCSYNC_BENCH_DATABASE_URL")
    if external:
        yield external
        return
    sys.path.insert(0, str(ROOT))
    from tests.support import pgserver

    if durable:
        for name in ("fsync", "synchronous_commit", "full_page_writes"):
            pgserver.SERVER_SETTINGS.pop(name, None)
    with pgserver.running_server() as server:
        yield server.url()


def fresh_database(admin_url: str, prefix: str = "bench") -> str:
    """A new empty database on the server of ``admin_url``; returns its URL."""
    import psycopg

    from tests.support.pgserver import database_url_for

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url_for(admin_url, name)


def drop_database(admin_url: str, database_url: str) -> None:
    """Drop a database fresh_database made, once measured: its autovacuum would otherwise run into the
    next measurement of the same server (a 100,000-customer sync leaves ~500 MB to vacuum and analyse)."""
    import psycopg
    from psycopg import sql

    name = urlsplit(database_url).path.lstrip("/")  # not the query's (?host=/run/postgresql)
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error as error:  # the measurement stands; only the clean-up failed
        print(f"could not drop database {name}: {error}", file=sys.stderr)


def settle(database_url: str) -> None:
    """VACUUM (ANALYZE) a database, so that autovacuum has nothing left to do in it during what follows
    (a store's database after its first sync, as it is once autovacuum has been through it)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


@contextlib.contextmanager
def postgres(url: str | None, prefix: str = "bench", durable: bool = False) -> Iterator[str]:
    """``url`` as given, or a fresh database on a throwaway server."""
    if url:
        yield url
        return
    with postgres_server(durable) as admin:
        yield fresh_database(admin, prefix)


def wcsync_env(database_url: str, store_url: str | None = None, log_level: str = "error") -> dict[str, str]:
    """This process's environment for a `wcsync` child, without any WCSYNC_/WOO_ setting of the shell's:
    the database ``database_url``, the given log level and, with ``store_url``, that sandbox store with
    the sandbox's default key and secret."""
    from infrastructure.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WCSYNC_", "WOO_"))}
    env.update(WCSYNC_DATABASE_URL=database_url, WCSYNC_LOG_LEVEL=log_level)
    if store_url is not None:
        env.update(
            WOO_URL=store_url,
            WOO_CONSUMER_KEY=DEFAULT_CONSUMER_KEY,
            WOO_CONSUMER_SECRET=DEFAULT_CONSUMER_SECRET,
        )
    return env


@contextlib.contextmanager
def sandbox_process(customers: int, latency_ms: float = 0.0) -> Iterator[str]:
    """`wcsync sandbox` in a process of its own (so it does not share the measured process's cores' GIL);
    yields its URL."""
    args = [*WCSYNC, "sandbox", "--port", "0", "--customers", str(customers), "--latency-ms", str(latency_ms)]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())["url"]
    finally:
        process.terminate()
        process.wait(timeout=30)
