"""Summary tables in a non-terminal (a CI log, a pipe): every cell whole, each row on one line.

Rich sizes a table to 80 columns when stdout is not a terminal and cuts cells to "category…"; CliRunner's
stdout is not a terminal, so these runs see what a CI log sees. The library calls are replaced by fakes that
return long names and paths; the expectation is simply the text the fakes returned.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from anogen.cli.app import app

LONG_CATEGORY = "a_product_category_with_a_long_descriptive_name"
LONG_DEFECT = "scratch_on_the_upper_left_rim_near_the_label"
LONG_PATH = "/mnt/shared/ci-artifacts/anogen/nightly-2026-11-30/synth-output-folder/" + LONG_CATEGORY


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rich reads COLUMNS; a CI runner usually has none, so neither do these runs.
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


def invoke(args: list) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_whole(stdout: str, *cells: str) -> None:
    assert "…" not in stdout, stdout
    for cell in cells:
        assert any(cell in line for line in stdout.splitlines()), f"{cell!r} not whole on one line:\n{stdout}"


def test_synth_summary_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anogen.synth

    def fake(*args, **kwargs):
        row = anogen.synth.DefectSummary(
            category=LONG_CATEGORY, defect=LONG_DEFECT, out_dir=LONG_PATH, count=1000, accepted=1000,
            attempts=1234, rejected={"mask_too_large": 200, "empty_mask": 30, "off_object": 4},
            mean_mask_area=0.0123, generated=1234, elapsed_s=3600.0, exhausted=False,
        )
        return anogen.synth.SynthSummary(defects=[row], elapsed_s=3600.0)

    monkeypatch.setattr(anogen.synth, "synthesize", fake)
    stdout = invoke(["synth", tmp_path, "--count", 1000, "--out", tmp_path / "o"])
    assert_whole(stdout, f"{LONG_CATEGORY}/{LONG_DEFECT}", "mask_too_large 200, empty_mask 30, off_object 4",
                 "mean mask area", "samples/s", "1000/1000")


def test_mask_summary_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anogen.synth

    def fake(*args, **kwargs):
        folder = {"folder": f"{LONG_PATH}/{LONG_DEFECT}", "attempts": 1234, "accepted_before": 1000,
                  "accepted_after": 987, "count": 1000, "needs_top_up": True}
        return anogen.synth.RemaskSummary(folders=[folder])

    monkeypatch.setattr(anogen.synth, "remask", fake)
    stdout = invoke(["mask", tmp_path, "--threshold", "otsu"])
    assert_whole(stdout, f"{LONG_PATH}/{LONG_DEFECT}", "accepted before", "accepted after")


def test_fit_summary_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anogen.fit
    from tests.test_train import write_toy_category

    data = write_toy_category(tmp_path / "data")
    folder = Path(LONG_PATH) / LONG_DEFECT

    def fake(category, config, out, **kwargs):
        return [anogen.fit.FitResult(LONG_CATEGORY, LONG_DEFECT, folder, 1000, 0.012345, "trained")]

    monkeypatch.setattr(anogen.fit, "fit", fake)
    stdout = invoke(["fit", data, "--bcm", "off", "--out", tmp_path / "runs"])
    assert_whole(stdout, LONG_DEFECT, str(folder), "final loss", "0.0123")


def test_export_summary_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anogen.export as export_package
    from anogen.export.writer import ExportResult

    def fake(synth, config, **kwargs):
        return ExportResult(
            out=Path(LONG_PATH), format="mvtec", status="written", files=2345, written=2345, reused=0, removed=0,
            counts={LONG_CATEGORY: {f"test/{LONG_DEFECT}": 1000, "ground_truth/" + LONG_DEFECT: 1000}},
        )

    monkeypatch.setattr(export_package, "export", fake)
    stdout = invoke(["export", tmp_path, "--data", tmp_path, "--out", tmp_path / "x"])
    assert_whole(stdout, LONG_CATEGORY, f"test/{LONG_DEFECT}", f"ground_truth/{LONG_DEFECT}", LONG_PATH)
