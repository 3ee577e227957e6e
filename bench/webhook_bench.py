"""Receipt-to-row latency of webhook deliveries while a full sync runs, and with nothing else running
(issue 12: "p95 from receipt to the `woo_customers` row <= 2 s on this machine while a full sync runs").

    .venv/bin/python bench/webhook_bench.py --json     # 100,000 customers, 1,000 deliveries at 50/s
    .venv/bin/python bench/webhook_bench.py --customers 10000 --deliveries 200    # a small run

The setting, all on this machine: one PostgreSQL with its durable defaults (fsync, synchronous_commit on),
a `wcsync sandbox` process of --customers, `wcsync db migrate`, the store registered (`wcsync stores add`,
under a WCSYNC_SECRET_KEY made for the run), `wcsync serve` with that key (so it starts --workers `wcsync
worker` processes, each applying recorded deliveries every 0.25 s beside its jobs), and the store's webhooks
installed pointing at it (`wcsync webhooks install --public-url`). Two phases, one after the other:

  sync   `wcsync start --detach --store ID` (the store's first sync: every customer new) for the workers;
         once the sandbox has served its first pages, --deliveries distinct customers (random, seeded) are
         changed at --rate through the sandbox's admin PUT /_sandbox/customers/{id}, each to an email of
         its own, which the sandbox delivers, signed, to the receiver (one sender, one POST at a time, as
         WooCommerce's queue);
  idle   once the sync has ended and every projection has caught up: as many other customers changed the
         same way, with nothing else running, for comparison.

For each change: t0 = the delivery's ``received_at`` in ``woo_webhook_deliveries``: the timestamp of its
WebhookDelivery.Received event, taken by the receiver in `wcsync serve` as it records the request (the
server's receipt, which the goal names), to the microsecond. (The sandbox's delivery log has an ``at`` too,
but it is written after the receiver answered, so after the durable save, and only to the second.)
t1 = the start of the first poll that sees the row carry the new email: this process polls the still-pending
ids every --poll-ms with one query (an index probe per id on woo_customers' unique (org, store, id)
index, JIT off), so t1 is late by less than one interval (plus the previous poll's query); the poller's own
cost (its query times, this process's CPU) is reported. Both clocks are this machine's wall clock.

Reported per phase: p50 / p95 / max of t1 - t0 (nearest rank), and where the time went (the sandbox's queue:
PUT answered -> receipt; the applier: receipt -> the delivery's ``applied_at``, the timestamp of its Applied
event, taken as the applier decided, before the save; then applied -> row seen: the save's lock wait and
commit, the live projection and the poll); for the sync phase also the deliveries
received while the sync ran (t0 before the job ended, the figures that answer the goal, separately), how
many of those were still being applied when it ended, the sync's own time (job deferred -> job ended), and
whether any row later lost its new value (the sync writing an older page over a delivery: the customer's
`wcsync audit customer` history is printed for the first few). CPU seconds of `wcsync serve` and of its
workers with their projection followers, of this process (the poller and the sender) and of the machine,
over each phase. With --sample-waits-ms, what the database's sessions wait on during each phase (a lock
wait with what its holder is doing), to see where the time goes.
Results go to stdout and, with --json, to bench/results/webhook-*.json (with each change's times). Exits 1
when a change never reached its row or lost it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import WCSYNC, fresh_database, postgres_server, sandbox_process, script_parser, wcsync_env  # noqa: E402
from bench.service_bench import cpu_by_role, machine_busy_s, spawned, wait_for_workers, wcsync  # noqa: E402
from infrastructure.adapters.eventlog import postgres_head_position  # noqa: E402
from infrastructure.adapters.secrets import SECRET_KEY_VARIABLE  # noqa: E402
from infrastructure.adapters.woocommerce import ClientOptions, StoreCredentials, WooCommerceClient  # noqa: E402
from infrastructure.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET  # noqa: E402
from infrastructure.support.config import check_store_url  # noqa: E402
from infrastructure.support.logging import configure_logging  # noqa: E402

ORG = "bench"
WAIT_KINDS = 12  # the commonest waits kept per phase
EVIDENCE = 3  # lost changes whose customer's history is kept in the results
UNDER_WAY_PAGES = 2  # the sync counts as under way once the sandbox has served this many list pages
READY_S = 120.0  # for the sync to get under way, the projections to catch up, the deliveries' rows
# The rows still pending, by an index probe each: a plain `= ANY(...)` on a table growing by thousands of
# rows a second, without statistics yet, can be planned as a bitmap scan, with JIT (tens of ms a poll), and
# the planner flattens a plain LATERAL subquery into a hash join over the whole table; OFFSET 0 keeps it a
# subquery, run once per id on the unique index.
PENDING_ROWS = (
    "SELECT c.woo_customer_id, c.email FROM unnest(%s::bigint[]) AS p(id) "
    "CROSS JOIN LATERAL (SELECT woo_customer_id, email FROM woo_customers "
    "WHERE org_id = %s AND store_url = %s AND woo_customer_id = p.id OFFSET 0) AS c"
)
FINAL_ROWS = (
    "SELECT c.woo_customer_id, c.email, c.last_queue_id, c.version FROM unnest(%s::bigint[]) AS p(id) "
    "CROSS JOIN LATERAL (SELECT woo_customer_id, email, last_queue_id, version FROM woo_customers "
    "WHERE org_id = %s AND store_url = %s AND woo_customer_id = p.id OFFSET 0) AS c"
)
DELIVERY_ROWS = (
    "SELECT woo_customer_id, received_at, applied_at, state, result, error FROM woo_webhook_deliveries "
    "WHERE org_id = %s AND store_id = %s AND woo_customer_id = ANY(%s)"
)


@dataclass
class Change:
    """One customer changed through the sandbox, and what became of it (wall-clock seconds)."""

    woo_id: int
    email: str
    put_at: float = math.nan  # the sandbox answered the PUT: the change is queued for delivery
    put_status: int | None = None
    seen_at: float = math.nan  # the first poll that saw the row with ``email``
    received_at: float = math.nan
    applied_at: float = math.nan
    state: str | None = None
    result: str | None = None

    @property
    def latency(self) -> float:
        return self.seen_at - self.received_at


@dataclass(frozen=True)
class Target:
    """The registered store, as the tables name it."""

    store_id: str
    store_url: str


@dataclass
class Poller:
    """What the row poller did: its queries' durations (s)."""

    queries: list[float]


