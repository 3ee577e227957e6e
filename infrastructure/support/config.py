"""One config loader: database URL, org, store URL and credentials, from flags or the environment.

Every setting can come from the environment under the ``WCSYNC_`` prefix (the store's own settings keep
WooCommerce's names: ``WOO_URL``, ``WOO_CONSUMER_KEY``, ``WOO_CONSUMER_SECRET``).
"""

from __future__ import annotations

import base64
import binascii
import errno
import ipaddress
import os
import re
import socket
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from infrastructure.support.errors import ConfigurationError, quoted
from infrastructure.support.woocommerce_api import REST_ROOT

APP_NAME = "wcsync"


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only ("localhost" or a loopback IP)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(host: str, port: int) -> None:
    """The address a server (`wcsync serve`, `wcsync sandbox`) listens on, checked before any work: a host
    that resolves to addresses of this machine, and a port free on each (0: any free port). Binds and closes
    a socket per address, as the server will (SO_REUSEADDR, IPv6 only on IPv6 sockets). Raises
    ConfigurationError (exit 2): an empty host (it would mean every interface, silently), a host that does
    not resolve or is not this machine's, a port in use."""
    if not host.strip():
        raise ConfigurationError(
            "--host is empty; give the address to listen on (127.0.0.1, or 0.0.0.0 for every interface)"
        )
    shown = quoted(host)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise ConfigurationError(
            f"cannot listen on {shown}: {reason}; give an IP address or a host name of this machine with --host"
        ) from None
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as error:
            raise listen_error(error, host, port) from None


def listen_error(error: OSError, host: str, port: int) -> ConfigurationError:
    """A server's failure to listen (at check_listen_address, or the port taken after it: a race) as one
    line."""
    if error.errno == errno.EADDRINUSE:
        return ConfigurationError(
            f"port {port} on {host} is in use; choose another with --port (0 picks a free one)"
        )
    return ConfigurationError(
        f"cannot listen on {quoted(host)}: {error.strerror or type(error).__name__}; give an address of "
        "this machine with --host (127.0.0.1, or 0.0.0.0 for every interface)"
    )


def default_database_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "wcsync" / "wcsync.db"


