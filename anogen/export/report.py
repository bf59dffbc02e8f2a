"""``anogen report``: one self-contained HTML page (and a PNG contact sheet) to judge a synth run at a glance.

Per defect type: adapter and sampling info, accepted/rejected counts with reasons, a mask-area histogram
(inline SVG) and a grid of image | part | mask overlay thumbnails; for verified outputs, the score distributions
with their thresholds and the worst accepted / best rejected samples (``report_verify.py``). Thumbnails are
embedded as base64 PNG data URIs, so the page opens from disk in any browser, by mail or as a CI artefact, with
no server and no sidecar files. The contact sheet (``FILE.png``) shows the same grids for terminals and CI logs.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from anogen import __version__
from anogen.errors import InputError
from anogen.export.report_verify import verify_block
from anogen.io import to_rgb, write_bytes_atomic, write_text_atomic
from anogen.progress import ProgressCallback, report
from anogen.records import SynthFolder, find_synth_folders, read_synth_folder

logger = logging.getLogger(__name__)

THUMB = 128  # px, longest side of an HTML thumbnail
SHEET_THUMB = 72  # px, contact sheet
SHEET_COLUMNS = 4  # triplets per contact-sheet row
HIST_BINS = 20


@dataclass
class DefectSummary:
    """Counts of one synth defect folder, as the report shows them."""

    category: str
    defect: str
    folder: str
    attempts: int
    accepted: int
    rejected: int
    selected: int
    reasons: dict[str, int] = field(default_factory=dict)
    shown: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ReportResult:
    html: Path
    png: Path
    defects: list[DefectSummary]

    def to_dict(self) -> dict[str, Any]:
        return {"html": str(self.html), "png": str(self.png), "defects": [d.to_dict() for d in self.defects]}


def summarise(synth: SynthFolder) -> DefectSummary:
    """Counts of one synth folder: attempts, accepted, rejected by reason, and the selected (first ``count``)."""
    accepted = sum(1 for r in synth.rows if r.get("accepted"))
    reasons = Counter(str(r.get("reason") or "unknown") for r in synth.rows if not r.get("accepted"))
    return DefectSummary(
        category=synth.category,
        defect=synth.defect,
        folder=str(synth.folder),
        attempts=len(synth.rows),
        accepted=accepted,
        rejected=len(synth.rows) - accepted,
        selected=len(synth.samples),
        reasons=dict(sorted(reasons.items())),
    )


# ------------------------------------------------------------------------------------------ pictures


def _load(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def _load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img.convert("L")) > 0
    if arr.shape[::-1] != size:
        arr = np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
    return arr


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the mask tinted red and its outline drawn in pure red."""
    arr = np.asarray(image.convert("RGB")).astype(np.float32)
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    arr[mask] = 0.5 * arr[mask] + 0.5 * red
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    arr[mask & ~inner] = red
    return Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))


def _thumb(img: Image.Image, side: int) -> Image.Image:
    out = img.copy()
    # Nearest keeps thin defects and mask edges crisp at thumbnail size.
    out.thumbnail((side, side), Image.Resampling.NEAREST if max(img.size) <= side else Image.Resampling.BILINEAR)
    return out


def _data_uri(img: Image.Image) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _triplet(row: dict[str, Any], synth: SynthFolder) -> tuple[Image.Image, Image.Image, Image.Image]:
    image = _load(synth.folder / row["image"])
    part = _load(synth.folder / row["part"])
    mask = _load_mask(synth.folder / row["mask"], image.size)
    return image, part, overlay(image, mask)


