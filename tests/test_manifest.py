"""manifest.jsonl / run.json: torn lines, shards, the first-N-accepted rule, folder discovery."""

from __future__ import annotations

import json

import pytest

from anogen.errors import InputError
from anogen.records.manifest import (
    MANIFEST,
    append_row,
    cutoff_id,
    find_adapter_dirs,
    find_synth_dirs,
    make_row,
    read_all_rows,
    read_rows,
    result_rows,
    shard_name,
    write_manifest,
)
from anogen.records.run import write_run_json
from anogen.records.synth import read_synth_folder


def row(i: int, accepted: bool = True) -> dict:
    return make_row(
        i, seed=100 + i, category="c", defect="d", accepted=accepted,
        reason=None if accepted else "empty_mask", mask_area=0.1 if accepted else 0.0, adapter_sha256="x",
    )


def test_row_fields_match_contract():
    r = row(12)
    assert r["name"] == "000012" and r["image"] == "image/000012.png" and r["mask"] == "mask/000012.png"
    for key in ("schema_version", "id", "seed", "category", "defect", "accepted", "reason", "mask_area",
                "part", "adapter_sha256"):
        assert key in r


def test_torn_last_line_ignored_and_repaired(tmp_path):
    path = tmp_path / MANIFEST
    for i in range(3):
        append_row(path, row(i))
    intact = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"id": 3, "accep')  # a kill in the middle of an append
    assert [r["id"] for r in read_rows(path)] == [0, 1, 2]
    assert path.read_bytes() != intact  # reading alone does not touch the file
    read_rows(path, repair=True)
    assert path.read_bytes() == intact
    append_row(path, row(3))
    assert [r["id"] for r in read_rows(path)] == [0, 1, 2, 3]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / MANIFEST
    append_row(path, row(0))
    with open(path, "a") as handle:
        handle.write("not json\n")
    append_row(path, row(1))
    with pytest.raises(InputError, match="line 2"):
        read_rows(path)


def test_shards_merge_by_id(tmp_path):
    for i in (0, 2, 4):
        append_row(tmp_path / shard_name(0), row(i))
    for i in (1, 3):
        append_row(tmp_path / shard_name(1), row(i))
    rows = read_all_rows(tmp_path)
    write_manifest(tmp_path, rows.values())
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2, 3, 4]


def test_cutoff_and_result():
    flags = [True, False, True, False, True, True]
    rows = {i: row(i, a) for i, a in enumerate(flags)}
    assert cutoff_id(rows, 2) == 2
    assert cutoff_id(rows, 3) == 4
    assert cutoff_id(rows, 5) is None
    # a gap (id 1 still running elsewhere) hides what comes after it
    gapped = {i: r for i, r in rows.items() if i != 1}
    assert cutoff_id(gapped, 2) is None
    assert [r["id"] for r in result_rows(rows, 3)] == [0, 2, 4]
    assert [r["id"] for r in result_rows(rows, None)] == [0, 2, 4, 5]


def test_synth_folder_uses_run_count(tmp_path):
    write_manifest(tmp_path, [row(i, i % 2 == 0) for i in range(8)])
    write_run_json(tmp_path, {"count": 3})
    for sub in ("image", "part", "mask"):
        (tmp_path / sub).mkdir()
        for i in range(8):
            (tmp_path / sub / f"{i:06d}.png").touch()
    assert [s.id for s in read_synth_folder(tmp_path).samples] == [0, 2, 4]
    assert json.loads((tmp_path / "run.json").read_text())["schema_version"] == 1


def test_find_dirs_at_every_level(tmp_path):
    for cat, defect in [("a", "x"), ("a", "y"), ("b", "z")]:
        d = tmp_path / cat / defect
        d.mkdir(parents=True)
        (d / "adapter.json").write_text("{}")
        (d / "run.json").write_text("{}")
    assert len(find_adapter_dirs(tmp_path)) == 3
    assert [p.name for p in find_adapter_dirs(tmp_path / "a")] == ["x", "y"]
    assert find_adapter_dirs(tmp_path / "b" / "z") == [tmp_path / "b" / "z"]
    assert len(find_synth_dirs(tmp_path)) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no fitted adapter"):
        find_adapter_dirs(empty)
    with pytest.raises(InputError, match="does not exist"):
        find_adapter_dirs(tmp_path / "missing")


def test_split_of_an_old_output_follows_its_relative_adapter_path(tmp_path, monkeypatch):
    # Outputs without run.json `split` point at their adapter by the path synth was given, relative to the folder
    # synth ran in: the committed fixture is one (`runs/object/stain`). Export used to look for it below the
    # synth folder and found nothing.
    import shutil
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "renovation"
    shutil.copytree(fixture / "synth", tmp_path / "synth")
    shutil.copytree(fixture / "runs", tmp_path / "runs")
    recorded = json.loads((tmp_path / "runs/object/stain/adapter.json").read_text())["split"]
    monkeypatch.chdir(tmp_path)
    folder = read_synth_folder("synth/object/stain")
    assert "split" not in folder.run.raw
    assert folder.split is not None
    assert (list(folder.split.train), list(folder.split.held_out)) == (recorded["train"], recorded["held_out"])
    monkeypatch.chdir(tmp_path / "synth")  # neither from here nor from the synth folder: no split, no error
    assert read_synth_folder("object/stain").split is None
