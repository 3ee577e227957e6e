"""API tokens: who may call `wcsync serve`, for which org and with which role (table wcsync_api_tokens,
migration 2 of adapters/migrations.py).

A token is ``wcs_`` and the URL-safe base64 of 32 random bytes; it is shown once, when it is created, and
only its SHA-256 (hex) is kept: a copy of the table, a dump or a log line holds nothing that opens the API.
A revoked token keeps its row (``revoked_at`` set) so it keeps answering 401 and ``tokens list`` shows it
revoked; a name is unique among an org's tokens that are not revoked, so a revoked name can be reused.

``authenticate`` is on every request's path: one primary-key read, and ``last_used_at`` written at most
once a minute per token and process (SQLite has one writer; a write per request would queue every reader
behind the syncs' batches). A failed write of it never fails the request: it is a hint, not a record.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from domain import bounds
from domain.errors import EXIT_USAGE, WcsyncError
from infrastructure.adapters.migrations import (
    API_TOKENS_TABLE,
    Connection,
    storage_errors,
)
from infrastructure.adapters.schema import iso
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import StorageError, quoted, storage_failures

log = structlog.get_logger("wcsync.tokens")

TOKEN_PREFIX = "wcs_"  # noqa: S105 (what every token starts with, not a token)
TOKEN_BYTES = 32
# wcs_ + 43 characters: the URL-safe base64 of 32 bytes, without its one '=' of padding.
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43
_TOKEN_SHAPE = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}")
# last_used_at is written at most this often per token by one process.
LAST_USED_INTERVAL_S = 60.0


class Role(enum.Enum):
    """What a token may do; each role may do what the roles below it may: viewer reads; operator also
    starts, retries, resumes and force-finishes; admin also manages stores."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, required: Role) -> bool:
        """Whether a token of this role may do what needs ``required``."""
        return self.rank >= required.rank

    @classmethod
    def parse(cls, value: Any, field: str = "role") -> Role:
        """A role by its name; anything else is a BoundError naming the roles (exit 2)."""
        for role in cls:
            if value == role.value:
                return role
        raise bounds.BoundError(field, f"must be one of {', '.join(ROLE_NAMES)}")

    def __str__(self) -> str:
        return self.value


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
ROLE_NAMES = tuple(role.value for role in Role)


@dataclass(frozen=True)
class Principal:
    """Who a request is, by its token: the org it acts for, the token's name (the recorded actor when the
    request names no user) and its role."""

    org_id: str
    name: str
    role: Role


@dataclass(frozen=True)
class TokenInfo:
    """A token as it may be shown: never the token itself nor its hash."""

    org_id: str
    name: str
    role: Role
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "org": self.org_id,
            "role": self.role.value,
            "createdAt": self.created_at,
            "lastUsedAt": self.last_used_at,
            "revokedAt": self.revoked_at,
            "revoked": self.revoked,
        }


class TokenExistsError(WcsyncError):
    """The org has a token of this name that is not revoked (exit 2)."""

    exit_code = EXIT_USAGE
    http_status = 409
    error_code = "token_exists"

    def __init__(self, org_id: str, name: str) -> None:
        super().__init__(
            f"org {quoted(org_id)} has a token named {quoted(name)} already; revoke it first "
            "(`wcsync tokens revoke NAME`) or choose another name"
        )


class TokenNotFoundError(WcsyncError):
    """No token of this name that is not revoked (in the org, when one is given) (exit 2)."""

    exit_code = EXIT_USAGE
    http_status = 404
    error_code = "token_not_found"

    def __init__(self, name: str, org_id: str | None) -> None:
        where = f" in org {quoted(org_id)}" if org_id is not None else ""
        super().__init__(
            f"no token named {quoted(name)}{where} that is not revoked; `wcsync tokens list` lists them"
        )


class AmbiguousTokenError(WcsyncError):
    """The name is a token's in several orgs and no org was given (exit 2)."""

    exit_code = EXIT_USAGE
    http_status = 409
    error_code = "token_ambiguous"

    def __init__(self, name: str, orgs: list[str]) -> None:
        super().__init__(
            f"orgs {', '.join(quoted(org) for org in orgs)} each have a token named {quoted(name)}: "
            "give --org to say whose to revoke"
        )


def new_token() -> str:
    """A fresh token: ``wcs_`` and the URL-safe base64 of 32 random bytes (no padding)."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode().rstrip("=")


def well_formed(token: str) -> bool:
    """Whether ``token`` has a token's shape (checked before any hashing or database read)."""
    return len(token) == TOKEN_LENGTH and _TOKEN_SHAPE.fullmatch(token) is not None