# The passwords a database address can carry (DatabaseConfig._redact): user:password@ in a URL, a query's
# libpq parameter, and a keyword DSN's (quoted with '...' or up to the next space).
_SECRET_NAMES = r"(?:password|passwd|pwd|sslpassword)"  # noqa: S105 - the names, no password
_URL_PASSWORD = re.compile(r"(//[^:/@\s]*:)\S*@")
_QUERY_PASSWORD = re.compile(rf"([?&]{_SECRET_NAMES}=)[^&#\s]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(rf"((?<![?&\w]){_SECRET_NAMES}\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class DatabaseConfig:
    """Where events and projections live. ``url`` never leaves this object unredacted."""

    url: str
    backend: str  # "sqlite" | "postgres"
    sqlite_path: Path | None = None
    pg_dbname: str = ""
    pg_host: str = ""
    pg_port: str = "5432"
    pg_user: str = ""
    pg_password: str = field(default="", repr=False)
    pg_schema: str = "public"
    # Encryption at rest of event payloads (AES-256-GCM): base64 of 32 bytes, from WCSYNC_CIPHER_KEY only.
    cipher_key: str = field(default="", repr=False)

    @classmethod
    def from_url(cls, url: str | None) -> DatabaseConfig:
        if not url:
            path = default_database_path()
            return cls(url=f"sqlite:///{path}", backend="sqlite", sqlite_path=path, cipher_key=cipher_key())
        try:
            parts = urlsplit(url)
        except ValueError as error:  # "Invalid IPv6 URL"
            raise ConfigurationError(
                f"database URL {quoted(cls._redact(url))} is malformed ({error}); "
                "use sqlite:///path.db or postgresql://user:password@host:5432/dbname"
            ) from None
        if parts.scheme == "sqlite":
            raw = unquote(parts.path)
            # sqlite:///relative.db -> "/relative.db" ; sqlite:////abs/x.db -> "//abs/x.db"
            path_text = raw[1:] if raw.startswith("/") else raw
            if not path_text or parts.netloc:
                raise ConfigurationError(
                    f"database URL {quoted(cls._redact(url))} has no file path; "
                    "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
                )
            if "\x00" in path_text:
                raise ConfigurationError("the SQLite path in the database URL contains a NUL character")
            return cls(url=url, backend="sqlite", sqlite_path=Path(path_text), cipher_key=cipher_key())
        if parts.scheme in ("postgres", "postgresql", "postgresql+psycopg"):
            dbname = unquote(parts.path.lstrip("/"))
            if not dbname:
                raise ConfigurationError(
                    f"database URL {quoted(cls._redact(url))} names no database; "
                    "use postgresql://user:password@host:5432/dbname"
                )
            query = parse_qs(parts.query)
            schema = query.get("schema", ["public"])[0]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
                raise ConfigurationError(f"schema {quoted(schema)} is not a plain SQL identifier")
            try:
                port = parts.port
            except ValueError:  # out of range, or not a number
                port = 0
            if port == 0:
                raise ConfigurationError(
                    f"database URL {quoted(cls._redact(url))}: the port must be a number from 1 to 65535 "
                    "(PostgreSQL's is 5432)"
                )
            return cls(
                url=url,
                backend="postgres",
                pg_dbname=dbname,
                pg_host=parts.hostname or "localhost",
                pg_port=str(port or 5432),
                pg_user=unquote(parts.username or ""),
                pg_password=unquote(parts.password or ""),
                pg_schema=schema,
                cipher_key=cipher_key(),
            )
        raise ConfigurationError(
            f"database URL {quoted(cls._redact(url))} is not supported: "
            "use sqlite:///path.db or postgresql://user:password@host:5432/dbname"
        )

    def pg_connect_kwargs(self) -> dict[str, Any]:
        """What psycopg.connect() needs for this database, for connections of our own (projections, audit)."""
        return {
            "host": self.pg_host,
            "port": self.pg_port,
            "dbname": self.pg_dbname,
            "user": self.pg_user,
            "password": self.pg_password or None,
            "connect_timeout": 10,
            # jit=off: see infrastructure/adapters/pgstore.py SESSION_OPTIONS (the event store's sessions).
            "options": f"-c search_path={self.pg_schema} -c timezone=UTC -c jit=off",
        }

    @property
    def display(self) -> str:
        """The URL with any password hidden: safe for output and logs."""
        return self._redact(self.url)

    @staticmethod
    def _redact(url: str) -> str:
        """Every password a database address can carry, hidden: a URL's ``user:password@`` (to the last
        ``@``: a password may hold ``@`` or ``/``), a query's ``password=`` (libpq's parameters), and a
        keyword DSN's ``password=...`` (``host=db password='s e c'``)."""
        hidden = _URL_PASSWORD.sub(r"\1***@", url)
        hidden = _QUERY_PASSWORD.sub(r"\1***", hidden)
        return _KEYWORD_PASSWORD.sub(r"\1***", hidden)

    def eventsourcing_env(self, create_tables: bool = True) -> dict[str, str]:
        env = {"CREATE_TABLE": "y" if create_tables else "n"}
        if self.backend == "sqlite":
            assert self.sqlite_path is not None
            env.update(
                PERSISTENCE_MODULE="eventsourcing.sqlite",
                SQLITE_DBNAME=str(self.sqlite_path),
                SQLITE_LOCK_TIMEOUT="30",
            )
        else:
            env.update(
                PERSISTENCE_MODULE="infrastructure.adapters.pgstore:BinaryPostgresFactory",
                POSTGRES_DBNAME=self.pg_dbname,
                POSTGRES_HOST=self.pg_host,
                POSTGRES_PORT=self.pg_port,
                POSTGRES_USER=self.pg_user,
                POSTGRES_PASSWORD=self.pg_password,
                POSTGRES_SCHEMA=self.pg_schema,
                POSTGRES_POOL_SIZE="4",
                POSTGRES_CONNECT_TIMEOUT="10",
                POSTGRES_LOCK_TIMEOUT="30",
                # Long projection batches and slow stores must not be cut off by the 5 s default.
                POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT="60",
            )
        # The mapper turns a wrong or missing key into a clear error instead of a deserialisation traceback.
        env["MAPPER_TOPIC"] = "infrastructure.adapters.cipher:KeyCheckingMapper"
        if self.cipher_key:
            env.update(CIPHER_TOPIC="eventsourcing.cryptography:AESCipher", CIPHER_KEY=self.cipher_key)
        # Prefixed keys win over anything of the same name in the process environment.
        return {f"{APP_NAME.upper()}_{k}": v for k, v in env.items()}


CIPHER_KEY_VARIABLE = "WCSYNC_CIPHER_KEY"


def cipher_key() -> str:
    """WCSYNC_CIPHER_KEY, checked: base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`), or ""."""
    key = os.environ.get(CIPHER_KEY_VARIABLE, "").strip()
    if not key:
        return ""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigurationError(
            f"{CIPHER_KEY_VARIABLE} must be base64 of 32 random bytes (`openssl rand -base64 32`)"
        )
    return key


@dataclass(frozen=True)
class StoreSettings:
    url: str
    consumer_key: str = field(repr=False)
    consumer_secret: str = field(repr=False)

    @classmethod
    def load(cls, url: str | None) -> StoreSettings:
        url = url or os.environ.get("WOO_URL", "")
        if not url:
            raise ConfigurationError("no store URL: pass --url https://shop.example.com or set WOO_URL")
        url = check_store_url(url)
        key = os.environ.get("WOO_CONSUMER_KEY", "")
        secret = os.environ.get("WOO_CONSUMER_SECRET", "")
        missing = [
            name for name, value in (("WOO_CONSUMER_KEY", key), ("WOO_CONSUMER_SECRET", secret)) if not value
        ]
        if missing:
            raise ConfigurationError(
                f"{' and '.join(missing)} not set: export the store's REST API key "
                "(WooCommerce > Settings > Advanced > REST API, read access)"
            )
        return cls(url=url, consumer_key=key, consumer_secret=secret)


MAX_STORE_URL_LENGTH = 2048  # the API and the CLI refuse a longer one alike


class StoreUrlSizeError(ConfigurationError):
    """The store URL is empty, or longer than MAX_STORE_URL_LENGTH (the API words this one apart)."""


def check_store_url(url: str) -> str:
    """A store's site root, checked and normalised (see normalise_store_url): http:// or https://, a host,
    a port in 1..65535 when one is given, no credentials, query, fragment, spaces or control characters.
    Raises ConfigurationError naming the problem (never quoting the URL: a pasted one can carry a password).
    The one rule for a store URL: the CLI, the API and the store client (through store_site_root) use it."""
    text = url.strip()
    if not text:
        raise StoreUrlSizeError("the store URL is empty; pass --url https://shop.example.com or set WOO_URL")
    if len(text) > MAX_STORE_URL_LENGTH:
        raise StoreUrlSizeError(f"the store URL is longer than {MAX_STORE_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigurationError("the store URL must not contain spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
        host = parts.hostname
    except ValueError as error:
        if "port" in str(error).lower():
            raise ConfigurationError("the store URL's port must be from 1 to 65535") from None
        raise ConfigurationError(
            f"the store URL is malformed ({error}); use the site root, e.g. https://shop.example.com"
        ) from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ConfigurationError("the store URL must start with http:// or https:// and name a host")
    if not _is_host(host):
        raise ConfigurationError(
            "the store URL's host is not a valid host name or IP address; "
            "use the site root, e.g. https://shop.example.com"
        )
    if port == 0:
        raise ConfigurationError("the store URL's port must be from 1 to 65535")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigurationError(
            "the store URL must not carry credentials, a query string or a fragment; "
            "set WOO_CONSUMER_KEY and WOO_CONSUMER_SECRET instead"
        )
    return normalise_store_url(text)


_HOST_LABELS = re.compile(r"[a-z0-9_][a-z0-9_-]{0,62}(\.[a-z0-9_][a-z0-9_-]{0,62})*\.?")


def _is_host(host: str) -> bool:
    """A DNS name (internationalised ones too) or an IP address, as urlsplit's ``hostname`` gives it."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    try:
        name = host.encode("idna").decode("ascii").lower()
    except UnicodeError:  # an empty or over-long label
        return False
    return len(name) <= 253 and _HOST_LABELS.fullmatch(name) is not None


MAX_CA_FILE_BYTES = 1024 * 1024  # the system's whole CA bundle is ~200 KB


def check_ca_file(path: str) -> str:
    """A CA certificate file for an HTTPS store (``--ca-file``), checked before any work: a regular file
    (never a device, a FIFO or a directory: /dev/zero would be read without end) of at most
    MAX_CA_FILE_BYTES, readable, holding at least one PEM certificate. Returns the path; raises
    ConfigurationError naming the problem and what to give instead."""
    fix = "give the PEM file of the CA that signed the store's certificate"
    if not path.strip() or "\x00" in path:
        raise ConfigurationError(f"the CA file name is empty or invalid; {fix}")
    shown = quoted(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the regular file is read as usual.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigurationError(f"the CA file {shown} does not exist; {fix}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"the CA file {shown} is a directory; {fix}") from None
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the CA file {shown} ({error.strerror or type(error).__name__}); "
            "check its permissions, or " + fix
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigurationError(f"the CA file {shown} is a directory; {fix}")
        if not stat.S_ISREG(mode):
            raise ConfigurationError(
                f"the CA file {shown} is not a regular file (a device, a FIFO or a socket); {fix}"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_CA_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the CA file {shown} ({error.strerror or type(error).__name__}); "
            "check its permissions, or " + fix
        ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CA_FILE_BYTES:
        raise ConfigurationError(
            f"the CA file {shown} is too large for a certificate (more than "
            f"{MAX_CA_FILE_BYTES // 1024} KiB); {fix}"
        )
    text = data.decode("latin-1")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigurationError(f"the CA file {shown} holds no PEM certificate; {fix}")
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as error:
        reason = re.sub(r"^\[[^]]*\]\s*|\s*\(_ssl\.c:\d+\)", "", str(error)) or type(error).__name__
        raise ConfigurationError(
            f"the CA file {shown} is not a valid PEM certificate ({reason}); {fix}"
        ) from None
    return path


def check_output_file(path: str, flag: str = "--output") -> Path:
    """A file a command writes (``audit export --output``), checked before any work: a non-empty name,
    and, when something is there already, a regular file (it is replaced whole). A directory, a device, a
    FIFO or a socket is refused (ConfigurationError, exit 2), never replaced by a file."""
    if not path.strip() or "\x00" in path:
        raise ConfigurationError(f"{flag} is empty or invalid; give the path of the file to write")
    file = Path(path)
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        return file
    except OSError as error:
        raise ConfigurationError(
            f"{flag} {quoted(path)} cannot be used ({error.strerror or type(error).__name__}); "
            "give the path of a file to write"
        ) from None
    if stat.S_ISDIR(mode):
        raise ConfigurationError(
            f"{flag} {quoted(path)} is a directory; give a file in it, e.g. {quoted(str(file / 'export.jsonl'))}"
        )
    if not stat.S_ISREG(mode):
        raise ConfigurationError(
            f"{flag} {quoted(path)} is not a regular file (a device, a FIFO or a socket) and is never "
            "replaced; give the path of a file to write"
        )
    return file


def normalise_store_url(url: str) -> str:
    """The site root, as events and projections key it: scheme and host lower-cased, no trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


_PASTED_API_PATH = re.compile(re.escape(REST_ROOT) + r"(/.*)?$")


def store_site_root(url: str) -> str:
    """The site a store URL checked by check_store_url names, under which its REST API lives: the URL
    itself, or, for a pasted API URL (``https://shop.example.com/wp-json/wc/v3``), the part before the REST
    root. The queue keeps the URL as checked; only the requests go to this root."""
    return _PASTED_API_PATH.sub("", url)
