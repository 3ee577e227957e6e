"""The environment every test runs in: nothing leaks in from the developer's shell."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ISOLATED_PREFIXES = ("WCSYNC_", "WOO_", "POSTGRES_", "SQLITE_")
ISOLATED_NAMES = ("PERSISTENCE_MODULE",)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting leaks in from the developer's shell; the default SQLite file lands in a tmp dir."""
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            monkeypatch.delenv(name)
    data_home = tmp_path / "xdg-data"
    data_home.mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    return data_home
