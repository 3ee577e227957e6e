"""A customers scan begun before its run is ready (WooCommerceClient.send_ahead, ScanAhead): a first
`wcsync start` sends its first requests, then opens its database while the store answers. Against the
hostile store over real sockets: the requests are on the wire while the client's loop is paused, the scan
takes them over without asking twice, known pages still apply, and whatever does not take them over
cancels them."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from infrastructure.adapters.woocommerce import (
    ClientOptions,
    KnownPage,
    ScanAhead,
    StoreCredentials,
    WooCommerceClient,
)
from infrastructure.wiring import Services
from tests.support.hostile_store import HostileStore, good
from tests.support.network import free_port
from tests.support.scanning import scan
from tests.support.services import FAST, store_of
from tests.support.waiting import wait_until


def pages_of(count: int, last: int = 50) -> list[list[dict[str, Any]]]:
    """``count`` pages of 100 customers, ids from 1, the last one ``last`` long."""
    ids = itertools.count(1)
    return [[good(next(ids)) for _ in range(100 if n < count - 1 else last)] for n in range(count)]


def requested_pages(store: HostileStore) -> Counter[int]:
    """How many times the store was asked for each page of its listing."""
    return Counter(
        int(parse_qs(urlsplit(path).query)["page"][0]) for path in store.requests if "page=" in path
    )


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds, the loop running meanwhile (the caller bounds the wait)."""
    while not condition():  # noqa: ASYNC110 - what it waits for sets no event
        await asyncio.sleep(0.01)


def client_for(
    store: HostileStore, options: ClientOptions = FAST, sends_ahead: bool = False
) -> WooCommerceClient:
    credentials = StoreCredentials(store.consumer_key, store.consumer_secret)
    return WooCommerceClient(store.url, credentials, options, sends_ahead=sends_ahead)


def test_requests_sent_ahead_reach_the_store_while_the_loop_is_paused_and_the_scan_takes_them_over() -> None:
    async def scenario() -> None:
        with HostileStore(pages_of(6)) as store:
            async with client_for(store, sends_ahead=True) as client:
                await client.send_ahead()
                # What `wcsync start` does next: it opens its database, this loop not running meanwhile.
                wait_until(lambda: sum(requested_pages(store).values()) >= 4, deadline_s=20)
                assert requested_pages(store) == Counter({1: 1, 2: 1, 3: 1, 4: 1})
                ids, pages = await scan(client)
            asked = requested_pages(store)
        assert ids == list(range(1, 551))
        assert [page.number for page in pages] == [1, 2, 3, 4, 5, 6]
        # Each page asked for once: the scan took the four sent ahead over (the 7th, past the end, may
        # have been asked for before the short 6th ended the scan).
        assert set(asked) - {7} == {1, 2, 3, 4, 5, 6} and set(asked.values()) == {1}

    asyncio.run(scenario())


def test_known_pages_apply_to_the_answers_sent_ahead() -> None:
    """The scan's known pages are learnt by the requests sent ahead when it begins: their answers, the
    same bytes as the last scan's, are not parsed, as the scan's own requests' are not."""

    async def scenario() -> None:
        with HostileStore(pages_of(6)) as store:
            async with client_for(store) as client:
                _, first = await scan(client)
            known = {
                page.number: KnownPage(page.body_digest, [record["id"] for record in page.records])
                for page in first
                if page.body_digest is not None
            }
            async with client_for(store, sends_ahead=True) as client:
                await client.send_ahead()
                ids, again = await scan(client, known=known)
        assert ids == list(range(1, 551))
        # Every full page known (the short last one is always read: it ends the scan).
        assert [page.number for page in again if page.known_ids is not None] == [1, 2, 3, 4, 5]
        assert all(not page.records for page in again[:5])

    asyncio.run(scenario())


def test_a_scan_from_another_page_cancels_the_requests_sent_ahead() -> None:
    async def scenario() -> None:
        with HostileStore(pages_of(6)) as store:
            async with client_for(store, sends_ahead=True) as client:
                await client.send_ahead()
                ids, pages = await scan(client, start_page=3)
                pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert ids == list(range(201, 551))
        assert [page.number for page in pages] == [3, 4, 5, 6]
        assert pending == []

    asyncio.run(scenario())


def test_leaving_the_client_cancels_requests_sent_ahead_the_store_has_not_answered() -> None:
    held = threading.Event()

    async def scenario() -> None:
        with HostileStore(pages_of(6), held={1: held}) as store:
            try:
                async with client_for(store, sends_ahead=True) as client:
                    await client.send_ahead()
                pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            finally:
                held.set()
        assert pending == []

    asyncio.run(scenario())


