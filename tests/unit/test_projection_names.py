"""projections.names is what `wcsync projections rebuild NAME` checks without loading the projections."""

from __future__ import annotations

from projections.names import PROJECTION_NAMES
from projections.runner import PROJECTION_CLASSES


def test_the_parser_knows_every_projection_by_the_name_its_class_has() -> None:
    assert tuple(cls.name for cls in PROJECTION_CLASSES) == PROJECTION_NAMES
