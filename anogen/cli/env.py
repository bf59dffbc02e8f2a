"""Print versions, devices and cache directories: paste this into bug reports."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.table import Table

from anogen.cli._common import JsonOpt, epilog, make_output

EPILOG = epilog("anogen env", "anogen env --json")
PACKAGES = ("anogen", "torch", "diffusers", "transformers", "accelerate", "peft", "safetensors", "numpy", "pillow")


def collect_env() -> dict[str, object]:
    info: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    import torch

    info["cuda_available"] = torch.cuda.is_available()
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps and mps.is_available())
    info.update(thread_info())
    info["cpu_threads"] = torch.get_num_threads()
    info["interop_threads"] = torch.get_num_interop_threads()
    from huggingface_hub import constants

    info["hf_cache"] = str(constants.HF_HUB_CACHE)
    info["hf_hub_offline"] = os.environ.get("HF_HUB_OFFLINE", "0")
    info["anogen_cache"] = str(Path(os.environ.get("ANOGEN_CACHE", Path.home() / ".cache" / "anogen")))
    from anogen.model.backbone import TOY_DIR

    info["toy_backbone"] = str(TOY_DIR) if (TOY_DIR / "model_index.json").is_file() else None
    return info


def thread_info() -> dict[str, object]:
    """The thread policy in force (applied by the root command) and the facts it was decided from."""
    from anogen.threads import applied_policy, current_policy

    policy = applied_policy() or current_policy()
    return {
        "cores_seen": policy.cpu_count,
        "affinity_cores": policy.affinity,
        "cpu_quota": policy.quota,
        "usable_cores": policy.usable_cores,
        "local_world_size": policy.local_world_size,
        "threads_chosen": policy.threads,
        "threads_source": policy.source,
        "threads_reason": policy.reason,
        "runnable_others": policy.runnable_others,
        "omp_wait_policy": f"{policy.wait_policy or 'runtime default (spin)'} ({policy.wait_source})",
        "omp_wait_reason": policy.wait_reason,
    }


def env(json_output: JsonOpt = False) -> None:
    """Print versions, devices and cache directories: paste this into bug reports."""
    out = make_output(json_mode=json_output)
    info = collect_env()
    out.emit_json(info)
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        table.add_row(key, "-" if value in (None, []) else str(value))
    out.table(table)
