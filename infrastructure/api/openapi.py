"""The HTTP API's OpenAPI 3.1 document, served at ``/api/openapi.json``: every route, request body, answer
and error the server gives.

Built in Python rather than kept as a file so that its bounds come from where the server checks them
(domain.bounds, the request parser's limits) and cannot drift apart from them; the schemathesis test
(tests/integration/test_openapi.py) sends requests generated from it to the live server and checks that
every answer is documented and conforms. Schemas are JSON Schema 2020-12, as OpenAPI 3.1 has them.

Every error answer is ``{"success": false, "error": {"code", "message", ...}}``; the codes each status
carries are listed in its description. No I/O, and nothing of the server is imported (the server imports
this module): the request parser's two limits are repeated below.
"""

from __future__ import annotations

from typing import Any

from domain import bounds
from infrastructure.support.config import MAX_STORE_URL_LENGTH

__all__ = ["OPENAPI_PATH", "SYNC_PATH", "document"]

OPENAPI_PATH = "/api/openapi.json"
SYNC_PATH = "/api/v1/integrations/woocommerce/sync/customers"

Schema = dict[str, Any]

ACTIONS = ("start", "status", "retry", "resume", "force-done")
QUEUE_STATES = ("draft", "processing", "done", "failed")
ROLES = ("viewer", "operator", "admin")
# The request parser's limits (infrastructure/api/http.py), repeated for the document.
MAX_BODY_BYTES = 64 * 1024
MAX_CREDENTIAL_LENGTH = 256


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], required: tuple[str, ...] | None = None) -> Schema:
    """An object with these properties, all required unless said otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
    }


def _number(bound: bounds.NumberBound) -> Schema:
    return {"type": "integer", "minimum": int(bound.low), "maximum": int(bound.high)}


STRING: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "description": "ISO-8601 with offset"}
COUNT: Schema = {"type": "integer", "minimum": 0}
UUID: Schema = {"type": "string", "format": "uuid"}
# What the public probes say of the database: its kind only, never its user, host, name or path.
BACKEND: Schema = {
    "type": "string",
    "enum": ["postgresql", "sqlite"],
    "description": "the database's kind only (the probes need no token, so they do not locate it)",
}
IDENTIFIER: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": bounds.MAX_NAME_LENGTH,
    "description": "printable text in NFC, no control characters",
}


# ----- schemas -----------------------------------------------------------------------------------------


def _schemas() -> dict[str, Schema]:
    queue_status = _object(
        {
            "queueId": UUID,
            "queueName": _nullable(STRING),
            "orgId": _nullable(STRING),
            "storeUrl": _nullable(STRING),
            "state": _nullable({"type": "string", "enum": list(QUEUE_STATES)}),
            **{
                f"{name}Count": COUNT
                for name in (
                    "total",
                    "draft",
                    "done",
                    "failed",
                    "cancelled",
                    "created",
                    "updated",
                    "unchanged",
                )
            },
            "processCount": COUNT,
            "isActionRequired": {"type": "boolean"},
            "actionRequiredReason": _nullable(STRING),
            "lastProcessDate": _nullable(TIME),
            "createdAt": _nullable(TIME),
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "isRunning": {"type": "boolean", "description": "a run of this server is processing it now"},
        }
    )
    store = _object(
        {
            "storeId": UUID,
            "url": STRING,
            "name": STRING,
            "keyFingerprint": {"type": "string", "description": "first 12 hex digits of the key's SHA-256"},
            "registeredAt": _nullable(TIME),
            "registeredBy": _nullable(STRING),
            "updatedAt": _nullable(TIME),
            "removed": {"type": "boolean"},
            "removedAt": _nullable(TIME),
            "webhooksInstalled": {"type": "boolean", "description": "`wcsync webhooks install` made them"},
            "actionRequired": _nullable(
                {
                    "type": "string",
                    "description": "why the installed webhooks need an operator (some not active in the store)",
                }
            ),
        },
        required=("storeId", "url", "name"),
    )
    return {
        "Error": {
            "type": "object",
            "properties": {
                "success": {"const": False},
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string", "description": "stable, for programs"},
                        "message": {"type": "string", "description": "one line, for people"},
                        "retryAfterS": {"type": "integer", "minimum": 1},
                        "holder": {"type": "string"},
                        "since": TIME,
                        "requiredRole": {"type": "string", "enum": list(ROLES)},
                        "tokenRole": {"type": "string", "enum": list(ROLES)},
                        "storeCode": STRING,
                        "storeStatus": _nullable({"type": "integer"}),
                        "pendingMigrations": _nullable({"type": "array", "items": {"type": "integer"}}),
                        "database": BACKEND,
                    },
                    "required": ["code", "message"],
                },
            },
            "required": ["success", "error"],
            "additionalProperties": False,
        },
        "QueueStatus": queue_status,
        "FailedLine": _object(
            {
                "wooCustomerId": {"type": "integer"},
                "errorMessage": _nullable(STRING),
                "processCount": COUNT,
                "lastErrorTimestamp": _nullable(TIME),
            }
        ),
        "ActivityEntry": _object(
            {
                "createdAt": _nullable(TIME),
                "activityType": STRING,
                "status": STRING,
                "message": STRING,
                "details": _nullable({"type": "object"}),
            }
        ),
        "Started": _object(
            {"queueId": UUID, "action": {"type": "string", "enum": ["start", "retry", "resume"]}}
        ),
        "Store": store,
        "StoreSaved": {
            "allOf": [
                store,
                _object({"action": {"type": "string", "enum": ["registered", "rotated", "restored"]}}),
            ]
        },
        "Health": _object(
            {
                "status": {"const": "ok"},
                "database": BACKEND,
                "running": {**COUNT, "description": "syncs this server is running"},
                "projectionLag": _nullable(
                    {**COUNT, "description": "events not applied yet (null: unknown)"}
                ),
            }
        ),
        "Ready": _object(
            {
                "ready": {"const": True},
                "database": BACKEND,
                "pendingMigrations": {"type": "array", "maxItems": 0},
            }
        ),
        "SyncRequest": _sync_request(),
        "StoreRequest": {
            **_object(
                {
                    "url": {"type": "string", "maxLength": MAX_STORE_URL_LENGTH},
                    "name": {"type": "string", "minLength": 1, "maxLength": bounds.MAX_REASON_LENGTH},
                    "consumerKey": _credential(),
                    "consumerSecret": _credential(),
                    "org_id": {
                        **IDENTIFIER,
                        "description": "optional with a token (must be the token's org)",
                    },
                    "user_id": {
                        **IDENTIFIER,
                        "description": "the recorded actor (default: the token's name)",
                    },
                },
                required=("url", "consumerKey", "consumerSecret"),
            ),
            "additionalProperties": False,
        },
        "StoreRemoved": _object({"storeId": UUID, "removed": {"const": True}}),
    }


def _credential() -> Schema:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CREDENTIAL_LENGTH,
        "pattern": "^[!-~]+$",
        "description": "printable ASCII without spaces (WooCommerce's ck_... / cs_...); never echoed",
        "writeOnly": True,
    }


def _sync_request() -> Schema:
    return {
        "type": "object",
        "description": (
            "The seed's body. start needs config (url, consumerKey, consumerSecret) or store_id; retry and "
            "resume need queue_id and the credentials (config without url: the queue's own store) or "
            "store_id; status needs queue_id; force-done needs queue_id and reason."
        ),
        "properties": {
            "action": {"type": "string", "enum": list(ACTIONS), "default": "start"},
            "org_id": {**IDENTIFIER, "description": "optional with a token (must be the token's org)"},
            "user_id": {**IDENTIFIER, "description": "the recorded actor (default: the token's name)"},
            "queue_id": UUID,
            "reason": {"type": "string", "minLength": 1, "maxLength": bounds.MAX_REASON_LENGTH},
            "store_id": {
                **UUID,
                "description": "a store registered with POST /api/v1/stores, instead of config",
            },
            "config": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "maxLength": MAX_STORE_URL_LENGTH},
                    "consumerKey": _credential(),
                    "consumerSecret": _credential(),
                },
            },
            "options": {
                "type": "object",
                "properties": {
                    "batchSize": _number(bounds.BATCH_SIZE),
                    "batchDelayMs": _number(bounds.BATCH_DELAY_MS),
                    "maxRetries": _number(bounds.MAX_RETRIES),
                    "perPage": _number(bounds.PER_PAGE),
                    "role": {"type": "string", "maxLength": bounds.MAX_ROLE_LENGTH},
                },
                "additionalProperties": False,
            },
        },
    }


# ----- answers -----------------------------------------------------------------------------------------


def _ok(data: Schema, description: str) -> dict[str, Any]:
    body = {
        "type": "object",
        "properties": {"success": {"const": True}, "data": data},
        "required": ["success", "data"],
        "additionalProperties": False,
    }
    return {"description": description, "content": {"application/json": {"schema": body}}}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if retry_after:
        answer["headers"] = RETRY_AFTER
    return answer


# What any route may answer, whatever it does.
_COMMON = {
    "400": _error("bad_request: the request could not be read as HTTP"),
    "403": _error(
        "forbidden_host: the server runs without tokens (--no-auth) and the Host header is not a loopback "
        "name or address (localhost, 127.x.y.z, [::1], any port): a DNS-rebound page's request"
    ),
    "404": _error("not_found: no such route"),
    "405": _error("method_not_allowed: the route takes another method"),
    "413": _error("payload_too_large: the request (or its body) is too large"),
    "503": _error(
        "storage_unavailable: the database cannot be reached; server_stopping: the server is shutting down"
    ),
}
_AUTHENTICATED = {
    "401": {
        **_error("unauthorized: no valid token (missing, malformed, unknown or revoked: one answer for all)"),
        "headers": {"WWW-Authenticate": {"schema": {"const": "Bearer"}}},
    },
    "429": _error("too_many_attempts: too many failed authentications from this address", retry_after=True),
}
# What a route with a body may answer besides (--no-auth mode only: a cross-site form or text/plain body,
# which a browser sends cross-origin without a preflight).
_BODY_ERRORS = {
    "415": _error(
        "unsupported_media_type: the server runs without tokens (--no-auth) and the body was not sent as "
        "Content-Type: application/json"
    ),
}
_QUERY_ERRORS = {
    "400": _error(
        "invalid_field: a query parameter or the path's queue id is not valid; missing_field: org_id "
        "is required (no-auth mode only)"
    ),
    "403": _error("forbidden: the token's role is too low; org_mismatch: org_id is not the token's org"),
}


def _answers(*groups: dict[str, Any], **own: dict[str, Any]) -> dict[str, Any]:
    """The answers of one operation: its own (by status) over the shared groups, later groups winning."""
    merged: dict[str, Any] = {}
    for group in (_COMMON, *groups, {status.lstrip("_"): answer for status, answer in own.items()}):
        for status, answer in group.items():
            previous = merged.get(status)
            if previous is not None:
                description = f"{answer['description']}; {previous['description']}"
                answer = {**previous, **answer, "description": description}
            merged[status] = answer
    return dict(sorted(merged.items()))


def _operation(
    summary: str,
    answers: dict[str, Any],
    *,
    public: bool = False,
    role: str | None = None,
    parameters: list[Schema] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    description = summary if role is None else f"{summary} Needs a token of role {role} or above."
    operation: dict[str, Any] = {"summary": summary, "description": description, "responses": answers}
    if public:
        operation["security"] = []
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return operation


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": UUID, "description": description}


ORG = _query("org_id", IDENTIFIER, "the org (optional with a token: it must be the token's)")
LIMIT = _query("limit", _number(bounds.LIMIT), "at most this many rows")
QUEUE = _path("queue_id", "a queue id, as action start returned it")
STORE = _path("store_id", "a store id, as POST /api/v1/stores returned it")


def _list(name: str) -> Schema:
    return {"type": "array", "items": _ref(name)}


def _paths() -> dict[str, Any]:
    status = _ok(_ref("QueueStatus"), "the queue's status")
    not_found = _error("queue_not_found: no such queue in the org (another org's queue is the same answer)")
    return {
        "/healthz": {
            "get": _operation(
                "Liveness: the process answers (it does not wait for the database).",
                _answers(_200=_ok(_ref("Health"), "alive")),
                public=True,
            )
        },
        "/readyz": {
            "get": _operation(
                "Readiness: the database answers and no migration is pending (bounded in time).",
                _answers(
                    {"200": _ok(_ref("Ready"), "ready")},
                    {
                        "503": _error(
                            "not_ready: the database did not answer in time, cannot be read (a fixed message: "
                            "the error itself is in the server log), or migrations are pending (run `wcsync db "
                            "migrate`); `database` is its kind only"
                        )
                    },
                ),
                public=True,
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics (text format 0.0.4) of three scopes, each family's HELP ending with its "
                "own: the token's org only (every org's with --no-auth): wcsync_syncs, wcsync_sync_lines, "
                "wcsync_sync_line_results, wcsync_stores_webhooks_action_required, wcsync_webhook_deliveries; this process, every org's stores together: wcsync_store_requests, "
                "wcsync_store_retries, wcsync_store_circuit_opened, wcsync_store_circuits, wcsync_webhook_requests, "
                "wcsync_database_up, wcsync_scrape_read_seconds; the whole service, every org: "
                "wcsync_jobs_*, wcsync_workers, wcsync_worker_heartbeat_age_seconds, "
                "wcsync_projection_lag_*.",
                _answers(
                    _AUTHENTICATED,
                    {"403": _error("forbidden: the token's role is too low")},
                    _200={
                        "description": "the metrics",
                        "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": STRING}},
                    },
                ),
                role="viewer",
            )
        },
        OPENAPI_PATH: {
            "get": _operation(
                "This document.",
                _answers(
                    _200={
                        "description": "the OpenAPI 3.1 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                ),
                public=True,
            )
        },
        SYNC_PATH: {"post": _sync_operation(status)},
        "/api/v1/queues": {
            "get": _operation(
                "The org's queues, newest first.",
                _answers(_AUTHENTICATED, _QUERY_ERRORS, _200=_ok(_list("QueueStatus"), "the queues")),
                role="viewer",
                parameters=[LIMIT, ORG],
            )
        },
        "/api/v1/queues/{queue_id}": {
            "get": _operation(
                "One queue's status.",
                _answers(_AUTHENTICATED, _QUERY_ERRORS, _200=status, _404=not_found),
                role="viewer",
                parameters=[QUEUE, ORG],
            )
        },
        "/api/v1/queues/{queue_id}/failed": {
            "get": _operation(
                "The queue's failed lines, most recent error first.",
                _answers(
                    _AUTHENTICATED,
                    _QUERY_ERRORS,
                    _200=_ok(_list("FailedLine"), "failed lines"),
                    _404=not_found,
                ),
                role="viewer",
                parameters=[QUEUE, ORG],
            )
        },
        "/api/v1/queues/{queue_id}/activity": {
            "get": _operation(
                "The queue's activity log, oldest first.",
                _answers(
                    _AUTHENTICATED,
                    _QUERY_ERRORS,
                    _200=_ok(_list("ActivityEntry"), "the activity log"),
                    _404=not_found,
                ),
                role="viewer",
                parameters=[QUEUE, ORG, LIMIT],
            )
        },
        **_store_paths(),
    }


_NOT_CONFIGURED = "not_configured: the server has no WCSYNC_SECRET_KEY, so registered stores cannot be used"
_STORE_NOT_FOUND = "store_not_found: no such store in the org (another org's is the same answer)"
_BAD_STORE_ID = "invalid_field: the store id in the path is not a UUID"


def _store_paths() -> dict[str, Any]:
    """The store registry's routes (admin)."""
    return {
        "/api/v1/stores": {
            "post": _operation(
                "Register a store (checked with one request to it first), or give a registered one new "
                "credentials, or bring back a removed one.",
                _answers(
                    _AUTHENTICATED,
                    _BODY_ERRORS,
                    _store_errors(),
                    _200=_ok(_ref("StoreSaved"), "a registered store's credentials rotated"),
                    _201=_ok(_ref("StoreSaved"), "registered, or a removed store restored"),
                    _400=_error("invalid_json, invalid_field, missing_field: the body"),
                    _502=_error("store_unavailable, store_refused: the store refused the check"),
                    _503=_error(_NOT_CONFIGURED),
                ),
                role="admin",
                body="StoreRequest",
            ),
            "get": _operation(
                "The org's registered stores.",
                _answers(
                    _AUTHENTICATED, _QUERY_ERRORS, _store_errors(), _200=_ok(_list("Store"), "the stores")
                ),
                role="admin",
                parameters=[ORG],
            ),
        },
        "/api/v1/webhooks/woocommerce/{store_id}": {
            "post": {
                **_operation(
                    "A WooCommerce webhook delivery for a registered store (customer.created, customer.updated, "
                    "customer.deleted), or the ping WooCommerce sends when a webhook is created. No token: the "
                    "X-WC-Webhook-Signature header (base64 HMAC-SHA256 of the exact body, keyed with the store's "
                    "webhook secret, which `wcsync webhooks install` set) authenticates it. Answered 200 once the "
                    "delivery is durable; a worker applies it to the customer.",
                    _answers(
                        _200=_ok(
                            {
                                "type": "object",
                                "properties": {"outcome": {"enum": ["recorded", "duplicate", "ping"]}},
                                "required": ["outcome"],
                                "additionalProperties": False,
                            },
                            "recorded (made durable), duplicate (recorded before: once is enough) or ping",
                        ),
                        _401=_error(
                            "bad_signature: the signature is missing or is not the store's for this body"
                        ),
                        _404=_error("not_found: no registered store of this id"),
                        _413=_error("payload_too_large: a delivery is larger than a customer record can be"),
                        _429=_error(
                            "too_many_attempts: too many refused signatures from this address",
                            retry_after=True,
                        ),
                        _503=_error(f"{_NOT_CONFIGURED}; storage_unavailable"),
                    ),
                    public=True,
                    parameters=[_path("store_id", "the store id, as `wcsync stores list` shows it")],
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                    },
                },
            }
        },
        "/api/v1/stores/{store_id}": {
            "get": _operation(
                "One registered store.",
                _answers(
                    _AUTHENTICATED,
                    _QUERY_ERRORS,
                    _store_errors(),
                    _200=_ok(_ref("Store"), "the store"),
                    _400=_error(_BAD_STORE_ID),
                    _404=_error(_STORE_NOT_FOUND),
                ),
                role="admin",
                parameters=[STORE, ORG],
            ),
            "delete": _operation(
                "Remove a store: its secret is deleted, its events are kept.",
                _answers(
                    _AUTHENTICATED,
                    _BODY_ERRORS,
                    _QUERY_ERRORS,
                    _store_errors(),
                    _200=_ok(_ref("StoreRemoved"), "removed"),
                    _400=_error(_BAD_STORE_ID),
                    _404=_error(_STORE_NOT_FOUND),
                    _503=_error(_NOT_CONFIGURED),
                ),
                role="admin",
                parameters=[STORE, ORG],
            ),
        },
    }


