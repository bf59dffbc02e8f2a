"""The few-shot split against an independent rule: the first floor(N/3) stems (at least 1) in natural order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from anogen.data.model import DefectSample, DefectType, ImageInfo
from anogen.data.split import few_shot_split
from anogen.errors import DataError


def _defect(stems: list[str]) -> DefectType:
    samples = [DefectSample(ImageInfo(Path(f"{s}.png"), (8, 8), "RGB"), None, s) for s in stems]
    return DefectType("crack", samples)


@pytest.mark.parametrize(
    "n,expected_train", [(1, 1), (2, 1), (3, 1), (5, 1), (6, 2), (8, 2), (9, 3), (17, 5), (30, 10)]
)
def test_default_is_floor_n_over_3_at_least_one(n: int, expected_train: int) -> None:
    stems = [f"{i:03d}" for i in range(n)]
    split = few_shot_split(_defect(stems))
    assert [s.stem for s in split.train] == stems[:expected_train]
    assert [s.stem for s in split.held_out] == stems[expected_train:]


def test_natural_order_not_input_order_nor_lexicographic() -> None:
    stems = [str(i) for i in range(12)]
    shuffled = stems[:]
    random.Random(0).shuffle(shuffled)
    split = few_shot_split(_defect(shuffled))
    # Lexicographic order would put "10" and "11" before "2".
    assert [s.stem for s in split.train] == ["0", "1", "2", "3"]
    assert [s.stem for s in split.held_out] == stems[4:]


def test_sets_are_disjoint_and_complete() -> None:
    stems = [f"img_{i}" for i in range(10)]
    split = few_shot_split(_defect(stems), shots=4)
    train, held = {s.stem for s in split.train}, {s.stem for s in split.held_out}
    assert not train & held and train | held == set(stems) and len(train) == 4
    assert split.to_dict() == {"train": stems[:4], "held_out": stems[4:]}


def test_shots_bounds() -> None:
    defect = _defect(["a", "b", "c"])
    assert len(few_shot_split(defect, shots=3).held_out) == 0
    with pytest.raises(DataError, match="--shots 4 is more than the 3 images of defect type 'crack'"):
        few_shot_split(defect, shots=4)
    with pytest.raises(DataError, match="at least 1"):
        few_shot_split(defect, shots=0)
    with pytest.raises(DataError, match="no images"):
        few_shot_split(_defect([]))
