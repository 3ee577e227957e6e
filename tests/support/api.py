"""`wcsync serve`'s HTTP API for tests: a client that keeps every answer, and the server on a thread."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from domain.bounds import BoundError
from infrastructure.adapters.tokens import ApiTokens, Role
from infrastructure.api.http import SYNC_PATH, ApiSettings, running_api
from infrastructure.sandbox import RunningSandbox
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.loop_thread import LoopThread
from infrastructure.wiring import Services
from tests.support.services import FAST
from tests.support.waiting import DEADLINE_S, wait_until

SETTINGS = ApiSettings(client_options=FAST)


# The org of a request that names none (a token is that org's).
DEFAULT_ORG = "acme"


@dataclass
class Api:
    """A client of the running server; keeps every raw answer, to check none of them echoes a secret.

    Each request carries a token of the org it names (the body's or the query's org_id, else DEFAULT_ORG),
    made on first use by ``tokens`` (an admin token per org); ``token`` overrides that for every request
    ("" sends none), and so does a request's own ``token``."""

    url: str
    answers: list[bytes] = field(default_factory=list)
    tokens: Callable[[str], str] | None = None
    token: str | None = None

    def token_for(self, org: str) -> str | None:
        return self.tokens(org) if self.tokens is not None else None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        address = urlsplit(self.url)
        chosen = token if token is not None else self.token
        if chosen is None:
            chosen = self.token_for(_org_of(path, body))
        sent = {"Content-Type": "application/json"}
        if chosen:
            sent["Authorization"] = f"Bearer {chosen}"
        sent.update(headers or {})
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            connection.request(method, path, body=data, headers=sent)
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


def _org_of(path: str, body: Any) -> str:
    """The org a request names: its body's org_id, else its query's, else DEFAULT_ORG (a value that is not
    a plain string gets DEFAULT_ORG's token: the server refuses the value, not the token)."""
    if isinstance(body, dict) and isinstance(body.get("org_id"), str) and body["org_id"]:
        return _plain(body["org_id"])
    values = parse_qs(urlsplit(path).query).get("org_id")
    return _plain(values[0]) if values else DEFAULT_ORG


def _plain(org: str) -> str:
    return org if org.isprintable() and len(org) <= 100 and org.strip() == org else DEFAULT_ORG


class OrgTokens:
    """An admin token per org, created on first use in the token table of ``tokens`` (a Services' own, or
    one of its own on a database a server in another process uses: ``OrgTokens.of(url)``)."""

    def __init__(self, tokens: ApiTokens, role: Role = Role.ADMIN) -> None:
        self.tokens = tokens
        self.role = role
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, org: str) -> str:
        with self._lock:
            if org not in self._tokens:
                try:
                    token, _ = self.tokens.create(
                        org, f"tests-{self.role.value}-{uuid.uuid4().hex[:8]}", self.role
                    )
                except BoundError:
                    return "not-a-token-for-an-invalid-org"
                self._tokens[org] = token
            return self._tokens[org]

    @classmethod
    def of(cls, database_url: str, role: Role = Role.ADMIN) -> OrgTokens:
        return cls(ApiTokens(DatabaseConfig.from_url(database_url)), role)


def _unless_running(status: dict[str, Any]) -> dict[str, Any] | None:
    return None if status["isRunning"] else status


class ApiThread(LoopThread[Api]):
    """running_api on its own event loop in a background thread, as `wcsync serve` runs it."""

    def __init__(self, services: Services, settings: ApiSettings = SETTINGS) -> None:
        super().__init__(lambda: _api(services, settings), "the API", join_timeout=DEADLINE_S)


@asynccontextmanager
async def _api(services: Services, settings: ApiSettings) -> AsyncIterator[Api]:
    async with running_api(services, settings=settings) as running:
        yield Api(running.url, tokens=None if settings.no_auth else OrgTokens(services.api_tokens()))


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
