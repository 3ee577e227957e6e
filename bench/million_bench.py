"""A million customers (issue 13): one first sync of a big store, end to end, with the memory of each
process on its own.

    .venv/bin/python bench/million_bench.py                       # 1,000,000 customers (takes a while)
    .venv/bin/python bench/million_bench.py --customers 20000     # a quick check that it all works
    WCSYNC_BENCH_DATABASE_URL=postgresql://... bench/million_bench.py   # an existing server

One run, in order:

  sandbox   `wcsync sandbox --customers N` (zero latency) in a process of its own: how long it takes to
            generate its customers and answer (its first line), and its peak RSS over the whole run (the
            stand-in store, not a wcsync process: reported, not judged);
  first     `wcsync start --json` into a fresh database of a PostgreSQL with its durable defaults (fsync,
            synchronous_commit on): wall, CPU (wait4: the process and every child it waited for, so its
            live projection follower `python -m cli.processes follow` and any catch-up workers), and the
            peak RSS of each process separately: VmHWM (the kernel's own peak) and VmRSS read from /proc
            every 50 ms, so a child's peak is its own, not the tree's;
  caught up `wcsync projections status --json` every second until every projection's lag is 0 (the
            time it took after the sync returned);
  resume    a cold load of the queue in a fresh process (snapshot + tail: what `wcsync resume` does
            first), three times: the load's seconds (median), the process's wall and peak RSS;
  verify    `wcsync audit verify --json`: wall, events, events per second of the process's wall.

Results go to stdout and, as JSON, to bench/results/million-*.json. The goals it reports against (issue
13): peak RSS of every wcsync process <= 150 MB and flat from 100k to 1M, wall <= 11x the 100k run's,
projections caught up, the queue loaded in <= 1 s, verify at >= 50,000 events/s.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import WCSYNC, fresh_database, postgres_server, script_parser, wcsync_env  # noqa: E402

SAMPLE_S = 0.05
TIMELINE_S = 1.0  # each process's RSS kept once a second, to see where its peak was
CAUGHT_UP_POLL_S = 1.0
# What `resume` does first, in a fresh process: open the event store, load the queue (its latest
# snapshot and the events after it). Prints the load's seconds, the lines, and the process's peak RSS.
LOAD_QUEUE = """
import sys, time, uuid
from infrastructure.support.config import DatabaseConfig
from infrastructure.adapters.eventstore import SyncApplication
app = SyncApplication(DatabaseConfig.from_url(sys.argv[1]), create_tables=False)
started = time.perf_counter()
queue = app.get_queue(uuid.UUID(sys.argv[2]))
seconds = time.perf_counter() - started
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(seconds, queue.lines.total, int(hwm))
"""


# ----- processes and their memory --------------------------------------------------------------------


def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB ({} once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            found[line[:5]] = int(line.split()[1])
    return found


def _cpu_s(pid: int) -> float | None:
    """User + system CPU of a process so far (its own, not its children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _role(pid: int) -> str:
    """What a process of the tree is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [a.decode(errors="replace") for a in argv if a]
    if "cli.processes" in words:
        at = words.index("cli.processes")
        return words[at + 1] if at + 1 < len(words) else "cli.processes"  # follow | projection-worker
    if "cli.main" in words:
        command = [w for w in words[words.index("cli.main") + 1 :][:2] if not w.startswith("-")]
        return " ".join(command) or "wcsync"  # start | audit verify | sandbox
    return Path(words[0]).name if words else "?"


@dataclass
class _Seen:
    role: str
    rss_kb: int = 0  # the largest VmRSS sampled
    hwm_kb: int = 0  # the kernel's peak, as last read
    cpu_s: float = 0.0  # as last read
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (s, MB) each TIMELINE_S


@dataclass
class TreeSampler:
    """Every SAMPLE_S, each process of a tree: its peak RSS (VmHWM, and VmRSS sampled) and CPU, by pid."""

    root: int
    seen: dict[int, _Seen] = field(default_factory=dict)
    _started: float = field(default_factory=time.perf_counter)
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(SAMPLE_S):
                return

    def sample(self) -> None:
        todo = [self.root]
        while todo:
            pid = todo.pop()
            status = _status_kb(pid)
            if not status:
                continue
            entry = self.seen.get(pid)
            if entry is None:
                entry = self.seen[pid] = _Seen(_role(pid))
            entry.rss_kb = max(entry.rss_kb, status.get("VmRSS", 0))
            entry.hwm_kb = max(entry.hwm_kb, status.get("VmHWM", 0))
            entry.cpu_s = _cpu_s(pid) or entry.cpu_s
            at = time.perf_counter() - self._started
            if not entry.timeline or at - entry.timeline[-1][0] >= TIMELINE_S:
                entry.timeline.append((round(at, 1), round(status.get("VmRSS", 0) / 1024, 1)))
            todo += _children(pid)

    def by_role(self) -> dict[str, dict[str, Any]]:
        """Per kind of process: how many there were, the largest peak of one (MB), their CPU together."""
        roles: dict[str, dict[str, Any]] = {}
        for entry in self.seen.values():
            role = roles.setdefault(entry.role, {"processes": 0, "peak_rss_mb": 0.0, "cpu_s": 0.0})
            role["processes"] += 1
            peak = max(entry.hwm_kb, entry.rss_kb) / 1024
            role["peak_rss_mb"] = round(max(role["peak_rss_mb"], peak), 1)
            role["sampled_rss_mb"] = round(max(role.get("sampled_rss_mb", 0.0), entry.rss_kb / 1024), 1)
            role["cpu_s"] = round(role["cpu_s"] + entry.cpu_s, 2)
            if role["processes"] == 1:
                role["rss_timeline"] = entry.timeline  # where the peak was: the first of its kind
        return roles


def run_measured(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Run a wcsync command to its end: wall, CPU (wait4), each process's peak; and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Files, not pipes: nothing has to read them while it runs, and wait4 is the one wait.
        started = time.perf_counter()
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        sampler = TreeSampler(process.pid).start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        sampler.stop()
        process.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(args[2:])} exited {code}: {stderr.strip()[-2000:]}")
    figures = {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "exit": code,
        "processes": sampler.by_role(),
    }
    return figures, stdout


# ----- the steps ---------------------------------------------------------------------------------------


@contextmanager
def sandbox(customers: int) -> Iterator[tuple[str, float, TreeSampler]]:
    """The sandbox store in its own process; yields (url, seconds until it answered, its sampler)."""
    args = [*WCSYNC, "sandbox", "--port", "0", "--customers", str(customers), "--latency-ms", "0"]
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampler = TreeSampler(process.pid).start()
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["url"]
        yield url, time.perf_counter() - started, sampler
    finally:
        sampler.stop()
        process.terminate()
        process.wait(timeout=60)


def wait_caught_up(env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """Poll `projections status` until every lag is 0; how long that took (one poll included: 0 lag at
    the first poll is ~0.9 s, the command's own time), the polls, the last lags."""
    started = time.perf_counter()
    polls = 0
    while True:
        answer = subprocess.run(
            [*WCSYNC, "projections", "status", "--json"], cwd=ROOT, env=env, capture_output=True, check=True
        )
        lags = {p["name"]: p["lag"] for p in json.loads(answer.stdout)}
        waited = time.perf_counter() - started
        polls += 1
        if not any(lags.values()) or waited > timeout_s:
            caught_up = not any(lags.values())
            return {"caught_up": caught_up, "after_s": round(waited, 2), "polls": polls, "lags": lags}
        time.sleep(CAUGHT_UP_POLL_S)  # polling a separate process, not synchronising a test


def load_queue(database_url: str, queue_id: str, runs: int = 3) -> dict[str, Any]:
    loads, walls, peaks = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", LOAD_QUEUE, database_url, queue_id],
            cwd=ROOT,
            env=wcsync_env(database_url),
            capture_output=True,
            text=True,
            check=True,
        )
        walls.append(time.perf_counter() - started)
        seconds, lines, hwm_kb = result.stdout.split()
        loads.append(float(seconds))
        peaks.append(int(hwm_kb) / 1024)
    return {
        "load_s": round(statistics.median(loads), 3),
        "loads_s": [round(s, 3) for s in loads],
        "process_wall_s": round(statistics.median(walls), 2),
        "peak_rss_mb": round(max(peaks), 1),
        "lines": int(lines),
    }


def verify(env: dict[str, str]) -> dict[str, Any]:
    figures, out = run_measured([*WCSYNC, "audit", "verify", "--json"], env)
    answer = json.loads(out)
    figures["ok"] = answer["ok"]
    figures["events"] = answer["events"]
    figures["events_per_s"] = round(answer["events"] / figures["wall_s"])
    return figures


def database_mb(database_url: str) -> float:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return round(row[0] / 2**20, 1) if row else 0.0


def bench(customers: int, admin_url: str) -> dict[str, Any]:
    database_url = fresh_database(admin_url, "million")
    subprocess.run(
        [*WCSYNC, "db", "migrate"], cwd=ROOT, env=wcsync_env(database_url), check=True, capture_output=True
    )
    with sandbox(customers) as (url, ready_s, store):
        print(f"sandbox of {customers:,} customers answering after {ready_s:.1f} s", flush=True)
        env = wcsync_env(database_url, url)
        first, out = run_measured([*WCSYNC, "start", "--json"], env)
        report = json.loads(out)
        first.update(
            sync_s=report.get("seconds"),
            state=report["state"],
            created=report["createdCount"],
            total=report["totalCount"],
            cpu_us_per_customer=round(first["cpu_s"] / max(customers, 1) * 1e6),
        )
        store.sample()
        sandbox_figures = {"ready_s": round(ready_s, 2), **store.by_role()}
    caught_up = wait_caught_up(wcsync_env(database_url), timeout_s=max(60.0, first["wall_s"]))
    resume = load_queue(database_url, report["queueId"])
    audit = verify(wcsync_env(database_url))
    return {
        "customers": customers,
        "sandbox": sandbox_figures,
        "first": first,
        "projections": caught_up,
        "resume": resume,
        "verify": audit,
        "database_mb": database_mb(database_url),
    }


def summary(result: dict[str, Any]) -> str:
    first, resume, audit = result["first"], result["resume"], result["verify"]
    peaks = ", ".join(
        f"{role} {p['peak_rss_mb']} MB" + (f" (x{p['processes']})" if p["processes"] > 1 else "")
        for role, p in first["processes"].items()
    )
    store: dict[str, Any] = next((v for k, v in result["sandbox"].items() if k != "ready_s"), {})
    return "\n".join(
        [
            f"{result['customers']:,} customers: first sync {first['wall_s']} s wall, {first['cpu_s']} s CPU "
            f"({first['cpu_us_per_customer']} us a customer), state {first['state']}, {first['created']:,} created",
            f"  peak RSS per process: {peaks}",
            f"  projections caught up: {result['projections']['caught_up']} "
            f"({result['projections']['after_s']} s after the sync)",
            f"  resume's queue load: {resume['load_s']} s (process {resume['process_wall_s']} s, "
            f"{resume['peak_rss_mb']} MB, {resume['lines']:,} lines)",
            f"  audit verify: {audit['events']:,} events in {audit['wall_s']} s = {audit['events_per_s']:,}/s, "
            f"ok {audit['ok']}",
            f"  sandbox: ready after {result['sandbox']['ready_s']} s, peak {store.get('peak_rss_mb')} MB; "
            f"database {result['database_mb']} MB",
        ]
    )


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    workdir = ROOT / "bench" / "results"
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        admin = stack.enter_context(postgres_server(durable=True))
        result = bench(args.customers, admin)
    print(summary(result))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = workdir / f"million-{args.customers}-{stamp}.json"
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    out.write_text(json.dumps({"meta": meta, "result": result}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
