"""``fit``: train one dual-interrelated adapter per defect type of a category (accelerate drives it).

One training step, per (whole, part) pair of the batch (see docs/architecture.md, "The dual batch layout"):

* the whole image and its part (image x mask, 0 = neutral grey outside the mask) are resized to
  ``train.resolution`` in [-1, 1], under one of the flips the preset allows (the same flip for image, mask and
  background), and encoded once with the frozen VAE (the mean of the latent distribution x scaling factor);
  the latents of every (image, flip) are cached, since the few training images never change;
* one timestep shared by both branches, independent noise per branch; with BCM the background latent of the
  training image gets its own noise at the same timestep;
* loss = MSE between the noise prediction and the noise (or the velocity for v-prediction backbones),
  averaged over both branches; AdamW on ``adapter.trainable_parameters()``.

Every random draw of step ``s`` comes from ``derive_seed(seed, category, defect, "step", s, micro)``: a resumed
run therefore continues exactly as an uninterrupted one, and a data-parallel run draws the same global batch as
one process with the same effective batch (each process takes its slice of it).

Several processes (``accelerate launch``) split the work in one of two ways (``parallel``):

* ``defects``: defect type ``i`` is trained by process ``i % world``, each adapter exactly as in a
  one-process run;
* ``data``: every process trains the same adapter on its slice of the global batch; gradients are averaged
  with an explicit all-reduce, the main process writes every file.

Its modules, one concern each (they import each other directly, never through this package):
``config`` (the request resolved once for the category), ``results`` (plan and result records), ``plan``
(planning, input checks), ``resume`` (resume checks),
``estimate`` (time, parameters, memory), ``data`` (training images, flips, latent cache), ``step`` (batch draw,
pair loss), ``checkpoints``, ``validation`` and ``loop`` (``fit`` itself, logs, the adapter record).
"""

from anogen.fit.checkpoints import load_checkpoint, save_checkpoint
from anogen.fit.config import config_for_fit, fit_config, fit_resolution
from anogen.fit.data import (
    LatentCache,
    TrainingImages,
    build_latent_cache,
    dihedral_variants,
    encode_latents,
    load_training_images,
)
from anogen.fit.estimate import estimate_fit_seconds, estimate_peak_bytes, measured_s_per_step, unet_work
from anogen.fit.loop import fit
from anogen.fit.plan import ParallelMode, plan_fit, resolve_parallel
from anogen.fit.results import DefectPlan, FitPlan, FitResult
from anogen.fit.resume import CHECKPOINT_SCHEMA_VERSION, RESUMABLE_TRAIN_FIELDS, check_resume
from anogen.fit.step import StepBatch, draw_batch, pair_loss
from anogen.fit.validation import VALIDATION_PAIRS, VALIDATION_SAMPLER_STEPS, validation_grid, write_validation

__all__ = [
    "CHECKPOINT_SCHEMA_VERSION",
    "RESUMABLE_TRAIN_FIELDS",
    "VALIDATION_PAIRS",
    "VALIDATION_SAMPLER_STEPS",
    "DefectPlan",
    "FitPlan",
    "FitResult",
    "LatentCache",
    "ParallelMode",
    "StepBatch",
    "TrainingImages",
    "build_latent_cache",
    "check_resume",
    "config_for_fit",
    "dihedral_variants",
    "draw_batch",
    "encode_latents",
    "estimate_fit_seconds",
    "estimate_peak_bytes",
    "fit",
    "fit_config",
    "fit_resolution",
    "load_checkpoint",
    "load_training_images",
    "measured_s_per_step",
    "pair_loss",
    "plan_fit",
    "resolve_parallel",
    "save_checkpoint",
    "unet_work",
    "validation_grid",
    "write_validation",
]
