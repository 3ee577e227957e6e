"""Projection lag during a live sync: `wcsync start` of N customers into PostgreSQL while this script
polls the log head and every projection's tracking position every 50 ms from its own connection.

    .venv/bin/python bench/lag_bench.py [--customers 100000] [--pg-url postgresql://...]

The database is a fresh one on the server of --pg-url (an admin URL), or, without it, on a throwaway
PostgreSQL server started with the test suite's helper (tests/support/pgserver.py) but with PostgreSQL's durable
defaults (fsync, synchronous_commit on), as the figures in bench/RESULTS.md were measured;
WCSYNC_BENCH_DATABASE_URL names an existing server instead.

Lag at a sample = now - the moment the head first passed the slowest projection's position (the age of
the oldest event not yet in every read model). Prints median, p95 and max.
"""

from __future__ import annotations

import bisect
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import WCSYNC, fresh_database, postgres, sandbox_process, script_parser, wcsync_env  # noqa: E402
from infrastructure.adapters.eventlog import postgres_head_position  # noqa: E402


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument(
        "--pg-url",
        default=None,
        help="an admin URL; a fresh database is made on that server (default: a throwaway durable server)",
    )
    args = parser.parse_args()
    # postgres() uses a URL as given; --pg-url names a server, on which the run gets a fresh database.
    given = fresh_database(args.pg_url, "lag") if args.pg_url else None
    with postgres(given, "lag", durable=True) as url:
        measure(url, args.customers)


def measure(url: str, customers: int) -> None:
    subprocess.run([*WCSYNC, "db", "migrate"], cwd=ROOT, env=wcsync_env(url), check=True, capture_output=True)
    with sandbox_process(customers) as store_url:
        env = wcsync_env(url, store_url)
        sync = subprocess.Popen([*WCSYNC, "start", "--json"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        seen: list[tuple[int, float]] = []  # (head, first time seen), heads increasing
        lags: list[float] = []
        with psycopg.connect(url, autocommit=True) as conn:
            while sync.poll() is None:
                now = time.monotonic()
                head_id = postgres_head_position(conn)
                rows = conn.execute("SELECT position FROM wcsync_projection_tracking").fetchall()
                if not seen or head_id > seen[-1][0]:
                    seen.append((head_id, now))
                position = min((int(r[0]) for r in rows), default=0)
                if position < head_id:
                    index = bisect.bisect_right([h for h, _ in seen], position)
                    lags.append(now - seen[index][1] if index < len(seen) else 0.0)
                else:
                    lags.append(0.0)
                time.sleep(0.05)
        lags.sort()
        print(
            f"{customers} customers: {len(lags)} samples; lag median {statistics.median(lags):.2f} s, "
            f"p95 {lags[int(len(lags) * 0.95)]:.2f} s, max {lags[-1]:.2f} s"
        )


if __name__ == "__main__":
    main()
