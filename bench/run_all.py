"""Run every benchmark script in turn (`make bench`); each prints its own figures.

The figures and how they were taken are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = [
    ["latency_bench.py"],
    ["sync_bench.py", "--sizes", "10000,100000"],
    ["projections_rebuild.py"],
    ["lag_bench.py"],
    ["audit_bench.py"],
    ["service_bench.py"],
    ["webhook_bench.py", "--json"],
    ["side_by_side.py", "--first-sync", "--plain-loop", "--json"],
]


def main() -> int:
    failed = 0
    for script, *args in SCRIPTS:
        path = BENCH / script
        if not path.exists():
            print(f"== {script}: not present, skipped", flush=True)
            continue
        print(f"== {script} {' '.join(args)}", flush=True)
        failed += subprocess.run([sys.executable, str(path), *args], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
