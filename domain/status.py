"""A queue's status as the seed API shaped it: the answer of `wcsync status --json`, of the HTTP API's status
route and of `audit queue --as-of`, built here once from whatever the caller read (a read-model row, or the
aggregate replayed).

Pure: stdlib only. Times come already written (ISO-8601 text or None): the read models and the audit
write them each their own way, and each keeps its way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The line counts of a status, each under the key "<name>Count", in this order.
COUNTS = ("total", "draft", "done", "failed", "cancelled", "created", "updated", "unchanged")


def progress(total: int, finished: int, done_when_empty: bool) -> float:
    """The share of a queue's lines that are finished (done or cancelled), in percent to 2 decimals. A queue
    with no lines is 100% or 0% by the caller's rule (``done_when_empty``): the aggregate counts it done once
    its fetch finished, the read model once the queue is done."""
    if not total:
        return 100.0 if done_when_empty else 0.0
    return round(finished * 100.0 / total, 2)


def queue_status(
    *,
    queue_id: str,
    queue_name: str | None,
    org_id: str | None,
    store_url: str | None,
    state: str | None,
    counts: Mapping[str, int],
    progress: float,
    process_count: int,
    is_action_required: bool,
    action_required_reason: str | None,
    last_process_date: str | None,
    created_at: str | None,
    version: int | None = None,
) -> dict[str, Any]:
    """The status document (``counts`` by the names of COUNTS).

    Without ``version`` (the read models' answer) "progress" comes last. With it (a queue as it stood at an
    instant, replayed) "progress" follows "state" and "version" comes last, the order the audit has always
    printed."""
    head = {
        "queueId": queue_id,
        "queueName": queue_name,
        "orgId": org_id,
        "storeUrl": store_url,
        "state": state,
    }
    body: dict[str, Any] = {f"{name}Count": counts[name] for name in COUNTS}
    body.update(
        processCount=process_count,
        isActionRequired=is_action_required,
        actionRequiredReason=action_required_reason,
        lastProcessDate=last_process_date,
        createdAt=created_at,
    )
    if version is None:
        return head | body | {"progress": progress}
    return head | {"progress": progress} | body | {"version": version}
