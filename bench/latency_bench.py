"""A slow store: 797 customers from a sandbox answering every request in ~300 ms, default settings.

    .venv/bin/python bench/latency_bench.py [--latency-ms 300] [--customers 797] [--rate 0] [--runs 3]

Runs `wcsync start --json` (SQLite, default options) as a separate process against `wcsync sandbox` in
another, and reports the sync's own time (`seconds` in the JSON: queue creation to the end; since
2026-12-02 the start's first requests are sent before it, cli/sync.py's scan ahead), the
process's wall time (Python start-up and imports included), the difference of the two (what start-up,
opening the database and the end of the run cost), and the store's busiest second (its
/_sandbox/stats), so a `--rate` limit can be checked.

The runs may cache their bytecode (PYTHONDONTWRITEBYTECODE is dropped from their environment), as an
installed wcsync has it: otherwise every run compiled again each module edited since the last cache.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import WCSYNC, sandbox_process, script_parser, wcsync_env  # noqa: E402


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--latency-ms", type=float, default=300)
    parser.add_argument("--customers", type=int, default=797)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with sandbox_process(args.customers, args.latency_ms) as url:
        syncs: list[float] = []
        walls: list[float] = []
        with tempfile.TemporaryDirectory(prefix="wcsync-latency-") as scratch:
            for run in range(args.runs):
                env = wcsync_env(f"sqlite:///{scratch}/run{run}.db", url)
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                command = [*WCSYNC, "start", "--json"]
                if args.rate:
                    command += ["--rate", str(args.rate)]
                started = time.perf_counter()
                result = subprocess.run(
                    command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
                )
                walls.append(time.perf_counter() - started)
                report = json.loads(result.stdout)
                assert report["totalCount"] == args.customers, report
                syncs.append(report["seconds"])
                print(
                    f"run {run + 1}: sync {report['seconds']:.2f} s, process wall {walls[-1]:.2f} s "
                    f"(outside the sync {walls[-1] - syncs[-1]:.2f} s)",
                    flush=True,
                )
        with urllib.request.urlopen(f"{url}/_sandbox/stats") as response:  # noqa: S310 - our loopback sandbox
            stats = json.load(response)
        print(
            f"{args.customers} customers at {args.latency_ms:.0f} ms: sync median {statistics.median(syncs):.2f} s, "
            f"process wall median {statistics.median(walls):.2f} s (outside the sync, median "
            f"{statistics.median(w - s for w, s in zip(walls, syncs, strict=True)):.2f} s); "
            f"store served {stats['requests']} requests, "
            f"busiest second {stats['max_per_second']} requests"
        )


if __name__ == "__main__":
    main()
