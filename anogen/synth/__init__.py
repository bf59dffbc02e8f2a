"""``anogen synth``: joint sampling of (whole, part) pairs with a fitted dual adapter, masks, manifests, resuming.

Attempt ids and seeds
    Every defect type has attempts ``0, 1, 2, ...``; attempt ``i`` uses seed
    ``derive_seed(sample.seed, category, defect, i)`` and draws its initial noise (whole then part, then one
    background noise per step with BCM) from its own CPU ``torch.Generator``; a stochastic sampler's per-step noise
    comes from one more generator per branch (:func:`step_noise_generator`). Its images therefore depend on neither
    the batch size nor the number of processes. The result of ``count = N`` is the first N *accepted* attempts in
    id order; rejected attempts keep their files and a reason.

Resuming
    Files are written atomically, a manifest row (appended and fsync'ed) only after its three PNGs exist. A rerun
    reads the rows, truncates a torn last line and generates only the ids that have no row; files without a row
    are regenerated (bit-identically) or, past the result, deleted at the end.

Several processes
    Under ``accelerate launch`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``)
    rank ``r`` of ``W`` takes the ids with ``id % W == r`` and appends to ``manifest.rank<r>.jsonl``. Ranks read
    each other's shards (a shared file system) to learn when the first N accepted are settled; at the end rank 0
    merges the shards into ``manifest.jsonl``, sorted by id and cut after the N-th accepted attempt.

Modules (each imports its siblings directly, never through this package):

- :mod:`anogen.synth.sampling`: the denoising loop (:func:`sample_pairs`), step noise, VAE encoding and decoding;
- :mod:`anogen.synth.bcm`: which background each attempt uses and what BCM's reference pass sees;
- :mod:`anogen.synth.references`: the category's real normal images (:class:`References`);
- :mod:`anogen.synth.jobs`: :class:`Job`, its effective configs (:func:`job_configs`, the one resolve per adapter)
  and the resume checks (:func:`prepare_jobs`);
- :mod:`anogen.synth.plan`: the dry-run :func:`plan`;
- :mod:`anogen.synth.backbones`: :func:`check_backbones` (the backbone a record names and the cache of one
  loaded backbone live in :mod:`anogen.model.recorded`);
- :mod:`anogen.synth.writing`: each attempt's files and row, ``run.json``, :func:`finalize`;
- :mod:`anogen.synth.summary`: :class:`SynthSummary` and :class:`DefectSummary`;
- :mod:`anogen.synth.run`: :func:`synthesize`, the per-job loop, waiting for slower ranks;
- :mod:`anogen.synth.remask`: ``anogen mask`` (:func:`remask`).

Rank and world size come from :mod:`anogen.dist`. Importing this package imports torch (the sampling loop); the
CLI imports it only inside its commands.
"""

from anogen.synth.backbones import check_backbones
from anogen.synth.bcm import encode_grey, noised_references, pool_size, reference_index
from anogen.synth.jobs import GENERATION_FIELDS, Job, job_configs, prepare_jobs, recorded_sections
from anogen.synth.plan import plan
from anogen.synth.references import References, load_references
from anogen.synth.remask import RemaskSummary, remask
from anogen.synth.run import synthesize
from anogen.synth.sampling import STOCHASTIC_SAMPLERS, encode_backgrounds, sample_pairs, step_noise_generator
from anogen.synth.summary import DefectSummary, SynthSummary
from anogen.synth.writing import finalize

__all__ = [
    "GENERATION_FIELDS",
    "STOCHASTIC_SAMPLERS",
    "DefectSummary",
    "Job",
    "References",
    "RemaskSummary",
    "SynthSummary",
    "check_backbones",
    "encode_backgrounds",
    "encode_grey",
    "finalize",
    "job_configs",
    "load_references",
    "noised_references",
    "plan",
    "pool_size",
    "prepare_jobs",
    "recorded_sections",
    "reference_index",
    "remask",
    "sample_pairs",
    "step_noise_generator",
    "synthesize",
]
