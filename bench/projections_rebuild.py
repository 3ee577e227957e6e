"""Benchmark: rebuild (and first catch-up) of the projections after a 100,000-customer sync.

Method: the events of one sync, made by a real `wcsync start` against the sandbox (``--layout sync``, with
``--template``), or generated with the real aggregates (SyncQueue pages of 100 lines, batches of 50 customers
through domain.sync.sync_batch, saved queue + customers together as the engine saves them, ~1 KB records;
``--layout engine``, the default, or ``pages-first``, the worst case), into a fresh SQLite file and a fresh
PostgreSQL database (or, with ``--template``, a copy of a database made once). Then, on each backend: reading and decoding the
log alone (the floor), a first catch-up from empty tables, and a full rebuild (replay into __rebuild
tables + swap) are timed with time.perf_counter. Prints notifications/s for each, and on PostgreSQL the
server's durability settings (the throwaway server of tests/support/pgserver.py runs with fsync and
synchronous_commit off; pass --pg-url to measure a durable server).

A catch-up or rebuild this far behind runs the projections' independent passes in parallel processes
(projections.runner.PARALLEL_MIN_LAG); --sequential measures one process.

    python bench/projections_rebuild.py [--customers 100000] [--pg-url URL] [--only sqlite|postgres] [--sequential]
        [--projections queues,activity,customers] [--layout engine|pages-first|sync] [--template NAME]

Without --pg-url a throwaway PostgreSQL server is started with the test suite's helper (tests/support/pgserver.py):
with the suite's fsync-off settings, or PostgreSQL's durable defaults with --template. The figures in
bench/RESULTS.md ("Projections") come from:

    python bench/projections_rebuild.py --only postgres --template proj_sync_100k --layout sync [--pg-url URL]
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import postgres, postgres_server, script_parser  # noqa: E402
from domain.queue import SyncQueue  # noqa: E402
from domain.queue_terms import QueueOptions  # noqa: E402
from domain.sync import customer_keys, sync_batch  # noqa: E402
from infrastructure.adapters.eventstore import SyncApplication, chunks  # noqa: E402
from infrastructure.support.config import DatabaseConfig  # noqa: E402
from projections.runner import PROJECTION_CLASSES, ProjectionRunner  # noqa: E402
from tests.support.pgserver import database_url_for  # noqa: E402

ORG = "bench-org"
STORE = "https://bench.example.com"


def record(cid: int) -> dict[str, Any]:
    address = {
        "first_name": f"First{cid}",
        "last_name": f"Last{cid}",
        "company": "Acme Widgets Ltd" if cid % 5 == 0 else "",
        "address_1": f"{cid} Long Street Name Avenue",
        "address_2": "Suite 100" if cid % 7 == 0 else "",
        "city": "Springfield",
        "state": "IL",
        "postcode": f"{62700 + cid % 100}",
        "country": "US",
    }
    return {
        "id": cid,
        "date_created": "2023-01-15T10:11:12",
        "date_created_gmt": "2023-01-15T09:11:12",
        "date_modified": "2024-06-01T08:00:00",
        "date_modified_gmt": "2024-06-01T07:00:00",
        "email": f"customer.{cid}@example-mail.com",
        "first_name": f"First{cid}",
        "last_name": f"Last{cid}",
        "role": "customer",
        "username": f"customer{cid}",
        "billing": {
            **address,
            "email": f"customer.{cid}@example-mail.com",
            "phone": f"+1-555-{cid % 10000:04d}",
        },
        "shipping": {**address, "phone": ""},
        "is_paying_customer": cid % 3 == 0,
        "avatar_url": f"https://secure.gravatar.com/avatar/{uuid.uuid5(uuid.NAMESPACE_DNS, str(cid)).hex}?s=96&d=mm&r=g",
        "meta_data": [{"id": cid * 10, "key": "_wc_loyalty_tier", "value": "gold"}],
        "_links": {
            "self": [{"href": f"{STORE}/wp-json/wc/v3/customers/{cid}"}],
            "collection": [{"href": f"{STORE}/wp-json/wc/v3/customers"}],
        },
    }


def generate(app: SyncApplication, customers: int, layout: str = "engine") -> None:
    """The events of a sync of ``customers`` new customers, saved as the engine saves them.

    ``engine``: infrastructure/services/sync.py's order: each page's LinesAdded saved with its first batch (the
    batch's LinesDone and its customers' Registered), then the page's other batches, page after page.
    ``pages-first``: every page recorded first, then every batch processed (the order of a resumed sync
    whose pages were all recorded before a crash): the lines are far from their LinesDone in the log, the
    projections' worst case (each batch's lines were written by an earlier batch and must be updated)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
    queue = SyncQueue(
        org_id=ORG,
        queue_name="bench",
        store_url=STORE,
        options=QueueOptions(batch_size=50).as_dict(),
        started_by="bench",
    )
    queue.start_processing("start")
    app.save_batch(queue)
    records = [record(cid) for cid in range(1, customers + 1)]

    def process(batch: list[dict[str, Any]]) -> None:
        loaded = app.load_customers(customer_keys(queue, batch))
        outcome = sync_batch(queue, batch, {c.woo_id: c for c in loaded.values()})
        app.save_batch(queue, *outcome.changed)

    for page_no, page in enumerate(chunks(records, 100), 1):
        queue.add_lines(page, page=page_no)
        if layout == "engine":
            for batch in chunks(page, 50):
                process(batch)
        else:
            app.save_batch(queue)
    queue.finish_fetch(pages=(customers + 99) // 100, total=customers, complete=True)
    app.save_batch(queue)
    if layout == "pages-first":
        for batch in chunks(records, 50):
            process(batch)
    queue.finish()
    app.save_batch(queue)


LAYOUTS = ("engine", "pages-first")


def real_sync(url: str, customers: int) -> None:
    """The events of a real `wcsync start` of ``customers`` against `wcsync sandbox` (own process, real
    sockets) into the empty database ``url``; then the read models it built live are dropped, so the
    database holds the log alone."""
    import psycopg

    from bench._common import WCSYNC, sandbox_process, wcsync_env

    subprocess.run(
        [*WCSYNC, "db", "migrate"], cwd=ROOT, env=wcsync_env(url), check=True, stdout=subprocess.DEVNULL
    )
    with sandbox_process(customers) as store_url:
        subprocess.run(
            [*WCSYNC, "start", "--json"],
            cwd=ROOT,
            env=wcsync_env(url, store_url),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    tables = [table.name for cls in PROJECTION_CLASSES for table in cls.tables]
    with psycopg.connect(url, autocommit=True) as conn:
        for name in [*tables, "wcsync_ledger_checkpoint", "wcsync_projection_tracking"]:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


def measure(
    url: str,
    customers: int,
    sequential: bool = False,
    names: list[str] | None = None,
    generated: bool = False,
    layout: str = "engine",
) -> dict[str, float]:
    config = DatabaseConfig.from_url(url)
    app = SyncApplication(config)
    if config.backend == "postgres":
        recorder: Any = app.recorder
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            settings = []
            for name in ("fsync", "synchronous_commit"):
                curs.execute(f"SHOW {name}")
                row = curs.fetchone()
                settings.append(f"{name}={row[name] if row else '?'}")
        print(f"  server: {', '.join(settings)}")
    if not generated:
        started = time.perf_counter()
        generate(app, customers, layout)
        generated_s = time.perf_counter() - started
    head = int(app.recorder.max_notification_id() or 0)
    if not generated:
        print(f"  generated {head} events in {generated_s:.1f} s")
    else:
        print(f"  {head} events from the template")

    topics = sorted({t for cls in PROJECTION_CLASSES for t in cls.topics})
    started = time.perf_counter()
    position = 0
    while position < head:
        notes = app.recorder.select_notifications(
            position, 2000, stop=head, topics=topics, inclusive_of_start=False
        )
        for n in notes:
            app.mapper.to_domain_event(n)
        position = notes[-1].id
    read_s = time.perf_counter() - started

    runner = ProjectionRunner(app, parallel=not sequential)
    runner.migrate()
    started = time.perf_counter()
    caught_up = runner.catch_up(names)
    catch_up_s = time.perf_counter() - started
    if config.backend == "postgres":
        # The catch-up just filled the tables, and autovacuum now works on them; the rebuild's swap, which
        # drops them, would wait for a worker to be cancelled (a second each: the deadlock timeout). A
        # rebuild replaces tables in their steady state: vacuum them first, untimed.
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for name in [t.name for cls in PROJECTION_CLASSES for t in cls.tables]:
                conn.execute(f"VACUUM (ANALYZE) {name}")
    started = time.perf_counter()
    rebuilt = runner.rebuild(names)
    rebuild_s = time.perf_counter() - started
    runner.close()
    app.close()
    result = {
        "events": head,
        "read+decode ev/s": head / read_s,
        "catch_up ev/s": caught_up / catch_up_s,
        "rebuild ev/s": rebuilt / rebuild_s,
        "catch_up s": catch_up_s,
        "rebuild s": rebuild_s,
    }
    for key, value in result.items():
        print(f"  {key:>18}: {value:,.1f}")
    return result


@contextlib.contextmanager
def from_template(server_url: str, template: str, customers: int, layout: str) -> Iterator[str]:
    """A fresh copy of ``template`` (made on first use: generated in ``layout``, or by a real sync when
    ``layout`` is "sync"), dropped afterwards: runs share one log."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template]).fetchall():
            conn.execute(f"CREATE DATABASE {template}")
            started = time.perf_counter()
            if layout == "sync":
                real_sync(database_url_for(server_url, template), customers)
            else:
                app = SyncApplication(DatabaseConfig.from_url(database_url_for(server_url, template)))
                generate(app, customers, layout)
                app.close()
            print(f"  made template {template} ({layout}) in {time.perf_counter() - started:.1f} s")
        name = f"bench_{uuid.uuid4().hex[:8]}"
        # FILE_COPY: a WAL_LOG copy (the default) writes the whole log to the WAL, and the checkpoint it
        # calls for would fall inside the timed runs; FILE_COPY checkpoints before it copies, untimed.
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY = FILE_COPY")
    try:
        yield database_url_for(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--pg-url", default=None, help="an EMPTY PostgreSQL database to fill")
    parser.add_argument("--only", choices=("sqlite", "postgres"), default=None)
    parser.add_argument("--sequential", action="store_true", help="catch up and rebuild in one process")
    parser.add_argument("--projections", default=None, help="comma-separated names (default: every one)")
    parser.add_argument(
        "--layout",
        choices=(*LAYOUTS, "sync"),
        default="engine",
        help="the log's order (see generate()); sync: a real `wcsync start` against the sandbox (--template only)",
    )
    parser.add_argument(
        "--template",
        default=None,
        help="PostgreSQL: --pg-url is a server; each run copies this database (generated on first use)",
    )
    args = parser.parse_args()
    if args.layout == "sync" and (not args.template or args.only != "postgres"):
        parser.error(
            "--layout sync needs --only postgres --template NAME (the sync's log is made once into it)"
        )
    names = args.projections.split(",") if args.projections else None
    if args.only != "postgres":
        with tempfile.TemporaryDirectory() as tmp:
            print(f"SQLite, {args.customers} customers")
            measure(f"sqlite:///{tmp}/bench.db", args.customers, args.sequential, names, layout=args.layout)
    if args.only != "sqlite" and args.template:
        with contextlib.ExitStack() as stack:
            # Without --pg-url: a throwaway server with PostgreSQL's durable defaults, the template made in it.
            server = args.pg_url or stack.enter_context(postgres_server(durable=True))
            with from_template(server, args.template, args.customers, args.layout) as url:
                print(f"PostgreSQL, {args.customers} customers, a copy of {args.template} ({args.layout})")
                measure(url, args.customers, args.sequential, names, generated=True)
    elif args.only != "sqlite":
        with postgres(args.pg_url, "bench") as url:
            print(f"PostgreSQL, {args.customers} customers")
            measure(url, args.customers, args.sequential, names, layout=args.layout)


if __name__ == "__main__":
    main()
