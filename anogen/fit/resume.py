"""Resume checks: what a checkpoint or a finished adapter must agree on with the run that continues it.

Reads ``checkpoints/step-NNNNNN/state.json`` and ``adapter.json`` (JSON only, no torch) and refuses to resume
from, or silently overwrite, a fit made with another config, backbone or split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anogen.config import ResolvedConfig, to_jsonable
from anogen.data.split import Split
from anogen.errors import CompatibilityError, InputError

CHECKPOINT_SCHEMA_VERSION = 1
# Fields of the train config that may change between a checkpoint and the run that resumes it: they decide
# when to stop, save or validate, not what a step computes.
RESUMABLE_TRAIN_FIELDS = ("steps", "checkpoint_every", "checkpoints_keep", "validate_every", "save_dtype")


# ------------------------------------------------------------------------------------------- resume checks


def _resume_key(config: ResolvedConfig, backbone_hash: str | None, split: Split, data_world: int) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes it (everything a step computes with)."""
    train = {k: v for k, v in to_jsonable(config.to_dict()["train"]).items() if k not in RESUMABLE_TRAIN_FIELDS}
    return {
        "adapter": config.to_dict()["adapter"],
        "train": train,
        "backbone": {"id": config.backbone.id, "seed": config.backbone.seed, "content_hash": backbone_hash},
        "split": split.to_dict()["train"],
        "data_parallel_processes": data_world,
    }


def _with_new_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """An older run's key with the fields added since filled in with their defaults.

    Every field added to ``adapter`` or ``train`` defaults to the behaviour from before it existed (e.g.
    ``saim_init: zero``), so a fit made by an earlier anogen resumes instead of being refused for a key it could
    not have written.
    """
    from dataclasses import asdict

    from anogen.config import AdapterConfig, TrainConfig

    filled = dict(old)
    for section, defaults in (("adapter", asdict(AdapterConfig())), ("train", asdict(TrainConfig()))):
        if isinstance(filled.get(section), dict):
            missing = {k: v for k, v in to_jsonable(defaults).items() if k not in filled[section]}
            if section == "train":
                missing = {k: v for k, v in missing.items() if k not in RESUMABLE_TRAIN_FIELDS}
            filled[section] = {**filled[section], **missing}
    return filled


def _diff_keys(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first path where two JSON values differ, with both values, or ``None``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _diff_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    if old != new:
        return f"{prefix} = {old!r} there, {new!r} now"
    return None


def _checkpoints(folder: Path) -> list[Path]:
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompatibilityError(f"{checkpoint / 'state.json'}: unreadable checkpoint ({exc})") from exc


def check_resume(checkpoint: Path, key: dict[str, Any], *, check_backbone_hash: bool) -> dict[str, Any]:
    """The ``state.json`` of ``checkpoint``, after checking that it was made with ``key`` (its schema, config,
    backbone and split); ``check_backbone_hash`` is False before the backbone is loaded (a dry run)."""
    state = _read_state(checkpoint)
    if state.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise CompatibilityError(
            f"{checkpoint}: checkpoint schema {state.get('schema_version')} is not {CHECKPOINT_SCHEMA_VERSION}",
            hint="start over in another --out folder",
        )
    old = _with_new_defaults(dict(state.get("resume_key", {})))
    new = dict(key)
    if not check_backbone_hash:
        # The dry run has not loaded the backbone, so its hash is not known yet; fit checks it later.
        old.get("backbone", {}).pop("content_hash", None)
        new = {**new, "backbone": {k: v for k, v in new["backbone"].items() if k != "content_hash"}}
    diff = _diff_keys(old, new)
    if diff:
        raise CompatibilityError(
            f"cannot resume from {checkpoint}: it was made with another config or backbone ({diff})",
            hint="rerun with the original settings, or start over in another --out folder (without --resume)",
        )
    return state


def _check_record(adapter_json: Path, key: dict[str, Any]) -> int:
    """Steps done by a finished adapter, after checking that ``adapter.json`` was made with this config."""
    try:
        record = json.loads(adapter_json.read_text(encoding="utf-8"))
        config = record["config"]
        old = {
            "adapter": config["adapter"],
            "train": {k: v for k, v in config["train"].items() if k not in RESUMABLE_TRAIN_FIELDS},
            "backbone": {"id": config["backbone"]["id"], "seed": config["backbone"]["seed"]},
            "split": record["split"]["train"],
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompatibilityError(f"{adapter_json}: not an adapter record this anogen can resume ({exc})") from exc
    new = {**key, "backbone": {k: key["backbone"][k] for k in ("id", "seed")}}
    new.pop("data_parallel_processes", None)
    diff = _diff_keys(_with_new_defaults(old), new)
    if diff:
        raise CompatibilityError(
            f"cannot resume {adapter_json.parent}: its adapter was made with another config or backbone ({diff})",
            hint="rerun with the original settings, or start over in another --out folder (without --resume)",
        )
    return int(record.get("steps_done", 0))


def _recorded_target(done: int | None, state: dict[str, Any] | None) -> int | None:
    """The steps the recorded run of an adapter folder aims at: its latest checkpoint's target when that
    checkpoint is newer than the finished adapter (a continued run), else the finished adapter's steps."""
    newer = state is not None and (done is None or int(state["step"]) > done)
    if newer and state is not None and isinstance(state.get("target_steps"), int):
        return int(state["target_steps"])
    return done


def _existing_state(
    folder: Path, key: dict[str, Any], resume: bool, steps: int, retarget: bool = False
) -> tuple[int | None, bool, int, int | None]:
    """(step to resume from, already complete, target steps, recorded target changed by ``retarget``) for one
    adapter folder; refuses to silently overwrite a fit.

    A resume continues the recorded run to its recorded target; only ``retarget`` (an explicit ``--steps``) trains
    to ``steps`` instead. Checkpoints of older versions record no target: then ``steps`` is the target.
    """
    checkpoints = _checkpoints(folder)
    adapter_json = folder / "adapter.json"
    if not resume:
        if checkpoints or adapter_json.is_file():
            raise InputError(
                f"{folder} already holds a fit",
                hint="pass --resume to continue it, or choose another --out",
            )
        return None, False, steps, None
    done = _check_record(adapter_json, key) if adapter_json.is_file() else None
    state = check_resume(checkpoints[-1], key, check_backbone_hash=False) if checkpoints else None
    recorded = _recorded_target(done, state)
    target = steps if retarget or recorded is None else recorded
    changed = recorded if recorded is not None and recorded != target else None
    if done is not None and done >= target:
        return done, True, done, None
    if state is None:
        if done is not None:
            raise CompatibilityError(
                f"{folder} holds an adapter of {done} steps but no checkpoint to continue it from",
                hint="train again in another --out (with --checkpoint-every above 0)",
            )
        return None, False, target, changed
    step = int(state["step"])
    if step > target:
        raise InputError(f"{checkpoints[-1]} is already past --steps {target}", hint=f"pass --steps {step} or more")
    return step, False, target, changed
