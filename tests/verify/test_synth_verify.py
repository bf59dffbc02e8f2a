"""Per-sample checks inside ``anogen synth`` (issue 14 item 2) on the tiny backbone (32 px, random weights).

A real signal is not needed here: what is tested is the wiring. Independent expectations:
- ``off`` takes the old path: a ``score`` run of the same seed writes the same image, part and mask bytes and the
  same manifest fields (``score`` rejects nothing, so it must generate exactly what ``off`` does), and ``off``
  rows carry no ``verify`` key (the byte-identity with the code before this change was checked once by hand
  against the merge base: docs/verify.md);
- ``reject`` with a threshold cut at the median of the ``score`` run's alignments rejects exactly the attempts
  whose recorded alignment lies below it, as ``misaligned``, and keeps generating until ``count`` are accepted;
- the normal model is built once per category into ``OUT/<category>/.verify`` and read from there afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anogen.config import ConfigRequest
from anogen.errors import InputError
from anogen.masks import REASONS as MASK_REASONS
from anogen.model.backbone import build_tiny
from anogen.records.manifest import read_rows
from anogen.synth import synthesize
from tests.test_sample import make_runs

SUBS = ("image", "part", "mask")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from anogen.data import read_category
    from anogen.toy.data import make_category

    root = tmp_path_factory.mktemp("verified")
    data = make_category(root / "data", "object", seed=0, n_train=6, n_test_good=1, n_per_defect=3,
                         defects=("stain",))
    runs = make_runs(root / "runs", build_tiny(seed=0), category="object", defect="stain", perturb=0.3)
    path = runs / "object" / "stain" / "adapter.json"
    record = json.loads(path.read_text())
    stems = [s.stem for s in read_category(data).defects["stain"].samples]
    record["data"] = {"root": str(data), "format": "toy", "category": "object"}
    record["split"] = {"train": stems[:2], "held_out": stems[2:]}
    path.write_text(json.dumps(record))
    return runs


def _synth(runs: Path, out: Path, count: int, **verify) -> object:
    sample = {"count": count, "max_attempts": 12, "batch_size": 4}
    return synthesize(runs, out, ConfigRequest(overrides={"sample": sample, "verify": verify}))


def _files(folder: Path) -> dict[str, bytes]:
    return {f"{s}/{p.name}": p.read_bytes() for s in SUBS for p in sorted((folder / s).glob("*.png"))}


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "verify"}


@pytest.fixture(scope="module")
def scored(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored")
    _synth(runs, out, 3, mode="score")
    return out / "object" / "stain"


def test_off_takes_the_old_path_and_score_changes_nothing(runs, scored, tmp_path):
    _synth(runs, tmp_path, 3, mode="off")
    off = tmp_path / "object" / "stain"
    off_rows, score_rows = read_rows(off / "manifest.jsonl"), read_rows(scored / "manifest.jsonl")
    assert off_rows and all("verify" not in r for r in off_rows)
    assert not (tmp_path / "object" / ".verify").exists()
    assert [_strip(r) for r in score_rows] == off_rows
    assert _files(off) == _files(scored)
    checked = [r for r in score_rows if "verify" in r]
    # Every attempt the mask step accepted (and only those) carries the three scores as numbers.
    assert [r["id"] for r in checked] == [r["id"] for r in off_rows if r["accepted"]]
    for r in checked:
        assert set(r["verify"]) == {"alignment", "background", "copy"}
        assert all(isinstance(r["verify"][k], float) for k in ("background", "copy"))
    assert json.loads((scored / "run.json").read_text())["verify"]["mode"] == "score"
    assert (scored.parent / ".verify" / "normal_model.json").is_file()


def test_reject_follows_the_recorded_scores(runs, scored, tmp_path):
    scores = {r["id"]: r["verify"]["alignment"] for r in read_rows(scored / "manifest.jsonl") if "verify" in r}
    values = sorted(v for v in scores.values() if v is not None)
    assert len(set(values)) > 1, "the tiny backbone's attempts should not all align alike"
    cut = float(np.median(values))
    summary = _synth(runs, tmp_path, 2, mode="reject", alignment_min=cut, background_max=1e9, copy_min=0.0)
    rows = read_rows(tmp_path / "object" / "stain" / "manifest.jsonl")
    for r in rows:
        if r["id"] in scores:
            a = scores[r["id"]]
            expected = "misaligned" if a is None or a < cut else None
            assert (r["reason"], r["accepted"]) == (expected, expected is None), r
            assert r["verify"]["alignment"] == a  # same seed: same image, same score
    d = summary.defects[0]
    assert d.rejected.get("misaligned", 0) == sum(1 for r in rows if r["reason"] == "misaligned") > 0
    assert d.accepted == 2 or d.exhausted
    # Rejected attempts keep their files, as mask rejections do.
    assert all((tmp_path / "object" / "stain" / r["image"]).is_file() for r in rows)


def test_same_seed_same_files_and_scores(runs, scored, tmp_path):
    _synth(runs, tmp_path, 3, mode="score")
    again = tmp_path / "object" / "stain"
    assert (again / "manifest.jsonl").read_bytes() == (scored / "manifest.jsonl").read_bytes()
    assert _files(again) == _files(scored)


def test_normal_model_built_once(runs, tmp_path, monkeypatch):
    import anogen.verify.cache

    _synth(runs, tmp_path, 1, mode="score")

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    monkeypatch.setattr(anogen.verify.cache, "build_normal_model", refuse)
    _synth(runs, tmp_path, 3, mode="score")  # a top-up reads the cache
    assert len(read_rows(tmp_path / "object" / "stain" / "manifest.jsonl")) >= 3


def test_missing_data_is_a_clear_error(runs, tmp_path):
    other = tmp_path / "runs"
    folder = other / "object" / "stain"
    folder.mkdir(parents=True)
    for f in (runs / "object" / "stain").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    record = json.loads((folder / "adapter.json").read_text())
    record["data"]["root"] = str(tmp_path / "gone")
    (folder / "adapter.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="data folder .* is not there") as info:
        _synth(other, tmp_path / "out", 1, mode="score")
    assert "--verify off" in str(info.value.hint)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_mask_keeps_verdicts_and_rescores_changed_masks(runs, scored, tmp_path, monkeypatch):
    import anogen.verify.synth
    from anogen.synth import remask

    values = [r["verify"]["alignment"] for r in read_rows(scored / "manifest.jsonl") if "verify" in r]
    cut = float(np.median([v for v in values if v is not None]))
    _synth(runs, tmp_path, 2, mode="reject", alignment_min=cut, background_max=1e9, copy_min=0.0)
    folder = tmp_path / "object" / "stain"
    original = (folder / "manifest.jsonl").read_bytes()
    original_rows = read_rows(folder / "manifest.jsonl")
    assert any(r["reason"] == "misaligned" for r in read_rows(folder / "manifest.jsonl"))

    def refuse(*args, **kwargs):
        raise AssertionError("nothing changed: nothing to score")

    # Same mask settings: no mask changes, so no scoring, and verification's rejections stay rejected.
    with monkeypatch.context() as m:
        m.setattr(anogen.verify.synth, "make_verifier", refuse)
        remask(folder)
    assert (folder / "manifest.jsonl").read_bytes() == original
    # Other masks: their scores are computed again (no row keeps the scores of a mask it no longer has) ...
    remask(folder, overrides={"threshold": 0.05})
    changed = read_rows(folder / "manifest.jsonl")
    assert [r.get("verify") for r in changed] != [r.get("verify") for r in original_rows]
    assert all(("verify" in r) == (r["reason"] not in MASK_REASONS) for r in changed)
    # ... and rescoring is deterministic: back to the first settings, the folder is what synth wrote.
    remask(folder, overrides={"threshold": "otsu"})
    assert (folder / "manifest.jsonl").read_bytes() == original


def _cut(scored: Path) -> float:
    values = [r["verify"]["alignment"] for r in read_rows(scored / "manifest.jsonl") if "verify" in r]
    return float(np.median([v for v in values if v is not None]))


def test_verify_then_top_up_equals_verified_from_start(runs, scored, tmp_path, monkeypatch):
    import anogen.verify.synth
    from anogen.verify.rescore import verify_output

    thresholds = {"alignment_min": _cut(scored), "background_max": 1e9, "copy_min": 0.0}

    def synth(out: Path, **verify) -> None:
        # batch 1: an attempt's pixels must not depend on which attempts share its batch (tests/test_sample.py)
        sample = {"count": 2, "max_attempts": 12, "batch_size": 1}
        synthesize(runs, out, ConfigRequest(overrides={"sample": sample, "verify": verify}))

    synth(tmp_path / "b", mode="reject", **thresholds)  # verified from the start
    synth(tmp_path / "a")  # the adapter records no verify section: off
    folder = tmp_path / "a" / "object" / "stain"
    assert all("verify" not in r for r in read_rows(folder / "manifest.jsonl"))

    # Killed while scoring: nothing is written, and the rerun gives the uninterrupted result.
    calls = {"n": 0}
    verdict = anogen.verify.synth.OutputRescorer.verdict

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return verdict(self, *args, **kwargs)

    before = (folder / "manifest.jsonl").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(anogen.verify.synth.OutputRescorer, "verdict", dies)
        with pytest.raises(KeyboardInterrupt):
            verify_output(tmp_path / "a", overrides={"mode": "reject", **thresholds})
    assert (folder / "manifest.jsonl").read_bytes() == before

    first = verify_output(tmp_path / "a", overrides=thresholds).folders[0]  # mode: reject for an unverified folder
    assert first["changed"] and first["scored"] > 0
    assert first["rejected"].get("misaligned") and first["needs_top_up"]  # the top-up below has work to do
    assert json.loads((folder / "run.json").read_text())["verify"]["mode"] == "reject"
    after = (folder / "manifest.jsonl").read_bytes()
    second = verify_output(tmp_path / "a", overrides=thresholds).folders[0]
    assert (not second["changed"], second["scored"]) == (True, 0)
    assert (folder / "manifest.jsonl").read_bytes() == after  # a second run is a no-op

    synth(tmp_path / "a")  # the same command again: tops up with the folder's (new) thresholds
    b = tmp_path / "b" / "object" / "stain"
    assert (folder / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    assert _files(folder) == _files(b)
    # Explicit other thresholds on a verified folder are refused (one folder, one set of thresholds).
    from anogen.errors import CompatibilityError

    with pytest.raises(CompatibilityError, match="verified with other settings"):
        synth(tmp_path / "a", mode="reject", alignment_min=0.0)


def test_verify_cli(runs, scored, tmp_path):
    from typer.testing import CliRunner

    from anogen.cli.app import app

    synthesize(runs, tmp_path, ConfigRequest(overrides={"sample": {"count": 2, "max_attempts": 6, "batch_size": 4}}))
    result = CliRunner().invoke(app, ["verify", str(tmp_path), "--min-alignment", str(_cut(scored)), "--json"])
    assert result.exit_code == 0, result.output
    folder = json.loads(result.stdout)["folders"][0]
    assert folder["scored"] > 0 and set(folder["rejected"]) <= {"misaligned", "background", "copy",
                                                                 *MASK_REASONS}
    bad = CliRunner().invoke(app, ["verify", str(tmp_path), "--mode", "off"])
    assert bad.exit_code == 2 and "verify nothing" in bad.output


def test_report_shows_scores_thresholds_and_the_pair(runs, scored, tmp_path):
    import re

    from anogen.export.report import write_report

    cut = _cut(scored)
    verify = {"mode": "reject", "alignment_min": cut, "background_max": 1e9, "copy_min": 0.0}
    synthesize(runs, tmp_path / "s",
               ConfigRequest(overrides={"sample": {"count": 2, "max_attempts": 12, "batch_size": 4}, "verify": verify}))
    write_report([tmp_path / "s"], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    rows = read_rows(tmp_path / "s" / "object" / "stain" / "manifest.jsonl")
    for name in ("alignment", "background", "copy"):
        assert f'data-score="{name}"' in page
    assert f"alignment_min = {cut}" in page
    # The threshold line sits where the cut lies on the chart's axis (left of it: lower alignments).
    chart = page.split('data-score="alignment"')[1].split("</svg>")[0]
    x = float(re.search(r'class="threshold" x1="([0-9.]+)"', chart).group(1))
    values = [r["verify"]["alignment"] for r in rows if "verify" in r and r["verify"]["alignment"] is not None]
    low, high = min([*values, cut]), max([*values, cut])
    assert abs(x - 240 * (cut - low) / (high - low)) < 0.11
    worst = min((r for r in rows if r["accepted"]), key=lambda r: r["verify"]["alignment"])
    best = max((r for r in rows if r["reason"] == "misaligned"), key=lambda r: r["verify"]["alignment"])
    for pick, row in (("worst accepted", worst), ("best rejected", best)):
        block = page.split(f'data-pick="{pick}"')[1].split("</figure>")[0]
        assert f'data-id="{row["id"]}"' in block and 'alt="anomaly map' in block
    # Without the normals (data folder gone) the report is still written, without maps, and says why.
    run_path = tmp_path / "s" / "object" / "stain" / "run.json"
    run = json.loads(run_path.read_text())
    run["adapter"]["path"], run["data"] = str(tmp_path / "no-adapter"), {"root": str(tmp_path / "gone")}
    run_path.write_text(json.dumps(run))
    write_report([tmp_path / "s"], tmp_path / "report2.html")
    page = (tmp_path / "report2.html").read_text(encoding="utf-8")
    assert "anomaly maps unavailable" in page and 'alt="anomaly map' not in page and 'data-pick="best rejected"' in page


def test_verify_with_another_floor_scores_again(runs, scored, tmp_path):
    """Scores computed with another ``alignment_floor`` are stale: every sample is scored again, and the new
    alignments are those of the floor asked for (the same map, the pure check at the new floor)."""
    import shutil

    from anogen.config import BackboneConfig
    from anogen.io import load_mask, load_rgb
    from anogen.model.backbone import load_backbone
    from anogen.verify.cache import load_normal_model
    from anogen.verify.checks import alignment_score
    from anogen.verify.rescore import verify_output

    root = tmp_path / "out"
    shutil.copytree(scored.parent.parent, root)
    folder = root / "object" / "stain"
    judged = [r for r in read_rows(folder / "manifest.jsonl") if "verify" in r]
    again = verify_output(root, overrides={"mode": "score", "alignment_floor": 0.0}).folders[0]
    assert again["scored"] == len(judged) and again["changed"]
    model = load_normal_model(folder.parent / ".verify", load_backbone(BackboneConfig("tiny")))
    band = round(model.config.alignment_band * model.stride)
    for row in (r for r in read_rows(folder / "manifest.jsonl") if "verify" in r):
        amap = model.anomaly_map(np.asarray(load_rgb(folder / row["image"])))
        expected = alignment_score(amap, load_mask(folder / row["mask"]) > 0, floor=0.0, band=band)
        assert row["verify"]["alignment"] == pytest.approx(expected)
    # Only a threshold changed: the recorded scores are re-judged, nothing is scored.
    judged_only = verify_output(root, overrides={"mode": "reject", "alignment_min": 0.0}).folders[0]
    assert judged_only["scored"] == 0
