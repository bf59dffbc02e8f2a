"""The torch-free stages, rebuilt from a committed synth folder, write the committed bytes (issue 13's fixture check).

``tests/fixtures/renovation/`` holds a small synth folder made once through the real CLI (toy backbone, 64 px, the
toy object's defect types stain and hole, 4 attempts each with rejected rows, ``--verify off``) and the
``adapter.json`` of each of its adapters (the records only; no stage below reads weights). Hole's is as fit wrote it
(schema 2); stain's was turned into a schema-1 record by hand (no BCM: ``schema_version`` 1, ``has_bcm`` dropped,
``adapter.bcm`` false), the layout of the first adapters, which readers must keep accepting. It was made with::

    anogen toy make data --kind object --n-train 6 --n-per-defect 3
    anogen prior data/object --out priors
    anogen fit data/object --defect stain --defect hole --prior priors --out runs --backbone toy --steps 30 --seed 3
    anogen synth runs --out synth --count 3 --max-attempts 4 --seed 5 --steps 10 --verify off

The test copies the synth folder and the adapter records into one fixed folder (``FIXED_ROOT``: an export's
digest hashes its absolute path), rebuilds the toy data, and runs, each as its own ``python -m anogen``-like
process::

    anogen toy make data --kind object --n-train 6 --n-per-defect 3 --json
    anogen mask synth --threshold 0.05 --json                                 (two rejected hole rows become accepted)
    anogen export synth --data data/object --format F --out export-F --json     (F: mvtec, coco, folder, visa)
    anogen export synth --data data/object --format mvtec --include-real-test --out export-mvtec-real-test --json
    anogen report synth --json

Then the sha256 of every file below the folder (inputs included: ``mask`` rewrites masks and manifests in place)
and of each stage's stdout must equal ``fixtures/renovation/sha256.json``. Blanked: the fixed folder's absolute
path, replaced by ``<ROOT>`` in every file but PNGs before hashing (an export's LICENSE-NOTICE.txt names its
source root, export's and report's stdout name their folders). No time is recorded by these stages, so nothing
else is blanked. The PNG bytes depend on Pillow's encoder: the list records the Pillow version it was made
with, and under another one the test skips, saying so.

``toy make``, ``export`` and ``report`` must not import torch; ``mask`` does (``anogen.mask`` reaches
``anogen.sample``), which the test records without failing.

Rewrite the list after a change of these outputs on purpose (then review the diff of sha256.json)::

    python tests/test_fixture_outputs.py --regenerate
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import PIL
import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "renovation"
SHA256_LIST = FIXTURE / "sha256.json"
REPO = Path(__file__).resolve().parents[1]
# Fixed, so that the export digests (which hash absolute paths) are the same on every machine; a lock keeps two
# runs of this test on one machine apart.
FIXED_ROOT = Path("/tmp/anogen-renovation-fixture")
LOCK_FILE = Path("/tmp/anogen-renovation-fixture.lock")
FORMATS = ("mvtec", "coco", "folder", "visa")
TOY_DATA = ["toy", "make", "data", "--kind", "object", "--n-train", "6", "--n-per-defect", "3", "--json"]
# Name of the stage, its arguments after `anogen`, whether it may import torch.
STAGES: list[tuple[str, list[str], bool]] = [
    ("toy-make", TOY_DATA, False),
    ("mask", ["mask", "synth", "--threshold", "0.05", "--json"], True),
    *[(f"export-{fmt}", ["export", "synth", *([] if fmt == "coco" else ["--data", "data/object"]),
                         "--format", fmt, "--out", f"export-{fmt}", "--json"], False) for fmt in FORMATS],
    # The held-out real test images come from each adapter's adapter.json (run.json records no split here), read
    # through the relative adapter path synth recorded: stain's record is schema 1, hole's schema 2.
    ("export-mvtec-real-test", ["export", "synth", "--data", "data/object", "--format", "mvtec", "--include-real-test",
                                "--out", "export-mvtec-real-test", "--json"], False),
    ("report", ["report", "synth", "--json"], False),
]
# Runs one CLI command in this process and says on its last stderr line whether torch got imported.
DRIVER = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write(f\"\\nTORCH_IMPORTED={'torch' in sys.modules}\\n\"))\n"
    "from anogen.cli.app import main\n"
    "sys.argv[0] = 'anogen'\n"
    "main()\n"
)


@contextlib.contextmanager
def fixed_root() -> Iterator[Path]:
    """``FIXED_ROOT``, empty, held under a lock for the caller's use; removed afterwards."""
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(FIXED_ROOT, ignore_errors=True)
        FIXED_ROOT.mkdir(parents=True)
        try:
            yield FIXED_ROOT
        finally:
            shutil.rmtree(FIXED_ROOT, ignore_errors=True)


def run_stages(root: Path) -> tuple[dict[str, str], dict[str, bool]]:
    """Rebuild the stages in ``root``; return ({relative path: sha256}, {stage: imported torch})."""
    shutil.copytree(FIXTURE / "synth", root / "synth")
    shutil.copytree(FIXTURE / "runs", root / "runs")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ANOGEN_THREADS": "1",
           "ANOGEN_CACHE": str(root / ".cache"), "COLUMNS": "120"}
    stdout_dir = root / "stdout"
    stdout_dir.mkdir()
    torch_used = {}
    for name, args, _ in STAGES:
        proc = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=root, env=env, capture_output=True,
                              timeout=300, check=False)
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{stderr}"
        torch_used[name] = stderr.rstrip().endswith("TORCH_IMPORTED=True")
        (stdout_dir / f"{name}.json").write_bytes(proc.stdout)
    shutil.rmtree(root / ".cache")  # the export source cache: stat data of this run, kept outside any output
    return {path.relative_to(root).as_posix(): file_sha256(path, root)
            for path in sorted(root.rglob("*")) if path.is_file()}, torch_used


def file_sha256(path: Path, root: Path) -> str:
    data = path.read_bytes()
    if path.suffix != ".png":
        data = data.replace(str(root).encode(), b"<ROOT>")
    return hashlib.sha256(data).hexdigest()


def test_torch_free_stages_write_the_committed_bytes() -> None:
    recorded = json.loads(SHA256_LIST.read_text(encoding="utf-8"))
    if recorded["pillow"] != PIL.__version__:
        pytest.skip(f"sha256.json was made with Pillow {recorded['pillow']} (PNG bytes depend on its encoder), "
                    f"this is {PIL.__version__}: run `python tests/test_fixture_outputs.py --regenerate` on a "
                    "commit whose outputs are known good")
    with fixed_root() as root:
        got, torch_used = run_stages(root)
    want = recorded["files"]
    assert sorted(set(want) - set(got)) == [], "files no longer written"
    assert sorted(set(got) - set(want)) == [], "files not in sha256.json"
    changed = sorted(rel for rel in want if got[rel] != want[rel])
    assert changed == [], f"files whose bytes changed: {changed}"
    assert [name for name, _, may in STAGES if torch_used[name] and not may] == [], "stages that imported torch"


def regenerate() -> None:
    with fixed_root() as root:
        files, torch_used = run_stages(root)
    record = {"schema_version": 1, "pillow": PIL.__version__, "root": str(FIXED_ROOT), "blanked": "<ROOT>",
              "torch_imported": torch_used, "files": files}
    SHA256_LIST.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SHA256_LIST}: {len(files)} files")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: python {Path(__file__).name} --regenerate   (run the test with pytest)")
    regenerate()
