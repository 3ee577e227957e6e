"""Start-up (issue 13): `wcsync --help` and `wcsync status` on an empty, migrated SQLite database, each a
whole process timed from outside, optionally paired against another checkout of wcsync.

    .venv/bin/python bench/startup_bench.py [--runs 21] [--warmup 2]
    git worktree add /tmp/base COMMIT && .venv/bin/python bench/startup_bench.py --baseline /tmp/base

Each command runs `--warmup` times uncounted, then `--runs` times counted; with `--baseline` the two
checkouts take turns (A B A B ...), and the ratio this/baseline is taken pair by pair, so that a host whose
speed drifts meanwhile slows both sides of a pair alike. Each run is reaped with wait4: its wall (from
before the fork to the reaping), CPU (user + system) and peak RSS (ru_maxrss). Reported: min, median and
max of each, and of the pair ratios. The runs may cache their bytecode (PYTHONDONTWRITEBYTECODE is dropped
from their environment), as an installed wcsync has it. The baseline's modules come first on its
PYTHONPATH, in its own directory, with this checkout's interpreter and libraries.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import script_parser  # noqa: E402

# Each command and what it says on an empty database (`status`: exit 2, no queue to show).
COMMANDS = {"--help": (["--help"], ""), "status": (["status"], "has no queues yet")}


def timed(argv: list[str], expected: str, cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """One run of ``python -m cli.main ARGV`` (exit 0, or 2 saying ``expected``): wall s, CPU s, peak RSS
    MB (this small process forks it: ru_maxrss, which starts from the forking process's size, is the
    child's own)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    error = process.stderr.read().decode()  # to its end first: a full pipe would block the command
    process.stderr.close()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if not (code == 0 or (code == 2 and expected and expected in error)):
        raise SystemExit(f"wcsync {' '.join(argv)} in {cwd} failed: {error.strip()[-1000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another checkout of wcsync, paired against this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wcsync-startup-") as scratch:
        # Not bench._common.wcsync_env: it loads the sandbox, and this process must stay small (see timed).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WCSYNC_", "WOO_", "PYTHONDONT"))}
        env.update(WCSYNC_DATABASE_URL=f"sqlite:///{scratch}/wcsync.db", WCSYNC_LOG_LEVEL="error")
        subprocess.run(
            [sys.executable, "-m", "cli.main", "db", "migrate"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        sides = {"this": (ROOT, env)}
        if args.baseline is not None:
            base = args.baseline.resolve()
            sides["baseline"] = (base, {**env, "PYTHONPATH": str(base)})
        for name, (argv, expected) in COMMANDS.items():
            for _ in range(args.warmup):
                for cwd, side_env in sides.values():
                    timed(argv, expected, cwd, side_env)
            figures: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}
            for _ in range(args.runs):
                for side, (cwd, side_env) in sides.items():
                    figures[side].append(timed(argv, expected, cwd, side_env))
            for side, runs in figures.items():
                print(
                    f"wcsync {name:7} {side:8}: wall {spread([r[0] for r in runs])} s, "
                    f"CPU {spread([r[1] for r in runs])} s, peak RSS {spread([r[2] for r in runs], 1)} MB "
                    f"(median, min-max of {args.runs})"
                )
            if "baseline" in figures:
                ratios = [a[0] / b[0] for a, b in zip(figures["this"], figures["baseline"], strict=True)]
                print(f"wcsync {name:7} this/baseline wall, pair by pair: {spread(ratios, 2)}")


if __name__ == "__main__":
    main()
