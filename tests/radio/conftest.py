"""Fixtures of the radio tests; the helpers themselves are in radio_rig.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.radio_rig import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A directory where gridsim and edge processes run; they are killed afterwards."""
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()