# ----- setup ------------------------------------------------------------------------------------------


def register(database_url: str, key: str, store_url: str) -> tuple[dict[str, str], Target]:
    """A migrated database with the store registered under ``key``; the environment of the run's
    `wcsync` processes (no WOO_ setting: the workers read the registered credentials)."""
    env = wcsync_env(database_url, log_level="warning") | {SECRET_KEY_VARIABLE: key}
    wcsync(env, "db", "migrate")
    with_key = env | {
        "WOO_CONSUMER_KEY": DEFAULT_CONSUMER_KEY,
        "WOO_CONSUMER_SECRET": DEFAULT_CONSUMER_SECRET,
    }
    store = wcsync(with_key, "--org", ORG, "stores", "add", "--url", store_url, "--json")
    return env, Target(str(store["storeId"]), str(store["url"]))


def store_ids(store_url: str) -> list[int]:
    """Every customer id the sandbox lists, by wcsync's own client (two id-only listings)."""

    async def listed() -> set[int]:
        credentials = StoreCredentials(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET)
        async with WooCommerceClient(check_store_url(store_url), credentials, ClientOptions()) as client:
            return await client.all_ids()

    return sorted(asyncio.run(listed()))


def pick(ids: list[int], count: int, seed: int) -> tuple[list[int], list[int]]:
    """Two disjoint random samples of ``count`` ids each: the sync phase's and the idle phase's."""
    if 2 * count > len(ids):
        raise SystemExit(
            f"--deliveries {count} needs {2 * count} customers (sync and idle), the store has {len(ids)}"
        )
    chosen = random.Random(seed).sample(ids, 2 * count)
    return chosen[:count], chosen[count:]


