"""``python -m bench.worker TASK ARGS_JSON RESULT_FILE``: one measurement in a fresh process (see bench.common)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    task, args, result_file = argv[0], json.loads(argv[1]), Path(argv[2])
    logging.basicConfig(level=os.environ.get("BENCH_LOG", "WARNING"), format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from bench import export, quality, speed
    from bench.common import gpu_peak_mb, peak_rss_mb

    tasks = {
        "speed": speed.task_speed,
        "synth": speed.task_synth,
        "unet_step": speed.task_unet_step,
        "fit": speed.task_fit,
        "memory": speed.task_memory,
        "quality": quality.task_quality,
        "export": export.task_export,
    }
    result = tasks[task](args)
    result.setdefault("process_peak_rss_mb", round(peak_rss_mb(), 1))
    result.setdefault("process_gpu_peak_mb", gpu_peak_mb())
    result_file.write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
