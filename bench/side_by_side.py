"""Side by side, in one run: the fetch-only floor, wcsync's re-syncs (and optionally its first sync and a
plain loop), against one sandbox store process and one durable PostgreSQL (issue 12 item 5, issue 13).

    .venv/bin/python bench/side_by_side.py                      # 100,000 customers, 3 rounds
    .venv/bin/python bench/side_by_side.py --customers 10000 --runs 5 --first-sync --plain-loop
    .venv/bin/python bench/side_by_side.py --json               # also bench/results/side-by-side-*.json
    git archive COMMIT | tar -x -C /tmp/base && bench/side_by_side.py --baseline /tmp/base   # before/after

Each round runs, one after the other (so a busy machine slows all of them alike):

  fetch     bench/fetch_only.py: every page read with wcsync's own client (signing, 4 in flight, JSON
            parsing) and thrown away: the floor;
  resync    `wcsync start` against the store unchanged since the database's last sync;
  changed   1% of the customers edited in the sandbox (POST /_sandbox/customers/edit-random, untimed),
            then `wcsync start` again (which brings the database back in line for the next round);
  first     (--first-sync) `wcsync start` into a fresh database;
  plain     (--plain-loop) bench/plain_loop.py: requests + psycopg, an upsert per customer, a commit
            per page, into a fresh database;
  *_base    (--baseline DIR) the re-syncs again with the wcsync in DIR, in the same rounds (each round
            alternates which version goes first), against the same store and database.

Each is a process of its own, measured with wait4: wall, CPU (user + system of the process and of every
child it waited for, so `wcsync start`'s live projection follower is counted), peak RSS of the largest
process and of the whole tree (sampled every 50 ms from /proc: wait4's maxrss counts the forking
bench's own size). The figures are medians over the rounds, and
ratios to the fetch-only floor of the same run. PostgreSQL keeps its durable defaults (fsync,
synchronous_commit) unlike the test suite's. The store's database is vacuumed and analysed once after its
first sync, and each fresh database is dropped once measured, so that autovacuum working through one
measurement's 100,000 rows does not run into the next.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    WCSYNC,
    drop_database,
    fresh_database,
    postgres_server,
    sandbox_process,
    script_parser,
    settle,
    wcsync_env,
)

BENCH = ROOT / "bench"
KINDS = ("fetch", "resync", "changed", "resync_base", "changed_base", "first", "plain")


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """(resident memory of a process and all its descendants together, of the largest one), in kB."""
    total = largest = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            total, largest = total + rss, max(largest, rss)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total, largest


def measure(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[dict[str, Any], str]:
    """Run one process (in ``cwd``: the code `python -m` runs) to its end; its figures and its stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree = peak_one = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree, peak_one
        while not done.wait(0.05):
            tree, largest = tree_rss_kb(process.pid)
            peak_tree, peak_one = max(peak_tree, tree), max(peak_one, largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # Read the pipes while the process runs (a full pipe would block it), then reap it with wait4.
    out_parts: list[bytes] = []
    err_parts: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out_parts.append(process.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err_parts.append(process.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    for reader in readers:
        reader.join()
    out, err = b"".join(out_parts).decode(), b"".join(err_parts).decode()
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} exited {process.returncode}: {err.strip()[-2000:]}")
    figures = {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "user_s": round(usage.ru_utime, 2),
        "sys_s": round(usage.ru_stime, 2),
        # Sampled: wait4's ru_maxrss starts from this (forking) process's own size, not the child's.
        "peak_rss_mb": round(peak_one / 1024, 1),
        "peak_tree_rss_mb": round(peak_tree / 1024, 1),
    }
    return figures, out


def wcsync_start(env: dict[str, str], code: Path = ROOT) -> dict[str, Any]:
    figures, out = measure([*WCSYNC, "start", "--json"], env, cwd=code)
    report = json.loads(out)
    counts = {k: report.get(f"{k}Count") for k in ("created", "updated", "unchanged", "failed")}
    figures.update(sync_s=round(float(report.get("seconds", 0.0)), 2), state=report.get("state"), **counts)
    return figures


def migrate(database_url: str) -> None:
    subprocess.run(
        [*WCSYNC, "db", "migrate"], cwd=ROOT, env=wcsync_env(database_url), check=True, capture_output=True
    )


def edit_random(store_url: str, count: int, seed: int) -> int:
    body = json.dumps({"count": count, "seed": seed}).encode()
    request = urllib.request.Request(  # noqa: S310 - our own sandbox, on loopback
        f"{store_url.rstrip('/')}/_sandbox/customers/edit-random",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as reply:  # noqa: S310
        return int(json.loads(reply.read())["edited"])


def median_of(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
    return round(statistics.median(values), 2) if values else None


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    floor = median_of(results["fetch"], "wall_s")
    floor_cpu = median_of(results["fetch"], "cpu_s")
    summary: dict[str, dict[str, Any]] = {}
    for kind, rounds in results.items():
        if not rounds:
            continue
        row: dict[str, Any] = {
            key: median_of(rounds, key)
            for key in ("wall_s", "cpu_s", "user_s", "sys_s", "peak_rss_mb", "peak_tree_rss_mb")
        }
        row["walls"] = [r["wall_s"] for r in rounds]
        if floor:
            row["wall_ratio"] = round(row["wall_s"] / floor, 2)
        if floor_cpu:
            row["cpu_ratio"] = round(row["cpu_s"] / floor_cpu, 2)
        summary[kind] = row
    for suffix in ("", "_base"):
        resync, changed = summary.get(f"resync{suffix}"), summary.get(f"changed{suffix}")
        if resync and changed:
            changed["vs_resync"] = round(changed["wall_s"] / resync["wall_s"], 2)
    return summary


def print_summary(customers: int, summary: dict[str, dict[str, Any]], load: tuple[float, ...]) -> None:
    print(f"\n{customers} customers, medians of each (load average at the end: {load[0]:.2f} {load[1]:.2f})")
    print(
        f"{'':13} {'wall s':>8} {'CPU s':>8} {'RSS MB':>8} {'tree MB':>8} {'x floor':>8} {'CPU x':>8}  walls"
    )
    for kind in KINDS:
        row = summary.get(kind)
        if row is None:
            continue
        print(
            f"{kind:13} {row['wall_s']:>8} {row['cpu_s']:>8} {row['peak_rss_mb']:>8} {row['peak_tree_rss_mb']:>8} "
            f"{row.get('wall_ratio', '-'):>8} {row.get('cpu_ratio', '-'):>8}  {row['walls']}"
        )
    for suffix in ("", "_base"):
        if "vs_resync" in summary.get(f"changed{suffix}", {}):
            print(f"changed{suffix} / resync{suffix}: {summary[f'changed{suffix}']['vs_resync']}")


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--changed-share", type=float, default=0.01, help="share edited before 'changed'")
    parser.add_argument("--first-sync", action="store_true", help="also a first sync into a fresh database")
    parser.add_argument(
        "--plain-loop", action="store_true", help="also the plain loop, into a fresh database"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a copy of another version of wcsync (e.g. `git archive COMMIT | tar -x -C DIR`): its re-syncs "
        "run in the same rounds, against the same store and database (resync_base, changed_base)",
    )
    parser.add_argument("--json", action="store_true", help="write the results to bench/results/")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with postgres_server(durable=True) as admin, sandbox_process(args.customers) as store_url:
        database = fresh_database(admin, "sbs")
        migrate(database)
        env = wcsync_env(database, store_url)
        print(f"setting up: a first sync of {args.customers} customers ...", flush=True)
        setup = wcsync_start(env)
        print(f"  {setup}", flush=True)
        settle(database)
        for number in range(1, args.runs + 1):
            fetch, out = measure([sys.executable, str(BENCH / "fetch_only.py")], env)
            fetch.update(json.loads(out))
            results["fetch"].append(fetch)
            print(f"round {number}: fetch   {fetch}", flush=True)
            variants = [("", ROOT)] + ([("_base", args.baseline.resolve())] if args.baseline else [])
            if number % 2 == 0:
                variants.reverse()  # neither version always goes first
            for suffix, code in variants:
                resync = wcsync_start(env, code)
                results[f"resync{suffix}"].append(resync)
                print(f"round {number}: resync{suffix}  {resync}", flush=True)
            for index, (suffix, code) in enumerate(variants):
                share = max(1, round(args.customers * args.changed_share))
                edited = edit_random(store_url, share, seed=number * 10 + index)
                changed = wcsync_start(env, code)
                changed["edited"] = edited
                results[f"changed{suffix}"].append(changed)
                print(f"round {number}: changed{suffix} {changed}", flush=True)
            if args.first_sync:
                fresh = fresh_database(admin, "sbs_first")
                migrate(fresh)
                first = wcsync_start(wcsync_env(fresh, store_url))
                drop_database(admin, fresh)
                results["first"].append(first)
                print(f"round {number}: first   {first}", flush=True)
            if args.plain_loop:
                plain_env = {**env, "PLAIN_DATABASE_URL": fresh_database(admin, "sbs_plain")}
                plain, out = measure([sys.executable, str(BENCH / "plain_loop.py")], plain_env)
                drop_database(admin, plain_env["PLAIN_DATABASE_URL"])
                plain.update(json.loads(out))
                results["plain"].append(plain)
                print(f"round {number}: plain   {plain}", flush=True)
    load = os.getloadavg()
    summary = summarise(results)
    print_summary(args.customers, summary, load)
    if args.json:
        out_dir = BENCH / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = out_dir / f"side-by-side-{stamp}.json"
        meta = {
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "customers": args.customers,
            "runs": args.runs,
            "baseline": str(args.baseline) if args.baseline else None,
            "load_average": [round(x, 2) for x in load],
        }
        path.write_text(json.dumps({"meta": meta, "summary": summary, "rounds": results}, indent=2) + "\n")
        print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