async def pages_served(session: aiohttp.ClientSession, store_url: str) -> int:
    """The requests the sandbox's store front has served (its admin routes are not counted)."""
    async with session.get(f"{store_url}/_sandbox/stats") as reply:
        return int((await reply.json())["requests"])


# ----- the measured part ------------------------------------------------------------------------------


async def send(session: aiohttp.ClientSession, store_url: str, changes: list[Change], rate: float) -> None:
    """Each change PUT to the sandbox at its slot (start + i / rate), without waiting for earlier answers."""

    async def put(change: Change) -> None:
        async with session.put(
            f"{store_url}/_sandbox/customers/{change.woo_id}", json={"email": change.email}
        ) as reply:
            await reply.read()
            change.put_status = reply.status
            change.put_at = time.time()

    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for index, change in enumerate(changes):
        await asyncio.sleep(max(0.0, started + index / rate - loop.time()))
        tasks.append(asyncio.create_task(put(change)))
    await asyncio.gather(*tasks)


async def poll_rows(
    database_url: str,
    target: Target,
    changes: list[Change],
    interval: float,
    sent: asyncio.Event,
    patience_s: float,
) -> Poller:
    """Every ``interval``: the rows of the changes answered by the sandbox and not seen yet; a row with its
    new email is seen at the poll's start. Ends once every change is seen, or ``patience_s`` after ``sent``."""
    by_id = {change.woo_id: change for change in changes}
    poller = Poller([])
    deadline = math.inf
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SET jit = off")
        while True:
            started = time.time()
            pending = [c.woo_id for c in changes if math.isnan(c.seen_at) and not math.isnan(c.put_at)]
            if pending:
                cursor = await conn.execute(PENDING_ROWS, (pending, ORG, target.store_url))
                for woo_id, email in await cursor.fetchall():
                    change = by_id[int(woo_id)]
                    if email == change.email:
                        change.seen_at = started
                poller.queries.append(time.time() - started)
            if sent.is_set():
                if all(not math.isnan(c.seen_at) for c in changes):
                    return poller
                deadline = min(deadline, time.monotonic() + patience_s)
                if time.monotonic() > deadline:
                    return poller
            await asyncio.sleep(max(0.0, started + interval - time.time()))


# Each active session's wait, and for one waiting on a lock, what the session holding it is doing then.
WAITS = (
    "SELECT coalesce(a.wait_event_type, 'CPU'), coalesce(a.wait_event, '-'), left(a.query, 40), "
    "b.state, coalesce(b.wait_event_type, 'CPU'), coalesce(b.wait_event, '-'), left(b.query, 40) "
    "FROM pg_stat_activity AS a "
    "LEFT JOIN LATERAL (SELECT blocker FROM unnest(pg_blocking_pids(a.pid)) AS blocker LIMIT 1) AS p "
    "ON a.wait_event_type = 'Lock' "
    "LEFT JOIN pg_stat_activity AS b ON b.pid = p.blocker "
    "WHERE a.datname = current_database() AND a.state = 'active' AND a.pid <> pg_backend_pid()"
)


