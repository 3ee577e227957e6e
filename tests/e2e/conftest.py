"""The fixtures end-to-end tests use, from tests/support: the sandbox store (the `wcsync` command itself is
run by tests.support.cli), and the dashboard in a real browser (tests.support.browser): ``browser`` (one
headless Chromium per module), ``dashboard`` (a real `wcsync serve` of the module's sandbox store, tokens of
two orgs and two roles) and ``watched`` (a fresh browser context and page per test, screenshots saved,
console errors and foreign requests failing the test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from infrastructure.sandbox import RunningSandbox
from tests.support.browser import (
    ACME,
    ARTIFACTS,
    EXPECT_TIMEOUT_MS,
    GLOBEX,
    Dashboard,
    DashboardServer,
    Watched,
    artifact_prefix,
    clear_artifacts,
    create_token,
    launched_browser,
    register_store,
)
from tests.support.cli import keyed_env
from tests.support.databases import AdminConnection, DatabaseDropper, cloned_database
from tests.support.sandbox import sandbox, shared_sandbox

__all__ = ["browser", "dashboard", "dashboard_database", "sandbox", "shared_sandbox", "watched"]

# Set by ``watched``: this run drove the browser, so the summary says where its screenshots are.
SCREENSHOTS_TAKEN = pytest.StashKey[bool]()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)  # every expectation's wait, not Playwright's 5 s
    with launched_browser() as launched:
        yield launched


@pytest.fixture(scope="module")
def dashboard_database(
    pg_server: str, pg_admin: AdminConnection, pg_template: str, pg_dropper: DatabaseDropper
) -> Iterator[str]:
    """The dashboard's database, the module's: PostgreSQL, as a service runs (procrastinate's workers with
    their heartbeats, for the health page); `wcsync demo --serve`'s test covers the dashboard on SQLite."""
    with cloned_database(pg_server, pg_admin, pg_template, pg_dropper) as url:
        yield url


@pytest.fixture(scope="module")
def dashboard(
    request: pytest.FixtureRequest,
    shared_sandbox: RunningSandbox,
    dashboard_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dashboard]:
    """`wcsync serve` (its own worker, the stores' key) with the module's sandbox store registered in ACME,
    and tokens made by `wcsync tokens create`: ACME's viewer and operator, GLOBEX's operator."""
    clear_artifacts(Path(str(request.node.path)).stem)
    work = tmp_path_factory.mktemp("dashboard")
    env = keyed_env(shared_sandbox, dashboard_database)
    store_id = register_store(env, ACME, shared_sandbox.url)
    # From here on no store credential in any environment: the server reads the registered store's.
    bare = {name: value for name, value in env.items() if not name.startswith("WOO_")}
    tokens = {
        (org, role): create_token(bare, org, f"browser-{role}", role)
        for org, role in ((ACME, "viewer"), (ACME, "operator"), (GLOBEX, "operator"))
    }
    server = DashboardServer(bare, work / "serve.log")
    try:
        yield Dashboard(server=server, env=bare, store_id=store_id, tokens=tokens)
    finally:
        code = server.stop()
        log = server.stderr()
        assert "Traceback" not in log, log[-4000:]
        assert code == 0, log[-4000:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each phase's report kept on the test (``rep_call``), so ``watched`` can screenshot a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def watched(request: pytest.FixtureRequest, browser: Browser, dashboard: Dashboard) -> Iterator[Watched]:
    """A page of its own (fresh cookies) on the dashboard; at the end, a screenshot if the test failed, and
    the test fails for any console error it did not expect, uncaught exception or request elsewhere."""
    request.config.stash[SCREENSHOTS_TAKEN] = True
    context = browser.new_context(base_url=dashboard.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    shown = Watched(page=page, origin=dashboard.url, prefix=artifact_prefix(request.node.nodeid))
    try:
        yield shown
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for other in context.pages:
                shown.screenshot("at-failure", other)
        assert shown.problems() == []
    finally:
        context.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the browser tests' screenshots are, when this run drove the browser (in this process: under
    xdist the workers' runs are summed up by scripts/test, which prints the same line)."""
    if terminalreporter.config.stash.get(SCREENSHOTS_TAKEN, False) and any(ARTIFACTS.glob("*.png")):
        terminalreporter.write_line(f"dashboard screenshots: {ARTIFACTS}")
