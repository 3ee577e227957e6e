"""The sandbox store over real sockets: it must behave as shared/woocommerce-api.md says WooCommerce does."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import oauthlib.oauth1
import pytest
import structlog

from domain.validation import InvalidCustomerRecord, validate_customer
from infrastructure.sandbox import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    Faults,
    RunningSandbox,
    SandboxConfig,
    SandboxThread,
    generate_customers,
)
from tests.support.paths import ROOT

CUSTOMERS = "/wp-json/wc/v3/customers"
# One store for the whole module: the tests that take `sandbox` only read it.
pytestmark = pytest.mark.sandbox(other_roles=12, shared=True)


class Reply:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
    # S310: the scheme and host are checked just above; only the sandbox is ever opened.
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def sign(
    url: str,
    *,
    key: str = DEFAULT_CONSUMER_KEY,
    secret: str = DEFAULT_CONSUMER_SECRET,
    method: str = oauthlib.oauth1.SIGNATURE_HMAC_SHA1,
    in_header: bool = False,
    nonce: str | None = None,
    timestamp: int | None = None,
) -> tuple[str, dict[str, str]]:
    client = oauthlib.oauth1.Client(
        key,
        client_secret=secret,
        signature_method=method,
        signature_type=oauthlib.oauth1.SIGNATURE_TYPE_AUTH_HEADER
        if in_header
        else oauthlib.oauth1.SIGNATURE_TYPE_QUERY,
        nonce=nonce,
        timestamp=None if timestamp is None else str(timestamp),
    )
    uri, headers, _ = client.sign(url)
    return uri, dict(headers)


def api(sandbox: RunningSandbox, path_and_query: str, **signing: Any) -> Reply:
    uri, headers = sign(sandbox.url + path_and_query, **signing)
    return fetch(uri, headers=headers)


def ids_of(reply: Reply) -> list[int]:
    assert reply.status == 200, reply.body[:300]
    return [customer["id"] for customer in reply.json()]


def scan(sandbox: RunningSandbox, query: str, per_page: int = 100) -> list[int]:
    seen: list[int] = []
    for page in range(1, 1_000):
        batch = ids_of(api(sandbox, f"{CUSTOMERS}?{query}&per_page={per_page}&page={page}"))
        if not batch:
            return seen
        seen.extend(batch)
    raise AssertionError("the scan never reached an empty page")


# -- generated data


def test_generate_customers_is_deterministic_and_realistic() -> None:
    first = generate_customers(500, seed=7, invalid=5, other_roles=20)
    assert first == generate_customers(500, seed=7, invalid=5, other_roles=20)
    assert first != generate_customers(500, seed=8, invalid=5, other_roles=20)
    ids = [record["id"] for record in first]
    assert ids == sorted(set(ids))
    assert ids[-1] - ids[0] + 1 > len(ids), "ids must have gaps"
    assert sum(record["role"] == "customer" for record in first) == 500
    names = "".join(f"{record['first_name']}{record['last_name']}" for record in first)
    assert all(char in names for char in "éüøŁ李"), "names need non-ASCII letters"
    assert len({record["billing"]["country"] for record in first if isinstance(record["billing"], dict)}) >= 5
    assert any(record["meta_data"] for record in first)
    expected_keys = {
        "id",
        "date_created",
        "date_created_gmt",
        "date_modified",
        "date_modified_gmt",
        "email",
        "first_name",
        "last_name",
        "role",
        "username",
        "billing",
        "shipping",
        "is_paying_customer",
        "avatar_url",
        "meta_data",
    }
    assert all(set(record) == expected_keys for record in first)


def test_invalid_records_each_break_a_different_rule() -> None:
    records = generate_customers(200, seed=3, invalid=10)
    broken: list[str] = []
    for record in records:
        try:
            validate_customer(record)
        except InvalidCustomerRecord as error:
            broken.append(error.field)
    assert len(broken) == 10
    assert {"email", "first_name", "last_name", "date_created", "billing"} <= set(broken)
    assert all(_is_valid(record) for record in generate_customers(200, seed=3))


def _is_valid(record: dict[str, Any]) -> bool:
    try:
        validate_customer(record)
    except InvalidCustomerRecord:
        return False
    return True


# -- listing


def test_paging_headers_and_a_page_past_the_end(sandbox: RunningSandbox) -> None:
    first = api(sandbox, f"{CUSTOMERS}?orderby=id&order=asc&per_page=100&page=1")
    assert first.status == 200
    assert first.headers["X-WP-Total"] == "797"
    assert first.headers["X-WP-TotalPages"] == "8"
    assert 'rel="next"' in first.headers["Link"] and "page=2" in first.headers["Link"]
    assert "oauth_" not in first.headers["Link"]
    assert 'rel="prev"' not in first.headers["Link"]
    last = api(sandbox, f"{CUSTOMERS}?orderby=id&order=asc&per_page=100&page=8")
    assert len(last.json()) == 97
    assert 'rel="prev"' in last.headers["Link"] and 'rel="next"' not in last.headers["Link"]
    past = api(sandbox, f"{CUSTOMERS}?orderby=id&order=asc&per_page=100&page=9")
    assert (past.status, past.json()) == (200, [])
    assert scan(sandbox, "orderby=id&order=asc") == sandbox.store.customer_ids()


def test_per_page_default_and_descending_order(sandbox: RunningSandbox) -> None:
    assert len(ids_of(api(sandbox, f"{CUSTOMERS}?orderby=id"))) == 10
    descending = ids_of(api(sandbox, f"{CUSTOMERS}?orderby=id&order=desc&per_page=5"))
    assert descending == sandbox.store.customer_ids()[::-1][:5]


@pytest.mark.parametrize("value", ["101", "0", "ten", "-3"])
def test_bad_per_page_is_refused_naming_the_parameter(sandbox: RunningSandbox, value: str) -> None:
    reply = api(sandbox, f"{CUSTOMERS}?per_page={value}")
    assert reply.status == 400
    body = reply.json()
    assert body["code"] == "rest_invalid_param"
    assert "per_page" in body["message"]
    assert body["data"]["status"] == 400
    assert "per_page" in body["data"]["params"]


def test_offset_overrides_page_and_its_next_link_loops(sandbox: RunningSandbox) -> None:
    ids = sandbox.store.customer_ids()
    reply = api(sandbox, f"{CUSTOMERS}?orderby=id&per_page=5&offset=5&page=3")
    assert ids_of(reply) == ids[5:10]
    links = {rel: url for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', reply.headers["Link"])}
    next_link = links["next"]
    assert "offset=5" in next_link and "page=4" in next_link
    assert ids_of(api(sandbox, next_link.removeprefix(sandbox.url))) == ids[5:10]


def test_orderby_include_keeps_the_include_order(sandbox: RunningSandbox) -> None:
    wanted = sandbox.store.customer_ids()[10:14][::-1]
    query = f"{CUSTOMERS}?orderby=include&include={','.join(map(str, wanted))}"
    assert ids_of(api(sandbox, query)) == wanted


def test_unknown_parameters_are_ignored(sandbox: RunningSandbox) -> None:
    plain = ids_of(api(sandbox, f"{CUSTOMERS}?orderby=id&per_page=20"))
    with_unknown = ids_of(
        api(sandbox, f"{CUSTOMERS}?orderby=id&per_page=20&modified_after=2030-01-01T00:00:00")
    )
    assert with_unknown == plain


def test_role_defaults_to_customer(sandbox: RunningSandbox) -> None:
    customers = scan(sandbox, "orderby=id")
    everyone = scan(sandbox, "orderby=id&role=all")
    subscribers = scan(sandbox, "orderby=id&role=subscriber")
    managers = scan(sandbox, "orderby=id&role=shop_manager")
    assert len(customers) == 797
    assert len(everyone) == 797 + 12
    assert sorted(customers + subscribers + managers) == everyone
    assert subscribers and set(subscribers).isdisjoint(customers)


def test_include_exclude_email_search_and_fields(sandbox: RunningSandbox) -> None:
    wanted = sandbox.store.customer_ids()[3:8]
    listed = api(sandbox, f"{CUSTOMERS}?include={','.join(map(str, wanted))}&orderby=id&_fields=id,email")
    assert [customer["id"] for customer in listed.json()] == wanted
    assert all(set(customer) == {"id", "email"} for customer in listed.json())
    assert listed.headers["X-WP-Total"] == "5"
    excluded = ids_of(api(sandbox, f"{CUSTOMERS}?exclude={wanted[0]}&orderby=id&per_page=100"))
    assert wanted[0] not in excluded and wanted[1] in excluded
    record = sandbox.store.get(wanted[2])
    assert record is not None
    assert ids_of(api(sandbox, f"{CUSTOMERS}?email={quote(record['email'])}")) == [wanted[2]]
    assert ids_of(api(sandbox, f"{CUSTOMERS}?search={quote(record['email'])}")) == [wanted[2]]
    namesakes = ids_of(api(sandbox, f"{CUSTOMERS}?search={quote(record['last_name'])}&per_page=100"))
    assert wanted[2] in namesakes and len(namesakes) > 1
    only_ids = api(sandbox, f"{CUSTOMERS}?_fields=id&per_page=3&orderby=id").json()
    assert only_ids == [{"id": i} for i in sandbox.store.customer_ids()[:3]]


def test_default_order_by_name_has_no_tie_breaker(sandbox: RunningSandbox) -> None:
    by_name = scan(sandbox, "", per_page=10)
    records = [sandbox.store.get(i) for i in by_name[:50]]
    names = [f"{r['first_name']} {r['last_name']}".casefold() for r in records if r is not None]
    assert names == sorted(names)
    # Customers sharing a display name shift between pages: some repeat, some are never listed.
    assert len(by_name) == 797
    assert len(set(by_name)) < 797


def test_one_customer_and_a_missing_one(sandbox: RunningSandbox) -> None:
    customer_id = sandbox.store.customer_ids()[0]
    reply = api(sandbox, f"{CUSTOMERS}/{customer_id}")
    customer = reply.json()
    assert customer["id"] == customer_id
    assert customer["_links"]["self"][0]["href"] == f"{sandbox.url}{CUSTOMERS}/{customer_id}"
    assert set(customer["billing"]) >= {"first_name", "address_1", "postcode", "country", "email", "phone"}
    assert "email" not in customer["shipping"]
    narrowed = api(sandbox, f"{CUSTOMERS}/{customer_id}?_fields=id,billing.country").json()
    assert narrowed == {"id": customer_id, "billing": {"country": customer["billing"]["country"]}}
    missing = api(sandbox, f"{CUSTOMERS}/999999999")
    assert missing.status == 404
    assert missing.json() == {
        "code": "wc_user_invalid_id",
        "message": "Invalid user ID.",
        "data": {"status": 404},
    }


def test_unknown_routes(sandbox: RunningSandbox) -> None:
    route = api(sandbox, "/wp-json/wc/v3/orders")
    assert route.status == 404 and route.json()["code"] == "rest_no_route"
    page = fetch(sandbox.url + "/shop/")
    assert page.status == 404 and page.headers["Content-Type"].startswith("text/html")


# -- authentication


def test_oauth_signatures_in_query_and_header_are_accepted(sandbox: RunningSandbox) -> None:
    url = f"{CUSTOMERS}?orderby=id&per_page=2"
    assert api(sandbox, url).status == 200
    assert api(sandbox, url, method=oauthlib.oauth1.SIGNATURE_HMAC_SHA256).status == 200
    assert api(sandbox, url, in_header=True).status == 200
    assert api(sandbox, url, in_header=True, method=oauthlib.oauth1.SIGNATURE_HMAC_SHA256).status == 200


def test_without_credentials_listing_is_not_allowed(sandbox: RunningSandbox) -> None:
    reply = fetch(f"{sandbox.url}{CUSTOMERS}")
    assert reply.status == 401
    assert reply.json()["code"] == "woocommerce_rest_cannot_view"


def test_basic_auth_is_not_accepted_over_plain_http(sandbox: RunningSandbox) -> None:
    token = base64.b64encode(f"{sandbox.consumer_key}:{sandbox.consumer_secret}".encode()).decode()
    reply = fetch(f"{sandbox.url}{CUSTOMERS}", headers={"Authorization": f"Basic {token}"})
    assert reply.status == 401
    assert reply.json()["code"] == "woocommerce_rest_cannot_view"


def _auth_error(reply: Reply) -> str:
    assert reply.status == 401, reply.body[:300]
    body = reply.json()
    assert body["code"] == "woocommerce_rest_authentication_error"
    assert body["data"] == {"status": 401}
    return str(body["message"])


def test_a_replayed_nonce_is_refused(sandbox: RunningSandbox) -> None:
    uri, headers = sign(f"{sandbox.url}{CUSTOMERS}?per_page=1")
    assert fetch(uri, headers=headers).status == 200
    assert _auth_error(fetch(uri, headers=headers)).startswith("Invalid nonce - nonce has already been used")


def test_a_stale_timestamp_is_refused(sandbox: RunningSandbox) -> None:
    for skew in (-16 * 60, 16 * 60):
        reply = api(sandbox, f"{CUSTOMERS}?per_page=1", timestamp=int(time.time()) + skew)
        assert _auth_error(reply).startswith("Invalid timestamp")
    assert api(sandbox, f"{CUSTOMERS}?per_page=1", timestamp=int(time.time()) - 14 * 60).status == 200


def test_a_wrong_key_or_signature_is_refused(sandbox: RunningSandbox) -> None:
    wrong_key = api(sandbox, f"{CUSTOMERS}?per_page=1", key="ck_wrong")
    assert _auth_error(wrong_key).startswith("Consumer key is invalid")
    wrong_secret = api(sandbox, f"{CUSTOMERS}?per_page=1", secret="cs_wrong")
    assert _auth_error(wrong_secret).startswith("Invalid signature - provided signature does not match")
    uri, headers = sign(f"{sandbox.url}{CUSTOMERS}?per_page=1")
    tampered = fetch(uri.replace("per_page=1", "per_page=2"), headers=headers)
    assert _auth_error(tampered).startswith("Invalid signature - provided signature does not match")


def test_basic_auth_over_tls_with_the_ca_file() -> None:
    with SandboxThread(SandboxConfig(customers=30, tls=True)) as running:
        assert running.url.startswith("https://") and running.ca_file is not None
        context = ssl.create_default_context(cafile=running.ca_file)
        token = base64.b64encode(f"{running.consumer_key}:{running.consumer_secret}".encode()).decode()
        good = fetch(
            f"{running.url}{CUSTOMERS}?per_page=100",
            headers={"Authorization": f"Basic {token}"},
            context=context,
        )
        assert good.status == 200 and len(good.json()) == 30
        wrong = base64.b64encode(f"{running.consumer_key}:nope".encode()).decode()
        refused = fetch(
            f"{running.url}{CUSTOMERS}", headers={"Authorization": f"Basic {wrong}"}, context=context
        )
        assert _auth_error(refused).startswith("Consumer secret is invalid")
        with pytest.raises(urllib.error.URLError):
            fetch(f"{running.url}{CUSTOMERS}", context=ssl.create_default_context())


# -- faults


def _statuses(running: RunningSandbox, count: int) -> list[int]:
    return [api(running, f"{CUSTOMERS}?orderby=id&per_page=5").status for _ in range(count)]


def test_rate_limit_answers_429_with_retry_after() -> None:
    with SandboxThread(SandboxConfig(customers=20, faults=Faults(rate_limit=5))) as running:
        replies = [api(running, f"{CUSTOMERS}?per_page=5") for _ in range(15)]
        limited = [reply for reply in replies if reply.status == 429]
        assert limited, "15 quick requests against 5/s must meet the limit"
        assert all(int(reply.headers["Retry-After"]) >= 1 for reply in limited)
        assert {reply.headers["Content-Type"].split(";")[0] for reply in limited} <= {
            "text/html",
            "application/json",
        }
        stats = fetch(f"{running.url}/_sandbox/stats").json()
        assert stats["rate_limited"] == len(limited)
        assert 1 <= stats["max_per_second"] <= 5
        assert stats["requests"] == 15


def test_random_errors_are_html_5xx_and_repeatable() -> None:
    config = SandboxConfig(customers=20, faults=Faults(error_rate=0.5))
    with SandboxThread(config) as running:
        first = _statuses(running, 30)
        page = api(running, f"{CUSTOMERS}?per_page=5")
        while page.status == 200:
            page = api(running, f"{CUSTOMERS}?per_page=5")
        assert page.status in (500, 502, 503)
        assert page.headers["Content-Type"].startswith("text/html")
    with SandboxThread(config) as running:
        assert _statuses(running, 30) == first
    assert set(first) <= {200, 500, 502, 503} and 200 in first and len(set(first)) > 1


def test_html_pages_with_status_200() -> None:
    with SandboxThread(SandboxConfig(customers=20, faults=Faults(html_rate=1.0))) as running:
        reply = api(running, f"{CUSTOMERS}?per_page=5")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/html")
        with pytest.raises(json.JSONDecodeError):
            reply.json()


def test_truncated_json() -> None:
    with SandboxThread(SandboxConfig(customers=20, faults=Faults(truncated_rate=1.0))) as running:
        reply = api(running, f"{CUSTOMERS}?per_page=5")
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            reply.json()


def test_latency_and_slow_responses() -> None:
    faults = Faults(latency_ms=50, slow_rate=1.0, slow_ms=150)
    with SandboxThread(SandboxConfig(customers=20, faults=faults)) as running:
        started = time.perf_counter()
        assert api(running, f"{CUSTOMERS}?per_page=5").status == 200
        assert time.perf_counter() - started >= 0.2
        started = time.perf_counter()
        assert fetch(f"{running.url}/_sandbox/stats").status == 200
        assert time.perf_counter() - started < 0.2, "admin requests are not subject to faults"


def test_repeat_last_page_serves_the_last_page_forever_without_totals() -> None:
    with SandboxThread(SandboxConfig(customers=250, faults=Faults(repeat_last_page=True))) as running:
        pages = [api(running, f"{CUSTOMERS}?orderby=id&per_page=100&page={page}") for page in (1, 3, 4, 50)]
        assert [len(page.json()) for page in pages] == [100, 50, 50, 50]
        assert ids_of(pages[1]) == ids_of(pages[2]) == ids_of(pages[3])
        assert all(
            "X-WP-Total" not in page.headers and "X-WP-TotalPages" not in page.headers for page in pages
        )
        assert 'rel="next"' in pages[3].headers["Link"]


def test_churn_changes_the_store_between_list_requests() -> None:
    with SandboxThread(SandboxConfig(customers=300, faults=Faults(churn_every=2))) as running:
        before = running.store.customer_ids()
        first = scan(running, "orderby=id")
        after = running.store.customer_ids()
        assert after != before
        assert len(after) == len(before), "each churn creates one customer and deletes one"
        assert max(after) > max(before)
        assert first != after
        assert scan(running, "orderby=id") != first


# -- admin routes


def test_fix_invalid_makes_every_record_pass_validation() -> None:
    with SandboxThread(SandboxConfig(customers=60, invalid=15, other_roles=5)) as running:
        records = api(running, f"{CUSTOMERS}?role=all&per_page=100&orderby=id").json()
        assert sum(not _is_valid(record) for record in records) == 15
        before = {record["id"]: record["date_modified_gmt"] for record in records}
        reply = fetch(f"{running.url}/_sandbox/fix-invalid", method="POST")
        assert reply.json() == {"fixed": 15}
        fixed = api(running, f"{CUSTOMERS}?role=all&per_page=100&orderby=id").json()
        assert all(_is_valid(record) for record in fixed)
        changed = [r["id"] for r in fixed if r["date_modified_gmt"] != before[r["id"]]]
        assert len(changed) == 15
        assert running.store.fix_invalid() == 0


def test_admin_create_update_delete() -> None:
    with SandboxThread(SandboxConfig(customers=10)) as running:
        created = fetch(f"{running.url}/_sandbox/customers", method="POST", body={"first_name": "Łucja"})
        assert created.status == 201
        new = created.json()
        assert new["first_name"] == "Łucja" and new["id"] > max(running.store.customer_ids()[:-1])
        assert new["id"] in ids_of(api(running, f"{CUSTOMERS}?orderby=id&per_page=100"))
        updated = fetch(
            f"{running.url}/_sandbox/customers/{new['id']}", method="PUT", body={"billing": {"city": "Łódź"}}
        )
        assert updated.json()["billing"]["city"] == "Łódź"
        assert updated.json()["billing"]["country"] == new["billing"]["country"]
        assert updated.json()["date_modified_gmt"] > new["date_modified_gmt"]
        assert api(running, f"{CUSTOMERS}/{new['id']}").json()["billing"]["city"] == "Łódź"
        assert fetch(f"{running.url}/_sandbox/customers/{new['id']}", method="DELETE").status == 200
        assert api(running, f"{CUSTOMERS}/{new['id']}").status == 404
        assert fetch(f"{running.url}/_sandbox/customers/{new['id']}", method="DELETE").status == 404


def test_served_requests_are_logged_without_credentials(sandbox: RunningSandbox) -> None:
    with structlog.testing.capture_logs() as logs:
        assert api(sandbox, f"{CUSTOMERS}?per_page=1").status == 200
    served = [entry for entry in logs if entry["event"] == "sandbox request served"]
    assert served and served[-1]["log_level"] == "debug" and served[-1]["status"] == 200
    text = json.dumps(logs)
    assert DEFAULT_CONSUMER_KEY not in text and DEFAULT_CONSUMER_SECRET not in text


def test_the_sandbox_refuses_to_listen_beyond_loopback() -> None:
    with (
        pytest.raises(RuntimeError, match="did not start") as raised,
        SandboxThread(SandboxConfig(), host="0.0.0.0"),  # noqa: S104 - the point: it must refuse
    ):
        pass
    assert isinstance(raised.value.__cause__, ValueError)


def test_serve_forever_prints_one_line_and_stops_on_sigterm() -> None:
    script = (
        "from infrastructure.sandbox import SandboxConfig, serve_forever; "
        "serve_forever(SandboxConfig(customers=5), '127.0.0.1', 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        announced = json.loads(line)
        assert announced["url"].startswith("http://127.0.0.1:")
        assert "ck_" not in line and "cs_" not in line
        assert fetch(f"{announced['url']}/_sandbox/stats").status == 200
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        assert rest == b""