async def sample_waits(database_url: str, every: float, stop: asyncio.Event) -> dict[str, int]:
    """What the database's active sessions wait on, sampled every ``every`` s until ``stop``: counts by
    wait (CPU: none, running) and the statement's start (the event inserts of the sync and the applier
    alike, the projections' writes, this poller's reads); a lock wait names what its holder was doing
    (its state, wait and statement: "idle in transaction" or ClientRead is the holder's Python at work)."""
    counted: dict[str, int] = {"samples": 0}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while not stop.is_set():
            cursor = await conn.execute(WAITS)
            for kind, event, query, *blocker in await cursor.fetchall():
                key = f"{kind}/{event}: {_words(query)}"
                if blocker[0] is not None:
                    key += f" <- held by ({blocker[0]}) {blocker[1]}/{blocker[2]}: {_words(blocker[3])}"
                counted[key] = counted.get(key, 0) + 1
            counted["samples"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    return dict(sorted(counted.items(), key=lambda item: -item[1])[:WAIT_KINDS])


def _words(text: object) -> str:
    return " ".join(str(text).split())


async def watch_job(database_url: str, job_id: int) -> tuple[float, str]:
    """When the sync's job ended (a worker deletes a job that succeeded: gone counts as succeeded)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT status::text FROM procrastinate_jobs WHERE id = %s", (job_id,)
            )
            row = await cursor.fetchone()
            if row is None or row[0] not in ("todo", "doing"):
                return time.time(), "succeeded" if row is None else str(row[0])
            await asyncio.sleep(0.1)


async def phase(
    database_url: str,
    store_url: str,
    target: Target,
    changes: list[Change],
    args: Any,
    start_sync: dict[str, str] | None,
) -> dict[str, Any]:
    """One phase: (with ``start_sync``, the environment to defer it in) the sync deferred and under way,
    then the changes sent at --rate and polled until seen; its raw figures."""
    stop_sampling = asyncio.Event()
    waits = asyncio.create_task(
        sample_waits(database_url, args.sample_waits_ms / 1000, stop_sampling)
        if args.sample_waits_ms
        else asyncio.sleep(0, {})
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        job: asyncio.Task[tuple[float, str]] | None = None
        deferred, queue_id = math.nan, ""
        if start_sync is not None:
            before = await pages_served(session, store_url)
            deferred = time.time()
            started = await asyncio.to_thread(
                wcsync, start_sync, "--org", ORG, "start", "--detach", "--store", target.store_id, "--json"
            )
            job = asyncio.create_task(watch_job(database_url, int(started["jobId"])))
            queue_id = str(started["queueId"])
            deadline = time.monotonic() + READY_S
            while await pages_served(session, store_url) < before + UNDER_WAY_PAGES:
                if job.done() or time.monotonic() > deadline:
                    raise SystemExit("the sync did not get under way (see the worker's log)")
                await asyncio.sleep(0.02)
        sent = asyncio.Event()
        polling = asyncio.create_task(
            poll_rows(database_url, target, changes, args.poll_ms / 1000, sent, args.timeout)
        )
        first_put = time.time()
        await send(session, store_url, changes, args.rate)
        sent.set()
        poller = await polling
        finished = time.time()
        ended, job_state = await job if job is not None else (math.nan, "")
    stop_sampling.set()
    return {
        "waits": await waits,
        "deferred": deferred,
        "first_put": first_put,
        "finished": finished,
        "sync_end": ended,
        "job_state": job_state,
        "queue_id": queue_id,
        "poller": poller,
    }


async def delivery_rows(database_url: str, target: Target, changes: list[Change]) -> None:
    """Each change's delivery as ``woo_webhook_deliveries`` has it, once every one is there and not
    pending any more (the webhooks projection follows the log too), or READY_S."""
    by_id = {change.woo_id: change for change in changes}
    deadline = time.monotonic() + READY_S
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(DELIVERY_ROWS, (ORG, target.store_id, list(by_id)))
            rows = await cursor.fetchall()
            done = [row for row in rows if row[3] != "pending"]
            if len(done) >= len(changes) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    for woo_id, received, applied, state, result, error in rows:
        change = by_id[int(woo_id)]
        change.received_at = received.timestamp()
        change.applied_at = applied.timestamp() if applied is not None else math.nan
        change.state = state
        change.result = result if error is None else f"{result}: {error}"


def reverted(database_url: str, target: Target, changes: list[Change], queue_id: str) -> list[dict[str, Any]]:
    """The rows that no longer carry their change's email (something wrote an older value over it), each
    with who wrote it last: the sync's queue, or a delivery (``last_queue_id`` names the writer)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET jit = off")
        rows = conn.execute(FINAL_ROWS, ([c.woo_id for c in changes], ORG, target.store_url)).fetchall()
    found = {int(row[0]): row for row in rows}
    lost = []
    for change in changes:
        row = found.get(change.woo_id)
        if row is None or row[1] != change.email:
            writer = None if row is None else str(row[2])
            lost.append(
                {
                    "id": change.woo_id,
                    "last_written_by": "the sync" if writer == queue_id else writer,
                    "version": None if row is None else row[3],
                    "delivery_result": change.result,
                }
            )
    return lost


def history(env: dict[str, str], target: Target, woo_id: int, changes: list[Change]) -> list[str]:
    """A lost change's evidence: its times, then `wcsync audit customer` (every write of the customer,
    the writer named: the sync's queue or the delivery)."""
    change = next(c for c in changes if c.woo_id == woo_id)
    times = {
        "put": change.put_at,
        "received": change.received_at,
        "applied": change.applied_at,
        "seen": change.seen_at,
    }
    shown = " ".join(f"{k} {_clock(v)}" for k, v in times.items())
    audit = subprocess.run(
        [*WCSYNC, "--org", ORG, "audit", "customer", str(woo_id), "--store", target.store_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return [f"customer {woo_id}: {shown}", *(audit.stdout or audit.stderr).splitlines()]


def _clock(at: float) -> str:
    return "-" if math.isnan(at) else datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


def caught_up(database_url: str) -> float:
    """Until every projection has applied the whole log (the sync's follower done): seconds waited."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            head = postgres_head_position(conn)
            row = conn.execute("SELECT min(position) FROM wcsync_projection_tracking").fetchone()
            if row is not None and row[0] is not None and int(row[0]) >= head:
                return time.monotonic() - started
            if time.monotonic() - started > READY_S:
                raise SystemExit(f"the projections did not catch up within {READY_S:g} s")
            time.sleep(0.1)


def customer_rows(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM woo_customers WHERE org_id = %s", (ORG,)).fetchone()
    return int(row[0]) if row else 0


# ----- figures ----------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, Any]:
    """n, p50/p95/max in ms (nearest rank) of ``values`` in seconds."""
    ordered = sorted(v for v in values if not math.isnan(v))
    figures: dict[str, Any] = {"n": len(ordered)}
    for name, share in (("p50", 0.50), ("p95", 0.95), ("max", 1.0)):
        figures[f"{name}_ms"] = (
            round(ordered[max(0, math.ceil(len(ordered) * share) - 1)] * 1000, 1) if ordered else None
        )
    return figures


def breakdown(changes: list[Change]) -> dict[str, Any]:
    """The latency and its parts, over ``changes``."""
    return {
        "receipt_to_row": percentiles([c.latency for c in changes]),
        "sandbox_queue": percentiles([c.received_at - c.put_at for c in changes]),
        "receipt_to_applied": percentiles([c.applied_at - c.received_at for c in changes]),
        "applied_to_row_seen": percentiles([c.seen_at - c.applied_at for c in changes]),
    }


def figures_of(label: str, changes: list[Change], raw: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    poller: Poller = raw["poller"]
    unseen = [c for c in changes if math.isnan(c.seen_at)]
    document: dict[str, Any] = {
        "phase": label,
        "deliveries": len(changes),
        "sent_s": round(max(c.put_at for c in changes) - raw["first_put"], 2),
        "window_s": round(raw["finished"] - raw["first_put"], 2),  # the CPU figures' window (about)
        "put_errors": sum(c.put_status != 200 for c in changes),
        "not_seen": len(unseen),
        "not_seen_ids": [c.woo_id for c in unseen[:20]],
        "states": _counts(str(c.state) for c in changes),
        "results": _counts(str(c.result) for c in changes),
        "all": breakdown(changes),
        "poller": {
            "polls": len(poller.queries),
            "query_ms": percentiles(poller.queries),
            "mean_query_ms": round(statistics.fmean(poller.queries) * 1000, 2) if poller.queries else None,
        },
        "cpu_s": cpu,
        "database_waits": raw["waits"],
        # Each change: id, then PUT answered, received, applied, row seen, in s after the first PUT.
        "changes": [
            [
                c.woo_id,
                *(_after(at, raw["first_put"]) for at in (c.put_at, c.received_at, c.applied_at, c.seen_at)),
            ]
            for c in changes
        ],
    }
    if not math.isnan(raw["sync_end"]):
        end = raw["sync_end"]
        during = [c for c in changes if c.received_at < end]
        document.update(
            sync_s=round(end - raw["deferred"], 2),
            job_state=raw["job_state"],
            received_during_sync=len(during),
            still_applying_at_sync_end=sum(not c.seen_at <= end for c in during),
            during_sync=breakdown(during),
        )
    return document


def _after(at: float, origin: float) -> float | None:
    return None if math.isnan(at) else round(at - origin, 4)


def _counts(values: Any) -> dict[str, int]:
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return counted


def _cpu(before: dict[str, float], after: dict[str, float], busy: float, own: float) -> dict[str, Any]:
    used: dict[str, Any] = {name: round(after[name] - before[name], 2) for name in after}
    used.update(machine=round(machine_busy_s() - busy, 2), bench=round(_own_cpu() - own, 2))
    return used


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_phase(document: dict[str, Any]) -> None:
    def line(name: str, part: dict[str, Any]) -> str:
        return f"    {name:<22} n {part['n']:>5}  p50 {part['p50_ms']} ms  p95 {part['p95_ms']} ms  max {part['max_ms']} ms"

    print(
        f"{document['phase']}: {document['deliveries']} deliveries sent in {document['sent_s']} s", flush=True
    )
    if "sync_s" in document:
        print(
            f"  sync {document['sync_s']} s (job {document['job_state']}); received while it ran: "
            f"{document['received_during_sync']}, of which still being applied at its end: "
            f"{document['still_applying_at_sync_end']}"
        )
        for name, part in document["during_sync"].items():
            print(line(f"during sync {name}", part))
    for name, part in document["all"].items():
        print(line(name, part))
    poller = document["poller"]
    print(
        f"  poller: {poller['polls']} polls, query p50 {poller['query_ms']['p50_ms']} ms p95 "
        f"{poller['query_ms']['p95_ms']} ms; cpu s {document['cpu_s']}"
    )
    problems = {k: document[k] for k in ("put_errors", "not_seen", "reverted_rows") if document.get(k)}
    print(f"  states {document['states']} results {document['results']} {problems or ''}", flush=True)
    if document["database_waits"]:
        print(f"  database waits (sampled): {document['database_waits']}")
    for lines in document["histories"]:
        print("\n".join(f"    | {line}" for line in lines), flush=True)


# ----- the run ----------------------------------------------------------------------------------------


def run(admin_url: str, args: Any, logs: Path) -> dict[str, Any]:
    key = base64.b64encode(os.urandom(32)).decode()
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        store_url = stack.enter_context(sandbox_process(args.customers)).rstrip("/")
        database_url = fresh_database(admin_url, "webhook")
        env, target = register(database_url, key, store_url)
        server = stack.enter_context(
            spawned(["serve", "--port", "0", "--workers", str(args.workers)], env, logs / "serve.log")
        )
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            raise SystemExit(
                f"wcsync serve ended before it was ready: {(logs / 'serve.log').read_text()[-2000:]}"
            )
        server_url = str(json.loads(line)["url"]).rstrip("/")
        wcsync(
            env, "--org", ORG, "webhooks", "install", "--store", target.store_id, "--public-url", server_url
        )
        wait_for_workers(database_url, args.workers, [server])
        sync_ids, idle_ids = pick(store_ids(store_url), args.deliveries, args.seed)
        print(
            f"{args.customers} customers, {args.deliveries} deliveries at {args.rate:g}/s during the first "
            f"sync and as many idle; {args.workers} worker(s); polled every {args.poll_ms:g} ms",
            flush=True,
        )
        results: list[dict[str, Any]] = []
        measured: list[list[Change]] = []
        sync_queue = ""
        for label, ids in (("sync", sync_ids), ("idle", idle_ids)):
            if label == "idle":
                waited = caught_up(database_url)
                print(f"  (projections caught up {waited:.1f} s after the sync phase)", flush=True)
            changes = [
                Change(woo_id, f"wh.{label}.{n}.{tag}@bench.example.com") for n, woo_id in enumerate(ids)
            ]
            roles = {"serve": [server.pid]}
            before, busy, own = cpu_by_role(roles), machine_busy_s(), _own_cpu()
            sync_env = env if label == "sync" else None
            raw = asyncio.run(phase(database_url, store_url, target, changes, args, sync_env))
            cpu = _cpu(before, cpu_by_role(roles), busy, own)
            asyncio.run(delivery_rows(database_url, target, changes))
            results.append(figures_of(label, changes, raw, cpu))
            sync_queue = sync_queue or raw["queue_id"]
            measured.append(changes)
        caught_up(database_url)  # whatever the sync still had to write is in the rows now
        for document, changes in zip(results, measured, strict=True):
            lost = reverted(database_url, target, changes, sync_queue)
            document.update(reverted=len(lost), reverted_rows=lost[:20])
            document["histories"] = [history(env, target, row["id"], changes) for row in lost[:EVIDENCE]]
            print_phase(document)
        rows = customer_rows(database_url)
        print(f"  woo_customers: {rows} rows (the store: {args.customers})", flush=True)
    return {"customers_mirrored": rows, "phases": results, "database": database_url.rsplit("/", 1)[-1]}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--customers", type=int, default=100_000, help="customers of the store (default 100,000)"
    )
    parser.add_argument(
        "--deliveries", type=int, default=1000, help="customers changed per phase (default 1,000)"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="changes per second (default 50)")
    parser.add_argument("--workers", type=int, default=1, help="`wcsync serve --workers` (default 1)")
    parser.add_argument(
        "--poll-ms", type=float, default=50.0, help="the row poller's interval (default 50 ms)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds after the last change for every row to show its change (default 60)",
    )
    parser.add_argument(
        "--sample-waits-ms",
        type=float,
        default=0.0,
        help="sample what the database's sessions wait on this often (default 0: not sampled)",
    )
    parser.add_argument("--seed", type=int, default=12, help="which customers are changed")
    parser.add_argument(
        "--database-url",
        default=None,
        help="an admin URL of a PostgreSQL server: the run gets a fresh database on it (default: "
        "WCSYNC_BENCH_DATABASE_URL, else a throwaway server with durable settings)",
    )
    parser.add_argument("--json", action="store_true", help="write the results to bench/results/")
    args = parser.parse_args()
    configure_logging("warning")  # this process lists the store's ids with wcsync's client: no info lines
    with ExitStack() as stack:
        admin = args.database_url or stack.enter_context(postgres_server(durable=True))
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wcsync-webhook-")))
        result = run(admin, args, logs)
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = out_dir / f"webhook-{stamp}.json"
        meta = {
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in load],
            "arguments": {k: v for k, v in vars(args).items() if k != "database_url"},
        }
        path.write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
        print(f"written to {path.relative_to(ROOT)}")
    if any(p["not_seen"] or p["put_errors"] or p["reverted"] for p in result["phases"]):
        raise SystemExit("some change did not reach its row, or lost it (see above)")


if __name__ == "__main__":
    main()
