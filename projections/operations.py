"""The read side of the operations endpoints (/metrics): totals over the queue table, and when each
projection last moved. Two small queries per scrape, whatever the size of the log: a scrape must stay cheap.

Both read through the runner's connection, under its lock, as projections.queries does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from domain.lines import CANCELLED, DONE, DRAFT, FAILED
from domain.queue_terms import RESULTS
from infrastructure.adapters.schema import TEXT, TRACKING_TABLE, TS
from projections.queues import QUEUE_TABLE
from projections.runner import ProjectionRunner
from projections.stores import STORE_TABLE
from projections.webhooks import APPLIED, DELIVERY_TABLE, PENDING
from projections.webhooks import FAILED as DELIVERY_FAILED

DELIVERY_STATES = (PENDING, APPLIED, DELIVERY_FAILED)

_LINE_STATES = (DRAFT, DONE, FAILED, CANCELLED)
_LINE_RESULTS = RESULTS


@dataclass(frozen=True)
class QueueTotals:
    """An org's queues counted by state, and their lines by state and by result (every org's: None)."""

    queues: dict[str, int]
    lines: dict[str, int]
    line_results: dict[str, int]


def queue_totals(runner: ProjectionRunner, org_id: str | None) -> QueueTotals:
    """One grouped read of the queue table: the per-queue line counts the queues projection keeps are
    summed, so no line row is read."""
    counted = (*_LINE_STATES, *_LINE_RESULTS)
    sums = ", ".join(f"SUM({name}_count)" for name in counted)
    where, params = ("WHERE org_id = %s", [org_id]) if org_id is not None else ("", [])
    with runner.db.reading() as db:
        rows = db.fetchall(
            f"SELECT state, COUNT(*), {sums} FROM {QUEUE_TABLE.name} {where} GROUP BY state", params
        )
    queues: dict[str, int] = {}
    lines = dict.fromkeys(counted, 0)
    for state, count, *line_sums in rows:
        queues[str(state)] = int(count)
        for name, value in zip(counted, line_sums, strict=True):
            lines[name] += int(value or 0)
    return QueueTotals(
        queues=queues,
        lines={name: lines[name] for name in _LINE_STATES},
        line_results={name: lines[name] for name in _LINE_RESULTS},
    )


def webhook_totals(runner: ProjectionRunner, org_id: str | None) -> tuple[int, dict[str, int]]:
    """The org's stores whose installed webhooks need an operator (some not active in the store), and its
    webhook deliveries by state (pending | applied | failed): two grouped reads."""
    where, params = ("AND org_id = %s", [org_id]) if org_id is not None else ("", [])
    with runner.db.reading() as db:
        rows = db.fetchall(
            f"SELECT COUNT(*) FROM {STORE_TABLE.name} WHERE webhooks_action_required IS NOT NULL {where}",
            params,
        )
        states = db.fetchall(
            f"SELECT state, COUNT(*) FROM {DELIVERY_TABLE.name} WHERE 1 = 1 {where} GROUP BY state", params
        )
    deliveries = dict.fromkeys(DELIVERY_STATES, 0)
    deliveries.update({str(state): int(count) for state, count in states})
    return int(rows[0][0]), deliveries


def last_moved(runner: ProjectionRunner) -> dict[str, datetime | None]:
    """Each projection's (and rebuild's) tracking row: when its position last changed."""
    with runner.db.reading() as db:
        if not db.table_exists(TRACKING_TABLE):
            return {}
        decode = db.decoder([TEXT, TS])
        rows = db.fetchall(f"SELECT name, updated_at FROM {TRACKING_TABLE}")
        return {str(name): updated for name, updated in (decode(row) for row in rows)}


__all__ = ["QueueTotals", "last_moved", "queue_totals"]