@pytest.mark.parametrize("fault", ["503", "dropped"])
def test_a_run_takes_the_scan_sent_ahead_over_and_logs_what_its_client_reported(
    services: Services, fault: str
) -> None:
    """A `wcsync start` as the CLI runs it: the scan begun, then the run. Page 1's first attempt fails: a
    503 is read once the run has begun (answers are interpreted then); a dropped connection fails at once,
    and the run begins once its retry is reported to the scan ahead's incidents. Either way the queue's log has
    the retry, and every customer is mirrored."""
    options = QueueOptions()
    # Dropped twice: aiohttp sends a request again once itself when its connection closes unanswered.
    failing, dropping = ({1: 1}, None) if fault == "503" else (None, {1: 2})

    async def scenario(store: HostileStore) -> Any:
        settings = store_of(store)
        credentials = StoreCredentials(settings.consumer_key, settings.consumer_secret)
        ahead = ScanAhead(settings.url, credentials, FAST.for_queue(options))
        await ahead.begin()
        if fault == "dropped":  # the retry is reported before the run begins
            await asyncio.wait_for(until(lambda: bool(ahead.incidents)), timeout=20)
        before = list(ahead.incidents)
        try:
            return await services.engine("acme").start(settings, options, FAST, ahead=ahead), before
        finally:
            await ahead.close()

    with HostileStore(pages_of(3), failing=failing, dropping=dropping) as store:
        (outcome, before), asked = asyncio.run(scenario(store)), requested_pages(store)
    assert [kind for kind, *_ in before] == ([] if fault == "503" else ["request_retried"])
    assert outcome.state == "done" and outcome.counts["created"] == 250
    # Page 1's failed attempt (twice over when dropped) and its retry; the others once.
    assert asked[1] == (2 if fault == "503" else 3) and asked[2] == asked[3] == 1
    incidents = [
        event
        for event in services.app.queue_events(outcome.queue_id)
        if isinstance(event, SyncQueue.StoreIncident)
    ]
    assert [event.activity_type for event in incidents] == ["request_retried"]


def test_a_scan_sent_ahead_for_other_options_is_not_taken_over(services: Services) -> None:
    """A run whose options differ (here the page size) makes its own client; the one begun is left to its
    beginner to close, and the store sees both."""

    async def scenario(store: HostileStore) -> Any:
        settings = store_of(store)
        credentials = StoreCredentials(settings.consumer_key, settings.consumer_secret)
        ahead = ScanAhead(settings.url, credentials, FAST.for_queue(QueueOptions(per_page=50)))
        await ahead.begin()
        try:
            return await services.engine("acme").start(settings, QueueOptions(), FAST, ahead=ahead)
        finally:
            await ahead.close()

    with HostileStore(pages_of(3)) as store:
        outcome = asyncio.run(scenario(store))
        per_page = Counter(parse_qs(urlsplit(path).query)["per_page"][0] for path in store.requests)
    assert outcome.state == "done" and outcome.counts["created"] == 250
    assert per_page["100"] >= 3 and per_page["50"] >= 1


def test_requests_sent_ahead_to_a_store_that_refuses_connections_do_not_hold_the_start_up() -> None:
    """Nothing listens at the store's port: each first attempt fails at once and waits its backoff (30 s
    here), so send_ahead returns then, the retries still to come (the database opens during the backoff),
    not after its whole wait or theirs."""
    url = f"http://127.0.0.1:{free_port()}"
    options = ClientOptions(backoff_base_s=30, backoff_max_s=30, max_retries=1)

    async def scenario() -> None:
        credentials = StoreCredentials("ck_x", "cs_x")
        async with WooCommerceClient(url, credentials, options, sends_ahead=True) as client:
            # Bounded so that a regression fails instead of hanging: the waits it must not sit out are longer.
            await asyncio.wait_for(client.send_ahead(wait_s=600), timeout=20)
            waiting = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            assert client.pages_sent_ahead == 4
            assert len(waiting) == 4 and not any(task.done() for task in waiting)
        assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []

    asyncio.run(scenario())


def test_answers_that_came_while_the_loop_was_paused_longer_than_the_timeout_do_not_time_out() -> None:
    """The store answers the requests sent ahead while the caller's loop is paused (the database opens)
    for longer than their timeout: their time is counted from the scan's start, so none times out on the
    loop's return (before, each did: a retry, a circuit failure, a warning in the log)."""
    options = ClientOptions(timeout_s=0.5, backoff_base_s=0.01, backoff_max_s=0.02)
    answer = threading.Event()

    async def scenario() -> None:
        with HostileStore(pages_of(6), held=dict.fromkeys(range(1, 5), answer)) as store:
            try:
                async with client_for(store, options, sends_ahead=True) as client:
                    await client.send_ahead()
                    answer.set()  # the store answers now, the loop paused:
                    # the scenario, not a synchronisation: a database that takes 1 s to open.
                    time.sleep(1.0)  # noqa: ASYNC251
                    ids, _ = await scan(client)
                    stats = client.stats
            finally:
                answer.set()
        assert ids == list(range(1, 551))
        assert stats.retries == 0 and stats.failures == {}, stats

    asyncio.run(scenario())
