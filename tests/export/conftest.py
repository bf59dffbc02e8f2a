"""Fixtures of the export tests: a small real MVTec category and synth folders drawn from known shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_mvtec, make_synth  # noqa: E402

SPLIT = {"train": ["000", "001"], "held_out": ["002", "003", "004", "005"]}


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """RGB category ``widget`` (40 px, 6 real crack images), synth crack (6 attempts, id 2 rejected) + scratch."""
    data = make_mvtec(tmp_path / "data", defects={"crack": 6})
    synth = tmp_path / "synth"
    make_synth(synth, defect="crack", split=SPLIT)
    make_synth(synth, defect="scratch", attempts=4, rejected=(0, 3), seed=9)
    return {"data": data, "synth": synth, "tmp": tmp_path}