def histogram_svg(accepted: Sequence[float], rejected: Sequence[float], *, width: int = 360, height: int = 120) -> str:
    """An inline SVG bar chart of mask areas (fraction of the image), accepted and rejected stacked."""
    values = [*accepted, *rejected]
    top = max([0.0, *values])
    top = top if top > 0 else 1.0
    edges = np.linspace(0.0, top, HIST_BINS + 1)
    acc, _ = np.histogram(np.asarray(accepted, dtype=float), bins=edges)
    rej, _ = np.histogram(np.asarray(rejected, dtype=float), bins=edges)
    peak = max(1, int((acc + rej).max()) if len(values) else 1)
    plot_h = height - 22
    bar_w = width / HIST_BINS
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="mask area histogram">'
    ]
    for i in range(HIST_BINS):
        x = i * bar_w
        h_acc = plot_h * acc[i] / peak
        h_rej = plot_h * rej[i] / peak
        title = f"{edges[i]:.3f}-{edges[i + 1]:.3f}: {acc[i]} accepted, {rej[i]} rejected"
        parts.append(
            f'<rect x="{x:.1f}" y="{plot_h - h_acc:.1f}" width="{bar_w - 1:.1f}" height="{h_acc:.1f}" '
            f'fill="#2a9d8f"><title>{title}</title></rect>'
        )
        parts.append(
            f'<rect x="{x:.1f}" y="{plot_h - h_acc - h_rej:.1f}" width="{bar_w - 1:.1f}" height="{h_rej:.1f}" '
            f'fill="#bbb"><title>{title}</title></rect>'
        )
    parts.append(f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#333"/>')
    parts.append(f'<text x="0" y="{height - 6}" font-size="11">0</text>')
    parts.append(f'<text x="{width}" y="{height - 6}" font-size="11" text-anchor="end">{top:.3f} of the image</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">peak {peak}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------ page

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{margin-top:2em;border-bottom:1px solid #ccc}
table.info td,table.counts td,table.counts th{padding:2px 10px;text-align:left;vertical-align:top}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;padding:6px;background:#fff;border:1px solid #ddd;border-radius:4px}
figure.rejected{border-color:#c66}
figure img{image-rendering:pixelated;margin-right:2px}
figcaption{font-size:12px;color:#555}
code{font-size:12px}
"""


def _figure(row: dict[str, Any], synth: SynthFolder, shown_ids: list[int],
            extra: Sequence[tuple[str, Image.Image]] = ()) -> str:
    image, part, over = _triplet(row, synth)
    status = "accepted" if row.get("accepted") else f"rejected: {row.get('reason') or 'unknown'}"
    area = row.get("mask_area")
    area_text = f"{100 * float(area):.2f}%" if isinstance(area, (int, float)) else "?"
    imgs = "".join(
        f'<img src="{_data_uri(_thumb(pic, THUMB))}" alt="{label} {row["id"]}" title="{label}">'
        for label, pic in (("image", image), ("part", part), ("mask overlay", over), *extra)
    )
    shown_ids.append(int(row["id"]))
    css = "accepted" if row.get("accepted") else "rejected"
    caption = html.escape(f"#{row['id']} · seed {row.get('seed')} · area {area_text} · {status}")
    return f'<figure class="{css}" data-id="{row["id"]}">{imgs}<figcaption>{caption}</figcaption></figure>'


def _section(synth: SynthFolder, summary: DefectSummary, max_per_defect: int) -> str:
    run = synth.run.raw  # the report shows run.json's values as it holds them, whatever their type
    adapter = run.get("adapter") if isinstance(run.get("adapter"), dict) else {}
    backbone = run.get("backbone")
    backbone_text = (
        backbone.get("source") or backbone.get("id") if isinstance(backbone, dict) else backbone
    ) or "unknown"
    sample = run.get("sample") if isinstance(run.get("sample"), dict) else {}
    mask_cfg = run.get("mask") if isinstance(run.get("mask"), dict) else {}
    seeds = [r.get("seed") for r in synth.rows if r.get("seed") is not None]
    info_rows = [
        ("synth folder", str(synth.folder)),
        ("adapter", str(adapter.get("path", "unknown"))),
        ("adapter sha256", str(adapter.get("sha256", "unknown"))),
        ("backbone", str(backbone_text)),
        ("global seed", str(run.get("seed"))),
        ("sample seeds", f"{min(seeds)} … {max(seeds)}" if seeds else "none"),
        ("requested count", str(run.get("count"))),
        ("sampling", ", ".join(f"{k}={v}" for k, v in sorted(sample.items())) or "unknown"),
        ("mask", ", ".join(f"{k}={v}" for k, v in sorted(mask_cfg.items())) or "unknown"),
    ]
    info = "".join(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(v)}</code></td></tr>" for k, v in info_rows)
    counts = [
        ("attempts", summary.attempts),
        ("accepted", summary.accepted),
        ("rejected", summary.rejected),
        ("selected", summary.selected),
    ]
    count_rows = "".join(f'<tr><th>{k}</th><td data-count="{k}">{v}</td></tr>' for k, v in counts)
    count_rows += "".join(
        f'<tr><th>rejected: {html.escape(reason)}</th><td data-reason="{html.escape(reason)}">{n}</td></tr>'
        for reason, n in summary.reasons.items()
    )
    acc_areas = [float(r["mask_area"]) for r in synth.rows if r.get("accepted") and _is_number(r.get("mask_area"))]
    rej_areas = [float(r["mask_area"]) for r in synth.rows if not r.get("accepted") and _is_number(r.get("mask_area"))]
    shown_ids: list[int] = []
    selected_ids = {s.id for s in synth.samples}
    accepted_rows = [r for r in synth.rows if int(r["id"]) in selected_ids][:max_per_defect]
    rejected_rows = [r for r in synth.rows if not r.get("accepted")][: max(1, max_per_defect // 4)]
    grid = "".join(_figure(r, synth, shown_ids) for r in accepted_rows)
    rejected_grid = "".join(_figure(r, synth, shown_ids) for r in rejected_rows)
    summary.shown = len(shown_ids)
    verified = verify_block(synth, lambda row, extra: _figure(row, synth, [], extra))
    title = html.escape(f"{synth.category} / {synth.defect}")
    more = summary.selected - len(accepted_rows)
    more_text = f"<p>{more} more accepted samples not shown (--max-per-defect).</p>" if more > 0 else ""
    return (
        f'<section class="defect" data-category="{html.escape(synth.category)}" '
        f'data-defect="{html.escape(synth.defect)}">'
        f"<h2>{title}</h2>"
        f'<div style="display:flex;gap:2em;flex-wrap:wrap"><table class="info">{info}</table>'
        f'<table class="counts">{count_rows}</table>'
        f"<div><div>mask area (green accepted, grey rejected)</div>{histogram_svg(acc_areas, rej_areas)}</div></div>"
        f'<h3>accepted (image | part | mask overlay)</h3><div class="grid">{grid or "<p>none</p>"}</div>{more_text}'
        f'<h3>rejected</h3><div class="grid">{rejected_grid or "<p>none</p>"}</div>'
        f"{verified}</section>"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def contact_sheet(sets: Sequence[SynthFolder], max_per_defect: int) -> Image.Image:
    """A PNG of every defect type: a title line, then rows of (image, part, overlay) triplets."""
    cell_w = 3 * SHEET_THUMB + 2 * 2
    gap = 8
    sheet_w = SHEET_COLUMNS * cell_w + (SHEET_COLUMNS + 1) * gap
    blocks: list[Image.Image] = []
    for synth in sets:
        summary = summarise(synth)
        rows = [r for r in synth.rows if int(r["id"]) in {s.id for s in synth.samples}][:max_per_defect]
        n_lines = max(1, -(-len(rows) // SHEET_COLUMNS))
        block = Image.new("RGB", (sheet_w, 22 + n_lines * (SHEET_THUMB + gap) + gap), (250, 250, 250))
        draw = ImageDraw.Draw(block)
        reasons = ", ".join(f"{k} {v}" for k, v in summary.reasons.items()) or "none"
        draw.text(
            (gap, 5),
            f"{synth.category}/{synth.defect}: {summary.accepted} accepted of {summary.attempts} "
            f"(selected {summary.selected}; rejected: {reasons})",
            fill=(20, 20, 20),
        )
        for index, row in enumerate(rows):
            line, col = divmod(index, SHEET_COLUMNS)
            x = gap + col * (cell_w + gap)
            y = 22 + gap + line * (SHEET_THUMB + gap)
            for pic in _triplet(row, synth):
                tile = pic.resize((SHEET_THUMB, SHEET_THUMB), Image.Resampling.BILINEAR)
                block.paste(tile, (x, y))
                x += SHEET_THUMB + 2
        blocks.append(block)
    height = sum(b.height for b in blocks) or 1
    sheet = Image.new("RGB", (sheet_w, height), (250, 250, 250))
    y = 0
    for block in blocks:
        sheet.paste(block, (0, y))
        y += block.height
    return sheet


def write_report(
    synth: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    max_per_defect: int = 24,
    progress: ProgressCallback | None = None,
) -> ReportResult:
    """Write the HTML report and its PNG contact sheet for one or more synth folders.

    Args:
        synth (`Sequence[str | Path]`): synth output folders (root, category or defect folders).
        out (`str | Path`, *optional*): the HTML file; defaults to ``report.html`` in the first synth folder.
            The contact sheet goes beside it with the suffix ``.png``.
        max_per_defect (`int`, defaults to 24): accepted samples shown per defect type (rejected: a quarter).
        progress (`ProgressCallback`, *optional*): progress events.

    Returns:
        `ReportResult`: the two paths and the counts per defect type.
    """
    if max_per_defect < 1:
        raise InputError(f"--max-per-defect must be at least 1 (got {max_per_defect})")
    folders = find_synth_folders(synth)
    html_path = Path(out) if out is not None else Path(synth[0]) / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{html_path}: the report file must end in .html")
    png_path = html_path.with_suffix(".png")
    sets = [read_synth_folder(folder) for folder in folders]
    sections: list[str] = []
    summaries: list[DefectSummary] = []
    for index, s in enumerate(sets):
        summary = summarise(s)
        sections.append(_section(s, summary, max_per_defect))
        summaries.append(summary)
        report(progress, "report", index + 1, len(sets))
    total_acc = sum(s.accepted for s in summaries)
    total = sum(s.attempts for s in summaries)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>anogen report: {len(sets)} defect type(s)</title><style>{_CSS}</style></head><body>"
        f"<h1>anogen synth report</h1><p>{len(sets)} defect type(s), {total_acc} accepted of {total} attempts. "
        f"Written by anogen {html.escape(__version__)}; contact sheet: "
        f'<a href="{html.escape(png_path.name)}">{html.escape(png_path.name)}</a>.</p>'
        + "".join(sections)
        + "</body></html>\n"
    )
    write_text_atomic(html_path, page)
    buffer = io.BytesIO()
    contact_sheet(sets, max_per_defect).save(buffer, format="PNG", compress_level=6)
    write_bytes_atomic(png_path, buffer.getvalue())
    logger.info("wrote %s and %s", html_path, png_path)
    return ReportResult(html=html_path, png=png_path, defects=summaries)
