"""The service under load (issue 11): N syncs deferred at once to `wcsync worker` processes, and the latency
of `status` from concurrent pollers of `wcsync serve` while they run. PostgreSQL only.

    .venv/bin/python bench/service_bench.py                    # 20 syncs x 5,000, 1 vs 3 workers, 50 pollers
    .venv/bin/python bench/service_bench.py --syncs 4 --customers 500 --pollers 10 --runs 1   # a smoke run
    .venv/bin/python bench/service_bench.py --database-url postgresql://...   # fresh databases on that server

The setting is a multi-tenant service: every sync is its own org (``bench-00`` ...) with its own store, one
`wcsync sandbox` process per store (started once, reused by every run), registered with `wcsync stores add`
(credentials sealed under a WCSYNC_SECRET_KEY made for the run), and a viewer token per org
(`wcsync tokens create`). A run, on a fresh database: `wcsync db migrate`, that setup, `wcsync serve`, W
`wcsync worker` processes (default --concurrency 1: one sync per worker at a time) registered and idle;
then every sync is deferred at once, each a draft queue and a procrastinate job, exactly as
`wcsync start --detach` does (SyncJobs.start, from this process, concurrently: N CLI processes would
spend seconds of the same two cores starting Python). The clock runs from the first defer until every
job has ended. Meanwhile P pollers (asyncio, one aiohttp session), each with its org's viewer token, send
`POST /api/v1/integrations/woocommerce/sync/customers {"action": "status", "queue_id": ...}` for their
org's queue, one request every --interval seconds after the previous answer, each poller starting at a
random point of its first interval. Afterwards every queue must be done with all its customers.

Reported per run: wall time, customers/s, CPU seconds of the worker processes (with their live projection
followers, from /proc, over the measured window only), of `wcsync serve`, and of the whole machine (every
process: PostgreSQL, the sandboxes, this script and whatever else runs); the status latency p50/p95/p99/max
in ms, the number of requests and of errors (any answer but 200, or none). Runs interleave the worker
counts (1, 3, 1, 3 ...); the summary gives each count's medians and the percentiles of all its requests.
The PostgreSQL started here keeps its durable defaults (fsync, synchronous_commit on), as sync_bench.py.
Results go to stdout and, as JSON, to bench/results/.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    WCSYNC,
    fresh_database,
    postgres_server,
    sandbox_process,
    script_parser,
    wcsync_env,
)
from domain.queue_terms import QueueOptions  # noqa: E402
from infrastructure.adapters.secrets import SECRET_KEY_VARIABLE  # noqa: E402
from infrastructure.support.config import DatabaseConfig  # noqa: E402
from infrastructure.support.logging import configure_logging  # noqa: E402
from infrastructure.wiring import open_services  # noqa: E402
from projections import queries  # noqa: E402

SYNC_PATH = "/api/v1/integrations/woocommerce/sync/customers"
TICKS = os.sysconf("SC_CLK_TCK")
SETUP_PROCESSES = 2  # the setup's `wcsync` commands run this many at a time (one per core)
READY_S = 60.0  # for the workers to register (a run itself may take --timeout seconds)
REQUEST_TIMEOUT_S = 30.0  # a status request not answered by then counts as an error


@dataclass(frozen=True)
class Tenant:
    """One org of the run: its store (a sandbox process), its registered store id and its viewer token."""

    org: str
    store_url: str
    store_id: str = ""
    token: str = ""


@dataclass
class Poll:
    """What the pollers saw: each answered request's latency in seconds, and the failures by kind."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def failed(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


# ----- processes and their CPU -----------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a worker's live projection follower)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, its reaped children's included."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(value) for value in fields[11:15]) / TICKS  # utime stime cutime cstime
    return 0.0


