"""Micro benchmark: the domain layer's CPU for each new customer of a first sync, in-process, no I/O.

What the recording thread of `wcsync start` does in the domain for a page of new customers, on realistic
records (infrastructure/sandbox/data.py, as the sandbox store serves them): each record through the boundary
(domain.validation.check_record, with the fast canonical encoder the engine passes in, remembering the
bytes as the engine's step does), the page's lines added to the queue, then domain.sync.sync_batch creating
the Customer aggregates (the bytes encoded at the boundary reused, as the engine does). Each stage is timed
with time.process_time over all the records, gc as in the engine (enabled); the median of the runs is
printed in µs per customer. sync_batch is told its records were checked (``checked=True``) when it can be,
unless --validate-again: as a caller that does not say so.

    .venv/bin/python bench/domain_bench.py [--customers 20000] [--runs 5] [--page 100] [--validate-again]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import script_parser  # noqa: E402
from domain.queue import SyncQueue  # noqa: E402
from domain.queue_terms import QueueOptions  # noqa: E402
from domain.sync import sync_batch  # noqa: E402
from domain.validation import RejectedRecord, check_record  # noqa: E402
from infrastructure.sandbox.data import generate_customers  # noqa: E402

# The engine's own encoder of a worker step (it remembers each record's canonical bytes, by object).
from infrastructure.services.sync import _Encodings  # noqa: E402

STAGES = ("check_record", "add_lines", "sync_batch")


def one_run(raw: list[dict[str, Any]], page: int, validate_again: bool = False) -> dict[str, float]:
    """Seconds of CPU of each stage over all the records."""
    totals = dict.fromkeys(STAGES, 0.0)
    queue = SyncQueue(
        org_id="bench-org",
        queue_name="q",
        store_url="https://bench.example.com",
        options=QueueOptions().as_dict(),
        started_by="bench",
    )
    queue.start_processing("bench")
    kwargs = {} if validate_again else _sync_kwargs()
    for number, start in enumerate(range(0, len(raw), page), start=1):
        encodings = _Encodings()
        chunk = raw[start : start + page]
        began = time.process_time()
        good = [
            r for r in (check_record(item, encodings) for item in chunk) if not isinstance(r, RejectedRecord)
        ]
        checked = time.process_time()
        queue.add_lines(good, page=number)
        added = time.process_time()
        outcome = sync_batch(queue, good, {}, canonical=encodings.again, **kwargs)
        synced = time.process_time()
        totals["check_record"] += checked - began
        totals["add_lines"] += added - checked
        totals["sync_batch"] += synced - added
        for customer in outcome.changed:
            customer.collect_events()
        queue.collect_events()
    return totals


def _sync_kwargs() -> dict[str, Any]:
    """sync_batch told that its records passed check_record, when this version of it can be told."""
    import inspect

    return {"checked": True} if "checked" in inspect.signature(sync_batch).parameters else {}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--page", type=int, default=100)
    parser.add_argument(
        "--validate-again", action="store_true", help="sync_batch not told the records are checked"
    )
    args = parser.parse_args()
    raw = generate_customers(args.customers, seed=13)
    runs: list[dict[str, float]] = []
    timer: Callable[[], float] = time.process_time
    began = timer()
    for _ in range(args.runs):
        # Fresh records each run: check_record may return the very object it was given.
        runs.append(one_run([_copy(r) for r in raw], args.page, args.validate_again))
    per_customer = {
        stage: statistics.median(run[stage] for run in runs) / args.customers * 1e6 for stage in STAGES
    }
    total = statistics.median(sum(run.values()) for run in runs) / args.customers * 1e6
    told = "validated again" if args.validate_again or not _sync_kwargs() else "checked=True"
    print(f"{args.customers} customers, pages of {args.page}, median of {args.runs} runs, sync_batch {told}")
    print("(CPU, µs/customer)")
    for stage in STAGES:
        print(f"  {stage:<13} {per_customer[stage]:7.2f}")
    print(f"  {'total':<13} {total:7.2f}   ({timer() - began:.1f} s of CPU in all)")


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return value


if __name__ == "__main__":
    main()
