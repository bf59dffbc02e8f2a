"""The report renders: every image reference resolves, counts match the manifest, the PNG sheet exists."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from anogen.export.report import write_report


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.sections: list[dict] = []
        self._cell: tuple[str, str] | None = None
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"] or "")
        elif tag == "section":
            self.sections.append(
                {"category": a["data-category"], "defect": a["data-defect"], "counts": {}, "reasons": {}, "figures": []}
            )
        elif tag == "td" and "data-count" in a:
            self._cell = ("counts", a["data-count"] or "")
        elif tag == "td" and "data-reason" in a:
            self._cell = ("reasons", a["data-reason"] or "")
        elif tag == "figure":
            self.sections[-1]["figures"].append(int(a["data-id"] or -1))
        elif tag == "svg":
            self.svgs += 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None and data.strip():
            kind, key = self._cell
            self.sections[-1][kind][key] = int(data)
            self._cell = None


def _resolve(src: str, base: Path) -> Image.Image:
    if src.startswith("data:"):
        header, payload = src.split(",", 1)
        assert header == "data:image/png;base64"
        raw = base64.b64decode(payload, validate=True)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        return Image.open(io.BytesIO(raw))
    path = base / src
    assert path.is_file(), src
    return Image.open(path)


@pytest.mark.parametrize("max_per_defect", [24, 2])
def test_report_renders_and_counts_match(world: dict[str, Path], max_per_defect: int) -> None:
    out = world["tmp"] / "rep" / "page.html"
    result = write_report([world["synth"]], out, max_per_defect=max_per_defect)
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    assert page.images, "no thumbnails"
    for src in page.images:
        img = _resolve(src, out.parent)
        img.load()
        assert max(img.size) <= 128
    assert page.svgs == len(page.sections) == 2
    for section in page.sections:
        folder = world["synth"] / section["category"] / section["defect"]
        rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        count = json.loads((folder / "run.json").read_text())["count"]
        accepted = [r for r in rows if r["accepted"]]
        assert section["counts"] == {
            "attempts": len(rows),
            "accepted": len(accepted),
            "rejected": len(rows) - len(accepted),
            "selected": min(count, len(accepted)),
        }
        assert section["reasons"] == dict(Counter(r["reason"] for r in rows if not r["accepted"]))
        shown_accepted = [i for i in section["figures"] if i in {r["id"] for r in accepted}]
        assert shown_accepted == [r["id"] for r in accepted][:max_per_defect]
        # Three pictures per figure: image, part, overlay.
    assert len(page.images) == 3 * sum(len(s["figures"]) for s in page.sections)
    sheet = Image.open(result.png)
    assert result.png == out.with_suffix(".png") and sheet.size[0] > 100 and sheet.size[1] > 100


def test_overlay_marks_exactly_the_mask(tmp_path: Path) -> None:
    import numpy as np

    from anogen.export.report import overlay

    image = Image.fromarray(np.full((20, 20, 3), 100, np.uint8))
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:12] = True
    arr = np.asarray(overlay(image, mask))
    assert (arr[~mask] == 100).all()
    assert (arr[mask][:, 0] > 100).all() and (arr[mask][:, 1] < 100).all()
