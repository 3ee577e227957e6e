"""The dashboard's sign-in sessions (table wcsync_dashboard_sessions, migration 8).

A browser signs in once with an API token; from then on its cookie holds a session id: 32 random bytes,
URL-safe base64. The table keeps the id's SHA-256 only (a copy of the table opens nothing), the SHA-256 of
the token it was opened with (the tokens table's own key: never the token), and the org, role and token
name the session acts for.

``find`` re-checks a session on every request: past its lifetime (``LIFETIME_S`` after sign-in), idle for
``IDLE_S``, signed out, or its token revoked or gone since, and it is over (its row deleted). So revoking
a token ends the browsers signed in with it at their next request, and signing out really ends the
session: the old cookie is refused afterwards. ``last_seen_at`` is written at most once a minute per
session (SQLite has one writer: a page polling every 1.5 s must not queue a write each time), so the idle
timeout is kept to that minute.

The CSRF value of a session is the HMAC-SHA256 of its id (``csrf_of``): it needs no storage, and nobody
without the cookie can compute it. The sign-in form gets the same protection from a pre-session id (the
``wcsync_login`` cookie): see infrastructure/api/dashboard.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import structlog

from infrastructure.adapters.migrations import (
    API_TOKENS_TABLE,
    DASHBOARD_SESSIONS_TABLE,
    Connection,
    storage_errors,
)
from infrastructure.adapters.tokens import Principal, Role, token_hash
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import storage_failures

log = structlog.get_logger("wcsync.api.sessions")

SESSION_BYTES = 32
# A session ends this long after sign-in whatever happens (a working day and a half)...
LIFETIME_S = 12 * 3600.0
# ... or after this long without a request (a tab left polling keeps it alive).
IDLE_S = 2 * 3600.0
# A token (a no-auth server's org) keeps at most this many live sessions: a sign-in past it ends the oldest,
# so successful sign-ins (never throttled) cannot grow the table without bound.
MAX_SESSIONS_PER_TOKEN = 20
# last_seen_at is written at most this often per session (and at least every tenth of the idle timeout).
TOUCH_EVERY_S = 60.0
# An id is the URL-safe base64 of SESSION_BYTES bytes without padding: 43 characters.
_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
_CSRF_CONTEXT = b"wcsync dashboard csrf v1"


def new_session_id() -> str:
    """A fresh random id (for a session, or a sign-in form's pre-session cookie)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(SESSION_BYTES)).decode().rstrip("=")


def well_formed(session_id: str) -> bool:
    """Whether ``session_id`` has an id's shape (checked before any hashing or database read)."""
    return _ID_SHAPE.fullmatch(session_id) is not None


def csrf_of(session_id: str) -> str:
    """The CSRF value of the forms of the session (or sign-in form) whose cookie is ``session_id``."""
    mac = hmac.new(session_id.encode("ascii"), _CSRF_CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def csrf_matches(session_id: str, sent: str | None) -> bool:
    """Whether a form's ``csrf`` field is the one of ``session_id`` (in constant time)."""
    if not sent or not sent.isascii():
        return False
    return hmac.compare_digest(csrf_of(session_id).encode(), sent.encode())


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Session:
    """A signed-in browser: who it acts as (the token's org, name and role), and its CSRF value."""

    principal: Principal
    csrf: str
    expires_at: float
    no_auth: bool = False

    @property
    def org_id(self) -> str:
        return self.principal.org_id


class DashboardSessions:
    """The sessions of every org, on the events' database. Thread-safe (one connection, a lock). ``clock``
    is epoch seconds. ``write_gate``: SQLite's process-wide write gate (wiring.WriteGate)."""

    def __init__(
        self,
        database: DatabaseConfig,
        write_gate: AbstractContextManager[Any] | None = None,
        clock: Callable[[], float] = time.time,
        lifetime_s: float = LIFETIME_S,
        idle_s: float = IDLE_S,
        max_per_token: int = MAX_SESSIONS_PER_TOKEN,
    ) -> None:
        self.database = database
        self.lifetime_s = lifetime_s
        self.idle_s = idle_s
        self.max_per_token = max_per_token
        # The idle clock is as precise as the last use is written: to a tenth of the timeout at least.
        self.touch_every_s = min(TOUCH_EVERY_S, idle_s / 10)
        self._conn = Connection(database)
        self._lock = threading.Lock()
        self._gate = write_gate
        self._clock = clock

    def __repr__(self) -> str:
        return f"DashboardSessions({self.database.display})"

    def open(self, principal: Principal, token: str | None) -> str:
        """A new session acting as ``principal``, opened with ``token`` (None: a no-auth server's session);
        returns its id, for the cookie. Sessions past their time are deleted on the way."""
        session_id = new_session_id()
        now = self._clock()
        with self._writing():
            self._conn.execute(
                f"DELETE FROM {DASHBOARD_SESSIONS_TABLE} WHERE expires_at <= %s OR last_seen_at <= %s",
                (now, now - self.idle_s),
            )
            self._conn.execute(
                f"INSERT INTO {DASHBOARD_SESSIONS_TABLE} (session_hash, token_hash, org_id, role, name, "
                "created_at, last_seen_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    _hash(session_id),
                    None if token is None else token_hash(token),
                    principal.org_id,
                    principal.role.value,
                    principal.name,
                    now,
                    now,
                    now + self.lifetime_s,
                ),
            )
            self._keep_newest(token, principal.org_id)
        return session_id

    def _keep_newest(self, token: str | None, org_id: str) -> None:
        """The token's sessions past ``max_per_token`` deleted, the oldest first (inside open's write)."""
        if token is None:
            owner, params = "token_hash IS NULL AND org_id = %s", [org_id]
        else:
            owner, params = "token_hash = %s", [token_hash(token)]
        self._conn.execute(
            f"DELETE FROM {DASHBOARD_SESSIONS_TABLE} WHERE {owner} AND session_hash NOT IN ("
            f"SELECT session_hash FROM {DASHBOARD_SESSIONS_TABLE} WHERE {owner} "
            "ORDER BY created_at DESC, session_hash LIMIT %s)",
            (*params, *params, self.max_per_token),
        )

    def find(self, session_id: str | None, no_auth: bool) -> Session | None:
        """The live session of this cookie value, or None (malformed, unknown, expired, idle, or its token
        revoked: then its row is deleted). A no-auth session (no token) is live only on a no-auth server
        (``no_auth``)."""
        if session_id is None or not well_formed(session_id):
            return None
        digest = _hash(session_id)
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT s.token_hash, s.org_id, s.role, s.name, s.last_seen_at, s.expires_at, "
                f"t.token_hash, t.revoked_at FROM {DASHBOARD_SESSIONS_TABLE} s "
                f"LEFT JOIN {API_TOKENS_TABLE} t ON t.token_hash = s.token_hash WHERE s.session_hash = %s",
                (digest,),
            )
        if not rows:
            return None
        session_token, org_id, role_name, name, last_seen, expires, token_row, revoked = rows[0]
        now = self._clock()
        why = None
        if float(expires) <= now:
            why = "expired"
        elif float(last_seen) <= now - self.idle_s:
            why = "idle"
        elif session_token is not None and (token_row is None or revoked is not None):
            why = "token revoked"
        elif session_token is None and not no_auth:
            why = "no-auth session on a server with tokens"
        if why is not None:
            log.info("dashboard.session_ended", org=org_id, name=name, reason=why)
            self._delete(digest)
            return None
        if now - float(last_seen) >= self.touch_every_s:
            self._touch(digest, now)
        principal = Principal(str(org_id), str(name), Role.parse(role_name))
        return Session(principal, csrf_of(session_id), float(expires), no_auth=session_token is None)

    def close(self, session_id: str) -> bool:
        """End the session (sign-out): its row is deleted; whether there was one."""
        if not well_formed(session_id):
            return False
        return self._delete(_hash(session_id))

    def count(self, org_id: str) -> int:
        """The org's sessions still in the table (tests, and operators asking "who is signed in")."""
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT count(*) FROM {DASHBOARD_SESSIONS_TABLE} WHERE org_id = %s", (org_id,)
            )
        return int(rows[0][0])

    def shutdown(self) -> None:
        with self._lock:
            self._conn.close()

    # ----- inside ------------------------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write: its turn at the write gate (SQLite), the connection's lock, errors as StorageError."""
        gate = self._gate if self._gate is not None else nullcontext()
        with gate, self._lock, storage_errors(self.database):
            yield

    def _delete(self, digest: str) -> bool:
        with self._writing():
            rows = self._conn.execute(
                f"DELETE FROM {DASHBOARD_SESSIONS_TABLE} WHERE session_hash = %s RETURNING session_hash",
                (digest,),
            )
        return bool(rows)

    def _touch(self, digest: str, now: float) -> None:
        """Best effort: a busy database costs the idle clock a minute, never the request."""
        try:
            with self._writing():
                self._conn.execute(
                    f"UPDATE {DASHBOARD_SESSIONS_TABLE} SET last_seen_at = %s WHERE session_hash = %s",
                    (now, digest),
                )
        except storage_failures() as error:
            log.warning("dashboard.session_touch_failed", error=type(error).__name__)
