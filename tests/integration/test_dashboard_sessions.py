"""The dashboard's sessions (infrastructure/api/sessions.py) on SQLite and PostgreSQL, on a clock of the
test's own: a session lives until its lifetime is out or it has been idle too long, a request keeps it alive
(its last use written at most once a minute), signing out or revoking its token ends it, and a no-auth
session opens nothing on a server that asks for tokens. The table never holds the id or the token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infrastructure.adapters.migrations import DASHBOARD_SESSIONS_TABLE, Connection
from infrastructure.adapters.tokens import Principal, Role
from infrastructure.api.sessions import TOUCH_EVERY_S, DashboardSessions, csrf_matches, csrf_of
from infrastructure.wiring import Services


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sessions(services: Services, clock: Clock) -> Iterator[DashboardSessions]:
    opened = DashboardSessions(
        services.database, services.write_gate, clock=clock, lifetime_s=1000, idle_s=100
    )
    yield opened
    opened.shutdown()


def _signed_in(services: Services, name: str = "alice", role: Role = Role.OPERATOR) -> tuple[str, Principal]:
    token, _ = services.api_tokens().create("acme", name, role)
    principal = services.api_tokens().authenticate(token)
    assert principal is not None
    return token, principal


def test_a_session_acts_as_its_token_until_idle_and_a_request_keeps_it_alive(
    services: Services, sessions: DashboardSessions, clock: Clock
) -> None:
    token, principal = _signed_in(services)
    session_id = sessions.open(principal, token)
    found = sessions.find(session_id, no_auth=False)
    assert found is not None and found.principal == principal and found.csrf == csrf_of(session_id)
    assert csrf_matches(session_id, found.csrf) and not csrf_matches(session_id, csrf_of(session_id[::-1]))
    for _ in range(5):  # a request every 90 s: never 100 s idle
        clock.now += 90
        assert sessions.find(session_id, no_auth=False) is not None
    clock.now += 100
    assert sessions.find(session_id, no_auth=False) is None
    assert sessions.count("acme") == 0  # the row went with it


def test_the_last_use_is_written_at_most_once_a_minute_or_a_tenth_of_the_idle_timeout(
    services: Services, sessions: DashboardSessions, clock: Clock
) -> None:
    token, principal = _signed_in(services)
    session_id = sessions.open(principal, token)

    def last_seen() -> float:
        conn = Connection(services.database)
        try:
            return float(conn.execute(f"SELECT last_seen_at FROM {DASHBOARD_SESSIONS_TABLE}")[0][0])
        finally:
            conn.close()

    assert sessions.touch_every_s == 10  # idle_s 100: a tenth of it (a real 2 h timeout: TOUCH_EVERY_S)
    assert DashboardSessions(services.database).touch_every_s == TOUCH_EVERY_S
    opened_at = last_seen()
    clock.now += 5
    assert sessions.find(session_id, no_auth=False) is not None
    assert last_seen() == opened_at
    clock.now += 5
    assert sessions.find(session_id, no_auth=False) is not None
    assert last_seen() == clock.now


def test_a_session_ends_at_its_lifetime_however_busy(
    services: Services, sessions: DashboardSessions, clock: Clock
) -> None:
    token, principal = _signed_in(services)
    session_id = sessions.open(principal, token)
    for _ in range(19):
        clock.now += 50
        assert sessions.find(session_id, no_auth=False) is not None
    clock.now += 50  # 1000 s after sign-in
    assert sessions.find(session_id, no_auth=False) is None


def test_signing_out_and_revoking_the_token_end_it(services: Services, sessions: DashboardSessions) -> None:
    token, principal = _signed_in(services, "bob")
    first, second = sessions.open(principal, token), sessions.open(principal, token)
    assert sessions.close(first) and not sessions.close(first)
    assert sessions.find(first, no_auth=False) is None
    assert sessions.find(second, no_auth=False) is not None
    services.api_tokens().revoke("bob", "acme")
    assert sessions.find(second, no_auth=False) is None
    assert sessions.count("acme") == 0


def test_a_no_auth_session_opens_nothing_where_tokens_are_asked_for(
    services: Services, sessions: DashboardSessions
) -> None:
    session_id = sessions.open(Principal("lab", "dashboard", Role.ADMIN), None)
    assert sessions.find(session_id, no_auth=False) is None
    again = sessions.open(Principal("lab", "dashboard", Role.ADMIN), None)
    found = sessions.find(again, no_auth=True)
    assert found is not None and found.no_auth and found.org_id == "lab"


def test_malformed_and_unknown_ids_are_no_session(services: Services, sessions: DashboardSessions) -> None:
    token, principal = _signed_in(services)
    real = sessions.open(principal, token)
    for value in (
        None,
        "",
        "x",
        real + "A",
        real[:-1] + ("A" if real[-1] != "A" else "B"),
        "é" * 43,
        "' OR 1=1 --",
    ):
        assert sessions.find(value, no_auth=False) is None, value
    assert sessions.find(real, no_auth=False) is not None


def test_the_table_keeps_hashes_only(services: Services, sessions: DashboardSessions) -> None:
    token, principal = _signed_in(services)
    session_id = sessions.open(principal, token)
    conn = Connection(services.database)
    try:
        rows = conn.execute(f"SELECT * FROM {DASHBOARD_SESSIONS_TABLE}")
    finally:
        conn.close()
    assert len(rows) == 1
    assert token not in repr(rows) and session_id not in repr(rows) and csrf_of(session_id) not in repr(rows)


def test_a_token_keeps_its_newest_sessions_only_and_another_tokens_are_untouched(
    services: Services, clock: Clock
) -> None:
    capped = DashboardSessions(services.database, services.write_gate, clock=clock, max_per_token=3)
    try:
        token, principal = _signed_in(services, "alice")
        other_token, other = _signed_in(services, "bob")
        bobs = capped.open(other, other_token)
        opened = []
        for _ in range(5):  # successful sign-ins are never throttled: each one a session
            clock.now += 1
            opened.append(capped.open(principal, token))
        live = [session_id for session_id in opened if capped.find(session_id, no_auth=False) is not None]
        assert live == opened[-3:]  # the two oldest ended
        assert capped.find(bobs, no_auth=False) is not None
        assert capped.count("acme") == 4
        lab = Principal("lab", "dashboard", Role.ADMIN)  # a no-auth server's sessions: per org
        for _ in range(4):
            clock.now += 1
            capped.open(lab, None)
        assert capped.count("lab") == 3 and capped.count("acme") == 4
    finally:
        capped.shutdown()
