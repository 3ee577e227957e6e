"""The Store aggregate (domain/store.py): its id, its events, the refusals, the bounds of what it records."""

from __future__ import annotations

from typing import Any

import pytest

from domain.bounds import BoundError
from domain.errors import EXIT_USAGE, StoreExistsError, StoreNotFoundError, WcsyncError
from domain.store import MAX_FINGERPRINT_LENGTH, Store, store_key

ORG = "acme"
URL = "https://shop.example.com"


def new_store(**overrides: Any) -> Store:
    values: dict[str, Any] = {
        "org_id": ORG,
        "url": URL,
        "name": "Shop",
        "key_fingerprint": "3f2a9c0b7d1e",
        "actor": "alice",
        **overrides,
    }
    return Store.register(**values)


def replayed(store: Store) -> Store:
    """The store as its events alone rebuild it."""
    aggregate: Any = None
    for event in store.collect_events():
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, Store)
    return aggregate


def test_the_id_is_derived_from_org_and_url() -> None:
    assert new_store().id == store_key(ORG, URL)
    assert store_key(ORG, URL) == store_key(ORG, URL)
    assert store_key(ORG, URL) != store_key("globex", URL)
    assert store_key(ORG, URL) != store_key(ORG, "https://other.example.com")
    # The separator keeps (org, url) pairs apart that would concatenate alike.
    assert store_key("a", "bc") != store_key("ab", "c")


def test_registering_records_who_what_and_the_fingerprint_never_a_secret() -> None:
    store = new_store()
    assert (store.org_id, store.url, store.name, store.key_fingerprint) == (ORG, URL, "Shop", "3f2a9c0b7d1e")
    assert store.registered_by == "alice" and not store.removed and store.version == 1
    (event,) = store.collect_events()
    assert isinstance(event, Store.Registered)
    fields = {
        k: v for k, v in vars(event).items() if k not in {"originator_id", "originator_version", "timestamp"}
    }
    assert fields == {
        "originator_topic": "domain.store:Store",
        "org_id": ORG,
        "url": URL,
        "name": "Shop",
        "key_fingerprint": "3f2a9c0b7d1e",
        "actor": "alice",
    }


def test_rotate_remove_restore_and_replay() -> None:
    store = new_store()
    store.rotate("9b8c7d6e5f40", "bob")
    assert store.key_fingerprint == "9b8c7d6e5f40"
    store.rotate("9b8c7d6e5f40", "bob")  # the same key, a new secret: recorded all the same
    store.remove("bob")
    assert store.removed
    store.restore("Shop again", "0a1b2c3d4e5f", "carol")
    assert not store.removed
    assert (store.name, store.key_fingerprint, store.registered_by) == ("Shop again", "0a1b2c3d4e5f", "carol")
    assert store.version == 5
    pending = store.pending_events
    assert [type(e).__name__ for e in pending] == [
        "Registered",
        "CredentialsRotated",
        "CredentialsRotated",
        "Removed",
        "Restored",
    ]
    again = replayed(store)
    assert (again.id, again.version, again.removed) == (store.id, 5, False)
    assert (again.name, again.key_fingerprint, again.registered_by) == ("Shop again", "0a1b2c3d4e5f", "carol")


def test_a_removed_store_is_no_such_store() -> None:
    store = new_store()
    store.remove("bob")
    with pytest.raises(StoreNotFoundError) as removed_twice:
        store.remove("bob")
    with pytest.raises(StoreNotFoundError):
        store.rotate("9b8c7d6e5f40", "bob")
    error = removed_twice.value
    assert str(error) == f"no store {store.id} in org {ORG!r}"
    assert isinstance(error, WcsyncError)
    assert (error.exit_code, error.http_status, error.error_code) == (EXIT_USAGE, 404, "store_not_found")
    assert store.version == 2  # nothing recorded by the refusals


def test_restoring_a_registered_store_is_refused() -> None:
    store = new_store()
    with pytest.raises(StoreExistsError) as refused:
        store.restore("Shop", "0a1b2c3d4e5f", "carol")
    error = refused.value
    assert (error.exit_code, error.http_status, error.error_code) == (EXIT_USAGE, 409, "store_exists")
    assert str(store.id) in str(error) and URL in str(error) and ORG in str(error)
    assert store.version == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"org_id": ""}, "org_id"),
        ({"org_id": " acme"}, "org_id"),
        ({"url": ""}, "url"),
        ({"url": "https://x.example.com/\x00"}, "url"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "shop\u202e"}, "name"),
        ({"key_fingerprint": ""}, "key_fingerprint"),
        ({"key_fingerprint": "ab cd"}, "key_fingerprint"),
        ({"key_fingerprint": "a" * (MAX_FINGERPRINT_LENGTH + 1)}, "key_fingerprint"),
        ({"key_fingerprint": "ab\ncd"}, "key_fingerprint"),
        ({"key_fingerprint": 123}, "key_fingerprint"),
        ({"actor": ""}, "actor"),
    ],
)
def test_values_outside_their_bounds_are_refused_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(BoundError) as refused:
        new_store(**overrides)
    assert refused.value.field == field


def test_names_are_trimmed_and_bounds_hold_for_later_commands() -> None:
    store = new_store(name="  Shop  ")
    assert store.name == "Shop"
    with pytest.raises(BoundError, match="key_fingerprint"):
        store.rotate("x" * (MAX_FINGERPRINT_LENGTH + 1), "bob")
    store.remove("bob")
    with pytest.raises(BoundError, match="name"):
        store.restore("", "0a1b2c3d4e5f", "carol")
    assert store.version == 2 and store.removed


def test_every_event_class_declares_its_version() -> None:
    event_classes = [
        value for value in vars(Store).values() if isinstance(value, type) and issubclass(value, Store.Event)
    ]
    assert {cls.__name__ for cls in event_classes} >= {
        "Registered",
        "CredentialsRotated",
        "Removed",
        "Restored",
    }
    for cls in event_classes:
        assert cls.class_version >= 1, cls
