"""The OpenAPI document (infrastructure/api/openapi.py) against the live server over a socket: schemathesis
generates requests for every operation from the document the server serves, sends them, and checks each
answer: no 500, its status documented for the operation, its body, content type and headers as the
document says. A bounded, derandomised number of examples per operation, so it stays well under a minute.

The server is the real one (running_api, as `wcsync serve` runs it: its own authentication, the store
routes and the operation routes); requests carry an admin token. Every URL a generated body names is
replaced by the sandbox's, so no request leaves this machine. schemathesis is a test dependency
(pyproject's test extras): this file is never skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infrastructure.adapters.secrets import SecretKey
from infrastructure.adapters.tokens import Role
from infrastructure.api import http as api_http
from infrastructure.api import openapi
from infrastructure.api.dashboard.pages import ROUTE_PREFIX
from infrastructure.api.openapi import OPENAPI_PATH
from infrastructure.sandbox import RunningSandbox
from infrastructure.wiring import Services
from tests.support.api import SETTINGS, ApiThread
from tests.support.services import run_sync

EXAMPLES_PER_OPERATION = 25


def no_internal_error(ctx: Any, response: Any, case: Any) -> bool:
    """No failure nobody foresaw: 5xx answers are the documented ones (502 store refusals, 503 busy or
    not ready, 500 server_misconfigured), never 500 internal_error."""
    if response.status_code == 500:
        code = response.json().get("error", {}).get("code")
        assert code == "server_misconfigured", f"500 {code}: {response.text[:300]}"
    return True


CHECKS = [
    no_internal_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

pytestmark = pytest.mark.sandbox(customers=12)
# The store routes need the secrets' key.
SERVER_SETTINGS = replace(SETTINGS, secret_key=SecretKey.generate())


@pytest.fixture
def server(services: Services) -> Iterator[str]:
    with ApiThread(services, SERVER_SETTINGS) as api:
        yield api.url


def _loopback_only(body: Any, store_url: str) -> Any:
    """The body with every ``url`` (config.url, a store's url) replaced by the sandbox's."""
    if isinstance(body, dict):
        return {
            key: store_url if key == "url" else _loopback_only(value, store_url)
            for key, value in body.items()
        }
    if isinstance(body, list):
        return [_loopback_only(item, store_url) for item in body]
    return body


def _grounded(case: Any, org: str, queue_id: str, sandbox: RunningSandbox) -> None:
    """Point a generated case at what exists (the org, its queue, the store and its credentials), so that
    the answers of success (200, 201, 202) and of state (409, 429, 503) are reached too, not only refusals."""
    credentials = {"consumerKey": sandbox.consumer_key, "consumerSecret": sandbox.consumer_secret}
    if "queue_id" in (case.path_parameters or {}):
        case.path_parameters["queue_id"] = queue_id
    if case.operation.path.startswith(("/api/v1/queues", "/api/v1/stores")):
        case.query = {**(case.query or {}), "org_id": org}
    if not isinstance(case.body, dict):
        return
    case.body = {**case.body, "org_id": org}
    if "user_id" in case.body:
        case.body["user_id"] = "schemathesis"
    if case.operation.path == "/api/v1/stores":
        case.body.update(credentials, url=sandbox.url)
        return
    if "queue_id" in case.body:
        case.body["queue_id"] = queue_id
    if case.body.get("action", "start") in ("start", "retry", "resume"):
        case.body.pop("store_id", None)  # one or the other
        case.body["config"] = {"url": sandbox.url, **credentials}


def _prepared(case: Any, queue_id: str, sandbox: RunningSandbox, grounded: bool = False) -> None:
    if grounded:
        _grounded(case, "acme", queue_id, sandbox)
    if case.body is not None:
        case.body = _loopback_only(case.body, sandbox.url)


def _exchange(
    operation: Any,
    server: str,
    headers: dict[str, str],
    prepare: Callable[..., None],
    statuses: set[int],
) -> None:
    """EXAMPLES_PER_OPERATION cases of the operation sent to the server, each answer checked; half of
    them grounded in what exists (``prepare(case, grounded=True)``)."""
    strategy = operation.as_strategy()

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def exchange(data: st.DataObject) -> None:
        case = data.draw(strategy)
        prepare(case, grounded=data.draw(st.booleans()))
        response = case.call(base_url=server, headers=headers, timeout=30)
        statuses.add(response.status_code)
        case.validate_response(response, checks=CHECKS, headers=headers)

    exchange()


def test_every_answer_of_the_live_server_is_documented_and_conforms(
    server: str, services: Services, sandbox: RunningSandbox
) -> None:
    queue_id = str(run_sync(services, sandbox, "acme", catch_up=True).queue_id)
    secret, _ = services.api_tokens().create("acme", "schemathesis", Role.ADMIN)
    headers = {"Authorization": f"Bearer {secret}"}
    schema = schemathesis.openapi.from_url(
        f"{server}{OPENAPI_PATH}", config=schemathesis.Config(), timeout=30
    )
    # (schemathesis leaves out the document's own route: test_operations.py fetches it). An operation
    # schemathesis cannot read is an Err, whose .ok() raises: every operation must be readable.
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/integrations/woocommerce/sync/customers"),
        ("GET", "/api/v1/queues"),
        ("GET", "/api/v1/queues/{queue_id}"),
    }
    seen: dict[str, set[int]] = {}
    for operation in operations:
        statuses = seen.setdefault(f"{operation.method.upper()} {operation.path}", set())
        _exchange(
            operation, server, headers, partial(_prepared, queue_id=queue_id, sandbox=sandbox), statuses
        )
        if operation.path == "/api/v1/integrations/woocommerce/sync/customers":
            # The 200 of a status, whatever the generated cases held: an explicit case, checked the same way.
            case = operation.Case(
                body={"action": "status", "org_id": "acme", "queue_id": queue_id},
                media_type="application/json",
            )
            response = case.call(base_url=server, headers=headers, timeout=30)
            assert response.status_code == 200, response.text
            statuses.add(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=headers)
    assert len(seen) == len(operations)
    assert 200 in seen["GET /readyz"] and 200 in seen["GET /healthz"]
    assert 200 in seen["GET /metrics"]
    assert {200, 202} <= seen["POST /api/v1/integrations/woocommerce/sync/customers"]
    assert 200 in seen["GET /api/v1/queues/{queue_id}/activity"]
    assert 201 in seen["POST /api/v1/stores"]


def test_every_route_of_the_server_is_in_the_document_and_nothing_else(services: Services) -> None:
    routed = {
        (route.method, route.resource.canonical)
        for route in api_http.create_app(services, SERVER_SETTINGS).router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        # The dashboard's HTML pages (docs/DASHBOARD.md) are not the JSON API's routes.
        and not (route.resource.name or "").startswith(ROUTE_PREFIX)
    }
    documented = {
        (method.upper(), path)
        for path, operations in openapi.document()["paths"].items()
        for method in operations
    }
    assert routed - documented == set(), "routes without a description"
    assert documented - routed == set(), "described routes the server does not serve"
    assert {
        ("GET", OPENAPI_PATH),
        ("POST", "/api/v1/stores"),
        ("DELETE", "/api/v1/stores/{store_id}"),
    } <= routed


def test_the_document_is_openapi_3_1_with_every_error_in_the_envelope() -> None:
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": "wcs_..."}
    }
    public = {path for path, ops in document["paths"].items() if ops.get("get", {}).get("security") == []}
    assert public == {"/healthz", "/readyz", OPENAPI_PATH}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            if path not in public:
                assert "401" in operation["responses"], (method, path)
