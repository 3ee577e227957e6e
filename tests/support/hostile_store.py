"""A small store that answers the customers API with whatever a test scripts: bad ids, huge records,
unstorable text, pages of any size. Real HTTP on a real socket (the engine's client cannot tell it from a
store), no authentication checks: it tests what wcsync does with what comes back, not how it asks.

    with HostileStore([[good(1), {"id": True}], [good(2)]]) as store:
        run_sync(services, store)  # tests.support.services; or store_of(store) for its StoreSettings
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from infrastructure.support.loop_thread import LoopThread

API = "/wp-json/wc/v3/customers"


def good(customer_id: int, **fields: Any) -> dict[str, Any]:
    """A customer record that passes every validation rule."""
    record: dict[str, Any] = {
        "id": customer_id,
        "email": f"customer{customer_id}@example.com",
        "first_name": f"First{customer_id}",
        "last_name": "Last",
        "username": f"user{customer_id}",
        "role": "customer",
        "date_created_gmt": "2024-01-02T03:04:05",
        "date_modified_gmt": "2024-01-02T03:04:05",
        "billing": {"city": "Oslo", "email": f"customer{customer_id}@example.com"},
        "shipping": {"city": "Oslo"},
        "is_paying_customer": False,
        "meta_data": [],
    }
    record.update(fields)
    return record


@dataclass(frozen=True)
class Raw:
    """A record written as these exact bytes in a page (what no JSON encoder would write)."""

    data: bytes


def encode(value: Any) -> bytes:
    """JSON as a store might write it: ASCII escapes, so lone surrogates and NUL survive as \\uXXXX."""
    if isinstance(value, list) and any(isinstance(item, Raw) for item in value):
        return b"[" + b",".join(item.data if isinstance(item, Raw) else encode(item) for item in value) + b"]"
    return json.dumps(value, ensure_ascii=True).encode("ascii")


@dataclass
class Running:
    url: str
    requests: list[str] = field(default_factory=list)


class HostileStore:
    """``pages``: each a list of records (any JSON values) served for ``page=N``; pages past the end are
    ``[]``. A record that is an object with an integer id is also served alone at ``/customers/<id>``,
    listed by ``_fields=id`` and found by ``include=``. ``held``: page numbers whose answers wait until the
    test sets their event (a store slow at those pages); ``failing``: how many times a page is answered 503
    before it is served; ``dropping``: how many times its connection is closed instead of answered."""

    # What a client sends; never checked.
    consumer_key = "ck_hostile"
    consumer_secret = "cs_hostile"

    def __init__(
        self,
        pages: Sequence[Sequence[Any]],
        held: Mapping[int, threading.Event] | None = None,
        failing: Mapping[int, int] | None = None,
        dropping: Mapping[int, int] | None = None,
    ) -> None:
        self.pages = [list(page) for page in pages]
        self.held = dict(held or {})
        self.failing = dict(failing or {})
        self.dropping = dict(dropping or {})
        self._running: Running | None = None
        self._thread: LoopThread[Running] | None = None

    @property
    def url(self) -> str:
        assert self._running is not None
        return self._running.url

    @property
    def requests(self) -> list[str]:
        assert self._running is not None
        return self._running.requests

    def _by_id(self) -> dict[int, Any]:
        return {
            record["id"]: record
            for page in self.pages
            for record in page
            if isinstance(record, dict) and type(record.get("id")) is int
        }

    def __enter__(self) -> HostileStore:
        self._thread = LoopThread(self._serve, "the hostile store", join_timeout=30)
        self._running = self._thread.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._thread is not None
        self._thread.__exit__(*exc)

    @asynccontextmanager
    async def _serve(self) -> AsyncIterator[Running]:
        running = Running(url="")
        total = sum(len(page) for page in self.pages)

        def headers() -> dict[str, str]:
            return {"X-WP-Total": str(total), "X-WP-TotalPages": str(len(self.pages))}

        async def listing(request: web.Request) -> web.Response:
            running.requests.append(request.path_qs)
            query = request.query
            if "include" in query:
                wanted = {int(i) for i in query["include"].split(",") if i.strip().isdigit()}
                records = [r for cid, r in self._by_id().items() if cid in wanted]
                return web.Response(body=encode(records), content_type="application/json")
            page = int(query.get("page", "1"))
            if page in self.held:
                await asyncio.to_thread(self.held[page].wait)
            if self.dropping.get(page, 0) > 0:
                self.dropping[page] -= 1
                assert request.transport is not None
                request.transport.close()  # no answer: the client sees the connection end
                return web.Response(status=503)
            if self.failing.get(page, 0) > 0:
                self.failing[page] -= 1
                return web.Response(status=503, text="busy")
            records = self.pages[page - 1] if 1 <= page <= len(self.pages) else []
            if query.get("_fields") == "id":
                records = [{"id": r["id"]} if isinstance(r, dict) and "id" in r else r for r in records]
            return web.Response(body=encode(records), content_type="application/json", headers=headers())

        async def one(request: web.Request) -> web.Response:
            running.requests.append(request.path_qs)
            record = self._by_id().get(int(request.match_info["customer_id"]))
            if record is None:
                body = {"code": "wc_user_invalid_id", "message": "Invalid user ID.", "data": {"status": 404}}
                return web.Response(status=404, body=encode(body), content_type="application/json")
            return web.Response(body=encode(record), content_type="application/json")

        app = web.Application()
        app.router.add_get(API, listing)
        app.router.add_get(API + "/{customer_id:[0-9]+}", one)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        running.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield running
        finally:
            await runner.cleanup()
