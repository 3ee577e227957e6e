"""The deliveries' applier on both backends: one applier at a time of all workers (the turn claimed with a
compare-and-set of its holder, taken over once the holder is silent or a process of this host that died),
and a delivery that keeps failing for a reason of its own failed with the error after a few attempts, so it
holds up no later one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest

from infrastructure.adapters.eventstore import ConcurrentWriteError
from infrastructure.adapters.positions import LogPositions
from infrastructure.adapters.secrets import SecretKey
from infrastructure.sandbox import RunningSandbox
from infrastructure.services.deliveries import DeliveryApplier, DeliveryConflict
from infrastructure.wiring import DELIVERIES_POSITION, Services
from projections import queries
from tests.integration.test_webhook_receiver import post, register_with, signed
from tests.support.api import SETTINGS, Api, ApiThread
from tests.support.services import run_sync

ORG = "acme"
KEY = SecretKey.generate()
pytestmark = pytest.mark.sandbox(customers=6)


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    with ApiThread(services, replace(SETTINGS, secret_key=KEY)) as running:
        yield running


@pytest.fixture
def positions(services: Services) -> Iterator[LogPositions]:
    opened = LogPositions(services.database)
    yield opened
    opened.close()


def test_one_holder_at_a_time_taken_over_when_silent_or_dead(positions: LogPositions) -> None:
    assert positions.claim("p", "a", now=100.0, stale_s=10.0)
    assert positions.claim("p", "a", now=104.0, stale_s=10.0)  # its own: kept, heartbeat refreshed
    assert not positions.claim("p", "b", now=110.0, stale_s=10.0)  # a's heartbeat is 6 s old
    assert positions.claim("p", "b", now=114.5, stale_s=10.0)  # 10.5 s: stale, taken over
    assert not positions.claim("p", "a", now=115.0, stale_s=10.0)
    # A holder said dead (a process of this host that is gone) is taken over at once, by one claimant.
    assert positions.claim("p", "c", now=116.0, stale_s=10.0, dead=lambda holder: holder == "b")
    assert not positions.claim("p", "d", now=116.0, stale_s=10.0, dead=lambda holder: holder == "b")
    positions.release("p", "c")
    assert positions.claim("p", "a", now=117.0, stale_s=10.0)
    positions.put("p", 42)
    assert positions.get("p") == 42 and positions.get("other") == 0


def applier_of(services: Services, positions: LogPositions, holder: str) -> DeliveryApplier:
    return DeliveryApplier(
        services.app,
        lambda: positions.get(DELIVERIES_POSITION),
        lambda position: positions.put(DELIVERIES_POSITION, position),
        claim=lambda: positions.claim(DELIVERIES_POSITION, holder, 1000.0, 10.0),
    )


def test_a_second_applier_stands_by_while_the_first_holds_the_turn(
    services: Services, api: Api, sandbox: RunningSandbox, positions: LogPositions
) -> None:
    run_sync(services, sandbox)
    store_id, secret = register_with(services, sandbox, KEY)
    first, second = applier_of(services, positions, "w1"), applier_of(services, positions, "w2")
    assert first.step() == 0  # nothing yet, but the turn is first's
    record = {**sandbox.store.api_object(sandbox.store.customer_ids()[0]), "last_name": "Once"}
    body = json.dumps(record).encode()
    assert post(api, store_id, body, signed(secret, "customer.updated", body))[0] == 200
    assert second.step() == 0  # not its turn: it applies nothing, however often it looks
    assert first.step() == 1
    assert positions.get(DELIVERIES_POSITION) >= 1


def test_a_delivery_failing_for_a_reason_of_its_own_is_failed_after_a_few_attempts(
    services: Services, api: Api, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sync(services, sandbox)
    store_id, secret = register_with(services, sandbox, KEY)
    body = json.dumps(
        {**sandbox.store.api_object(sandbox.store.customer_ids()[1]), "last_name": "X"}
    ).encode()
    assert post(api, store_id, body, signed(secret, "customer.updated", body))[0] == 200
    applier = services.delivery_applier()

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug of this delivery's")

    monkeypatch.setattr(services.app, "load_customers", broken)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            applier.step()
    assert applier.step() == 1  # the third failure fails it: the next deliveries are not held up
    services.catch_up()
    [row] = queries.webhook_deliveries(services.projections, ORG, UUID(str(store_id)))
    assert row["state"] == "failed" and "RuntimeError: a bug of this delivery's" in row["error"]


def test_a_position_is_written_only_by_the_turns_holder(positions: LogPositions) -> None:
    assert positions.claim("p", "a", now=100.0, stale_s=10.0)
    assert positions.put_if_holder("p", "a", 7) and positions.get("p") == 7
    assert not positions.put_if_holder("p", "b", 3)  # a taken-over reader finishing late writes nothing
    assert positions.get("p") == 7


def test_a_long_step_renews_its_turn_between_batches_and_conflicts_are_never_poison(
    services: Services, api: Api, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sync(services, sandbox)
    store_id, secret = register_with(services, sandbox, KEY)
    for woo_id in sandbox.store.customer_ids()[:3]:
        body = json.dumps({**sandbox.store.api_object(woo_id), "last_name": f"Long {woo_id}"}).encode()
        assert post(api, store_id, body, signed(secret, "customer.updated", body))[0] == 200
    claims: list[int] = []

    def claim() -> bool:
        claims.append(1)
        return True

    applier = DeliveryApplier(services.app, lambda: 0, lambda position: None, batch=1, claim=claim)
    assert applier.step() == 3
    assert len(claims) >= 3  # the step's first, then between its batches of one

    # Another writer winning every attempt is no fault of the delivery: it is tried again, never failed.
    body = json.dumps(
        {**sandbox.store.api_object(sandbox.store.customer_ids()[4]), "last_name": "C"}
    ).encode()
    assert post(api, store_id, body, signed(secret, "customer.updated", body))[0] == 200
    later = services.delivery_applier()

    def conflicted(*_: Any) -> Any:
        raise ConcurrentWriteError("another writer saved first")

    monkeypatch.setattr(services.app, "save_batch", conflicted)
    for _ in range(4):
        with pytest.raises(DeliveryConflict):
            later.step()
    monkeypatch.undo()
    assert later.step() == 1
    services.catch_up()
    states = {
        row["state"] for row in queries.webhook_deliveries(services.projections, ORG, UUID(str(store_id)))
    }
    assert states == {"applied"}
