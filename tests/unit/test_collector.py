"""The collector's tuning (infrastructure/support/collector.py), applied by every `wcsync` command."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import entry, main
from infrastructure.support.collector import YOUNG_THRESHOLD, tune_for_bulk_work


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_only_the_first_threshold_is_raised(default_thresholds: None) -> None:
    gc.set_threshold(700, 11, 12)
    tune_for_bulk_work()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 11, 12)
    assert gc.isenabled()


def test_a_command_runs_with_the_tuned_collector(default_thresholds: None, tmp_path: Path) -> None:
    # A read-only command on a database that does not exist: it ends at once (exit 4), tuned already.
    code = main(["status", "--database-url", f"sqlite:///{tmp_path / 'none.db'}"])
    assert code == 4
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def test_the_command_process_ends_with_its_objects_frozen(
    default_thresholds: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The console script's entry: main(), then every object moved out of the exit's collections.
    monkeypatch.setattr(
        "sys.argv", ["wcsync", "status", "--database-url", f"sqlite:///{tmp_path / 'none.db'}"]
    )
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        assert entry() == 4
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()  # this test process goes on: its later garbage must stay collectable


def test_main_alone_freezes_nothing(default_thresholds: None, tmp_path: Path) -> None:
    # Tests and embedders call main() in a process that goes on: nothing is frozen for them.
    gc.unfreeze()
    assert main(["status", "--database-url", f"sqlite:///{tmp_path / 'none.db'}"]) == 4
    assert gc.get_freeze_count() == 0