def token_hash(token: str) -> str:
    """What the table keeps of a token: the hex of its SHA-256."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


_INFO = "org_id, name, role, created_at, last_used_at, revoked_at"


class ApiTokens:
    """The API tokens of every org, on the events' database. Thread-safe (one connection, a lock); the
    HTTP server calls ``authenticate`` from its worker threads. Database errors are StorageError (exit 4;
    a database not migrated says to migrate).

    ``write_gate``: on SQLite, the process's write gate (wiring.WriteGate), so the last-used write waits its
    turn behind this process's other writes instead of busy-waiting on SQLite's lock."""

    def __init__(
        self,
        database: DatabaseConfig,
        write_gate: AbstractContextManager[Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.database = database
        self._conn = Connection(database)
        self._lock = threading.Lock()
        self._write_gate = write_gate
        self._clock = clock
        self._now = now
        self._last_written: dict[str, float] = {}  # token hash -> clock() of its last last_used_at write

    def __repr__(self) -> str:
        return f"ApiTokens({self.database.display})"

    def create(self, org_id: str, name: str, role: Role) -> tuple[str, TokenInfo]:
        """A new token for ``org_id``: (the token, to show once; what may be shown of it). A name the org
        has among its tokens not revoked: TokenExistsError."""
        org_id = bounds.check_identifier(org_id, "org")
        name = bounds.check_identifier(name, "name")
        token = new_token()
        created = iso(self._now())
        try:
            with self._lock, storage_errors(self.database), self._conn.transaction():
                if self._active(org_id, name):
                    raise TokenExistsError(org_id, name)
                self._conn.execute(
                    f"INSERT INTO {API_TOKENS_TABLE} (token_hash, org_id, name, role, created_at) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (token_hash(token), org_id, name, role.value, created),
                )
        except StorageError:
            # PostgreSQL: another process created the name between the read and the insert.
            if self._active_now(org_id, name):
                raise TokenExistsError(org_id, name) from None
            raise
        log.info("tokens.created", org=org_id, name=name, role=role.value)
        return token, TokenInfo(org_id, name, role, created, None, None)

    def list(self, org_id: str | None = None) -> list[TokenInfo]:
        """The tokens (of ``org_id``, else of every org), revoked ones included, by org, name, creation."""
        where, params = ("WHERE org_id = %s ", (org_id,)) if org_id is not None else ("", ())
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT {_INFO} FROM {API_TOKENS_TABLE} {where}ORDER BY org_id, name, created_at", params
            )
        return [_info(row) for row in rows]

    def revoke(self, name: str, org_id: str | None = None) -> TokenInfo:
        """Revoke the token named ``name`` (of ``org_id``, needed when several orgs have that name); it
        answers 401 from the next request on. Returns it as revoked. None such: TokenNotFoundError."""
        revoked = iso(self._now())
        with self._lock, storage_errors(self.database), self._conn.transaction():
            where, params = "name = %s AND revoked_at IS NULL", [name]
            if org_id is not None:
                where, params = where + " AND org_id = %s", [name, org_id]
            rows = self._conn.execute(
                f"SELECT token_hash, {_INFO} FROM {API_TOKENS_TABLE} WHERE {where} ORDER BY org_id", params
            )
            if not rows:
                raise TokenNotFoundError(name, org_id)
            if len(rows) > 1:
                raise AmbiguousTokenError(name, [str(row[1]) for row in rows])
            self._conn.execute(
                f"UPDATE {API_TOKENS_TABLE} SET revoked_at = %s WHERE token_hash = %s", (revoked, rows[0][0])
            )
        info = _info(rows[0][1:])
        log.info("tokens.revoked", org=info.org_id, name=info.name)
        return TokenInfo(info.org_id, info.name, info.role, info.created_at, info.last_used_at, revoked)

    def authenticate(self, token: str) -> Principal | None:
        """Who ``token`` is; None when it is malformed, unknown or revoked (the caller answers all three
        alike). Records its use at most once every LAST_USED_INTERVAL_S per token in this process."""
        if not well_formed(token):
            return None
        digest = token_hash(token)
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT org_id, name, role, revoked_at FROM {API_TOKENS_TABLE} WHERE token_hash = %s",
                (digest,),
            )
        if not rows or rows[0][3] is not None:
            return None
        org_id, name, role_name, _ = rows[0]
        try:
            role = Role.parse(role_name)
        except bounds.BoundError:
            log.warning("tokens.unknown_role", org=org_id, name=name)  # a row not written by wcsync
            return None
        self._note_use(digest)
        return Principal(str(org_id), str(name), role)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ----- inside ------------------------------------------------------------------------------------------

    def _active(self, org_id: str, name: str) -> bool:
        rows = self._conn.execute(
            f"SELECT 1 FROM {API_TOKENS_TABLE} WHERE org_id = %s AND name = %s AND revoked_at IS NULL",
            (org_id, name),
        )
        return bool(rows)

    def _active_now(self, org_id: str, name: str) -> bool:
        with self._lock, storage_errors(self.database):
            return self._active(org_id, name)

    def _note_use(self, digest: str) -> None:
        """last_used_at, when this process has not written it for LAST_USED_INTERVAL_S. Best effort: a busy
        or failing database costs the hint, never the request."""
        moment = self._clock()
        with self._lock:
            last = self._last_written.get(digest)
            if last is not None and moment - last < LAST_USED_INTERVAL_S:
                return
            self._last_written[digest] = moment  # before the write: one thread writes, the others go on
        gate = self._write_gate if self._write_gate is not None else nullcontext()
        try:
            with gate, self._lock:
                self._conn.execute(
                    f"UPDATE {API_TOKENS_TABLE} SET last_used_at = %s WHERE token_hash = %s",
                    (iso(self._now()), digest),
                )
        except storage_failures() as error:
            log.warning("tokens.last_used_not_saved", error=type(error).__name__)


def _info(row: tuple[Any, ...]) -> TokenInfo:
    org_id, name, role, created_at, last_used_at, revoked_at = row
    return TokenInfo(
        str(org_id),
        str(name),
        Role.parse(role),
        str(created_at),
        None if last_used_at is None else str(last_used_at),
        None if revoked_at is None else str(revoked_at),
    )
