"""The environment every test runs in: nothing leaks in from the developer's shell."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ISOLATED_PREFIXES = ("WCSYNC_", "WOO_", "POSTGRES_", "SQLITE_")
ISOLATED_NAMES = ("PERSISTENCE_MODULE",)
# Set on some machines and containers (this project's among them); see allow_bytecode_cache.
NO_BYTECODE_VARIABLE = "PYTHONDONTWRITEBYTECODE"


def allow_bytecode_cache() -> None:
    """Let the suite's Python processes cache the project's bytecode (__pycache__, gitignored).

    With PYTHONDONTWRITEBYTECODE set, every `wcsync` subprocess (the suite starts hundreds)
    compiled the whole project from source again: about 0.1 s of its 0.4 s start, a fifth of the e2e
    tests' time. Called once, before any test, by tests/conftest.py; the tests check the same either way.
    """
    os.environ.pop(NO_BYTECODE_VARIABLE, None)
    sys.dont_write_bytecode = False  # this process's own imports, and pytest's rewritten test modules


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
