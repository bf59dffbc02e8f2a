"""MVTec AD 2 reader: ``train/good``, ``validation/good``, ``test_public/{good,bad}`` and their ground truth.

MVTec AD 2 pools every defect under ``bad``, so a category has one defect type named ``bad``; masks are
``test_public/ground_truth/bad/<stem>_mask.png``. ``validation/good`` holds normal images meant for model
selection: anogen reads them as training normals (they are not test images). ``test_private*`` folders ship
without ground truth and are not read.
"""

from __future__ import annotations

from pathlib import Path

from anogen.data.check import Findings, pair_defect_images, read_normal_folder, sub_folders
from anogen.data.model import Category, CategoryKind, DefectType
from anogen.io import safe_name
from anogen.progress import ProgressCallback

# The eight MVTec AD 2 categories; fabric is a texture (no object silhouette to compensate), the rest objects.
CATEGORIES = frozenset({"can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"})
TEXTURES = frozenset({"fabric"})
DEFECT = "bad"


def is_category(folder: Path) -> bool:
    return (folder / "test_public").is_dir() or ((folder / "train").is_dir() and (folder / "validation").is_dir())


def read(folder: Path, *, progress: ProgressCallback | None = None) -> Category:
    """Read one MVTec AD 2 category folder; problems are collected in ``category.problems``."""
    findings = Findings(progress)
    name = safe_name(folder.name)
    kind = None
    if name in CATEGORIES:
        kind = CategoryKind.TEXTURE if name in TEXTURES else CategoryKind.OBJECT
    category = Category(name=name, root=folder, dataset_format="mvtec2", kind=kind)
    category.train_normals = read_normal_folder(
        folder / "train" / "good", findings, required=True, what="normal training images"
    )
    category.train_normals += read_normal_folder(
        folder / "validation" / "good", findings, required=False, what="normal validation images"
    )
    test = folder / "test_public"
    category.test_normals = read_normal_folder(test / "good", findings, required=False, what="normal test images")
    if not test.is_dir():
        findings.error(test, "missing folder: MVTec AD 2 keeps its defect images in test_public/bad/")
    elif not (test / DEFECT).is_dir():
        findings.error(test / DEFECT, "missing folder: the defect images (test_public/bad) belong here")
    else:
        samples = pair_defect_images(test / DEFECT, test / "ground_truth" / DEFECT, findings, DEFECT)
        category.defects[DEFECT] = DefectType(DEFECT, samples)
        for extra in sub_folders(test):
            if extra.name not in ("good", DEFECT, "ground_truth"):
                findings.warn(extra, "ignored: MVTec AD 2 pools defects under test_public/bad")
    category.problems = findings.close()
    return category
