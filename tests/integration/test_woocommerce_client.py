"""The WooCommerce client against the sandbox store, over real sockets, one fault at a time and all at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import oauthlib.oauth1.rfc5849 as oauth1_module
import pytest
from structlog.testing import capture_logs

from infrastructure.adapters.woocommerce import (
    ClientOptions,
    ClientStats,
    StoreCredentials,
    StoreRefused,
    StoreUnavailable,
    WooCommerceClient,
)
from infrastructure.sandbox import Faults, RunningSandbox, SandboxConfig, start_sandbox
from tests.support.scanning import scan

# Small backoff so retries cost milliseconds; a generous circuit so random faults alone never open it.
FAST = ClientOptions(backoff_base_s=0.01, backoff_max_s=0.05, max_retries=8, circuit_threshold=50)


class Activities(list[tuple[str, str, str, dict[str, Any]]]):
    def __call__(self, kind: str, status: str, message: str, details: dict[str, Any]) -> None:
        json.dumps(details)  # details must be JSON-serialisable
        self.append((kind, status, message, details))

    def kinds(self) -> set[str]:
        return {kind for kind, *_ in self}


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def client_for(
    sb: RunningSandbox,
    options: ClientOptions = FAST,
    activities: Activities | None = None,
    *,
    key: str | None = None,
    secret: str | None = None,
    url: str | None = None,
) -> WooCommerceClient:
    credentials = StoreCredentials(key or sb.consumer_key, secret or sb.consumer_secret)
    return WooCommerceClient(url or sb.url, credentials, options, activities)


def busiest_second(sb: RunningSandbox) -> int:
    stats = sb.store.stats
    for name in ("max_per_second", "highest_per_second", "max_requests_per_second", "peak_per_second"):
        if hasattr(stats, name):
            return int(getattr(stats, name))
    raise AssertionError(f"sandbox stats expose no per-second peak: {stats!r}")


def test_scan_returns_every_customer_in_id_order_with_totals() -> None:
    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=797, other_roles=5)) as sb, client_for(sb) as client:
            assert await client.probe() == 797
            ids, pages = await scan(client)
        assert ids == sb.store.customer_ids("customer")
        assert [p.number for p in pages] == list(range(1, 9))
        assert {(p.total, p.total_pages) for p in pages} == {(797, 8)}
        assert client.stats.responses.get(200, 0) >= 9

    run(scenario)


def test_role_all_includes_other_roles() -> None:
    async def scenario() -> None:
        async with (
            start_sandbox(SandboxConfig(customers=150, other_roles=7)) as sb,
            client_for(sb, ClientOptions(role="all", backoff_base_s=0.01)) as client,
        ):
            ids, _ = await scan(client)
        assert sorted(ids) == sb.store.customer_ids("all")
        assert len(ids) == 157

    run(scenario)


FAULTS: dict[str, tuple[Faults, ClientOptions, Callable[[ClientStats], int]]] = {
    "server_errors": (Faults(error_rate=0.3), ClientOptions(), lambda s: s.failures.get("server_error", 0)),
    "html_pages": (Faults(html_rate=0.3), ClientOptions(), lambda s: s.failures.get("html", 0)),
    "truncated_json": (
        Faults(truncated_rate=0.3),
        ClientOptions(),
        lambda s: s.failures.get("truncated", 0) + s.failures.get("connection", 0),
    ),
    "slow_pages_time_out": (
        Faults(slow_rate=0.3, slow_ms=1000),
        ClientOptions(timeout_s=0.3),
        lambda s: s.failures.get("timeout", 0),
    ),
    "rate_limited": (Faults(rate_limit=10), ClientOptions(concurrency=8), lambda s: s.rate_limited),
    "latency": (Faults(latency_ms=50), ClientOptions(), lambda s: 1),
    "all_together": (
        Faults(
            latency_ms=5,
            rate_limit=30,
            error_rate=0.1,
            html_rate=0.1,
            truncated_rate=0.1,
            slow_rate=0.1,
            slow_ms=1000,
        ),
        ClientOptions(timeout_s=0.3),
        lambda s: s.retries,
    ),
}


@pytest.mark.parametrize("name", FAULTS)
def test_scan_survives_fault(name: str) -> None:
    faults, extra, evidence = FAULTS[name]
    options = ClientOptions(
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_retries=8,
        circuit_threshold=50,
        timeout_s=extra.timeout_s,
        concurrency=extra.concurrency,
    )
    activities = Activities()

    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=797, faults=faults)) as sb:
            with capture_logs() as logs:
                async with client_for(sb, options, activities) as client:
                    ids, _ = await scan(client)
                    assert sorted(await client.all_ids()) == sb.store.customer_ids("customer")
            assert ids == sb.store.customer_ids("customer")
            assert evidence(client.stats) > 0, client.stats
            if name != "latency":
                assert client.stats.retries > 0
                assert "request_retried" in activities.kinds() or "rate_limited" in activities.kinds()
                assert any(entry["event"] == "store_request_retried" for entry in logs)
            if name == "rate_limited":
                assert "rate_limited" in activities.kinds()
            text = repr(logs) + repr(activities)
            for secret in (sb.consumer_key, sb.consumer_secret, "oauth_signature=", "oauth_nonce="):
                assert secret not in text

    run(scenario)


def test_wrong_key_is_refused_at_once_with_the_stores_message_and_no_secret() -> None:
    async def scenario() -> None:
        async with (
            start_sandbox(SandboxConfig(customers=10)) as sb,
            client_for(sb, key="ck_wrong_key_123", secret="cs_very_secret_456") as client,
        ):
            with pytest.raises(StoreRefused) as caught:
                await client.probe()
            assert client.stats.requests == 1
        error = caught.value
        assert error.status == 401
        assert error.code == "woocommerce_rest_authentication_error"
        assert "consumer key is invalid" in str(error).lower()
        assert "read permission" in str(error).lower()
        assert "\n" not in str(error)
        for secret in ("ck_wrong_key_123", "cs_very_secret_456", "oauth_"):
            assert secret not in str(error) + repr(error.args) + error.hint

    run(scenario)


def test_bad_secret_is_refused_as_a_signature_mismatch() -> None:
    async def scenario() -> None:
        async with (
            start_sandbox(SandboxConfig(customers=10)) as sb,
            client_for(sb, secret="cs_not_the_secret") as client,
        ):
            with pytest.raises(StoreRefused) as caught:
                async for _ in client.pages():
                    pass
        assert caught.value.status == 401
        assert "signature" in str(caught.value).lower()
        assert "cs_not_the_secret" not in str(caught.value)

    run(scenario)


def test_a_refused_nonce_is_signed_afresh_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    real = oauth1_module.generate_nonce
    reused = iter(["same-nonce", "same-nonce"])
    monkeypatch.setattr(oauth1_module, "generate_nonce", lambda: next(reused, None) or real())

    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=10)) as sb, client_for(sb) as client:
            assert await client.probe() == 10
            assert await client.probe() == 10  # first try reuses the nonce; the retry is signed afresh
        assert client.stats.failures == {"auth_clock": 1}
        assert client.stats.responses == {200: 2, 401: 1}

    run(scenario)


def test_a_nonce_refused_every_time_ends_with_a_hint_about_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oauth1_module, "generate_nonce", lambda: "always-the-same")

    async def scenario() -> None:
        options = ClientOptions(max_retries=2, backoff_base_s=0.01)
        async with start_sandbox(SandboxConfig(customers=10)) as sb, client_for(sb, options) as client:
            await client.probe()
            with pytest.raises(StoreUnavailable) as caught:
                await client.probe()
        assert "nonce" in str(caught.value).lower()
        assert "clock" in caught.value.hint
        assert "always-the-same" not in str(caught.value)

    run(scenario)


def test_https_with_basic_auth_and_the_sandbox_ca() -> None:
    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=250, tls=True)) as sb:
            assert sb.url.startswith("https://")
            assert sb.ca_file
            options = ClientOptions(ca_file=sb.ca_file, backoff_base_s=0.01)
            async with client_for(sb, options) as client:
                assert await client.probe() == 250
                ids, _ = await scan(client)
            assert ids == sb.store.customer_ids("customer")
            async with client_for(sb, ClientOptions(backoff_base_s=0.01)) as untrusting:
                with pytest.raises(StoreRefused) as caught:
                    await untrusting.probe()
            assert "certificate" in str(caught.value).lower()
            async with client_for(sb, options, secret="cs_wrong") as wrong:
                with pytest.raises(StoreRefused) as refused:
                    await wrong.probe()
            assert refused.value.status == 401
            assert "cs_wrong" not in str(refused.value)

    run(scenario)


def test_wrong_url_is_refused_with_a_hint_about_the_site_root() -> None:
    async def scenario() -> None:
        async with (
            start_sandbox(SandboxConfig(customers=10)) as sb,
            client_for(sb, url=sb.url + "/shop") as client,
        ):
            with pytest.raises(StoreRefused) as caught:
                await client.probe()
            assert client.stats.requests == 1
        assert caught.value.status == 404
        assert "site root" in str(caught.value)

    run(scenario)


def test_an_invalid_parameter_is_refused_at_once_and_named() -> None:
    async def scenario() -> None:
        options = ClientOptions(role="wizard", backoff_base_s=0.01)
        async with start_sandbox(SandboxConfig(customers=10)) as sb, client_for(sb, options) as client:
            with pytest.raises(StoreRefused) as caught:
                await client.probe()
            assert client.stats.requests == 1
        assert caught.value.status == 400
        assert caught.value.code == "rest_invalid_param"
        assert "parameter 'role'" in str(caught.value)

    run(scenario)


def test_per_page_outside_1_to_100_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="per_page must be a whole number from 1 to 100"):
        ClientOptions(per_page=101)
    with pytest.raises(ValueError, match="per_page"):
        ClientOptions(per_page=0)


def test_a_store_repeating_its_last_page_ends_the_scan_with_a_warning() -> None:
    activities = Activities()

    async def scenario() -> None:
        # 800 customers: the last real page is full, so only the repetition can end the scan.
        async with (
            start_sandbox(SandboxConfig(customers=800, faults=Faults(repeat_last_page=True))) as sb,
            client_for(sb, FAST, activities) as client,
        ):
            ids, _ = await scan(client)
            assert ids == sb.store.customer_ids("customer")
        warnings = [a for a in activities if a[0] == "store_repeating_pages"]
        assert len(warnings) == 1
        assert warnings[0][1] == "warning"
        assert client.stats.requests < 20

    run(scenario)


def test_max_pages_caps_a_scan() -> None:
    activities = Activities()

    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=500)) as sb:
            options = ClientOptions(per_page=10, max_pages=3, backoff_base_s=0.01)
            async with client_for(sb, options, activities) as client:
                ids, pages = await scan(client)
            assert ids == sb.store.customer_ids("customer")[:30]
        assert [p.number for p in pages] == [1, 2, 3]
        assert "store_page_cap_reached" in activities.kinds()

    run(scenario)


def test_churn_reconciled_finds_every_customer_that_existed_throughout() -> None:
    async def scenario() -> None:
        config = SandboxConfig(customers=797, faults=Faults(churn_every=2))
        async with start_sandbox(config) as sb:
            before = set(sb.store.customer_ids("customer"))
            options = ClientOptions(per_page=50, backoff_base_s=0.01)
            async with client_for(sb, options) as client:
                scanned, _ = await scan(client)
                listed = await client.all_ids()
                found, gone = await client.customers_by_id((listed - set(scanned)) | (set(scanned) - listed))
            after = set(sb.store.customer_ids("customer"))
        assert before != after, "the store did not change during the scan"
        throughout = before & after
        assert throughout - set(scanned), "the scan alone found everything: reconciliation went untested"
        synced = (set(scanned) | set(found)) - gone
        assert throughout <= synced
        assert not gone & after
        assert synced <= before | after

    run(scenario)


def test_customers_by_id_finds_present_and_reports_deleted() -> None:
    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=300, other_roles=3)) as sb:
            all_ids = sb.store.customer_ids("all")
            deleted = set(all_ids[10:15])
            for customer_id in deleted:
                sb.store.delete(customer_id)
            wanted = set(all_ids[:250]) | {10**7}
            async with client_for(sb) as client:
                found, gone = await client.customers_by_id(wanted)
        assert gone == deleted | {10**7}
        assert set(found) == wanted - gone
        assert all(found[i]["id"] == i for i in found)
        assert set(all_ids[-3:]) & set(found) == set(all_ids[-3:]) & wanted

    run(scenario)


def test_rate_is_never_exceeded_in_any_second() -> None:
    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=797)) as sb:
            options = ClientOptions(per_page=50, rate=5, concurrency=8, backoff_base_s=0.01)
            started = time.monotonic()
            async with client_for(sb, options) as client:
                ids, _ = await scan(client)
            elapsed = time.monotonic() - started
            assert ids == sb.store.customer_ids("customer")
            assert busiest_second(sb) <= 5
        # 16-17 requests at 5/s cannot take less than about 3 s: the limiter did slow the scan.
        assert elapsed >= 2.5

    run(scenario)


def test_unavailable_after_exhausted_retries_yields_a_prefix_then_resumes() -> None:
    async def scenario() -> None:
        config = SandboxConfig(customers=797)
        options = ClientOptions(concurrency=1, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02)
        seen: set[int] = set()
        received: list[int] = []
        async with contextlib.AsyncExitStack() as stack:
            sb = await stack.enter_async_context(start_sandbox(config))
            expected = sb.store.customer_ids("customer")
            async with client_for(sb, options) as client:
                pages = client.pages(seen_ids=seen)
                for number in (1, 2):
                    page = await anext(pages)
                    assert page.number == number
                    received.extend(r["id"] for r in page.records)
                await stack.aclose()  # the store goes away mid-scan
                with pytest.raises(StoreUnavailable) as caught:
                    await anext(pages)
                assert client.stats.failures.get("connection", 0) == 3
        assert "3 attempts" in str(caught.value)
        assert received == expected[:200]
        # A resumed scan from the first page not recorded completes the store.
        async with start_sandbox(config) as again, client_for(again, options) as client:
            rest, pages_after = await scan(client, start_page=3, seen_ids=seen)
        assert pages_after[0].number == 3
        assert received + rest == expected

    run(scenario)


def test_unavailable_with_concurrency_still_yields_a_contiguous_prefix() -> None:
    async def scenario() -> None:
        options = ClientOptions(concurrency=4, per_page=20, max_retries=1, backoff_base_s=0.01)
        numbers: list[int] = []
        async with contextlib.AsyncExitStack() as stack:
            sb = await stack.enter_async_context(start_sandbox(SandboxConfig(customers=797)))
            async with client_for(sb, options) as client:
                pages = client.pages()
                numbers.append((await anext(pages)).number)
                await stack.aclose()
                with pytest.raises(StoreUnavailable):
                    async for page in pages:
                        numbers.append(page.number)
        assert numbers == list(range(1, len(numbers) + 1))
        assert len(numbers) < 40

    run(scenario)


def test_circuit_opens_after_consecutive_failures_and_stops_calling_the_store() -> None:
    activities = Activities()

    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=50, faults=Faults(error_rate=1.0))) as sb:
            options = ClientOptions(
                concurrency=1, max_retries=10, circuit_threshold=3, circuit_reset_s=60, backoff_base_s=0.01
            )
            async with client_for(sb, options, activities) as client:
                with pytest.raises(StoreUnavailable) as caught:
                    await client.probe()
                assert client.stats.requests == 3
        assert caught.value.code == "wcsync_circuit_open"
        assert [a[:2] for a in activities if a[0].startswith("circuit")] == [("circuit_opened", "error")]

    run(scenario)


def test_circuit_half_opens_and_closes_when_the_store_recovers() -> None:
    activities = Activities()

    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=797, faults=Faults(error_rate=0.3))) as sb:
            options = ClientOptions(
                concurrency=1,
                max_retries=10,
                circuit_threshold=1,
                circuit_reset_s=0.005,
                backoff_base_s=0.02,
                backoff_max_s=0.04,
            )
            async with client_for(sb, options, activities) as client:
                ids, _ = await scan(client)
            assert ids == sb.store.customer_ids("customer")
        kinds = [a[0] for a in activities if a[0].startswith("circuit")]
        assert kinds and kinds[0] == "circuit_opened"
        assert kinds.count("circuit_closed") == kinds.count("circuit_opened")

    run(scenario)


def test_797_customers_at_300_ms_latency_scan_well_under_a_second_and_a_half() -> None:
    async def scenario() -> None:
        async with start_sandbox(SandboxConfig(customers=797, faults=Faults(latency_ms=300))) as sb:
            started = time.monotonic()
            async with client_for(sb, ClientOptions()) as client:
                ids, _ = await scan(client)
            elapsed = time.monotonic() - started
            assert ids == sb.store.customer_ids("customer")
        # Two rounds of four concurrent pages; page-by-page fetching would take 2.4 s.
        assert elapsed < 1.0

    run(scenario)
