"""A throwaway PostgreSQL server for the test suite.

``WCSYNC_TEST_DATABASE_URL`` points the suite at a server someone else runs (and nothing is started).
Otherwise :func:`start` makes a cluster in a temp dir, tuned for speed rather than durability, listening
on 127.0.0.1 and a free port with its unix socket inside the temp dir, and :meth:`PostgresServer.stop`
removes every trace of it. PostgreSQL refuses to run as root, and CI runs as root: then the cluster runs
as the ``postgres`` user, or as a ``wcsync-pg`` system user created for the purpose.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.support.network import free_port

EXTERNAL_URL_VARIABLE = "WCSYNC_TEST_DATABASE_URL"
SUPERUSER = "postgres"
SERVICE_USER = "wcsync-pg"
NOT_FOUND_MESSAGE = (
    "PostgreSQL server binaries not found: install postgresql-15 or set WCSYNC_TEST_DATABASE_URL"
)
START_TIMEOUT_SECONDS = 60.0
SHM_DIR = Path("/dev/shm")  # noqa: S108 - only a parent for mkdtemp, which makes a private dir
SHM_MIN_FREE_BYTES = 1 << 30
OWNER_FILE = "owner.pid"
START_ATTEMPTS = 3  # a free port can be taken by someone else between our probe and the server's bind

# Durability buys nothing for a cluster that is deleted at the end of the run.
SERVER_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
    # Segments in the data dir go when it goes; posix ones in /dev/shm outlive a killed server.
    "dynamic_shared_memory_type": "mmap",
}


def database_url_for(server_url: str, dbname: str) -> str:
    """``server_url`` with its database swapped for ``dbname`` (credentials, host and options kept)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


class PostgresServerError(RuntimeError):
    """The test PostgreSQL server could not be found, started or stopped."""


@dataclass(frozen=True)
class Binaries:
    bindir: Path

    def path(self, name: str) -> str:
        return str(self.bindir / name)


def find_binaries(search_path: str | None = None, extra_dirs: Sequence[str] | None = None) -> Binaries:
    """The first directory holding both initdb and pg_ctl: PATH first, then the newest Debian layout."""
    candidates: list[Path] = []
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name, path=search_path)
        if found:
            # /usr/local/bin may hold symlinks only: the real directory also has postgres and pg_isready.
            candidates.append(Path(found).resolve().parent)
    if extra_dirs is None:
        extra_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates.extend(Path(d) for d in extra_dirs)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return Binaries(bindir)
    raise PostgresServerError(NOT_FOUND_MESSAGE)


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def cluster_parent_dir(run_as: str | None) -> Path:
    """Where the cluster lives: tmpfs when there is room (CREATE DATABASE is ~20x faster than on disk)."""
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(SHM_DIR)
        if usage.free >= SHM_MIN_FREE_BYTES and os.access(SHM_DIR, os.W_OK | os.X_OK):
            return SHM_DIR
    parent = Path(tempfile.gettempdir())
    if run_as is not None and not _world_traversable(parent):
        parent = Path("/tmp")  # noqa: S108 - the cluster's user must be able to reach its own directory
    return parent


