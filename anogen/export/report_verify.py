"""The report's verification block (issue 14): per defect type, each score's distribution with its threshold, and
the worst accepted beside the best rejected sample (image, mask overlay, anomaly map).

No torch at import. The anomaly maps need the category's normal model (the backbone's VAE): they are computed
through :mod:`anogen.verify.synth` only when a folder holds verified rows and ``maps`` is on; without them the
block shows image and mask only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from anogen.errors import AnogenError

if TYPE_CHECKING:
    from anogen.records import SynthFolder

# score -> (threshold field of run.json verify, True when higher is better)
SCORES: dict[str, tuple[str, bool]] = {
    "alignment": ("alignment_min", True),
    "background": ("background_max", False),
    "copy": ("copy_min", True),
}
VERIFY_REASONS = ("misaligned", "background", "copy")
BINS = 16


def score_histogram_svg(accepted: Sequence[float], rejected: Sequence[float], threshold: float | None, *,
                        width: int = 240, height: int = 90) -> str:
    """Stacked bars (green accepted, grey rejected) over the scores' range, the threshold as a red line."""
    values = [*accepted, *rejected, *([threshold] if threshold is not None else [])]
    low, high = min(values), max(values)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, BINS + 1)
    acc, _ = np.histogram(np.asarray(accepted, dtype=float), bins=edges)
    rej, _ = np.histogram(np.asarray(rejected, dtype=float), bins=edges)
    top = max(1, int((acc + rej).max()))
    bar = width / BINS
    parts = [f'<svg class="score-hist" width="{width}" height="{height + 14}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(BINS):
        h_acc, h_rej = height * acc[i] / top, height * rej[i] / top
        x = i * bar
        parts.append(f'<rect x="{x:.1f}" y="{height - h_acc:.1f}" width="{bar - 1:.1f}" height="{h_acc:.1f}" '
                     'fill="#3a3"/>')
        parts.append(f'<rect x="{x:.1f}" y="{height - h_acc - h_rej:.1f}" width="{bar - 1:.1f}" '
                     f'height="{h_rej:.1f}" fill="#999"/>')
    if threshold is not None:
        x = width * (threshold - low) / (high - low)
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="red" '
                     'stroke-width="2"/>')
    parts.append(f'<text x="0" y="{height + 12}" font-size="10">{low:.2f}</text>'
                 f'<text x="{width - 30}" y="{height + 12}" font-size="10">{high:.2f}</text></svg>')
    return "".join(parts)


def heat(amap: np.ndarray, top: float = 2.0) -> Image.Image:
    """An anomaly map (normal units) as an image: black at 0, red at 1 (a held-out normal's peak), yellow at top."""
    x = np.clip(np.asarray(amap, dtype=np.float32) / top, 0.0, 1.0)
    rgb = np.stack([np.clip(2 * x, 0, 1), np.clip(2 * x - 1, 0, 1), np.zeros_like(x)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not math.isnan(float(value)) else None


def verify_block(synth: SynthFolder, figure: Any, *, maps: bool = True) -> str:
    """The HTML block of one synth folder ("" when no row holds scores).

    Args:
        synth (`SynthFolder`): the folder.
        figure: ``figure(row, extra_images) -> str``, the report's own thumbnail figure.
        maps (`bool`, defaults to True): compute the anomaly maps of the two samples shown (loads the VAE).
    """
    rows = [r for r in synth.rows if isinstance(r.get("verify"), dict)]
    if not rows:
        return ""
    config = synth.run.verify or {}
    charts = []
    for name, (field, _) in SCORES.items():
        acc = [v for r in rows if r.get("accepted") and (v := _number(r["verify"].get(name))) is not None]
        rej = [v for r in rows if not r.get("accepted") and (v := _number(r["verify"].get(name))) is not None]
        if not acc and not rej:
            continue
        threshold = _number(config.get(field))
        label = html.escape(f"{name} (threshold {field} = {threshold})")
        charts.append(f'<div data-score="{name}"><div>{label}</div>{score_histogram_svg(acc, rej, threshold)}</div>')

    def alignment(r: dict[str, Any]) -> float:
        return _number(r["verify"].get("alignment")) if _number(r["verify"].get("alignment")) is not None else -1.0

    accepted = [r for r in rows if r.get("accepted")]
    rejected = [r for r in rows if r.get("reason") in VERIFY_REASONS]
    pair = [("worst accepted", min(accepted, key=alignment)) if accepted else None,
            ("best rejected", max(rejected, key=alignment)) if rejected else None]
    rescorer = None
    if maps:
        from anogen.verify.synth import OutputRescorer

        rescorer = OutputRescorer(synth.folder, synth.run)
    figures, note = [], ""
    for item in pair:
        if item is None:
            continue
        label, row = item
        extra = []
        if rescorer is not None and rescorer.config.mode != "off":
            image = np.asarray(Image.open(synth.folder / row["image"]).convert("RGB"))
            try:
                extra.append(("anomaly map", heat(rescorer.model().anomaly_map(image))))
            except AnogenError as exc:  # e.g. the data folder moved: the rest of the report still stands
                note = f"<p>anomaly maps unavailable: {html.escape(exc.message)}</p>"
                rescorer = None
        figures.append(f'<div class="verify-pair" data-pick="{label}"><div>{html.escape(label)}</div>'
                       f"{figure(row, extra)}</div>")
    return (f'<h3>verification ({html.escape(str(config.get("mode")))})</h3>'
            f'<div style="display:flex;gap:2em;flex-wrap:wrap">{"".join(charts)}</div>'
            f'<div style="display:flex;gap:2em;flex-wrap:wrap">{"".join(figures)}</div>{note}')
