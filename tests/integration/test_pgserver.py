"""How the harness finds PostgreSQL binaries and builds URLs (no server started here; fake binaries written
to tmp_path and a port bound, so not a unit test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import pgserver
from tests.support.pgserver import database_url_for


def _fake_bindir(directory: Path, names: tuple[str, ...] = ("initdb", "pg_ctl", "postgres")) -> Path:
    directory.mkdir(parents=True)
    for name in names:
        tool = directory / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    return directory


def test_binaries_on_path_win(tmp_path: Path) -> None:
    on_path = _fake_bindir(tmp_path / "path")
    fallback = _fake_bindir(tmp_path / "lib" / "15" / "bin")
    found = pgserver.find_binaries(search_path=str(on_path), extra_dirs=[str(fallback)])
    assert found.bindir == on_path


def test_falls_back_to_versioned_dirs(tmp_path: Path) -> None:
    incomplete = _fake_bindir(tmp_path / "path", names=("pg_ctl",))
    fallback = _fake_bindir(tmp_path / "lib" / "15" / "bin")
    found = pgserver.find_binaries(search_path=str(incomplete), extra_dirs=[str(fallback)])
    assert found.bindir == fallback


def test_missing_binaries_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(
        pgserver.PostgresServerError, match="install postgresql-15 or set WCSYNC_TEST_DATABASE_URL"
    ):
        pgserver.find_binaries(search_path=str(tmp_path), extra_dirs=[])


def test_newest_version_dir_first() -> None:
    dirs = ["/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"]
    assert sorted(dirs, key=pgserver._version_key, reverse=True)[0] == "/usr/lib/postgresql/16/bin"


def test_database_url_keeps_credentials_and_options() -> None:
    url = database_url_for("postgresql://u:p@db.example:6543/admin?sslmode=disable", "t_1")
    assert url == "postgresql://u:p@db.example:6543/t_1?sslmode=disable"


def test_free_port_is_bindable() -> None:
    assert 1024 <= pgserver.free_port() <= 65535
