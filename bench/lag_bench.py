"""Projection lag during a live sync: `wcsync start` of N customers into PostgreSQL while this script
polls the log head and every projection's tracking position every 50 ms from its own connection.

    .venv/bin/python bench/lag_bench.py --customers 100000 --pg-url postgresql://...

Lag at a sample = now - the moment the head first passed the slowest projection's position (the age of
the oldest event not yet in every read model). Prints median, p95 and max.
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import WCSYNC, fresh_database, sandbox_process  # noqa: E402
from infrastructure.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument(
        "--pg-url", required=True, help="an admin URL; a fresh database is made on that server"
    )
    args = parser.parse_args()
    url = fresh_database(args.pg_url, "lag")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WCSYNC_", "WOO_"))}
    env.update(WCSYNC_DATABASE_URL=url, WCSYNC_LOG_LEVEL="error")
    subprocess.run([*WCSYNC, "db", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    with sandbox_process(args.customers) as store_url:
        env.update(
            WOO_URL=store_url,
            WOO_CONSUMER_KEY=DEFAULT_CONSUMER_KEY,
            WOO_CONSUMER_SECRET=DEFAULT_CONSUMER_SECRET,
        )
        sync = subprocess.Popen([*WCSYNC, "start", "--json"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        seen: list[tuple[int, float]] = []  # (head, first time seen), heads increasing
        lags: list[float] = []
        with psycopg.connect(url, autocommit=True) as conn:
            while sync.poll() is None:
                now = time.monotonic()
                head = conn.execute("SELECT COALESCE(MAX(notification_id), 0) FROM wcsync_events").fetchone()
                rows = conn.execute("SELECT position FROM wcsync_projection_tracking").fetchall()
                head_id = int(head[0]) if head else 0
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
            f"{args.customers} customers: {len(lags)} samples; lag median {statistics.median(lags):.2f} s, "
            f"p95 {lags[int(len(lags) * 0.95)]:.2f} s, max {lags[-1]:.2f} s"
        )


if __name__ == "__main__":
    main()
