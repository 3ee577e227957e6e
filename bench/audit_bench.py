"""Benchmark: `wcsync audit export` and `verify` on a log of 1,000,000 events, with peak memory.

Method: synthetic stored events are written straight through ``app.recorder.insert_events`` in batches of
10,000, in blocks of 100 shaped like a sync's log: one ``SyncQueue.Created`` (org, store, options), 79
``SyncQueue.LinesDone`` (50 customer ids each, ~0.5 KB) and 20 ``Customer.Registered`` (a ~0.8 KB record
each, one aggregate per customer), so 10,000 queues and 200,000 customers per million events. The state
bytes are produced by the application's own mapper/transcoder, so export decodes them like real events.
Then, each in a fresh child process (so each peak RSS is its own): the ledger is built (``projections
catch-up`` of the ledger alone), the org is exported, the log is verified against the ledger, and the export
is verified offline. Wall time with time.perf_counter; peak RSS is the child's VmHWM, reset at the start of
the phase (a child inherits its parent's peak), so it includes the interpreter and imports (~60 MB).

    python bench/audit_bench.py [--events 1000000] [--only sqlite|postgres] [--pg-url postgresql://...]

Without --pg-url a throwaway PostgreSQL server is started with the test suite's helper (tests/support/pgserver.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eventsourcing.persistence import StoredEvent  # noqa: E402
from eventsourcing.utils import get_topic  # noqa: E402

from bench._common import postgres  # noqa: E402
from domain.customer import Customer, customer_key  # noqa: E402
from domain.queue import SyncQueue  # noqa: E402
from domain.queue_terms import QueueOptions  # noqa: E402
from infrastructure.adapters.eventstore import SyncApplication  # noqa: E402
from infrastructure.support.config import DatabaseConfig  # noqa: E402

ORG = "bench-org"
STORE = "https://bench.example.com"
BLOCK = 100
BATCH = 10_000


def record(cid: int) -> dict[str, Any]:
    return {
        "id": cid,
        "email": f"customer{cid}@example.com",
        "first_name": "Zoë",
        "last_name": f"Customer {cid}",
        "username": f"customer{cid}",
        "role": "customer",
        "date_created_gmt": "2024-01-02T03:04:05",
        "date_modified_gmt": "2025-01-02T03:04:05",
        "billing": {
            "first_name": "Zoë",
            "last_name": f"Customer {cid}",
            "address_1": f"{cid} Long Street",
            "city": "Tromsø",
            "postcode": "9008",
            "country": "NO",
            "email": f"customer{cid}@example.com",
            "phone": "+47 555 0100",
        },
        "shipping": {
            "first_name": "Zoë",
            "address_1": f"{cid} Long Street",
            "city": "Tromsø",
            "country": "NO",
        },
        "is_paying_customer": True,
        "avatar_url": "https://secure.gravatar.com/avatar/0?s=96",
        "meta_data": [{"id": cid, "key": "loyalty", "value": "gold"}],
    }


def generate(database: DatabaseConfig, events: int) -> float:
    app = SyncApplication(database)
    transcoder = app.mapper.transcoder
    queue_created = get_topic(SyncQueue.Created)
    lines_done = get_topic(SyncQueue.LinesDone)
    registered = get_topic(Customer.Registered)
    started = time.perf_counter()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[StoredEvent] = []
    cid = 0
    for block in range(events // BLOCK):
        queue_id = uuid.uuid4()
        at += timedelta(seconds=1)
        state = {
            "timestamp": at,
            "originator_topic": get_topic(SyncQueue),
            "org_id": ORG,
            "queue_name": f"bench {block}",
            "store_url": STORE,
            "options": QueueOptions().as_dict(),
            "started_by": "bench",
        }
        batch.append(StoredEvent(queue_id, 1, queue_created, transcoder.encode(state)))
        for version in range(2, 81):
            ids = list(range(cid + version * 50, cid + version * 50 + 50))
            state = {"timestamp": at + timedelta(microseconds=version), "results": {"created": ids}}
            batch.append(StoredEvent(queue_id, version, lines_done, transcoder.encode(state)))
        for _ in range(20):
            cid += 1
            state = {
                "timestamp": at + timedelta(microseconds=100 + cid % 1000),
                "originator_topic": get_topic(Customer),
                "org_id": ORG,
                "store_url": STORE,
                "woo_id": cid,
                "record": record(cid),
                "digest": "d" * 64,
                "queue_id": str(queue_id),
            }
            key = customer_key(ORG, STORE, cid)
            batch.append(StoredEvent(key, 1, registered, transcoder.encode(state)))
        if len(batch) >= BATCH:
            app.recorder.insert_events(batch)
            batch = []
    if batch:
        app.recorder.insert_events(batch)
    app.close()
    return time.perf_counter() - started


def phase(name: str, url: str, output: str) -> dict[str, Any]:
    """One measured step, run in its own process."""
    from infrastructure.services.audit import export_log, verify_export, verify_log
    from projections.runner import ProjectionRunner

    database = DatabaseConfig.from_url(url)
    reset_peak_rss()
    started = time.perf_counter()
    result: dict[str, Any] = {}
    if name == "ledger":
        app = SyncApplication(database)
        runner = ProjectionRunner(app)
        runner.migrate()
        result["events"] = runner.catch_up(["ledger"])
        runner.close()
        app.close()
    elif name == "export":
        app = SyncApplication(database)
        summary = export_log(app, ORG, Path(output))
        result["events"] = summary.events
        result["bytes"] = Path(output).stat().st_size
        app.close()
    elif name == "verify":
        report = verify_log(database)
        assert report.ok, report.as_dict()
        result["events"] = report.events
    elif name == "verify-file":
        report = verify_export(Path(output))
        assert report.ok, report.as_dict()
        result["events"] = report.events
    seconds = time.perf_counter() - started
    result.update(
        phase=name,
        seconds=round(seconds, 2),
        events_per_s=round(result["events"] / seconds),
        peak_rss_mb=peak_rss_mb(),
    )
    return result


def reset_peak_rss() -> None:
    """A child process starts with its parent's peak RSS (the generator's): reset it (Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """VmHWM (the peak since reset_peak_rss); getrusage's ru_maxrss where /proc is missing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_phase(name: str, url: str, output: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--url", url, "--output", output],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(url: str, events: int, workdir: Path) -> list[dict[str, Any]]:
    database = DatabaseConfig.from_url(url)
    if database.backend == "postgres":
        from infrastructure.wiring import migrate

        migrate(database)
    seconds = generate(database, events)
    print(f"  generated {events:,} events in {seconds:.1f} s", file=sys.stderr)
    output = str(workdir / f"export-{database.backend}.jsonl")
    results = []
    for name in ("ledger", "export", "verify", "verify-file"):
        result = run_phase(name, url, output)
        print(f"  {json.dumps(result)}", file=sys.stderr)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--pg-url")
    parser.add_argument("--phase")
    parser.add_argument("--url")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.url, args.output)))
        return
    with tempfile.TemporaryDirectory(prefix="wcsync-audit-bench-") as tmp:
        workdir = Path(tmp)
        report: dict[str, Any] = {"events": args.events}
        if args.only in (None, "sqlite"):
            print("sqlite", file=sys.stderr)
            report["sqlite"] = measure(f"sqlite:///{workdir}/bench.db", args.events, workdir)
        if args.only in (None, "postgres"):
            print("postgres", file=sys.stderr)
            with postgres(args.pg_url, "bench_audit") as url:
                report["postgres"] = measure(url, args.events, workdir)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
