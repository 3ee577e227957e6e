"""What the dashboard's pages show, shaped from read-model rows (infrastructure/api/dashboard/views.py): pure
functions, so plain unit tests: rates and ETA, the chart's points and SVG, durations, the stores' words;
and the sign-in's ``next`` (guard.safe_next), which must never leave the server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from infrastructure.api.dashboard import guard, views
from infrastructure.support.errors import ConfigurationError

T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def status(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "queueId": "q",
        "state": "processing",
        "storeUrl": "https://shop.example",
        "totalCount": 100,
        "doneCount": 40,
        "failedCount": 5,
        "cancelledCount": 5,
        "createdCount": 30,
        "updatedCount": 5,
        "unchangedCount": 5,
        "draftCount": 50,
        "processCount": 1,
        "isActionRequired": False,
        "actionRequiredReason": None,
        "lastProcessDate": T0.isoformat(),
        "createdAt": T0.isoformat(),
        "progress": 45.0,
    }
    base.update(overrides)
    return base


def test_rates_need_samples_spanning_a_few_seconds_and_forget_the_oldest_queues() -> None:
    rates = views.Rates(window_s=30, min_span_s=3, max_queues=2)
    assert rates.observe("a", 10, 0.0) is None
    assert rates.observe("a", 20, 2.0) is None  # 2 s of samples: too little
    assert rates.observe("a", 40, 4.0) == pytest.approx(7.5)  # 30 lines in 4 s
    # Only the last window counts: a burst long ago does not inflate it.
    for second in range(5, 60):
        rates.observe("a", 40 + second, float(second))
    assert rates.observe("a", 100, 60.0) == pytest.approx(1.0, rel=0.1)
    # A count that goes back (a rebuilt read model) starts again rather than answer a negative rate.
    assert rates.observe("a", 3, 61.0) is None
    rates.observe("b", 1, 0.0)
    rates.observe("c", 1, 0.0)
    assert rates.observe("a", 5, 70.0) is None  # "a" was forgotten: the least recently seen of three


def test_a_row_shows_rate_and_eta_only_for_a_queue_that_moves() -> None:
    moving = views.queue_row(status(), rate=10.0)
    assert (moving["processed"], moving["total"], moving["done"], moving["failed"]) == (50, 100, 40, 5)
    assert moving["rate"] == "10.0 lines/s" and moving["eta"] == "5 s"
    slow = views.queue_row(status(), rate=0.01)
    assert slow["eta"] == "1 h 23 min"
    done = views.queue_row(status(state="done"), rate=10.0)
    assert (done["rate"], done["eta"]) == (views.NOTHING, "done")
    failed = views.queue_row(status(state="failed", isActionRequired=True, actionRequiredReason="3 lines"))
    assert (failed["rate"], failed["eta"], failed["reason"]) == (views.NOTHING, views.NOTHING, "3 lines")
    assert views.queue_row(status(actionRequiredReason="stale"))["reason"] == ""  # not required: not shown
    assert views.queue_row(status(), rate=0.0)["eta"] == views.NOTHING


def test_lines_left_are_never_zero_seconds_away() -> None:
    almost = status(doneCount=89, failedCount=5, cancelledCount=5)  # 1 line of 100 left
    assert views.eta_text(almost, 1000.0) == "1 s"
    assert views.eta_text(almost, 0.4) == "3 s"
    assert views.eta_text(status(doneCount=90, failedCount=5, cancelledCount=5), 1000.0) == views.NOTHING


def test_the_average_rate_is_the_first_runs_only() -> None:
    now = T0 + timedelta(seconds=10)
    assert views.average_rate(status(), now) == pytest.approx(5.0)  # 50 lines in 10 s
    assert views.average_rate(status(processCount=2), now) is None  # a retry: earlier lines would count
    assert views.average_rate(status(state="done"), now) is None
    assert views.average_rate(status(lastProcessDate=None), now) is None


def test_durations_read_as_people_say_them() -> None:
    assert [views.duration(s) for s in (0, 59.6, 61, 3600, 3 * 86400 + 7200)] == [
        "0 s",
        "1 min 00 s",
        "1 min 01 s",
        "1 h 00 min",
        "3 d 2 h",
    ]


def _bucket(seconds: int, **counts: Any) -> dict[str, Any]:
    return {"at": (T0 + timedelta(seconds=seconds)).isoformat(), **counts}


def test_progress_points_add_up_each_outcome_over_time() -> None:
    buckets = [
        _bucket(1, created=0, updated=0, unchanged=5, failed=0),
        _bucket(2, created=7, updated=3, unchanged=1, failed=0),
        _bucket(3, failed=1),
        _bucket(4, created=2, updated=True, unchanged=-4),  # not counts: ignored
        {"at": "not a time", "created": 50},
    ]
    points = views.progress_points(buckets)
    assert [point.counts for point in points] == [(0, 0, 5, 0), (7, 3, 6, 0), (7, 3, 6, 1), (9, 3, 6, 1)]
    assert [point.at for point in points] == [T0 + timedelta(seconds=s) for s in (1, 2, 3, 4)]


class _Svg(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[str, str] = {}
        self.texts: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "path" and found.get("data-outcome"):
            self.paths[str(found["data-outcome"])] = str(found["d"])

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def test_the_chart_is_an_svg_with_a_line_per_outcome_and_its_counts_for_screen_readers() -> None:
    svg = views.chart_svg(views.progress_points([_bucket(0, created=4), _bucket(60, failed=1)]))
    parsed = _Svg()
    parsed.feed(svg)
    assert parsed.tags[0] == "svg" and "script" not in parsed.tags
    assert set(parsed.paths) == {"created", "updated", "unchanged", "failed"}
    assert parsed.paths["created"].startswith("M56.0,") and " L624.0," in parsed.paths["created"]
    assert "4 created, 0 updated, 0 unchanged, 1 failed" in parsed.texts
    assert "2026-12-01 14:00:00 UTC" in parsed.texts and "2026-12-01 14:01:00 UTC" in parsed.texts
    # Each time label says its UTC instant for the page's script to show in the viewer's zone.
    assert 'data-time="2026-12-01T14:00:00Z"' in svg and 'data-time="2026-12-01T14:01:00Z"' in svg
    empty = _Svg()
    empty.feed(views.chart_svg([]))
    assert set(empty.paths) == {"created", "updated", "unchanged", "failed"}


def test_times_are_shown_in_utc_with_a_z_and_unreadable_ones_are_none() -> None:
    assert views.utc_iso("2026-12-01T15:00:00+01:00") == "2026-12-01T14:00:00Z"
    assert views.utc_title("2026-12-01T15:00:00+01:00") == "2026-12-01 14:00:00 UTC"
    assert views.utc_iso("yesterday") is None and views.utc_title(None) == ""


def test_the_stores_words() -> None:
    topics = ("customer.created", "customer.updated", "customer.deleted")
    assert views.webhook_states({"webhooksInstalled": False}, {}, topics) == "not installed"
    assert views.webhook_states({"webhooksInstalled": True}, {"customer.updated": "disabled"}, topics) == (
        "customer.created active, customer.updated disabled, customer.deleted active"
    )
    assert views.schedule_text([]) == "none"
    assert views.schedule_text([{"every": "1h", "nextDueAt": "2026-12-01T15:00:00+00:00"}]) == (
        "every 1h, next 2026-12-01 15:00:00 UTC"
    )
    assert views.outcome_text(None) == "never synced"
    assert views.outcome_text(status(state="failed", failedCount=2)) == "failed, 2 failed"


@pytest.mark.parametrize(
    ("asked", "goes"),
    [
        ("/queues/0b9f", "/queues/0b9f"),
        ("/stores", "/stores"),
        (None, "/"),
        ("", "/"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/queues/../../etc", "/"),
        ("/queues/\r\nSet-Cookie:x", "/"),
        ("/" + "a" * 300, "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_a_sign_in_only_goes_on_to_a_path_of_this_server(asked: str | None, goes: str) -> None:
    assert guard.safe_next(asked) == goes


def _request(headers: dict[str, str], scheme: str = "http") -> web.Request:
    return make_mocked_request("POST", "/logout", headers={"Host": "dash.example:8000", **headers}).clone(
        scheme=scheme
    )


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, None),  # an older browser sends neither: the CSRF value alone decides
        ({"Origin": "http://dash.example:8000"}, None),
        ({"Origin": "https://dash.example:8000"}, None),  # behind a proxy that ends TLS and keeps Host
        ({"Origin": "http://dash.example:8000", "Sec-Fetch-Site": "same-origin"}, None),
        ({"Origin": "http://evil.example"}, "origin"),
        ({"Origin": "http://dash.example:8001"}, "origin"),
        ({"Origin": "http://dash.example"}, "origin"),
        ({"Origin": "null"}, "origin"),
        ({"Origin": "ftp://dash.example:8000"}, "origin"),
        ({"Origin": "http://["}, "origin"),  # urlsplit raises on it: refused, never a 500
        ({"Origin": "http://dash.example:port"}, "origin"),
        ({"Origin": "http://dash.example:8000/path"}, "origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "fetch-site"),
        ({"Sec-Fetch-Site": "same-site"}, "fetch-site"),
    ],
)
def test_a_form_counts_as_this_servers_own_by_its_origin_and_fetch_site(
    headers: dict[str, str], why: str | None
) -> None:
    assert guard.Site().refusal(_request(headers)) == why


@pytest.mark.parametrize(
    ("public", "origin", "why"),
    [
        ("https://ops.example.com", "https://ops.example.com", None),
        ("https://ops.example.com", "https://OPS.example.com:443", None),
        ("https://ops.example.com", "http://ops.example.com", "origin"),  # another origin: the scheme counts
        ("https://ops.example.com", "https://ops.example.com:8443", "origin"),
        ("https://ops.example.com", "https://evil.example", "origin"),
        (None, "https://ops.example.com", "origin"),  # the Host a proxy rewrote, and no --public-origin
    ],
)
def test_behind_a_proxy_that_rewrites_host_the_public_origin_is_accepted(
    public: str | None, origin: str, why: str | None
) -> None:
    site = guard.Site(None if public is None else guard.parse_public_origin(public))
    request = make_mocked_request("POST", "/logout", headers={"Host": "127.0.0.1:8000", "Origin": origin})
    assert site.refusal(request) == why


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://Ops.Example.com/", "https://ops.example.com"),
        ("https://ops.example.com:443", "https://ops.example.com"),
        ("http://ops.example.com:8080", "http://ops.example.com:8080"),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_a_public_origin_is_normalised(given: str, origin: str) -> None:
    assert guard.parse_public_origin(given) == origin


@pytest.mark.parametrize(
    "given",
    [
        "ops.example.com",
        "ftp://ops.example.com",
        "https://ops.example.com/dash",
        "https://u:p@ops.example.com",
        "https://ops.example.com?x=1",
        "https://[",
        "https://ops.example.com:99999",
        "",
    ],
)
def test_a_public_origin_that_is_no_origin_is_a_configuration_error(given: str) -> None:
    with pytest.raises(ConfigurationError, match="--public-origin"):
        guard.parse_public_origin(given)


def test_the_cookies_are_http_only_strict_and_secure_over_tls() -> None:
    cases = (
        (guard.Site(), "http", False),
        (guard.Site(), "https", True),
        (guard.Site("https://ops.example.com"), "http", True),  # a TLS proxy in front: the browser uses TLS
        (guard.Site("http://ops.example.com"), "http", False),
    )
    for site, scheme, secure in cases:
        response = web.Response()
        request = _request({}, scheme)
        site.set_cookie(response, request, guard.SESSION_COOKIE, "value")
        # Secure cookies carry the __Host- prefix: a browser keeps them only Secure, Path=/, without Domain.
        name = "__Host-" + guard.SESSION_COOKIE if secure else guard.SESSION_COOKIE
        morsel = response.cookies[name]
        assert (morsel["httponly"], morsel["samesite"], morsel["path"]) == (True, "Strict", "/")
        assert bool(morsel["secure"]) is secure, (site, scheme)
        assert site.cookie_name(request, guard.SESSION_COOKIE) == name
