"""The toy world: procedural MVTec-style data and the tiny pretrained backbone that knows it."""

from anogen.toy.data import (
    DEFECTS,
    KINDS,
    PROMPTS,
    defect_image,
    defect_pixels,
    make_category,
    marked_image,
    normal_image,
    part_canvas,
)

__all__ = [
    "DEFECTS",
    "KINDS",
    "PROMPTS",
    "defect_image",
    "defect_pixels",
    "make_category",
    "marked_image",
    "normal_image",
    "part_canvas",
]