def _store_errors() -> dict[str, Any]:
    return {
        "403": _error("forbidden: the token's role is too low"),
        "500": _error("server_misconfigured: the server has no (or a wrong) WCSYNC_SECRET_KEY"),
    }


def _sync_operation(status: dict[str, Any]) -> dict[str, Any]:
    return _operation(
        "The seed's endpoint: start, status, retry, resume or force-done a sync of the org's customers. "
        "status needs a viewer token, the other actions an operator's.",
        _answers(
            _AUTHENTICATED,
            _BODY_ERRORS,
            _200=status,
            _202=_ok(_ref("Started"), "the run is under way (start, retry, resume): poll action status"),
            _400=_error(
                "invalid_json (not JSON, not an object, too deep), invalid_field, missing_field, "
                "invalid_action, invalid_options"
            ),
            _403=_error(
                "forbidden: the token's role is too low; org_mismatch: org_id is not the token's org"
            ),
            _404=_error(
                "queue_not_found, store_not_found: no such queue or store in the org (another org's is the "
                "same answer)"
            ),
            _409=_error(
                "queue_busy: another run is processing the queue; invalid_state: its state forbids it"
            ),
            _413=_error(f"payload_too_large: the body is larger than {MAX_BODY_BYTES} bytes"),
            _429=_error(
                "org_busy: the org runs as many syncs as it may; too_many_attempts: too many failed "
                "authentications from this address",
                retry_after=True,
            ),
            _500=_error(
                "server_misconfigured: a registered store's secret cannot be read (WCSYNC_SECRET_KEY)"
            ),
            _502=_error(
                "store_unavailable, store_refused: the store refused the new sync before anything was saved"
            ),
            _503=_error(
                "server_busy: the server runs as many syncs as it may (Retry-After); "
                f"{_NOT_CONFIGURED}; storage_unavailable; server_stopping",
                retry_after=True,
            ),
        ),
        body="SyncRequest",
    )


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a new dict on each call: JSON-ready)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wcsync",
            "version": "0.1.0",
            "description": (
                "Mirrors WooCommerce customers into an event-sourced store. Every route but /healthz, /readyz "
                "and this document needs Authorization: Bearer TOKEN (`wcsync tokens create`). Every answer "
                'is {"success": true, "data": ...} or {"success": false, "error": {"code", "message", ...}}. '
                "A server started with --no-auth (loopback only, for local development) asks for no token "
                "but answers only a loopback Host (else 403 forbidden_host) and takes a request body only as "
                "Content-Type: application/json (else 415 unsupported_media_type)."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "wcs_..."}},
        },
    }
