# ruff: noqa: T201  (a command-line check: printing its findings is its job)
"""Behaviour check for refactors: run one fixed CLI pipeline with BASE_REF's code and with the working tree's, and
compare every file the two runs wrote, byte for byte.

    python scripts/same_outputs.py 9b6245d                   # exit 0: identical, 1: something differs
    python scripts/same_outputs.py main --keep /tmp/same     # keep both sides' folders to inspect them
    python scripts/same_outputs.py HEAD~3 --json             # the result as JSON on stdout

BASE_REF is checked out into a temporary `git worktree` (removed afterwards). Each side runs the same commands,
one after the other, as `python -m anogen ...` subprocesses with `PYTHONPATH=<its checkout>`, one CPU thread,
the same seeds and its own empty ``ANOGEN_CACHE``, in a fresh folder ``<top>/run/work``: the base side first,
then its folder is moved to ``<top>/base`` and the head side runs in the very same absolute path (then moved to
``<top>/head``). So recorded relative and absolute paths match, and so do the hashes of files that hold an
absolute path (an export's LICENSE-NOTICE.txt names its source root). Each command's stdout and stderr and its
exit status are kept under ``<side>/cli/`` and compared too.

What may differ between two runs of the same code, and only that, is blanked before the comparison (the rules
are printed with the number of files each one touched):

- every text file (JSON/JSONL, captured stdout and stderr, HTML, ...): JSON values of keys holding wall times
  (``"elapsed_s": 1.2``, ``samples_per_s``, ``seconds``, ``estimated_s``, ...); the run folder's and the
  checkout's absolute paths (replaced by ``<ROOT>`` and ``<CODE>``; the run folder is the same on both sides, so
  only the checkout's can differ); timing figures in progress lines (``eta_s 1.2``, ``samples_s 0.9``);
- stderr: progress lines that a run prints on a 5-second clock (``task: 3/8 ...`` before the task is done);
  the first and the final line of each task are kept.

Binary files (PNG, safetensors, npy) are compared exactly. Wall time: about 3-5 minutes per side on a quiet
2-core machine (the toy backbone, 64 px).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIDES = ("base", "head")
RUN_FOLDER = "run"  # both sides run here, one after the other: see the module docstring
COMMAND_TIMEOUT_S = 900

# The second synth's --config: another sampler and step count, a mask setting and a verification mode, so that
# the run records of a preset + config file + flag resolution are compared too.
SYNTH2_CONFIG = """\
sample: {steps: 8, sampler: ddim, guidance: 2.0, batch_size: 4}
mask: {min_area: 4}
verify: {mode: score}
"""

FIT = ["fit", "data/object", "--defect", "stain", "--defect", "hole", "--prior", "priors", "--out", "runs",
       "--backbone", "toy", "--steps", "30", "--seed", "3"]
SYNTH = ["synth", "runs", "--out", "synth", "--seed", "5", "--steps", "10"]
SYNTH2 = ["synth", "runs/object/stain", "--out", "synth2", "--count", "4", "--seed", "9", "--preset", "toy/object",
          "--config", "synth2.yaml", "--threshold", "0.3"]
EVAL = ["eval", "--data", "data/object", "--synth", "synth", "--steps", "20", "--seed", "4"]
FORMATS = ("mvtec", "coco", "folder", "visa")


def export_args(fmt: str) -> list[str]:
    data = [] if fmt == "coco" else ["--data", "data/object"]
    return ["export", "synth", *data, "--format", fmt, "--out", f"export-{fmt}"]


def pipeline() -> list[tuple[str, list[str]]]:
    """The fixed pipeline: (name of its captured output, arguments after ``python -m anogen``), in order."""
    steps: list[tuple[str, list[str]]] = [
        ("toy-make", ["toy", "make", "data", "--kind", "object", "--n-train", "12", "--n-per-defect", "4",
                      "--json"]),
        ("data-check", ["data", "check", "data/object", "--json"]),
        ("presets-list", ["presets", "list", "--json"]),
        ("presets-show", ["presets", "show", "toy/object", "--json"]),
        ("prior-dry-run", ["prior", "data/object", "--out", "priors", "--dry-run", "--json"]),
        ("prior-dry-run-text", ["prior", "data/object", "--out", "priors", "--dry-run"]),
        ("prior", ["prior", "data/object", "--out", "priors", "--json"]),
        ("fit-dry-run", [*FIT, "--dry-run", "--json"]),
        ("fit-dry-run-text", [*FIT, "--dry-run"]),
        ("fit", [*FIT, "--json"]),
        ("synth-dry-run-text", [*SYNTH, "--count", "8", "--dry-run"]),
        ("synth-8", [*SYNTH, "--count", "8", "--json"]),
        ("synth-16", [*SYNTH, "--count", "16", "--json"]),
        ("synth-dry-run", [*SYNTH, "--count", "20", "--dry-run", "--json"]),
        ("synth-dry-run-done-text", [*SYNTH, "--count", "16", "--dry-run"]),
        ("synth2-dry-run", [*SYNTH2, "--dry-run", "--json"]),
        ("synth2", [*SYNTH2, "--json"]),
        ("mask", ["mask", "synth2", "--threshold", "0.25", "--json"]),
        ("verify", ["verify", "synth2", "--mode", "score", "--json"]),
    ]
    steps += [(f"export-{fmt}-dry-run", [*export_args(fmt), "--dry-run", "--json"]) for fmt in FORMATS]
    steps += [(f"export-{fmt}", [*export_args(fmt), "--json"]) for fmt in FORMATS]
    steps += [(f"export-{fmt}-again", [*export_args(fmt), "--json"]) for fmt in FORMATS]
    steps += [("export-mvtec-again-text", export_args("mvtec"))]
    steps += [
        ("report", ["report", "synth", "--json"]),
        ("report-synth2", ["report", "synth2", "--out", "report-synth2.html"]),
        ("eval-dry-run", [*EVAL, "--dry-run", "--json"]),
        ("eval", [*EVAL, "--json", "--out", "eval.json"]),
        ("fit-refused", [*FIT, "--dry-run", "--json"]),  # exit 2: the fits exist and --resume is not given
        ("fit-resume-dry-run", [*FIT, "--resume", "--dry-run", "--json"]),
    ]
    return steps


def run_side(code: Path, top: Path, side: str, log: bool) -> float:
    """Run the pipeline with ``code`` on PYTHONPATH in ``top/run/work``, then move ``top/run`` to ``top/side``.

    Returns the pipeline's wall time in seconds.
    """
    root = top / RUN_FOLDER
    work, cli = root / "work", root / "cli"
    work.mkdir(parents=True)
    cli.mkdir()
    (work / "synth2.yaml").write_text(SYNTH2_CONFIG, encoding="utf-8")
    env = dict(os.environ)
    # ANOGEN_CACHE: the export source cache is keyed by the export folder's absolute path, the same on both
    # sides; a shared one would let the head side's exports trust what the base side's recorded.
    env.update(PYTHONPATH=str(code), OMP_NUM_THREADS="1", ANOGEN_THREADS="1", COLUMNS="120",
               HF_HUB_OFFLINE="1", TERM="dumb", ANOGEN_CACHE=str(top / f"cache-{side}"))
    env.pop("FORCE_COLOR", None)
    statuses = []
    started = time.monotonic()
    for index, (name, args) in enumerate(pipeline()):
        stem = f"{index:02d}-{name}"
        step_started = time.monotonic()
        with open(cli / f"{stem}.stdout", "wb") as out, open(cli / f"{stem}.stderr", "wb") as err:
            proc = subprocess.run([sys.executable, "-m", "anogen", *args], cwd=work, env=env, stdout=out,
                                  stderr=err, stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT_S, check=False)
        statuses.append({"name": name, "args": args, "rc": proc.returncode})
        if log:
            print(f"  {side} {stem}: rc {proc.returncode} ({time.monotonic() - step_started:.1f} s)",
                  file=sys.stderr, flush=True)
    (cli / "commands.json").write_text(json.dumps(statuses, indent=2) + "\n", encoding="utf-8")
    wall = time.monotonic() - started
    root.rename(top / side)
    return wall


# ---------------------------------------------------------------- comparison

TIME_KEYS = ("elapsed_s", "samples_per_s", "seconds", "eta_s", "estimated_s", "duration_s", "timings_s",
             "created", "created_at", "timestamp", "started_at", "finished_at")
TEXT_SUFFIXES = {".json", ".jsonl", ".html", ".txt", ".yaml", ".yml", ".csv", ".md", ".stdout", ".stderr"}
JSON_SUFFIXES = {".json", ".jsonl"}
NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
JSON_TIME_VALUE = re.compile(r'("(?P<key>' + "|".join(TIME_KEYS) + r')"\s*:\s*)(' + NUMBER + r'|null|"[^"]*")')
TEXT_TIMINGS = [  # (rule name, pattern, replacement): timing figures in progress and summary lines
    ("progress 'eta_s N'", re.compile(r"\beta_s " + NUMBER), "eta_s <t>"),
    ("progress 'samples_s N'", re.compile(r"\bsamples_s " + NUMBER), "samples_s <t>"),
]
# A plain progress line before its task is done: printed on a 5-second clock (cli/_output.py), so which ones
# appear depends on the machine's speed.
PROGRESS_PENDING = re.compile(r"^.+?: (\d+)/(\d+)(?: .*)?$")


@dataclass
class Comparison:
    compared: int = 0
    identical_bytes: int = 0
    identical_after_blanking: int = 0
    differing: list[dict[str, str]] = field(default_factory=list)
    rules_used: dict[str, int] = field(default_factory=dict)

    def used(self, rule: str) -> None:
        self.rules_used[rule] = self.rules_used.get(rule, 0) + 1


def drop_pending_progress(text: str) -> tuple[str, int]:
    kept, dropped, seen = [], 0, set()
    for line in text.splitlines(keepends=True):
        match = PROGRESS_PENDING.match(line.rstrip("\n"))
        if match and int(match.group(1)) < int(match.group(2)):
            task = line.split(":", 1)[0]
            if task in seen:  # the first line of a task is printed at once, whatever the clock
                dropped += 1
                continue
            seen.add(task)
        kept.append(line)
    return "".join(kept), dropped


def normalise(text: str, suffix: str, roots: dict[str, str], hits: set[str]) -> str:
    """``text`` with what may differ between two runs of the same code blanked; ``hits`` gets the rules used."""
    for absolute, placeholder in roots.items():
        if absolute in text:
            text = text.replace(absolute, placeholder)
            hits.add(f"absolute path -> {placeholder}")
    # JSON is printed to stdout too (--json), so the key rule applies to every text file.
    hits.update(f"JSON key {match['key']!r}" for match in JSON_TIME_VALUE.finditer(text))
    text = JSON_TIME_VALUE.sub(r'\1"<blank>"', text)
    if suffix not in JSON_SUFFIXES:
        for rule, pattern, replacement in TEXT_TIMINGS:
            text, count = pattern.subn(replacement, text)
            if count:
                hits.add(rule)
    if suffix == ".stderr":
        text, dropped = drop_pending_progress(text)
        if dropped:
            hits.add("stderr progress line printed on the 5-s clock (dropped)")
    return text


def files_under(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            yield path.relative_to(root).as_posix()


def first_difference(left: bytes, right: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b), min(len(left), len(right)))
    return (f"{len(left)} vs {len(right)} bytes, first difference at byte {at}: "
            f"{left[at:at + 24]!r} vs {right[at:at + 24]!r}")


def short_diff(left: str, right: str, limit: int = 16) -> str:
    lines = list(difflib.unified_diff(left.splitlines(), right.splitlines(), "base", "head", n=1, lineterm=""))
    more = f"\n... {len(lines) - limit} more diff lines" if len(lines) > limit else ""
    return "\n".join(line[:200] for line in lines[:limit]) + more


def compare(top: Path, base_code: Path, head_code: Path) -> Comparison:
    result = Comparison()
    roots = {side: {str(code): "<CODE>", str(top / RUN_FOLDER): "<ROOT>"}
             for side, code in zip(SIDES, (base_code, head_code), strict=True)}
    left_root, right_root = top / SIDES[0], top / SIDES[1]
    names = sorted(set(files_under(left_root)) | set(files_under(right_root)))
    for name in names:
        result.compared += 1
        left_path, right_path = left_root / name, right_root / name
        if not left_path.exists() or not right_path.exists():
            result.differing.append({"path": name, "detail": f"only in {'head' if right_path.exists() else 'base'}"})
            continue
        left, right = left_path.read_bytes(), right_path.read_bytes()
        if left == right:
            result.identical_bytes += 1
            continue
        suffix = Path(name).suffix.lower()
        if suffix not in TEXT_SUFFIXES:
            result.differing.append({"path": name, "detail": first_difference(left, right)})
            continue
        hits: set[str] = set()
        try:
            left_text = normalise(left.decode("utf-8"), suffix, roots[SIDES[0]], hits)
            right_text = normalise(right.decode("utf-8"), suffix, roots[SIDES[1]], hits)
        except UnicodeDecodeError:
            result.differing.append({"path": name, "detail": first_difference(left, right)})
            continue
        for rule in hits:
            result.used(rule)
        if left_text == right_text:
            result.identical_after_blanking += 1
        else:
            result.differing.append({"path": name, "detail": short_diff(left_text, right_text)})
    return result


def rules_text() -> list[str]:
    return [
        "JSON/JSONL keys blanked: " + ", ".join(TIME_KEYS),
        "absolute paths replaced in text files: the checkout -> <CODE>, the run folder (same on both sides) -> <ROOT>",
        "text timing patterns blanked: " + ", ".join(rule for rule, _, _ in TEXT_TIMINGS),
        "stderr: progress lines 'task: N/M ...' with N < M after a task's first line dropped (5-s clock)",
        "binary files (png, safetensors, npy, ...): exact bytes, nothing blanked",
    ]


# ---------------------------------------------------------------- main


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one fixed anogen pipeline with BASE_REF's code and with the working tree's; compare every "
                    "file byte for byte (exit 0: identical, 1: something differs).")
    parser.add_argument("base_ref", metavar="BASE_REF", help="git ref whose code gives the expected outputs")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (created, must be empty) and keep both sides' folders there")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = parser.parse_args(argv)

    try:
        base_commit = git("rev-parse", "--verify", f"{args.base_ref}^{{commit}}")
    except subprocess.CalledProcessError:
        parser.error(f"{args.base_ref!r} is not a commit of {REPO}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep}: the folder is not empty")
        top = args.keep.resolve()
    else:
        top = Path(tempfile.mkdtemp(prefix="anogen-same-")).resolve()
    base_code = top / "checkout-base"
    log = not args.json
    try:
        git("worktree", "add", "--detach", str(base_code), base_commit)
        if log:
            print(f"base {args.base_ref} ({base_commit[:12]}) vs the working tree at {REPO}; folders in {top}",
                  file=sys.stderr, flush=True)
        walls = {side: run_side(code, top, side, log) for side, code in zip(SIDES, (base_code, REPO), strict=True)}
        result = compare(top, base_code, REPO)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_code)],
                       check=False, capture_output=True)
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)

    same = not result.differing
    if args.json:
        print(json.dumps({
            "base_ref": args.base_ref, "base_commit": base_commit, "identical": same,
            "wall_s": {side: round(wall, 1) for side, wall in walls.items()},
            "compared": result.compared, "identical_bytes": result.identical_bytes,
            "identical_after_blanking": result.identical_after_blanking, "rules": rules_text(),
            "rules_used": result.rules_used, "differing": result.differing,
        }, indent=2))
        return 0 if same else 1
    print("blanking rules:")
    for line in rules_text():
        print(f"  - {line}")
    print("rules that changed something (files whose bytes differed):")
    for rule, count in sorted(result.rules_used.items()):
        print(f"  - {rule}: {count}")
    if not result.rules_used:
        print("  (none)")
    for entry in result.differing:
        print(f"DIFFERS {entry['path']}:\n  " + entry["detail"].replace("\n", "\n  "))
    print(f"wall time: base {walls[SIDES[0]]:.0f} s, head {walls[SIDES[1]]:.0f} s")
    print(f"{result.compared} files compared: {result.identical_bytes} identical bytes, "
          f"{result.identical_after_blanking} identical after blanking, {len(result.differing)} differ")
    print("IDENTICAL" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
