"""End-to-end sync benchmark: the `wcsync start` command against a sandbox store in another process.

    .venv/bin/python bench/sync_bench.py                       # 10k and 100k into a PostgreSQL it starts
    .venv/bin/python bench/sync_bench.py --sizes 100000 --database sqlite
    WCSYNC_BENCH_DATABASE_URL=postgresql://... bench/sync_bench.py   # an existing server

For each size: a fresh database, `wcsync db migrate`, then `wcsync start` twice (the second against the
unchanged store), each a separate process whose wall time and peak RSS (wait4) are measured; then a cold
load of the queue aggregate (what `resume` does first). The PostgreSQL started here keeps its durable
defaults (fsync, synchronous_commit on), unlike the test suite's. Results go to stdout and, as JSON, to
bench/results/.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import WCSYNC, fresh_database, postgres_server, sandbox_process, script_parser, wcsync_env  # noqa: E402


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (the live projection follower)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_measured(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.wait(0.05):
            peak_tree = max(peak_tree, _tree_rss_kb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(args)} exited {code}: {err.strip()[-2000:]}")
    report = json.loads(out)
    return {
        "wall_s": round(wall, 2),
        "sync_s": report.get("seconds"),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # the largest single process (wait4)
        "peak_tree_rss_mb": round(peak_tree / 1024, 1),  # sync + follower together, sampled every 50 ms
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "state": report["state"],
        "created": report["createdCount"],
        "unchanged": report["unchangedCount"],
        "queue_id": report["queueId"],
    }


def load_queue_seconds(database_url: str, queue_id: str) -> float:
    code = (
        "import sys, time, uuid\n"
        "from infrastructure.support.config import DatabaseConfig\n"
        "from infrastructure.adapters.eventstore import SyncApplication\n"
        "app = SyncApplication(DatabaseConfig.from_url(sys.argv[1]), create_tables=False)\n"
        "t = time.perf_counter(); q = app.get_queue(uuid.UUID(sys.argv[2])); t = time.perf_counter() - t\n"
        "assert q.lines.total > 0\n"
        "print(round(t, 3))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, database_url, queue_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip())


def bench_size(size: int, kind: str, admin_url: str | None, workdir: Path) -> dict[str, Any]:
    if kind == "sqlite":
        database_url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    else:
        assert admin_url is not None
        database_url = fresh_database(admin_url)
    subprocess.run(
        [*WCSYNC, "db", "migrate"], cwd=ROOT, env=wcsync_env(database_url), check=True, capture_output=True
    )
    with sandbox_process(size) as url:
        env = wcsync_env(database_url, url)
        first = run_measured([*WCSYNC, "start", "--json"], env)
        second = run_measured([*WCSYNC, "start", "--json"], env)
    load_s = load_queue_seconds(database_url, first["queue_id"])
    return {"customers": size, "database": kind, "first": first, "second": second, "queue_load_s": load_s}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = ROOT / "bench" / "results"
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    with ExitStack() as stack:
        admin = stack.enter_context(postgres_server()) if args.database == "postgres" else None
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wcsync-bench-")))
        for size in sizes:
            result = bench_size(size, args.database, admin, scratch)
            results.append(result)
            f, s = result["first"], result["second"]
            print(
                f"{size:>7} customers ({args.database}): first {f['wall_s']:>6} s wall ({f['sync_s']} s sync), "
                f"{f['peak_rss_mb']} MB peak ({f['peak_tree_rss_mb']} MB with the follower); "
                f"second {s['wall_s']} s, {s['peak_rss_mb']} MB ({s['peak_tree_rss_mb']} MB); "
                f"queue load {result['queue_load_s']} s",
                flush=True,
            )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = workdir / f"sync-{args.database}-{stamp}.json"
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
