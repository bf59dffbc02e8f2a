"""The fit loop: :func:`fit` over the plan's defect types, :func:`_fit_one` training one adapter (steps, data
parallelism, logs, checkpoints, validation) and the ``adapter.json`` record it ends with."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anogen import __version__
from anogen.config import ConfigRequest, ResolvedConfig
from anogen.data.model import Category
from anogen.errors import DataError
from anogen.fit.checkpoints import load_checkpoint, save_checkpoint
from anogen.fit.config import config_for_fit
from anogen.fit.data import build_latent_cache, load_training_images
from anogen.fit.plan import ParallelMode, _background_sources, plan_fit
from anogen.fit.results import DefectPlan, FitPlan, FitResult
from anogen.fit.resume import _checkpoints, _resume_key, check_resume
from anogen.fit.step import _slice_batch, draw_batch, pair_loss
from anogen.fit.validation import write_validation
from anogen.io import write_text_atomic
from anogen.progress import ProgressCallback, report
from anogen.records.adapter import BackboneRef, fit_fields
from anogen.seeding import derive_seed

if TYPE_CHECKING:
    from accelerate import Accelerator

    from anogen.model.backbone import Backbone

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- the loop


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"anogen": __version__}
    for name in ("torch", "diffusers", "transformers", "accelerate", "safetensors"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _make_accelerator(config: ResolvedConfig) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # One Python process may run several fits with different precisions (a notebook, the test suite); accelerate
    # keeps that choice in a process-wide state, which we reset. The distributed part (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.gradient_accumulation,
    )




def fit(
    category: Category,
    config: ResolvedConfig | ConfigRequest,
    out: str | Path,
    *,
    defects: Sequence[str] | None = None,
    prior_dir: str | Path | None = None,
    resume: bool = False,
    parallel: ParallelMode = "auto",
    progress: ProgressCallback | None = None,
    accelerator: Accelerator | None = None,
    backbone: Backbone | None = None,
    retarget: bool = False,
    on_plan: Callable[[FitPlan], None] | None = None,
) -> list[FitResult]:
    """Train one dual adapter per defect type of ``category`` into ``out/<category>/<defect>/``.

    Args:
        category (`Category`): as returned by ``anogen.data.read_category``.
        config (`ResolvedConfig | ConfigRequest`): from ``anogen.config.resolve``, or a request that
            :func:`anogen.fit.fit_config` resolves for ``category``; ``train`` sets the loop, ``adapter`` the model.
        out (`str | Path`): the runs root.
        defects (`Sequence[str]`, *optional*): defect types to train; all by default.
        prior_dir (`str | Path`, *optional*): ``anogen prior`` output; required when ``config.adapter.bcm``.
        resume (`bool`, defaults to False): continue every adapter's recorded run from its latest checkpoint to
            its recorded target; finished adapters are left alone. Without it, a folder that already holds a fit
            is an error.
        parallel (`str`, defaults to `"auto"`): how several processes share the work (module docstring).
        progress (`ProgressCallback`, *optional*): ``fit <category>/<defect>`` events with ``loss`` and ``eta_s``.
        accelerator (`Accelerator`, *optional*): one to reuse; by default one is made from ``config.train``.
        backbone (`Backbone`, *optional*): an already loaded backbone (it is moved to the device and gets the dual
            processors during the fit; both are undone afterwards).
        retarget (`bool`, defaults to False): with ``resume``, train to ``config.train.steps`` even where a
            recorded run aimed at another number of steps (see :func:`plan_fit`).
        on_plan (`Callable`, *optional*): called with the :class:`FitPlan` once it is checked, before the backbone
            is loaded (the CLI announces changed targets with it).

    Returns:
        `list[FitResult]`: one per defect type, in plan order (every process returns the whole list).

    Raises:
        InputError: bad input, before any training (see :func:`plan_fit`).
    """
    config = config_for_fit(category, config)
    accelerator = accelerator or _make_accelerator(config)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    plan = plan_fit(
        category,
        config,
        out,
        defects=defects,
        prior_dir=prior_dir,
        resume=resume,
        parallel=parallel,
        num_processes=world,
        device=device.type,
        retarget=retarget,
    )
    if on_plan is not None:
        on_plan(plan)
    own_backbone = backbone is None
    if backbone is None:
        from anogen.model.backbone import load_backbone

        backbone = load_backbone(config.backbone)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.train.mixed_precision, torch.float32)
    original_dtype = next(backbone.unet.parameters()).dtype
    original_device = next(backbone.unet.parameters()).device
    if original_dtype != weight_dtype or original_device != device:
        # Only when needed: a no-op .to() on a half-precision-aware diffusers model still warns.
        backbone.to(device=device, dtype=weight_dtype)
    if config.train.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    results: list[FitResult] = []
    try:
        for item in plan.defects:
            mine = plan.parallel == "data" or item.process == rank
            if item.complete:
                results.append(FitResult(category.name, item.defect, item.folder, item.steps, None, "complete"))
                continue
            if not mine:
                results.append(FitResult(category.name, item.defect, item.folder, 0, None, "other-process"))
                continue
            results.append(_fit_one(category, item, plan, config, backbone, accelerator, progress))
    finally:
        if config.train.gradient_checkpointing:
            backbone.unet.disable_gradient_checkpointing()
        if not own_backbone and (original_dtype != weight_dtype or original_device != device):
            backbone.to(device=original_device, dtype=original_dtype)
    if world > 1:
        accelerator.wait_for_everyone()
    return results


def _fit_one(
    category: Category,
    item: DefectPlan,
    plan: FitPlan,
    config: ResolvedConfig,
    backbone: Backbone,
    accelerator: Accelerator,
    progress: ProgressCallback | None,
) -> FitResult:
    from anogen.model.adapter import save_adapter
    from anogen.model.dual import DualAdapter, encode_prompts

    if item.steps and item.steps != config.train.steps:
        # A resume to the recorded target: the adapter record then states the steps actually trained to.
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=item.steps))
    train = config.train
    device = accelerator.device
    data_parallel = plan.parallel == "data" and accelerator.num_processes > 1
    world = accelerator.num_processes if data_parallel else 1
    rank = accelerator.process_index if data_parallel else 0
    writer = accelerator.is_main_process if data_parallel else True
    key = _resume_key(config, backbone.content_hash, item.split, world)

    object_masks = (
        _background_sources(category, item.defect, item.split.train, plan.prior)  # type: ignore[arg-type]
        if plan.bcm
        else None
    )
    images = load_training_images(item.split.train, train.resolution, object_masks)
    cache = build_latent_cache(backbone, images, train.flips)

    init_seed = derive_seed(train.seed, category.name, item.defect, "init")
    adapter = DualAdapter.from_backbone(backbone, config.adapter, seed=init_seed).to(device)
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate)
    start = 0
    status = "trained"
    resumed: dict[str, Any] = {}
    if item.resume_from is not None:
        checkpoint = _checkpoints(item.folder)[-1]
        check_resume(checkpoint, key, check_backbone_hash=True)
        resumed = load_checkpoint(checkpoint, adapter, optimizer)
        start = int(resumed["step"])
        status = "resumed"
        logger.info("%s/%s: resuming from %s", category.name, item.defect, checkpoint)
    optimizer = accelerator.prepare_optimizer(optimizer)
    if resumed.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(resumed["scaler"])

    scheduler = backbone.make_scheduler()
    num_timesteps = int(scheduler.config.num_train_timesteps)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    prompts = [config.adapter.prompt_whole, config.adapter.prompt_part]
    fixed_embeds = None
    if not config.adapter.text_encoder_lora:
        with torch.no_grad():
            fixed_embeds = encode_prompts(backbone, prompts, adapter).to(device)

    log_path = item.folder / "train_log.jsonl"
    if writer:
        item.folder.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start)
    task = f"fit {category.name}/{item.defect}"
    batch_size = train.batch_size
    global_batch = batch_size * world
    adapter.install(backbone.unet)
    backbone.unet.train()
    began = time.monotonic()
    last_loss: float | None = None
    report(progress, task, start, train.steps)
    try:
        for step in range(start + 1, train.steps + 1):
            step_loss = torch.zeros((), device=device)
            for micro in range(train.gradient_accumulation):
                batch = draw_batch(
                    train.seed, category.name, item.defect, step, micro, global_batch, cache, num_timesteps
                )
                batch = _slice_batch(batch, rank * batch_size, (rank + 1) * batch_size)
                with accelerator.accumulate(adapter):
                    with accelerator.autocast():
                        embeds = (
                            fixed_embeds if fixed_embeds is not None else encode_prompts(backbone, prompts, adapter)
                        )
                        loss = pair_loss(backbone, adapter, scheduler, cache, batch, embeds, device)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and world > 1:
                        _all_reduce_grads(params, world)
                    if accelerator.sync_gradients and train.max_grad_norm is not None:
                        # after the all-reduce, so every process clips the same averaged gradient
                        accelerator.clip_grad_norm_(params, train.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / train.gradient_accumulation
            if world > 1:
                step_loss = accelerator.reduce(step_loss, reduction="mean")
            last_loss = float(step_loss)
            if not math.isfinite(last_loss):
                raise DataError(
                    f"{task}: the loss became {last_loss} at step {step}",
                    hint="lower --lr, or use --mixed-precision bf16/no instead of fp16",
                )
            elapsed = time.monotonic() - began
            if writer:
                _append_log(
                    log_path, {"step": step, "loss": last_loss, "lr": train.learning_rate, "elapsed_s": elapsed}
                )
            if writer and train.checkpoint_every and step % train.checkpoint_every == 0:
                scaler_state = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                save_checkpoint(item.folder, step, adapter, optimizer, key, train.checkpoints_keep, scaler_state,
                                target_steps=train.steps)
            if writer and ((train.validate_every and step % train.validate_every == 0) or step == train.steps):
                write_validation(
                    backbone, adapter, config, cache, device, category.name, item.defect, item.folder, step
                )
                backbone.unet.train()
            done = step - start
            eta = elapsed / done * (train.steps - step)
            report(progress, task, step, train.steps, loss=round(last_loss, 5), eta_s=round(eta, 1))
        if writer:
            if train.checkpoint_every and train.steps % train.checkpoint_every and train.steps > start:
                # A last checkpoint lets a later run with more --steps resume where this one ended.
                scaler_state = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                save_checkpoint(item.folder, train.steps, adapter, optimizer, key, train.checkpoints_keep, scaler_state,
                                target_steps=train.steps)
            made_on = BackboneRef(backbone.source, backbone.content_hash)
            record = fit_fields(category, item.defect, config, made_on, item.split, plan.prior, train.steps,
                                anogen_version=__version__, versions=_versions())
            save_adapter(adapter, item.folder, record, dtype=train.save_dtype)
    finally:
        backbone.unet.eval()
        adapter.uninstall(backbone.unet)
    if data_parallel:
        accelerator.wait_for_everyone()
    return FitResult(category.name, item.defect, item.folder, train.steps, last_loss, status, adapter)


def _all_reduce_grads(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Average gradients over the data-parallel processes (explicit, so no DDP wrapper touches the adapter).

    One all-reduce per dtype and device over a flat copy of the gradients: a call per tensor (hundreds of them)
    cost more than the toy step's own compute on a CPU. Each element is still the sum of the processes' values
    divided by ``world``, so the averaged gradients are the same numbers either way.
    """
    import torch.distributed as dist

    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        groups.setdefault((param.grad.dtype, param.grad.device), []).append(param.grad)
    for grads in groups.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        for grad, part in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(part.view_as(grad))


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the log rows up to ``last_step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        if last_step == 0:
            return
        write_text_atomic(path, "")
        return
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= last_step]
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _append_log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
