"""`wcsync serve`'s HTTP API for tests: a client that keeps every answer, and the server on a thread."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from infrastructure.api.http import SYNC_PATH, ApiSettings, running_api
from infrastructure.sandbox import RunningSandbox
from infrastructure.support.loop_thread import LoopThread
from infrastructure.wiring import Services
from tests.support.services import FAST
from tests.support.waiting import DEADLINE_S, wait_until

SETTINGS = ApiSettings(client_options=FAST)


@dataclass
class Api:
    """A client of the running server; keeps every raw answer, to check none of them echoes a secret."""

    url: str
    answers: list[bytes] = field(default_factory=list)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            status, payload = response.status, response.read()
        finally:
            connection.close()
        self.answers.append(payload)
        return status, json.loads(payload)

    def sync(self, **body: Any) -> tuple[int, Any]:
        return self.request("POST", SYNC_PATH, body)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def status(self, org: str, queue_id: str) -> dict[str, Any]:
        code, answer = self.sync(action="status", org_id=org, queue_id=queue_id)
        assert code == 200 and answer["success"], answer
        data: dict[str, Any] = answer["data"]
        return data

    def finished(self, org: str, queue_id: str) -> dict[str, Any]:
        """Poll status until this server's run of the queue has ended."""
        return wait_until(lambda: _unless_running(self.status(org, queue_id)))


def _unless_running(status: dict[str, Any]) -> dict[str, Any] | None:
    return None if status["isRunning"] else status


class ApiThread(LoopThread[Api]):
    """running_api on its own event loop in a background thread, as `wcsync serve` runs it."""

    def __init__(self, services: Services, settings: ApiSettings = SETTINGS) -> None:
        super().__init__(lambda: _api(services, settings), "the API", join_timeout=DEADLINE_S)


@asynccontextmanager
async def _api(services: Services, settings: ApiSettings) -> AsyncIterator[Api]:
    async with running_api(services, settings=settings) as running:
        yield Api(running.url)


def config_of(sandbox: RunningSandbox, **overrides: str) -> dict[str, str]:
    """The ``config`` of a sync request for this store."""
    config = {
        "url": sandbox.url,
        "consumerKey": sandbox.consumer_key,
        "consumerSecret": sandbox.consumer_secret,
    }
    config.update(overrides)
    return config


def error_of(answer: Any) -> dict[str, Any]:
    assert answer["success"] is False and set(answer) == {"success", "error"}, answer
    error: dict[str, Any] = answer["error"]
    return error
