"""anogen.dist: rank and world size from the launcher's environment, without torch at import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anogen.dist import Dist, current_dist


def test_import_pulls_no_torch() -> None:
    code = "import sys, anogen.dist; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("world", [None, "", "1"])
def test_single_process_without_a_launcher(monkeypatch: pytest.MonkeyPatch, world: str | None) -> None:
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    dist = current_dist()
    assert (dist.rank, dist.world, dist.device) == (0, 1, None)
    assert dist == Dist(rank=0, world=1, barrier=dist.barrier)
    dist.barrier()  # a no-op with one process


@pytest.mark.parametrize(
    ("rank", "world", "expected"),
    [(None, None, (0, 1, True)), ("0", "2", (0, 2, True)), ("1", "2", (1, 2, False)), ("", "", (0, 1, True))],
)
def test_launcher_values_without_setting_up_a_group(
    monkeypatch: pytest.MonkeyPatch, rank: str | None, world: str | None, expected: tuple[int, int, bool]
) -> None:
    from anogen.dist import is_main_process, launcher_rank, launcher_world_size

    for name, value in (("RANK", rank), ("WORLD_SIZE", world)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert (launcher_rank(), launcher_world_size(), is_main_process()) == expected