def cpu_by_role(processes: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes, and by everything below them as "<role> children"
    (a worker's or the server's live projection follower)."""
    used: dict[str, float] = {}
    for role, pids in processes.items():
        used[role] = sum(process_cpu_s(pid) for pid in pids)
        used[f"{role} children"] = sum(process_cpu_s(c) for pid in pids for c in _descendants(pid)[1:])
    return used


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy since boot (not idle, not waiting for I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICKS


def wcsync(env: dict[str, str], *args: str) -> dict[str, Any]:
    """A `wcsync` command's answer (with --json; else {}); the benchmark stops with its stderr if it fails."""
    result = subprocess.run([*WCSYNC, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"wcsync {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    answer: dict[str, Any] = json.loads(result.stdout) if "--json" in args else {}
    return answer


@contextlib.contextmanager
def spawned(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A `wcsync` process of the run, its stderr in ``log``; SIGTERM at the end (what stops a worker after
    its batch in hand), SIGKILL if it has not exited 30 s later."""
    with log.open("w") as err:
        process = subprocess.Popen(
            [*WCSYNC, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _first_line(process: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    """The JSON line a process prints once it is ready (`wcsync serve`: its URL)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"wcsync ended before it was ready: {log.read_text()[-2000:]}")
    answer: dict[str, Any] = json.loads(line)
    return answer


def wait_for_workers(database_url: str, count: int, processes: list[subprocess.Popen[str]]) -> None:
    """Until ``count`` workers have registered in procrastinate's table (each then listens for jobs)."""
    deadline = time.monotonic() + READY_S
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
            if row is not None and int(row[0]) >= count:
                return
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                raise SystemExit(f"{count} workers did not register within {READY_S:g} s (see their logs)")
            time.sleep(0.1)


# ----- setup ------------------------------------------------------------------------------------------


def register(base_env: dict[str, str], tenant: Tenant, with_token: bool) -> Tenant:
    """`wcsync stores add` of the tenant's store (the sandbox's key and secret, sealed under the run's
    key) and, for a polled org, `wcsync tokens create --role viewer`."""
    from infrastructure.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET

    env = base_env | {
        "WOO_CONSUMER_KEY": DEFAULT_CONSUMER_KEY,
        "WOO_CONSUMER_SECRET": DEFAULT_CONSUMER_SECRET,
    }
    store = wcsync(env, "--org", tenant.org, "stores", "add", "--url", tenant.store_url, "--json")
    token = ""
    if with_token:
        created = wcsync(
            base_env,
            "--org",
            tenant.org,
            "tokens",
            "create",
            "--name",
            "bench-viewer",
            "--role",
            "viewer",
            "--json",
        )
        token = str(created["token"])
    return Tenant(tenant.org, tenant.store_url, str(store["storeId"]), token)


def setup(
    database_url: str, key: str, store_urls: list[str], pollers: int
) -> tuple[dict[str, str], list[Tenant]]:
    """A migrated database with every tenant's store registered and its token (for the polled orgs)."""
    env = wcsync_env(database_url, log_level="warning") | {SECRET_KEY_VARIABLE: key}
    wcsync(env, "db", "migrate")
    tenants = [Tenant(f"bench-{i:02d}", url) for i, url in enumerate(store_urls)]
    with ThreadPoolExecutor(SETUP_PROCESSES) as pool:
        registered = list(pool.map(lambda t: register(env, t[1], t[0] < pollers), enumerate(tenants)))
    return env, registered


# ----- the measured part ------------------------------------------------------------------------------


async def defer_all(database_url: str, tenants: list[Tenant]) -> tuple[list[tuple[UUID, int]], float]:
    """Every tenant's sync deferred at once, as `wcsync start --detach --store ID` defers it (a draft queue
    saved, then its job); the (queue id, job id) pairs and the perf_counter instant of the first defer."""
    with open_services(DatabaseConfig.from_url(database_url)) as services:
        jobs = services.sync_jobs()
        await jobs.open_async()
        try:
            started = time.perf_counter()
            pairs = await asyncio.gather(
                *(
                    jobs.start(
                        services.engine(t.org, actor="bench"), UUID(t.store_id), t.store_url, QueueOptions()
                    )
                    for t in tenants
                )
            )
        finally:
            await jobs.close_async()
    return list(pairs), started


async def wait_for_jobs(database_url: str, job_ids: list[int], timeout_s: float) -> dict[str, int]:
    """Until none of ``job_ids`` is waiting or running; their final states counted (a worker deletes a job
    that succeeded: a job no longer in the table counts as succeeded)."""
    deadline = time.monotonic() + timeout_s
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT status::text, count(*) FROM procrastinate_jobs WHERE id = ANY(%s) GROUP BY 1",
                (job_ids,),
            )
            states = {str(status): int(count) for status, count in await cursor.fetchall()}
            if not states.keys() & {"todo", "doing"}:
                gone = len(job_ids) - sum(states.values())
                return {"succeeded": states.get("succeeded", 0) + gone} | {
                    k: v for k, v in states.items() if k != "succeeded"
                }
            if time.monotonic() > deadline:
                raise SystemExit(f"jobs not ended after {timeout_s:g} s: {states}")
            await asyncio.sleep(0.1)


async def poller(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    queue_id: UUID,
    interval: float,
    stop: asyncio.Event,
    seen: Poll,
) -> None:
    """One client polling its queue's status until ``stop``: a request, its answer read, then ``interval``."""
    headers = {"Authorization": f"Bearer {token}"}
    body = {"action": "status", "queue_id": str(queue_id)}
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), random.uniform(0, interval))
    while not stop.is_set():
        started = time.perf_counter()
        try:
            async with session.post(url + SYNC_PATH, json=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    seen.latencies.append(time.perf_counter() - started)
                else:
                    seen.failed(f"http {response.status}")
        except (aiohttp.ClientError, TimeoutError) as error:
            seen.failed(type(error).__name__)
        if interval:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def measure(
    database_url: str,
    server_url: str | None,
    tenants: list[Tenant],
    pollers: int,
    interval: float,
    timeout_s: float,
    cpu_of: dict[str, list[int]],
) -> dict[str, Any]:
    """Defer every sync, poll while they run, until every job has ended: the figures of the window."""
    before = cpu_by_role(cpu_of)
    busy_before = machine_busy_s()
    pairs, started = await defer_all(database_url, tenants)
    deferred_s = time.perf_counter() - started
    stop, seen = asyncio.Event(), Poll()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [
            asyncio.create_task(
                poller(
                    session,
                    server_url or "",
                    tenants[i % len(tenants)].token,
                    pairs[i % len(tenants)][0],
                    interval,
                    stop,
                    seen,
                )
            )
            for i in range(pollers if server_url else 0)
        ]
        states = await wait_for_jobs(database_url, [job for _, job in pairs], timeout_s)
        wall = time.perf_counter() - started
        cpu = {name: round(used - before[name], 2) for name, used in cpu_by_role(cpu_of).items()}
        busy = machine_busy_s() - busy_before
        stop.set()
        await asyncio.gather(*tasks)
    return {
        "wall_s": round(wall, 2),
        "deferred_s": round(deferred_s, 3),
        "jobs": states,
        "cpu_s": cpu,
        "machine_busy_s": round(busy, 2),
        "queues": [(tenant.org, str(queue_id)) for tenant, (queue_id, _) in zip(tenants, pairs, strict=True)],
        "latency": latency_figures(seen),
        "_latencies": seen.latencies,
    }


def latency_figures(seen: Poll) -> dict[str, Any]:
    """p50/p95/p99/max in ms (nearest rank) of the answered requests, their number and the failures."""
    ordered = sorted(seen.latencies)
    figures: dict[str, Any] = {
        "requests": len(ordered) + sum(seen.errors.values()),
        "errors": dict(seen.errors),
    }
    for name, share in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        figures[f"{name}_ms"] = (
            round(ordered[max(0, math.ceil(len(ordered) * share) - 1)] * 1000, 1) if ordered else None
        )
    return figures


def check_queues(database_url: str, queues: list[tuple[str, str]], customers: int) -> list[str]:
    """Every queue done with exactly the store's customers, else one line per queue that is not."""
    problems = []
    with open_services(DatabaseConfig.from_url(database_url), read_only=True) as services:
        services.catch_up()
        for org, queue_id in queues:
            status = queries.queue_status(services.projections, org, UUID(queue_id))
            if status is None or status["state"] != "done" or status["doneCount"] != customers:
                shown = (
                    None if status is None else {k: status[k] for k in ("state", "doneCount", "failedCount")}
                )
                problems.append(f"queue {queue_id} of {org}: {shown}")
    return problems


def run_once(
    admin_url: str, key: str, store_urls: list[str], workers: int, args: Any, logs: Path
) -> dict[str, Any]:
    """One run on a fresh database with ``workers`` worker processes."""
    database_url = fresh_database(admin_url, "service")
    env, tenants = setup(database_url, key, store_urls, args.pollers)
    worker_env = {k: v for k, v in env.items() if not k.startswith("WOO_")}
    with ExitStack() as stack:
        server_url = None
        cpu_of: dict[str, list[int]] = {}
        if args.pollers:
            serve_log = logs / f"serve-{workers}w.log"
            # No WCSYNC_SECRET_KEY: the server only answers the pollers here (with the key it would start
            # workers of its own beside the measured ones).
            server_env = {k: v for k, v in worker_env.items() if k != SECRET_KEY_VARIABLE}
            server = stack.enter_context(spawned(["serve", "--port", "0"], server_env, serve_log))
            server_url = str(_first_line(server, serve_log)["url"])
            cpu_of["serve"] = [server.pid]
        processes = [
            stack.enter_context(spawned(["worker"], worker_env, logs / f"worker-{workers}w-{n}.log"))
            for n in range(workers)
        ]
        cpu_of["workers"] = [p.pid for p in processes]
        wait_for_workers(database_url, workers, processes)
        result = asyncio.run(
            measure(database_url, server_url, tenants, args.pollers, args.interval, args.timeout, cpu_of)
        )
    problems = check_queues(database_url, result["queues"], args.customers)
    total = args.syncs * args.customers
    result.update(
        workers=workers,
        database=database_url.rsplit("/", 1)[-1],
        customers_per_s=round(total / result["wall_s"], 1),
        problems=problems,
    )
    return result


# ----- output -----------------------------------------------------------------------------------------


def _line(label: str, r: dict[str, Any]) -> str:
    lat, cpu = r["latency"], r["cpu_s"]
    errors = sum(lat["errors"].values())
    return (
        f"{label:<16} {r['wall_s']:>8} {r['customers_per_s']:>9} {cpu['workers']:>8} "
        f"{cpu['workers children']:>8} {cpu.get('serve', '-'):>8} {r['machine_busy_s']:>8} "
        f"{_ms(lat['p50_ms'])} {_ms(lat['p95_ms'])} {_ms(lat['p99_ms'])} {_ms(lat['max_ms'])} "
        f"{lat['requests']:>7} {errors:>6}"
    )


def _ms(value: float | None) -> str:
    return f"{'-' if value is None else value:>7}"


# CPU columns, in seconds over the measured window: the worker processes, their live projection followers,
# `wcsync serve` (without its follower), every process of the machine.
HEADER = (
    f"{'run':<16} {'wall s':>8} {'cust/s':>9} {'workers':>8} {'follower':>8} {'serve':>8} {'machine':>8} "
    f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'reqs':>7} {'errors':>6}"
)


