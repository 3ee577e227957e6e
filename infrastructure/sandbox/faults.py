"""What the host in front of the store does wrong, as configured by Faults: latency, a rate limit (429
with Retry-After, as HTML or JSON), slow answers, 5xx and 200 HTML pages, truncated JSON, and a store that
changes during a scan (churn). Every choice comes from a seeded generator, so a run can be repeated."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable

import structlog
from aiohttp import web

from infrastructure.sandbox.config import Faults
from infrastructure.sandbox.responses import html
from infrastructure.sandbox.store import SandboxStore

logger = structlog.get_logger("wcsync.sandbox")

_ERROR_PAGES = {
    500: "<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1>"
    "<p>There has been a critical error on this website.</p></body></html>",
    502: "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
    "<hr><center>nginx</center></body></html>",
    503: "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1>"
    "<p>The server is temporarily unable to service your request.</p></body></html>",
}
_HTML_200_PAGES = (
    "<!DOCTYPE html><html><head><title>Maintenance</title></head><body>"
    "<p>Briefly unavailable for scheduled maintenance. Check back in a minute.</p></body></html>",
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    "<h1>Checking your browser before accessing the site.</h1></body></html>",
)
_RATE_LIMIT_HTML = (
    "<html><head><title>429 Too Many Requests</title></head><body><center><h1>429 Too Many Requests</h1>"
    "</center><hr><center>nginx</center></body></html>"
)


class FaultyHost:
    """The host: wraps each store-front answer in the faults (one window of accepted requests, one seeded
    generator for every choice)."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.faults = faults
        self.rng = random.Random(seed)
        self.accepted: deque[float] = deque()

    async def respond(self, dispatch: Callable[[], web.Response]) -> tuple[web.Response, int | None]:
        """(the answer, the requests accepted in the last second counting this one, or None when the rate
        limit refused it); ``dispatch`` gives the store's own answer when no fault replaces it."""
        faults = self.faults
        in_window = self._accept(time.monotonic())
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if in_window is None:
            return self._rate_limited(), None
        if faults.slow_rate > 0 and self.rng.random() < faults.slow_rate:
            await asyncio.sleep(faults.slow_ms / 1000)
        if faults.error_rate > 0 and self.rng.random() < faults.error_rate:
            status = (500, 502, 503)[int(self.rng.random() * 3)]
            return html(status, _ERROR_PAGES[status]), in_window
        if faults.html_rate > 0 and self.rng.random() < faults.html_rate:
            return html(200, _HTML_200_PAGES[int(self.rng.random() * 2)]), in_window
        response = dispatch()
        if faults.truncated_rate > 0 and self.rng.random() < faults.truncated_rate and response.status == 200:
            body = response.body
            if isinstance(body, bytes) and len(body) > 1:
                cut = 1 + int(self.rng.random() * (len(body) - 1))
                truncated = web.Response(body=body[:cut], status=200, content_type="application/json")
                truncated.headers.extend(
                    (k, v) for k, v in response.headers.items() if k.startswith("X-WP") or k == "Link"
                )
                return truncated, in_window
        return response, in_window

    def _accept(self, now: float) -> int | None:
        """Count the request into the 1-second window; None when the rate limit refuses it."""
        window = self.accepted
        while window and window[0] <= now - 1.0:
            window.popleft()
        limit = self.faults.rate_limit
        if limit > 0 and len(window) >= limit:
            return None
        window.append(now)
        return len(window)

    def _rate_limited(self) -> web.Response:
        now = time.monotonic()
        wait = self.accepted[0] + 1.0 - now if self.accepted else 1.0
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        if self.rng.random() < 0.5:
            response = html(429, _RATE_LIMIT_HTML)
        else:
            response = web.json_response(
                {"code": "too_many_requests", "message": "Rate limit exceeded.", "data": {"status": 429}},
                status=429,
            )
        response.headers.update(headers)
        return response


class Churn:
    """The churn_every fault: a live store, changed (one create, one edit, one delete) every ``every``
    listing requests; 0 never."""

    def __init__(self, store: SandboxStore, every: int, seed: int) -> None:
        self.store = store
        self.every = every
        self.rng = random.Random(seed)
        self.list_requests = 0

    def count_list_request(self) -> None:
        if self.every <= 0:
            return
        self.list_requests += 1
        if self.list_requests % self.every == 0:
            created, edited, deleted = self.store.churn(self.rng)
            logger.debug("sandbox store churned", created=created, edited=edited, deleted=deleted)