def remove_orphans(parent: Path, binaries: Binaries) -> None:
    """Stop and delete clusters whose test run died without cleaning up (SIGKILL, a CI timeout)."""
    for base_dir in parent.glob("wcsync-pg-*"):
        try:
            owner_pid = int((base_dir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: no owner recorded, or another user's run
        if _process_alive(owner_pid):
            continue
        run_as = base_dir.owner() if os.geteuid() == 0 and base_dir.owner() != "root" else None
        PostgresServer(binaries=binaries, base_dir=base_dir, run_as=run_as).stop(mode="immediate")


def _process_alive(pid: int) -> bool:
    """Alive and not a zombie: a killed run's zombie lingers where nothing reaps orphans (containers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        # The state follows the parenthesised command name, which may itself contain spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _ensure_service_user() -> str:
    """The unprivileged account the cluster runs as when we are root."""
    for name in (SUPERUSER, SERVICE_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        check=True,
        capture_output=True,
    )
    return SERVICE_USER


def _as_user_prefix(user: str | None) -> list[str]:
    if user is None:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--"]
    if shutil.which("setpriv"):
        entry = pwd.getpwnam(user)
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"]
    raise PostgresServerError(
        "running as root, and neither runuser nor setpriv is available to drop privileges"
    )


def _world_traversable(directory: Path) -> bool:
    """Whether another user can reach files below ``directory`` (every ancestor has o+x)."""
    return all(part.stat().st_mode & stat.S_IXOTH for part in [directory, *directory.parents])


@dataclass
class PostgresServer:
    """A running cluster this process owns; :meth:`stop` is idempotent and also registered with atexit."""

    binaries: Binaries
    base_dir: Path
    run_as: str | None
    port: int = 0
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _run(
        self, tool: str, *args: str, timeout: float = START_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        # The cwd must be readable by the cluster's user: initdb fails in root's home otherwise.
        return subprocess.run(
            [*_as_user_prefix(self.run_as), self.binaries.path(tool), *args],
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def initdb(self) -> None:
        result = self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        settings = "".join(f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items())
        settings += f"unix_socket_directories = '{self.socket_dir}'\n"
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# wcsync test suite\n" + settings)

    def start(self, deadline: float) -> None:
        last_error = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            result = self._run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--options",
                f"-p {self.port}",
                "--wait",
                "--timeout",
                str(max(1, int(deadline - time.monotonic()))),
            )
            if result.returncode == 0:
                self._wait_until_ready(deadline)
                return
            last_error = f"{result.stdout}{result.stderr}\n{self._log_tail()}"
            if time.monotonic() >= deadline:
                break
        raise PostgresServerError(f"PostgreSQL did not start:\n{last_error}")

    def _wait_until_ready(self, deadline: float) -> None:
        """pg_ctl --wait has seen the postmaster up; accept only once a TCP client can really connect."""
        isready = shutil.which("pg_isready", path=str(self.binaries.bindir))
        while True:
            if isready:
                check = subprocess.run(
                    [isready, "-q", "-h", self.host, "-p", str(self.port), "-U", self.user, "-t", "2"],
                    capture_output=True,
                    check=False,
                )
                if check.returncode == 0:
                    return
            else:
                try:
                    with socket.create_connection((self.host, self.port), timeout=2):
                        return
                except OSError:
                    pass
            if time.monotonic() >= deadline:
                raise PostgresServerError(f"PostgreSQL is not accepting connections:\n{self._log_tail()}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                for attempt in dict.fromkeys((mode, "immediate")):
                    stopped = self._run(
                        "pg_ctl", "stop", "--pgdata", str(self.data_dir), "-m", attempt, "--wait"
                    )
                    if stopped.returncode == 0:
                        break
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def start(timeout: float = START_TIMEOUT_SECONDS) -> PostgresServer:
    """Make, start and return a fresh cluster; on any failure nothing is left behind."""
    binaries = find_binaries()
    run_as = _ensure_service_user() if os.geteuid() == 0 else None
    parent = cluster_parent_dir(run_as)
    remove_orphans(parent, binaries)
    base_dir = Path(tempfile.mkdtemp(prefix="wcsync-pg-", dir=parent))
    server = PostgresServer(binaries=binaries, base_dir=base_dir, run_as=run_as)
    atexit.register(server.stop)
    try:
        (base_dir / OWNER_FILE).write_text(str(os.getpid()))
        if run_as is not None:
            shutil.chown(base_dir, user=run_as, group=pwd.getpwnam(run_as).pw_gid)
        server.socket_dir.mkdir()
        if run_as is not None:
            shutil.chown(server.socket_dir, user=run_as, group=pwd.getpwnam(run_as).pw_gid)
        server.initdb()
        server.start(deadline=time.monotonic() + timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A server for the duration of the block; SIGTERM (``timeout``, CI cancel) still runs the cleanup."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGTERM, _interrupt)
    server = start()
    try:
        yield server
    finally:
        server.stop()
        if previous is signal.SIG_DFL:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)
