"""The stores read model (projections/stores.py) and its queries, on both backends: Store events saved
through SyncApplication as the store service saves them, caught up by the runner, read with
projections.queries; another org sees nothing of them; a rebuild gives the same rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from domain.store import Store, store_key
from infrastructure.adapters.eventstore import SyncApplication
from projections import queries
from projections.runner import ProjectionRunner
from projections.stores import STORE_TABLE
from tests.support.aggregates import ORG, OTHER_ORG, Sync, make_record

SHOP = "https://shop.example.com"
OUTLET = "https://outlet.example.com"
GONE = "https://gone.example.com"


def dump(runner: ProjectionRunner) -> list[tuple[Any, ...]]:
    with runner.db.reading() as db:
        return [tuple(row) for row in db.fetchall(f"SELECT * FROM {STORE_TABLE.name} ORDER BY store_id")]


def register(app: SyncApplication, url: str, name: str, org: str = ORG, actor: str = "alice") -> Store:
    store = Store.register(org, url, name, f"fp{len(name):010d}", actor)
    app.save(store)
    return store


def registry(app: SyncApplication) -> dict[str, Store]:
    """Three stores of ORG (one rotated, one removed, one removed and restored) and one of OTHER_ORG,
    saved one by one and in batches, among a queue's events."""
    shop = register(app, SHOP, "Shop")
    outlet = register(app, OUTLET, "Outlet")
    gone = Store.register(ORG, GONE, "Gone", "0123456789ab", "alice")
    sync = Sync(app)  # a queue's events between the registry's
    sync.fetch([make_record(cid) for cid in range(1, 4)])
    shop.rotate("9b8c7d6e5f40", "bob")
    gone.remove("bob")
    app.save_batch(shop, gone)  # a batch: gone's Registered and Removed with shop's rotation
    outlet.remove("bob")
    app.save_batch(outlet)
    outlet.restore("Outlet again", "0a1b2c3d4e5f", "carol")
    app.save(outlet)
    other = register(app, SHOP, "Their shop", org=OTHER_ORG, actor="mallory")
    return {"shop": shop, "outlet": outlet, "gone": gone, "other": other}


def test_stores_are_listed_per_org_with_their_history_applied(
    app: SyncApplication, runner: ProjectionRunner
) -> None:
    stores = registry(app)
    runner.catch_up(batch_size=3)
    shop, outlet, gone, other = (stores[k] for k in ("shop", "outlet", "gone", "other"))

    listed = queries.list_stores(runner, ORG)
    assert [s["url"] for s in listed] == [OUTLET, SHOP]  # by URL; the removed one left out
    by_url = {s["url"]: s for s in listed}
    first = by_url[SHOP]
    assert set(first) == {
        "storeId",
        "url",
        "name",
        "keyFingerprint",
        "registeredAt",
        "registeredBy",
        "updatedAt",
        "removed",
        "removedAt",
        "webhooksInstalled",
        "actionRequired",
    }
    assert (first["webhooksInstalled"], first["actionRequired"]) == (False, None)
    assert first["storeId"] == str(store_key(ORG, SHOP)) == str(shop.id)
    assert (first["name"], first["keyFingerprint"], first["registeredBy"]) == (
        "Shop",
        "9b8c7d6e5f40",
        "alice",
    )
    assert first["removed"] is False and first["removedAt"] is None
    assert datetime.fromisoformat(first["registeredAt"]) == shop.created_on
    assert datetime.fromisoformat(first["updatedAt"]) == shop.modified_on
    assert first["updatedAt"] > first["registeredAt"]

    # Restored: current again, with the restore's name, key, time and actor as its registration.
    again = by_url[OUTLET]
    assert (again["name"], again["keyFingerprint"], again["registeredBy"]) == (
        "Outlet again",
        "0a1b2c3d4e5f",
        "carol",
    )
    assert again["removed"] is False and again["removedAt"] is None
    assert datetime.fromisoformat(again["registeredAt"]) == outlet.modified_on

    everything = queries.list_stores(runner, ORG, include_removed=True)
    assert [s["url"] for s in everything] == [GONE, OUTLET, SHOP]
    removed = everything[0]
    assert removed["removed"] is True and removed["storeId"] == str(gone.id)
    assert datetime.fromisoformat(removed["removedAt"]) == gone.modified_on

    # One store by id or by URL; a removed one only on request.
    assert queries.store(runner, ORG, shop.id) == first
    assert queries.store_by_url(runner, ORG, SHOP) == first
    assert queries.store(runner, ORG, gone.id) is None
    assert queries.store_by_url(runner, ORG, GONE) is None
    assert queries.store(runner, ORG, gone.id, include_removed=True) == removed
    assert queries.store_by_url(runner, ORG, GONE, include_removed=True) == removed
    assert queries.store_by_url(runner, ORG, "https://never.example.com") is None

    # Another org: its own store at the same URL is another store; ORG's are none of its business.
    assert other.id != shop.id
    (theirs,) = queries.list_stores(runner, OTHER_ORG, include_removed=True)
    assert (theirs["storeId"], theirs["name"], theirs["registeredBy"]) == (
        str(other.id),
        "Their shop",
        "mallory",
    )
    assert queries.store(runner, OTHER_ORG, shop.id) is None
    assert queries.store(runner, OTHER_ORG, gone.id, include_removed=True) is None
    assert queries.store(runner, ORG, other.id, include_removed=True) is None
    assert queries.store_by_url(runner, OTHER_ORG, SHOP) == theirs
    assert queries.list_stores(runner, "org-nobody", include_removed=True) == []


def test_the_database_config_is_a_source_too(app: SyncApplication, runner: ProjectionRunner) -> None:
    shop = register(app, SHOP, "Shop")
    runner.catch_up()
    found = queries.store(app.database, ORG, shop.id)
    assert found is not None and found["url"] == SHOP
    assert [s["storeId"] for s in queries.list_stores(app.database, ORG)] == [str(shop.id)]


def test_live_rows_equal_a_rebuild_and_events_after_it_apply(
    app: SyncApplication, runner: ProjectionRunner
) -> None:
    stores = registry(app)
    runner.catch_up(batch_size=1)  # incrementally, one notification a batch
    live = dump(runner)
    assert len(live) == 4

    assert runner.rebuild(["stores"]) == 8  # the Store events alone
    assert dump(runner) == live
    assert runner.rebuild() == app.recorder.max_notification_id()
    assert dump(runner) == live
    statuses = {s["name"]: s for s in runner.status()}
    assert statuses["stores"]["lag"] == 0 and not statuses["stores"]["rebuilding"]

    gone = app.repository.get(stores["gone"].id)
    assert isinstance(gone, Store) and gone.removed
    gone.restore("Back", "ffffffffffff", "dave")
    app.save(gone)
    runner.catch_up()
    back = queries.store_by_url(runner, ORG, GONE)
    assert back is not None and (back["name"], back["registeredBy"]) == ("Back", "dave")
