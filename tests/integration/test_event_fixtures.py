"""Every event class, as stored by an earlier wcsync (tests/fixtures/events/*.json), still reads back through
today's mapper with the same fields. Auditors replay old logs years later: a change to an event's fields
must come with an upcaster (``class_version`` + ``upcast_vN_vN+1``) that makes these pass again.

Fixtures are written once by tests/fixtures/make_event_fixtures.py and never regenerated to make a test pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.support.config import DatabaseConfig
from projections.ledger import ALL_EVENT_CLASSES
from tests.support.events import json_ready
from tests.support.paths import FIXTURE_DIR

FIXTURES = sorted((FIXTURE_DIR / "events").glob("*.json"))

# What an upcaster adds to an event stored at an earlier version (class name, stored version): the fields
# and their values. Anything else that differs from a fixture's record fails.
UPCAST_FIELDS: dict[tuple[str, int], dict[str, Any]] = {
    ("SyncQueue.LinesAdded", 1): {"processed": [], "body_digest": None, "answers": None},
    ("SyncQueue.LinesAdded", 2): {"answers": None},
    ("SyncQueue.ProcessingStarted", 1): {"log_position": None},
}


def _class_name(path: Path) -> str:
    """A fixture's event class: its file name without a version suffix (``SyncQueue.LinesAdded.v2``)."""
    name = path.stem
    head, _, version = name.rpartition(".v")
    return head if head and version.isdigit() else name


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncApplication]:
    path = tmp_path_factory.mktemp("fixtures") / "wcsync.db"
    application = SyncApplication(DatabaseConfig.from_url(f"sqlite:///{path}"))
    yield application
    application.close()


def test_every_event_class_has_a_fixture() -> None:
    names = {_class_name(path) for path in FIXTURES}
    assert names == {cls.__qualname__ for cls in ALL_EVENT_CLASSES}
    # And every class at its current version.
    versions = {(_class_name(p), json.loads(p.read_text())["class_version"]) for p in FIXTURES}
    for cls in ALL_EVENT_CLASSES:
        assert (cls.__qualname__, getattr(cls, "class_version", 1)) in versions, cls.__qualname__


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_stored_event_of_today_reads_back_with_the_same_fields(app: SyncApplication, path: Path) -> None:
    fixture: dict[str, Any] = json.loads(path.read_text())
    stored = StoredEvent(
        originator_id=UUID(fixture["originator_id"]),
        originator_version=fixture["originator_version"],
        topic=fixture["topic"],
        state=fixture["state"].encode("utf-8"),
    )
    event = app.mapper.to_domain_event(stored)
    assert isinstance(event, Aggregate.Event)
    expected = {**fixture["expected"], **UPCAST_FIELDS.get((_class_name(path), fixture["class_version"]), {})}
    assert json_ready(dict(vars(event))) == expected
    assert getattr(type(event), "class_version", 1) >= fixture["class_version"]
    # It still applies to an aggregate (the first event creates it).
    if fixture["originator_version"] == 1:
        assert event.mutate(None) is not None
