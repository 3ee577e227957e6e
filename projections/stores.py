"""The org's registered stores: ``woo_stores``, one row per Store aggregate (per org and URL).

Built from the Store events (domain/store.py). A removed store keeps its row, ``removed`` true, so the
registry's listing can show it on request; registering it again (``Restored``) makes it current once more,
with the restore's name, key fingerprint, time and actor as its registration. The table holds no secret:
the events hold none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from domain.store import WEBHOOK_ACTIVE, Store, webhook_problem
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import BOOL, JSON, TEXT, TS, UUID_, Column, Index, Table
from projections.base import AGGREGATE_VERSION, ORG_ID, Item, Projection, event_classes, topics_of

STORE_TABLE = Table(
    "woo_stores",
    (
        Column("store_id", UUID_, not_null=True),
        ORG_ID,
        Column("url", TEXT, not_null=True),
        Column("name", TEXT, not_null=True),
        Column("key_fingerprint", TEXT, not_null=True),
        Column("registered_at", TS, not_null=True),
        Column("registered_by", TEXT, not_null=True),
        Column("updated_at", TS, not_null=True),
        Column("removed", BOOL, not_null=True),
        Column("removed_at", TS),
        Column("webhooks_installed", BOOL, not_null=True),
        # The installed webhooks not active in the store, as last seen: {topic: status}.
        Column("webhooks_not_active", JSON),
        # Why the installed webhooks need an operator (some not active in the store), NULL when none do.
        Column("webhooks_action_required", TEXT),
        AGGREGATE_VERSION,
    ),
    ("store_id",),
    # The id is a uuid5 of (org, URL): one row per org and URL either way; the index serves lookups by URL.
    (Index("woo_stores_org_url_idx", "org_id, url", unique=True),),
)


def _webhooks(installed: bool) -> dict[str, Any]:
    return {"webhooks_installed": installed, "webhooks_not_active": None, "webhooks_action_required": None}


def _registered_row(event: Store.Registered) -> dict[str, Any]:
    return {
        "store_id": event.originator_id,
        "org_id": event.org_id,
        "url": event.url,
        "name": event.name,
        "key_fingerprint": event.key_fingerprint,
        "registered_at": event.timestamp,
        "registered_by": event.actor,
        "updated_at": event.timestamp,
        "removed": False,
        "removed_at": None,
        "webhooks_installed": False,
        "webhooks_not_active": None,
        "webhooks_action_required": None,
        "version": event.originator_version,
    }


class StoresProjection(Projection):
    name = "stores"
    version = 2  # 2: the webhooks' columns
    tables = (STORE_TABLE,)
    topics = topics_of(*event_classes(Store))

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        events = [event for _, event in items]
        registered = {e.originator_id for e in events if isinstance(e, Store.Registered)}
        wanted = sorted({e.originator_id for e in events} - registered)
        rows: dict[UUID, dict[str, Any]] = {
            row["store_id"]: row for row in db.load(STORE_TABLE, suffix, "store_id", wanted)
        }
        for event in events:
            if isinstance(event, Store.Registered):
                rows[event.originator_id] = _registered_row(event)
                continue
            row = rows.get(event.originator_id)
            if row is None:  # a store this table never saw registered
                continue
            row["updated_at"] = event.timestamp
            row["version"] = event.originator_version
            if isinstance(event, Store.CredentialsRotated):
                row["key_fingerprint"] = event.key_fingerprint
            elif isinstance(event, Store.Removed):
                row.update(removed=True, removed_at=event.timestamp, **_webhooks(False))
            elif isinstance(event, Store.WebhooksInstalled):
                row.update(_webhooks(True))
            elif isinstance(event, Store.WebhooksUninstalled):
                row.update(_webhooks(False))
            elif isinstance(event, Store.WebhookStatusSeen):
                seen = dict(row["webhooks_not_active"] or {})
                if event.status == WEBHOOK_ACTIVE:
                    seen.pop(event.topic, None)
                else:
                    seen[event.topic] = event.status
                row.update(webhooks_not_active=seen or None, webhooks_action_required=webhook_problem(seen))
            elif isinstance(event, Store.Restored):
                row.update(
                    name=event.name,
                    key_fingerprint=event.key_fingerprint,
                    registered_at=event.timestamp,
                    registered_by=event.actor,
                    removed=False,
                    removed_at=None,
                )
        db.upsert(STORE_TABLE, suffix, rows.values())
