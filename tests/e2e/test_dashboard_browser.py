"""Issue 14's dashboard in a real browser: headless Chromium (Debian's) driven by Playwright over a real
`wcsync serve`, its own worker running the syncs of a registered sandbox store (docs/DASHBOARD.md, "Page
contract", is what the selectors come from).

An operator signs in (by mouse, and by keyboard alone), watches a running sync's progress bar advance with
no reload, opens a queue, reads its failed lines, has the store fix them and clicks retry until the queue
is `done`, force-finishes another with a reason. A viewer sees no action and a forged POST with its cookie
is refused; another org reaches none of these queues by URL. A phone's viewport has no page-wide
horizontal scroll, and every time shown carries its UTC value. Every page visited is a screenshot under
tests/artifacts/dashboard/; any console error the test did not provoke, uncaught script error or request
to anywhere but the server fails the test (a CSP violation is a console error).

The module shares one server (on PostgreSQL, procrastinate's worker), one store and three queues made
before the tests (``queues``); a test that changes the store or a queue says so, and the others read the
end state from the JSON API rather than assume the order they run in.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from infrastructure.api.dashboard.guard import CsrfRefused
from infrastructure.sandbox import RunningSandbox
from tests.support.api import Api
from tests.support.browser import ACME, EXPECT_TIMEOUT_MS, GLOBEX, Dashboard, Watched, sign_in
from tests.support.sandbox_admin import admin
from tests.support.waiting import wait_until

CUSTOMERS = 300
INVALID = 3
pytestmark = [
    pytest.mark.sandbox(shared=True, customers=CUSTOMERS, invalid=INVALID),
    pytest.mark.slow,
]
# A sync that runs for several seconds (30 batches, 200 ms apart): long enough to watch, short for a test.
SLOW = {"perPage": 20, "batchSize": 10, "batchDelayMs": 200}
_EDIT_SEEDS = itertools.count(1)
ACTIONS = ("retry", "resume", "force-done")
UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?Z$")
PAGES = ("/", "/stores", "/health")


@dataclass
class Queues:
    """ACME's queues made before the tests: three syncs of the store that ended `failed` (its invalid
    customers): one to retry, one to force-done, and one nobody may change (the viewer's and the other org's
    forged POSTs aim at it: a retry would succeed on it once the store is fixed)."""

    to_retry: str
    to_force: str
    untouched: str


def _api(dashboard: Dashboard, org: str = ACME, role: str = "operator") -> Api:
    return Api(dashboard.url, token=dashboard.token(org, role))


def _status(dashboard: Dashboard, queue_id: str) -> dict[str, Any]:
    return _api(dashboard).status(ACME, queue_id)


def _start(dashboard: Dashboard, **options: Any) -> str:
    """A sync of the registered store through the JSON API (a job the server's worker runs); its queue id."""
    code, answer = _api(dashboard).sync(org_id=ACME, store_id=dashboard.store_id, options=options)
    assert code == 202, answer
    return str(answer["data"]["queueId"])


def _start_slow(dashboard: Dashboard, store: RunningSandbox) -> str:
    """A sync that runs for several seconds: every customer edited in the store first (a mirrored store's
    unchanged customers are no batches at all), then processed 10 at a time, 200 ms apart."""
    seed = next(_EDIT_SEEDS)  # a new seed, new phone numbers: each edit is a change
    assert (
        admin(store, "POST", "/_sandbox/customers/edit-random", {"count": CUSTOMERS, "seed": seed})["edited"]
        == CUSTOMERS
    )
    return _start(dashboard, **SLOW)


def _ended(dashboard: Dashboard, queue_id: str) -> dict[str, Any]:
    """The queue's status once no run holds it any more."""
    return wait_until(
        lambda: (
            (s := _status(dashboard, queue_id))["state"] in ("done", "failed") and not s["isRunning"] and s
        )
    )


@pytest.fixture(scope="module")
def queues(dashboard: Dashboard) -> Queues:
    made = [_start(dashboard) for _ in range(3)]  # deferred at once, in this order; the worker runs them
    for queue_id in made:
        ended = _ended(dashboard, queue_id)
        assert (ended["state"], ended["failedCount"]) == ("failed", INVALID), ended
    return Queues(*made)


@pytest.fixture
def operator(watched: Watched, dashboard: Dashboard) -> Iterator[Page]:
    """ACME's operator, signed in on the test's page."""
    sign_in(watched.page, dashboard.token(ACME, "operator"))
    yield watched.page


def _signed_in_context(browser: Browser, dashboard: Dashboard, org: str, role: str) -> BrowserContext:
    """Another browser (context) signed in as ``org``'s ``role``: its own cookies, beside the test's page."""
    context = browser.new_context(base_url=dashboard.url)
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    sign_in(context.new_page(), dashboard.token(org, role))
    return context


def _row(page: Page, queue_id: str) -> Any:
    return page.locator(f'#queues tr[data-queue-id="{queue_id}"]')


def _csrf(page: Page) -> str:
    """The page's own CSRF value (every state-changing form has it; the sign-out form always)."""
    value = page.locator("form#logout-form input[type=hidden][name=csrf]").get_attribute("value")
    assert value, "the sign-out form has no csrf field"
    return value


# ----- signing in ------------------------------------------------------------------------------------------


def test_a_page_without_a_session_sends_the_browser_to_sign_in_and_back(
    watched: Watched, dashboard: Dashboard, queues: Queues
) -> None:
    page = watched.page
    assert page.request.get("/live/queues").status == 401  # the live JSON: 401, not a redirect
    page.goto(f"/queues/{queues.to_retry}")
    expect(page).to_have_url(re.compile(r"/login(\?|$)"))
    expect(page.locator("form#login-form")).to_be_visible()
    expect(page).to_have_title(re.compile(r"^wcsync · "))
    watched.screenshot("login")
    # Signed in from there, the browser is back on the page it asked for.
    page.get_by_label("API token").fill(dashboard.token(ACME, "viewer"))
    page.locator("form#login-form button[type=submit]").click()
    expect(page).to_have_url(re.compile(rf"/queues/{queues.to_retry}$"))
    expect(page.locator("h1")).to_contain_text(queues.to_retry)


def test_the_session_cookie_is_http_only_strict_and_not_the_token(
    watched: Watched, operator: Page, dashboard: Dashboard
) -> None:
    token = dashboard.token(ACME, "operator")
    cookies = {cookie["name"]: cookie for cookie in operator.context.cookies()}
    session = cookies["wcsync_session"]
    assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Strict", "/"), session
    assert session["secure"] is False  # plain HTTP on loopback; Secure comes with TLS
    assert token not in session["value"] and all(token not in c["value"] for c in cookies.values())
    assert "wcsync_session" not in operator.evaluate("document.cookie")  # no script can read it
    for path in PAGES:
        answer = operator.goto(path)
        assert answer is not None and answer.status == 200
        assert token not in operator.content()
        headers = answer.headers
        assert "default-src 'self'" in headers.get("content-security-policy", ""), (path, headers)
        assert "no-store" in headers.get("cache-control", ""), (path, headers)


def test_a_wrong_token_is_refused_without_echo_then_the_right_one_signs_in(
    watched: Watched, dashboard: Dashboard, queues: Queues
) -> None:
    page = watched.page
    watched.allow_console("status of 401")
    page.goto("/login")
    field = page.get_by_label("API token")
    expect(field).to_have_attribute("type", "password")
    wrong = "wcs_" + uuid.uuid4().hex
    field.fill(wrong)
    with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as sent:
        page.locator("form#login-form button[type=submit]").click()
    assert sent.value.status == 401
    expect(page.locator("[role=alert]")).to_contain_text("not accepted")
    assert wrong not in page.content()
    watched.screenshot("login-refused")

    page.get_by_label("API token").fill(dashboard.token(ACME, "operator"))
    page.locator("form#login-form button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page).to_have_title("wcsync · Queues")
    expect(page.locator("h1")).to_contain_text("Queues")
    nav = page.locator("nav")
    for name, href in (("Queues", "/"), ("Stores", "/stores"), ("Health", "/health")):
        expect(nav.get_by_role("link", name=name)).to_have_attribute("href", href)
    expect(page.locator("form#logout-form button[type=submit]")).to_be_visible()
    # Newest first: the queue made second is above the one made first.
    ids = page.locator("#queues tr[data-queue-id]").evaluate_all("rows => rows.map(r => r.dataset.queueId)")
    assert ids.index(queues.to_force) < ids.index(queues.to_retry), ids
    watched.screenshot("queues")


def test_sign_in_by_keyboard_alone(watched: Watched, dashboard: Dashboard) -> None:
    page = watched.page
    page.goto("/login")
    field = page.locator("input[name=token]")
    for _ in range(10):  # Tab through whatever comes first (a skip link, the header) to the field
        page.keyboard.press("Tab")
        if field.evaluate("element => element === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the token field")
    page.keyboard.type(dashboard.token(ACME, "operator"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("table#queues")).to_be_visible()
    # And on to the sign-out button by keyboard: it is reachable and visibly focused.
    button = page.locator("form#logout-form button[type=submit]")
    for _ in range(40):
        page.keyboard.press("Tab")
        if button.evaluate("element => element === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the sign-out button")
    outline = button.evaluate("e => { const s = getComputedStyle(e); return [s.outlineStyle, s.boxShadow]; }")
    assert outline[0] != "none" or outline[1] != "none", f"no visible focus on the sign-out button: {outline}"
    watched.screenshot("keyboard-focus")


def test_signing_out_ends_the_session_on_the_server(
    watched: Watched, operator: Page, browser: Browser, dashboard: Dashboard
) -> None:
    watched.allow_console("status of 401")
    assert operator.request.get("/live/queues").status == 200
    kept = operator.context.cookies()  # what a thief of the cookie would hold
    operator.locator("form#logout-form button[type=submit]").click()
    expect(operator).to_have_url(re.compile(r"/login(\?|$)"))
    operator.goto("/")
    expect(operator).to_have_url(re.compile(r"/login(\?|$)"))
    # The old cookie, replayed from another browser, opens nothing: the session is gone, not just forgotten.
    replay = browser.new_context(base_url=dashboard.url)
    try:
        replay.add_cookies(kept)
        assert replay.request.get("/live/queues").status == 401
        again = replay.new_page()
        again.goto("/")
        expect(again).to_have_url(re.compile(r"/login(\?|$)"))
    finally:
        replay.close()


# ----- live progress -------------------------------------------------------------------------------------


def _progress(page: Page, queue_id: str) -> dict[str, Any]:
    progress: dict[str, Any] = page.evaluate(
        """queueId => {
            const row = document.querySelector(`#queues tr[data-queue-id="${queueId}"]`);
            const bar = row && row.querySelector("progress[data-field=progress]");
            return {
                value: bar ? bar.value : null,
                max: bar ? bar.max : null,
                state: row ? row.dataset.state : null,
                updatedAt: document.querySelector("#queues").dataset.updatedAt || null,
            };
        }""",
        queue_id,
    )
    return progress


def _counts(page: Page) -> dict[str, Any]:
    counts: dict[str, Any] = page.evaluate(
        """() => {
            const counts = document.querySelector("#counts");
            const number = name => {
                const cell = counts && counts.querySelector(`[data-field=${name}]`);
                const digits = cell ? cell.textContent.replace(/[^0-9]/g, "") : "";
                return digits === "" ? null : Number(digits);
            };
            const state = document.querySelector("[data-field=state]");
            return {
                done: number("done"),
                total: number("total"),
                state: state ? state.textContent.trim() : null,
                updatedAt: counts ? counts.dataset.updatedAt || null : null,
            };
        }"""
    )
    return counts


class Samples:
    """What a page showed at each of its refreshes (a new ``updatedAt``), sampled by the test."""

    def __init__(self, read: Any) -> None:
        self.read = read
        self.seen: list[dict[str, Any]] = []

    def sample(self) -> None:
        now = self.read()
        if now["updatedAt"] and (not self.seen or now["updatedAt"] != self.seen[-1]["updatedAt"]):
            self.seen.append(now)

    def advanced(self, field: str) -> bool:
        """Two refreshes while the queue was processing, the second showing more lines than the first."""
        running = [s for s in self.seen if "processing" in (s["state"] or "") and s[field]]
        return len(running) >= 2 and running[-1][field] > running[0][field]


def _no_reload(page: Page) -> list[str]:
    """Marks the page; the list fills with its main frame's navigations (a reload is one)."""
    navigations: list[str] = []
    page.on(
        "framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None
    )
    page.evaluate("window.wcsyncTestMark = 'no reload'")
    return navigations


def test_a_running_sync_advances_live_on_the_queues_page_and_its_own(
    watched: Watched, operator: Page, dashboard: Dashboard, queues: Queues, shared_sandbox: RunningSandbox
) -> None:
    page = operator
    navigations = _no_reload(page)
    queue_id = _start_slow(dashboard, shared_sandbox)
    # The queue's own page, beside the list (the same session, another tab), opened while it is young.
    queue_page = page.context.new_page()
    queue_page.goto(f"/queues/{queue_id}")
    expect(queue_page.locator("h1")).to_contain_text(queue_id)
    queue_navigations = _no_reload(queue_page)

    row = _row(page, queue_id)
    expect(row).to_have_count(1)  # a new queue appears at the top by itself
    expect(page.locator("#queues tr[data-queue-id]").first).to_have_attribute("data-queue-id", queue_id)
    expect(row.locator("a[href]").first).to_have_attribute("href", f"/queues/{queue_id}")
    # Retry clicked while the run holds the queue (a third tab, early in the run): the API's queue_busy.
    busy_page = page.context.new_page()
    busy_page.goto(f"/queues/{queue_id}")
    watched.allow_console("status of 409")
    wait_until(lambda: _status(dashboard, queue_id)["isRunning"])
    busy_page.locator("form[data-action=retry] button[type=submit]").click()
    busy = busy_page.locator("#action-error[role=alert]")
    expect(busy).to_have_attribute("data-code", "queue_busy")
    watched.screenshot("queue-busy", busy_page)
    busy_page.close()
    listed = Samples(lambda: _progress(page, queue_id))
    own = Samples(lambda: _counts(queue_page))

    def both_advanced() -> bool:
        listed.sample()
        own.sample()
        return listed.advanced("value") and own.advanced("done")

    wait_until(both_advanced, deadline_s=30, interval_s=0.1)
    watched.screenshot("queues-running")
    watched.screenshot("queue-running", queue_page)
    running = [s for s in listed.seen if s["state"] == "processing" and s["value"]]
    assert running[-1]["max"] >= running[-1]["value"] > running[0]["value"] > 0, listed.seen
    for cell in ("state", "store", "done", "failed", "rate", "eta", "reason"):
        expect(row.locator(f"[data-field={cell}]")).to_have_count(1)
    expect(row.locator("[data-field=store]")).to_contain_text("127.0.0.1")

    # To the end, live, with no reload: both show the state and counts the API ends with (`failed` for
    # the store's invalid customers, unless a test fixed them before).
    ended = _ended(dashboard, queue_id)
    expect(row).to_have_attribute("data-state", ended["state"])
    expect(row.locator("[data-field=state]")).to_have_text(re.compile(ended["state"]))
    expect(row.locator("[data-field=failed]")).to_have_text(re.compile(rf"\b{ended['failedCount']}\b"))
    expect(row.locator("[data-field=done]")).to_have_text(re.compile(rf"\b{ended['doneCount']}\b"))
    wait_until(lambda: _progress(page, queue_id)["value"] == CUSTOMERS)
    assert _progress(page, queue_id)["max"] == CUSTOMERS
    expect(queue_page.locator("[data-field=state]").first).to_have_text(re.compile(ended["state"]))
    counts = queue_page.locator("#counts")
    expect(counts.locator("[data-field=done]")).to_have_text(re.compile(rf"\b{ended['doneCount']}\b"))
    expect(counts.locator("[data-field=failed]")).to_have_text(re.compile(rf"\b{ended['failedCount']}\b"))
    expect(queue_page.locator("#chart svg")).to_have_count(1)
    for shown in (page, queue_page):
        assert shown.evaluate("window.wcsyncTestMark") == "no reload"
    assert navigations == [] and queue_navigations == [], (navigations, queue_navigations)
    watched.screenshot("queues-ended")
    watched.screenshot("queue-ended", queue_page)
    # The failed lines are the page's as loaded (the contract refreshes the state, counts, chart and
    # activity live): a reload shows the run's.
    queue_page.reload()
    expect(queue_page.locator("#failed-lines tr[data-line-id]")).to_have_count(ended["failedCount"])


# ----- a queue: failed lines, retry, force-done ----------------------------------------------------------


def test_the_live_queues_table_follows_the_answers_order_and_drops_queues_it_no_longer_lists(
    operator: Page, watched: Watched, queues: Queues
) -> None:
    """The live refresh reconciles the rows to /live/queues: a row out of order is moved back (the same
    element, not a copy), a queue the answer no longer lists (past the newest 100, say) is removed."""
    page = operator
    page.goto("/")
    expect(_row(page, queues.untouched)).to_have_count(1)
    before = page.evaluate(
        """() => {
            const body = document.querySelector("#queues tbody");
            const rows = [...body.rows];
            const last = rows[rows.length - 1];
            last.dataset.marker = "kept";
            body.prepend(last);  // out of the answer's order
            const stale = rows[0].cloneNode(true);
            stale.dataset.queueId = "00000000-0000-4000-8000-000000000000";  // a queue no answer lists
            body.append(stale);
            return {updatedAt: document.querySelector("#queues").dataset.updatedAt, moved: last.dataset.queueId};
        }"""
    )

    def reconciled() -> bool:
        state: dict[str, Any] = page.evaluate(
            """async () => {
                const answer = await (await fetch("/live/queues", {cache: "no-store"})).json();
                const table = document.querySelector("#queues");
                return {
                    updatedAt: table.dataset.updatedAt,
                    shown: [...table.tBodies[0].rows].map((tr) => tr.dataset.queueId),
                    answer: answer.queues.map((q) => q.queueId),
                    marked: [...table.querySelectorAll("tr[data-marker=kept]")].map((tr) => tr.dataset.queueId),
                };
            }"""
        )
        return (
            state["updatedAt"] != before["updatedAt"]
            and state["shown"] == state["answer"]
            and state["marked"] == [before["moved"]]
        )

    wait_until(reconciled, interval_s=0.3)
    expect(page.locator('#queues tr[data-queue-id="00000000-0000-4000-8000-000000000000"]')).to_have_count(0)
    watched.screenshot("queues-reconciled")


def test_a_queues_failed_lines_are_retried_once_the_store_fixed_them(
    watched: Watched,
    operator: Page,
    dashboard: Dashboard,
    queues: Queues,
    shared_sandbox: RunningSandbox,
) -> None:
    page = operator
    queue_id = queues.to_retry
    page.goto(f"/queues/{queue_id}")
    expect(page).to_have_title(re.compile(r"^wcsync · "))
    expect(page.locator("h1")).to_contain_text(queue_id)
    expect(page.locator("[data-field=state]").first).to_have_text(re.compile(r"failed"))
    counts = page.locator("#counts")
    for name, value in (("total", CUSTOMERS), ("failed", INVALID), ("done", CUSTOMERS - INVALID)):
        expect(counts.locator(f"[data-field={name}]")).to_have_text(re.compile(rf"\b{value}\b"))
    created = int(re.sub(r"\D", "", counts.locator("[data-field=created]").inner_text()) or -1)
    assert (
        created == CUSTOMERS - INVALID
    )  # the first queue created them all (the second found them unchanged)

    # The failed lines, as the JSON API has them: each customer, its error and attempts.
    code, answer = _api(dashboard).get(f"/api/v1/queues/{queue_id}/failed?org_id={ACME}")
    assert code == 200, answer
    expected = {str(line["wooCustomerId"]): line for line in answer["data"]}
    rows = page.locator("#failed-lines tr[data-line-id]")
    expect(rows).to_have_count(INVALID)
    shown = {row.get_attribute("data-line-id"): row for row in rows.all()}
    assert set(shown) == set(expected)
    for line_id, row in shown.items():
        expect(row.locator("[data-field=error]")).to_contain_text(expected[line_id]["errorMessage"][:60])
        expect(row.locator("[data-field=attempts]")).to_have_text(
            re.compile(rf"\b{expected[line_id]['processCount']}\b")
        )

    # The chart: an SVG drawn by the page itself, a path per outcome.
    chart = page.locator("#chart svg")
    expect(chart).to_have_count(1)
    for outcome in ("created", "updated", "unchanged", "failed"):
        expect(chart.locator(f'path[data-outcome="{outcome}"]')).to_have_count(1)

    # The activity feed, filtered by type.
    items = page.locator("#activity li[data-type]")
    expect(items.first).to_be_visible()
    types = sorted(set(items.evaluate_all("lis => lis.map(li => li.dataset.type)")))
    expect(page.get_by_label("Activity type")).to_be_visible()
    chosen = types[-1]
    page.get_by_label("Activity type").select_option(chosen)
    expect(page.locator("#activity li[data-type]:visible").first).to_be_visible()
    visible = page.locator("#activity li[data-type]:visible").evaluate_all(
        "lis => lis.map(li => li.dataset.type)"
    )
    assert visible and set(visible) == {chosen}, (chosen, visible)
    watched.screenshot("queue-failed")

    # The store fixes them (as an edit in wp-admin would); the operator clicks retry.
    assert admin(shared_sandbox, "POST", "/_sandbox/fix-invalid")["fixed"] >= INVALID
    forms = {action: page.locator(f"form[data-action={action}]") for action in ACTIONS}
    for form in forms.values():  # an operator has every action on a failed queue
        expect(form.locator("button[type=submit]")).to_have_count(1)
    forms["retry"].locator("button[type=submit]").click()
    result = page.locator("#action-result[role=status]")
    expect(result).to_be_visible()
    expect(result).to_have_attribute("data-action", "retry")
    watched.screenshot("queue-retried")
    # The worker runs the retry; the page, live, shows the queue done and no failed line left.
    navigations = _no_reload(page)
    expect(page.locator("[data-field=state]").first).to_have_text(re.compile(r"done"), timeout=30_000)
    assert _ended(dashboard, queue_id)["state"] == "done"
    # The failed lines and the filter's types follow live, without a reload.
    expect(page.locator("#failed-lines tr[data-line-id]")).to_have_count(0)
    expect(page.locator("#no-failed-lines")).to_be_visible()
    expect(page.locator("#activity-type option[value=retry_requested]")).to_have_count(1)
    assert navigations == [] and page.evaluate("window.wcsyncTestMark") == "no reload"
    page.reload()
    expect(page.locator("#failed-lines tr[data-line-id]")).to_have_count(0)
    expect(page.locator("#counts [data-field=failed]")).to_have_text(re.compile(r"\b0\b"))
    expect(page.locator("#counts [data-field=done]")).to_have_text(re.compile(rf"\b{CUSTOMERS}\b"))
    watched.screenshot("queue-done")

    # Nothing left to retry or resume: where the page still offers them, each answers with the API's
    # error, in the page (never a traceback), and changes nothing.
    watched.allow_console("status of 400")
    watched.allow_console("status of 409")
    before = _status(dashboard, queue_id)
    for action in ("retry", "resume"):
        if page.locator(f"form[data-action={action}]").count():
            page.locator(f"form[data-action={action}] button[type=submit]").click()
            error = page.locator("#action-error[role=alert]")
            expect(error).to_have_attribute("data-code", "invalid_state")
            expect(error).to_contain_text("already done")
            watched.screenshot(f"queue-nothing-to-{action}")
    assert _unchanged(before, _status(dashboard, queue_id))


def test_force_done_needs_a_reason_and_records_it(
    watched: Watched, operator: Page, dashboard: Dashboard, queues: Queues
) -> None:
    page = operator
    queue_id = queues.to_force
    page.goto(f"/queues/{queue_id}")
    form = page.locator("form[data-action=force-done]")
    expect(form).to_have_count(1)
    reason = form.get_by_label("Reason")
    expect(reason).to_have_attribute("required", "")
    form.locator("button[type=submit]").click()  # empty: the browser refuses to send it
    assert reason.evaluate("element => element.validity.valueMissing") is True
    expect(page.locator("#action-result")).to_have_count(0)
    assert _status(dashboard, queue_id)["state"] == "failed"

    why = "customers merged by hand in the CRM, ticket 4711"
    reason.fill(why)
    form.locator("button[type=submit]").click()
    result = page.locator("#action-result[role=status]")
    expect(result).to_have_attribute("data-state", "done")
    expect(result).to_have_attribute("data-action", "force-done")
    # The answer's address is the queue's page (history.replaceState): a reload does not post again.
    expect(page).to_have_url(re.compile(rf"/queues/{queue_id}$"))
    page.reload()
    expect(page.locator("#action-result")).to_have_count(0)
    expect(page.locator("[data-field=state]").first).to_have_text(re.compile(r"done"))
    status = _status(dashboard, queue_id)
    assert status["state"] == "done" and status["cancelledCount"] == INVALID, status
    expect(page.locator("#activity")).to_contain_text(why)
    watched.screenshot("queue-force-done")


# ----- who may do what -----------------------------------------------------------------------------------


def _unchanged(before: dict[str, Any], after: dict[str, Any]) -> bool:
    keys = ("state", "processCount", "failedCount", "doneCount", "cancelledCount")
    return all(before[key] == after[key] for key in keys)


def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(
    watched: Watched, browser: Browser, dashboard: Dashboard, queues: Queues
) -> None:
    target = queues.untouched
    page = watched.page
    watched.allow_console("status of 403")
    sign_in(page, dashboard.token(ACME, "viewer"))
    expect(page.locator("nav [data-field=role]")).to_contain_text("viewer")
    page.goto(f"/queues/{target}")
    expect(page.locator("h1")).to_contain_text(target)
    expect(page.locator("#failed-lines tr[data-line-id]")).to_have_count(INVALID)
    expect(page.locator("form[data-action]")).to_have_count(0)
    expect(page.locator("input[name=reason]")).to_have_count(0)
    watched.screenshot("queue-as-viewer")

    # The operator's page has the forms: their action URL, and a CSRF value of the operator's session.
    other = _signed_in_context(browser, dashboard, ACME, "operator")
    try:
        operator_page = other.pages[0]
        operator_page.goto(f"/queues/{target}")
        retry = operator_page.locator("form[data-action=retry]")
        action_url = retry.get_attribute("action")
        stolen = retry.locator("input[type=hidden][name=csrf]").get_attribute("value")
    finally:
        other.close()
    assert action_url == f"/queues/{target}/retry" and stolen
    before = _status(dashboard, target)
    # No CSRF, the operator's stolen one, and the viewer's own valid one: the role alone must refuse that.
    for form in ({}, {"csrf": stolen}, {"csrf": _csrf(page)}):
        answer = page.request.post(action_url, form=form, max_redirects=0)
        assert answer.status == 403, (sorted(form), answer.status)
        assert "Traceback" not in answer.text()
    forced = page.request.post(
        f"/queues/{target}/force-done", form={"csrf": _csrf(page), "reason": "forged"}, max_redirects=0
    )
    assert forced.status == 403
    # A form POSTed from the viewer's page itself (as a forged form would be): the 403 page, with its alert.
    with page.expect_response(
        lambda response: response.request.method == "POST" and response.url.endswith(action_url)
    ) as posted:
        page.evaluate(
            """([url, csrf]) => {
                const form = Object.assign(document.createElement("form"), {method: "post", action: url});
                form.append(Object.assign(document.createElement("input"), {type: "hidden", name: "csrf", value: csrf}));
                document.body.append(form);
                form.submit();
            }""",
            [action_url, stolen],
        )
    assert posted.value.status == 403
    # The CSRF refusal in the page's words (the stolen value is another session's), not any alert.
    expect(page.locator("[role=alert]").first).to_contain_text(CsrfRefused.MESSAGE)
    watched.screenshot("forged-post-refused")
    assert _unchanged(before, _status(dashboard, target))


def test_another_orgs_queue_is_not_reachable_by_url(
    watched: Watched, dashboard: Dashboard, queues: Queues
) -> None:
    page = watched.page
    watched.allow_console("status of 404")
    sign_in(page, dashboard.token(GLOBEX, "operator"))
    expect(page.locator("#queues tr[data-queue-id]")).to_have_count(0)
    expect(page.locator("#no-queues")).to_be_visible()
    before = _status(dashboard, queues.untouched)
    texts = []
    for queue_id in (queues.untouched, str(uuid.uuid4())):
        answer = page.goto(f"/queues/{queue_id}")
        assert answer is not None and answer.status == 404
        expect(page.locator("h1")).to_be_visible()
        texts.append(page.locator("main").inner_text().replace(queue_id, "QID"))
        watched.screenshot("queue-of-another-org")
        assert page.request.get(f"/live/queues/{queue_id}").status == 404
    assert texts[0] == texts[1], texts  # the same page for another org's queue and for no queue at all
    assert queues.untouched not in page.title()
    # Its own valid CSRF value does not let it act on ACME's queue either.
    for action in ACTIONS:
        form = {"csrf": _csrf(page), "reason": "not yours"}
        assert page.request.post(f"/queues/{queues.untouched}/{action}", form=form).status == 404
    assert _unchanged(before, _status(dashboard, queues.untouched))


# ----- every page: stores, health, a phone, times ----------------------------------------------------------


def test_the_stores_and_health_pages(
    watched: Watched, operator: Page, dashboard: Dashboard, queues: Queues
) -> None:
    page = operator
    page.goto("/stores")
    expect(page).to_have_title("wcsync · Stores")
    row = page.locator(f'#stores tr[data-store-id="{dashboard.store_id}"]')
    expect(row).to_have_count(1)
    for cell in ("webhooks", "last-delivery", "schedules", "last-sync", "outcome"):
        expect(row.locator(f"[data-field={cell}]")).to_have_count(1)
    expect(row.locator("[data-field=url]")).to_contain_text("127.0.0.1")
    expect(row.locator('[data-field=last-sync] a[href^="/queues/"]')).to_have_count(1)
    watched.screenshot("stores")

    page.goto("/health")
    expect(page).to_have_title("wcsync · Health")
    # The server's own worker, its heartbeat recent.
    workers = page.locator("#workers tr[data-worker-id]")
    expect(workers.first).to_be_visible()
    expect(workers.first.locator("[data-field=heartbeat-age]")).to_have_text(re.compile(r"\d"))
    expect(page.locator("#jobs")).to_have_attribute("data-waiting", re.compile(r"^\d+$"))
    lag = page.locator("#projection-lag tr[data-projection]")
    expect(lag.first).to_be_visible()
    expect(lag.first.locator("[data-field=lag]")).to_have_text(re.compile(r"\d"))
    watched.screenshot("health")


def _shot_name(path: str) -> str:
    """A screenshot's name for a page: queues, stores, health, queue."""
    return {"": "queues", "queues": "queue"}.get(path.strip("/").split("/")[0], path.strip("/"))


def _overflow(page: Page) -> dict[str, Any]:
    """How far the page is wider than the viewport, and the widest element outside a table doing it."""
    found: dict[str, Any] = page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const wide = [...document.querySelectorAll("body *")]
                .filter(e => !e.closest("table") && e.getBoundingClientRect().right > width + 1)
                .map(e => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${e.className}`);
            return {scroll: document.documentElement.scrollWidth, width, wide: wide.slice(0, 5)};
        }"""
    )
    return found


def test_a_phone_has_no_horizontal_scroll_outside_tables(
    browser: Browser, watched: Watched, dashboard: Dashboard, queues: Queues
) -> None:
    context = browser.new_context(
        base_url=dashboard.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto("/login")
        found = _overflow(page)
        watched.screenshot("phone-login", page)
        assert found["scroll"] <= found["width"], ("/login", found)
        sign_in(page, dashboard.token(ACME, "operator"))
        for path in (*PAGES, f"/queues/{queues.to_retry}"):
            page.goto(path)
            expect(page.locator("main h1")).to_be_visible()
            found = _overflow(page)
            watched.screenshot("phone-" + _shot_name(path), page)
            assert found["scroll"] <= found["width"] and not found["wide"], (path, found)
            if path == "/":  # the table's caption is whole on the phone's screen, not cut by its scroll box
                box = page.locator("#queues-caption").bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    finally:
        context.close()


def test_times_are_shown_in_the_viewers_zone_with_the_utc_value_in_their_title(
    browser: Browser, watched: Watched, dashboard: Dashboard, queues: Queues
) -> None:
    # A viewer in India (UTC+05:30): a time shown as the UTC one would be the page's zone left unapplied.
    context = browser.new_context(base_url=dashboard.url, timezone_id="Asia/Kolkata", locale="en-GB")
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    try:
        page = context.new_page()
        sign_in(page, dashboard.token(ACME, "operator"))
        checked = 0
        for path in (*PAGES, f"/queues/{queues.to_retry}"):
            page.goto(path)
            expect(page.locator("main h1")).to_be_visible()
            times = page.locator("main time")
            if path in ("/", f"/queues/{queues.to_retry}"):  # a queue's creation, its activity: times
                expect(times.first).to_be_visible()
            watched.screenshot("times-" + _shot_name(path), page)
            for shown in times.evaluate_all(
                "ts => ts.map(t => ({datetime: t.dateTime, title: t.title, text: t.textContent.trim()}))"
            ):
                assert UTC_ISO.match(shown["datetime"]), shown
                assert shown["title"].endswith(" UTC"), shown
                utc = shown["datetime"][11:16]
                assert utc in shown["title"], shown  # the title carries the UTC time itself
                hours, minutes = int(utc[:2]), int(utc[3:5])
                total = (hours * 60 + minutes + 330) % (24 * 60)
                local = f"{total // 60:02d}:{total % 60:02d}"
                relative = re.search(r"\bago\b|\bjust now\b|\bin \d", shown["text"])
                assert relative or local in shown["text"], (path, shown, local)
                checked += 1
        assert checked >= 2, checked
        # The chart's time labels too (SVG text): the viewer's zone shown, the UTC value in their <title>.
        labels = page.locator("#chart svg text[data-time]")
        expect(labels.first).to_be_attached()
        for label in labels.evaluate_all(
            """ls => ls.map(l => ({iso: l.dataset.time, title: l.querySelector("title").textContent,
                                   text: l.lastChild.textContent.trim()}))"""
        ):
            assert UTC_ISO.match(label["iso"]) and label["title"].endswith(" UTC"), label
            hours, minutes = int(label["iso"][11:13]), int(label["iso"][14:16])
            total = (hours * 60 + minutes + 330) % (24 * 60)
            assert f"{total // 60:02d}:{total % 60:02d}" in label["text"] and "UTC" not in label["text"], (
                label
            )
    finally:
        context.close()


def test_the_charts_legend_tells_the_lines_apart_without_colour(operator: Page, queues: Queues) -> None:
    """WCAG 1.4.1: each legend swatch carries its line's dash pattern, not its colour alone."""
    page = operator
    page.goto(f"/queues/{queues.to_retry}")
    pairs = page.evaluate(
        """() => [...document.querySelectorAll(".legend li[data-outcome]")].map(li => {
            const outcome = li.dataset.outcome;
            const line = document.querySelector(`#chart path[data-outcome="${outcome}"]`);
            const swatch = li.querySelector("svg line");
            return {outcome, chart: line.getAttribute("stroke-dasharray") || "",
                    legend: swatch ? swatch.getAttribute("stroke-dasharray") || "" : null,
                    same: swatch ? swatch.getAttribute("stroke") === line.getAttribute("stroke") : false};
        })"""
    )
    assert [pair["outcome"] for pair in pairs] == ["created", "updated", "unchanged", "failed"]
    assert all(pair["legend"] == pair["chart"] and pair["same"] for pair in pairs), pairs
    assert len({pair["legend"] for pair in pairs}) == 4, pairs  # four patterns: told apart without colour


# What a page offers a screen reader and a reader with weak sight: its language, one h1, a name for every
# control, and text whose contrast with its background meets WCAG AA (4.5:1, 3:1 for large text).
ACCESSIBILITY = """() => {
    const problems = [];
    if (!document.documentElement.lang) problems.push("no lang on <html>");
    const h1s = document.querySelectorAll("main h1");
    if (h1s.length !== 1) problems.push(`${h1s.length} h1 in main`);
    const shown = e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
    for (const control of document.querySelectorAll("input, select, textarea")) {
        if (control.type === "hidden" || !shown(control)) continue;
        const named = control.labels.length || control.getAttribute("aria-label")
            || control.getAttribute("aria-labelledby");
        if (!named) problems.push(`unlabelled ${control.tagName.toLowerCase()}[name=${control.name}]`);
    }
    for (const button of document.querySelectorAll("button, a[href]")) {
        if (shown(button) && !(button.textContent.trim() || button.getAttribute("aria-label")))
            problems.push(`a ${button.tagName.toLowerCase()} without a name`);
    }
    const rgb = text => (text.match(/[\\d.]+/g) || []).map(Number);
    const luminance = ([r, g, b]) => {
        const linear = c => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
        return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
    };
    const background = e => {
        for (; e; e = e.parentElement) {
            const color = rgb(getComputedStyle(e).backgroundColor);
            if (color.length === 3 || color[3] > 0.5) return color.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const e = node.parentElement;
        if (!node.textContent.trim() || !e || !shown(e) || e.closest("svg")) continue;
        const style = getComputedStyle(e);
        const fg = luminance(rgb(style.color).slice(0, 3)), bg = luminance(background(e));
        const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
        const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
        const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
        if (ratio < needed)
            problems.push(`contrast ${ratio.toFixed(2)} < ${needed}: "${node.textContent.trim().slice(0, 40)}"`);
    }
    return problems;
}"""
# "wcsync · Queues", "wcsync · Queue 0b6c…": the product and the page (a queue's id at most), nothing else.
TITLE = re.compile(r"^wcsync · [A-Z][a-z]+( [a-z]+)*( [0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12})?$")


def test_every_page_is_accessible_and_has_no_personal_data_in_its_title_or_links(
    watched: Watched, dashboard: Dashboard, queues: Queues
) -> None:
    page = watched.page
    page.goto("/login")
    assert page.evaluate(ACCESSIBILITY) == [], "/login"
    sign_in(page, dashboard.token(ACME, "operator"))
    code, answer = _api(dashboard).get(f"/api/v1/queues/{queues.untouched}/failed?org_id={ACME}")
    assert code == 200 and answer["data"], answer
    customers = {str(line["wooCustomerId"]) for line in answer["data"]}
    for path in (*PAGES, f"/queues/{queues.untouched}"):
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        assert page.evaluate(ACCESSIBILITY) == [], path
        title = page.title()
        assert TITLE.match(title) and "@" not in title, title
        links = page.locator("a[href], form[action]").evaluate_all(
            "es => es.map(e => e.getAttribute('href') || e.getAttribute('action'))"
        )
        segments = {segment for link in links for segment in re.split(r"[/?=&#]", link)}
        assert not any("@" in link for link in links), links
        assert not customers & segments, (path, customers & segments)