def summarise(results: list[dict[str, Any]], counts: list[int]) -> list[dict[str, Any]]:
    """Each worker count's medians over its runs, and the percentiles of all its requests together."""
    summary = []
    for count in counts:
        runs = [r for r in results if r["workers"] == count]
        pooled = Poll(latencies=[x for r in runs for x in r["_latencies"]])
        for r in runs:
            for kind, n in r["latency"]["errors"].items():
                pooled.errors[kind] = pooled.errors.get(kind, 0) + n
        summary.append(
            {
                "workers": count,
                "runs": len(runs),
                "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
                "customers_per_s": round(statistics.median(r["customers_per_s"] for r in runs), 1),
                "cpu_s": {
                    name: round(statistics.median(r["cpu_s"][name] for r in runs), 2)
                    for name in runs[0]["cpu_s"]
                },
                "machine_busy_s": round(statistics.median(r["machine_busy_s"] for r in runs), 2),
                "latency": latency_figures(pooled),
            }
        )
    return summary


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--syncs", type=int, default=20, help="syncs deferred at once, one org and store each"
    )
    parser.add_argument("--customers", type=int, default=5000, help="customers of each store")
    parser.add_argument("--workers", default="1,3", help="worker process counts to compare (default 1,3)")
    parser.add_argument("--pollers", type=int, default=50, help="concurrent status pollers (0: no server)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a poller's requests")
    parser.add_argument("--runs", type=int, default=2, help="runs of each worker count, interleaved")
    parser.add_argument(
        "--database-url",
        default=None,
        help="an admin URL of a PostgreSQL server: each run gets a fresh database on it (default: "
        "WCSYNC_BENCH_DATABASE_URL, else a throwaway server with durable settings)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take at most")
    args = parser.parse_args()
    configure_logging("warning")  # this process defers the jobs and checks the queues: no info lines
    counts = [int(n) for n in args.workers.split(",")]
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(os.urandom(32)).decode()
    results = []
    with ExitStack() as stack:
        admin = args.database_url or stack.enter_context(postgres_server())
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wcsync-service-")))
        store_urls = [stack.enter_context(sandbox_process(args.customers)) for _ in range(args.syncs)]
        print(
            f"{args.syncs} syncs x {args.customers} customers, workers {args.workers}, {args.pollers} pollers "
            f"every {args.interval:g} s, {args.runs} runs each",
            flush=True,
        )
        print(HEADER, flush=True)
        for run in range(args.runs):
            for count in counts:
                result = run_once(admin, key, store_urls, count, args, logs)
                results.append(result)
                print(_line(f"#{run + 1} {count} worker{'s' * (count > 1)}", result), flush=True)
                for problem in result["problems"]:
                    print(f"  NOT DONE: {problem}", flush=True)
    summary = summarise(results, counts)
    print("medians (latency: every request of the worker count's runs)")
    for row in summary:
        print(_line(f"{row['workers']} worker{'s' * (row['workers'] > 1)} x{row['runs']}", row), flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir / f"service-{stamp}.json"
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "arguments": {k: v for k, v in vars(args).items() if k != "database_url"},
    }
    for r in results:
        del r["_latencies"]
    document = {"meta": meta, "summary": summary, "runs": results}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({"summary": summary}))
    print(f"written to {out.relative_to(ROOT)}")
    if any(r["problems"] or set(r["jobs"]) != {"succeeded"} for r in results):
        raise SystemExit("some sync did not end done (see above)")


if __name__ == "__main__":
    main()
