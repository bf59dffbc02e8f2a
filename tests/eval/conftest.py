"""Small real trees (the toy world, MVTec layout) and synth folders written in the documented synth format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = 32


def write_synth(
    out_root: Path,
    category: str,
    defect: str,
    split_train: list[str],
    split_held_out: list[str],
    *,
    count: int = 6,
    rejected: int = 2,
    seed: int = 500,
    with_split: bool = True,
) -> Path:
    """A synth defect folder as docs/architecture.md "Synth output" describes it.

    The "generated" samples are toy defect images drawn with other seeds than the data (so they are new images
    whose masks are exact); ``rejected`` extra attempts are recorded as rejected with an empty mask.
    """
    from anogen.toy import defect_image

    folder = out_root / category / defect
    rows = []
    for i in range(count + rejected):
        name = f"{i:06d}"
        accepted = i >= rejected  # the first attempts are rejected, so accepted ids do not start at 0
        image, mask, _ = defect_image("texture", defect, seed, i, size=SIZE)
        if not accepted:
            mask = np.zeros_like(mask)
        for sub, arr in (("image", image), ("part", image), ("mask", (mask * 255).astype(np.uint8))):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / sub / f"{name}.png")
        rows.append(
            {
                "schema_version": 1, "id": i, "name": name, "seed": i, "category": category, "defect": defect,
                "accepted": accepted, "reason": None if accepted else "empty_mask",
                "mask_area": float(mask.mean()), "image": f"image/{name}.png", "part": f"part/{name}.png",
                "mask": f"mask/{name}.png", "adapter_sha256": "0" * 64,
            }
        )
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = {
        "schema_version": 1, "category": category, "defect": defect, "count": count, "seed": 0,
        "adapter": {"path": str(out_root / "runs" / category / defect), "sha256": "0" * 64},
        "data": {"root": "", "format": "toy", "category": category},
    }
    if with_split:
        run["split"] = {"train": split_train, "held_out": split_held_out}
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def toy_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy texture category ``widget`` (32 px): 8 train/good, 3 test/good, 4 stain + 4 hole defect images."""
    from anogen.toy import make_category

    root = tmp_path_factory.mktemp("toydata")
    return make_category(
        root, kind="texture", seed=3, size=SIZE, n_train=8, n_test_good=3, n_per_defect=4,
        defects=("stain", "hole"), name="widget",
    )


def defect_stems(tree: Path, defect: str) -> list[str]:
    return sorted(p.stem for p in (tree / "test" / defect).glob("*.png"))


@pytest.fixture
def synth_tree(tmp_path: Path, toy_tree: Path) -> Path:
    """Synth output for both defect types of ``toy_tree``, split = first floor(4/3) = 1 image trains."""
    out = tmp_path / "synth"
    for defect in ("stain", "hole"):
        stems = defect_stems(toy_tree, defect)
        write_synth(out, "widget", defect, stems[:1], stems[1:])
    return out
