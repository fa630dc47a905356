"""The element-wise MoE routing study (paper B, DESIGN.md section 1): one model per dataset and variant.

Every variant starts from the ``models.<moe_study.base_model>`` preset, is trained with the same data,
seed, epochs and optimiser (:func:`study_train_config`, :func:`pipeline.train.single.train_single`) and
has a similar *active* parameter count: a routed or shared expert gets ``1 / (top_k + shared)`` of the
dense hidden widths, so an atom uses about as many weights as in the dense MLP.

==========================  =========  =============  ======  ===========
variant                     router     expert type    shared  paper claim
==========================  =========  =============  ======  ===========
dense                       --         --             --      baseline
moe_element_shared          element    non-linear     S       best
moe_element                 element    non-linear     0       shared experts help
moe_configuration_shared    structure  non-linear     S       element routing is better
mole_element_shared         element    linear (MoLE)  S       non-linear experts are better
moe_atom_shared             atom       non-linear     S       (optional: discontinuous forces)
==========================  =========  =============  ======  ===========
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config, ExpertConfig, MoEConfig, TrainConfig
from pipeline.data.ingest import sha256_file
from pipeline.devices import DTYPES
from pipeline.models import (
    build_model,
    fit_energy_shifts,
    force_rms_scales,
    save_checkpoint,
)
from pipeline.models.moe import moe_modules, parameter_counts
from pipeline.train.data import check_species, prepare_samples, read_splits
from pipeline.train.core import write_metrics
from pipeline.train.routing import layer_names
from pipeline.train.single import evaluate_errors, train_single

log = logging.getLogger(__name__)

# variant -> (router, expert type, with shared experts); None = dense
VARIANTS: dict[str, tuple[str, str, bool] | None] = {
    "dense": None,
    "moe_element_shared": ("element", "mlp", True),
    "moe_element": ("element", "mlp", False),
    "moe_configuration_shared": ("configuration", "mlp", True),
    "mole_element_shared": ("element", "linear", True),
    "moe_atom_shared": ("atom", "mlp", True),
}
DATASETS = {"pt_co": "DFT (GPAW PBE, shipped set)", "emt_alloys": "EMT (not DFT)",
            "periodic": "SevenNet-0 teacher (not DFT)"}
_MODEL_SEED = 303


def variant_config(cfg: Config, variant: str) -> ExpertConfig:
    """The expert config of ``variant`` (see the module table)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MoE study variant {variant!r}; valid: {list(VARIANTS)}")
    base: ExpertConfig = getattr(cfg.models, cfg.moe_study.base_model)
    spec = VARIANTS[variant]
    if spec is None:
        return dataclasses.replace(base, moe=MoEConfig(enabled=False))
    router, expert_type, shared = spec
    s = cfg.moe_study
    n_shared = s.num_shared if shared else 0
    moe = MoEConfig(enabled=True, layers=tuple(s.layers), num_experts=s.num_experts, top_k=s.top_k,
                    num_shared=n_shared, router=router, expert_type=expert_type,
                    expert_width_factor=1.0 / (s.top_k + n_shared))
    return dataclasses.replace(base, moe=moe)


def study_train_config(cfg: Config) -> TrainConfig:
    """The ``train:`` section as every study run uses it (:func:`pipeline.train.single.train_single`).

    ``moe_study.max_epochs``, ``batch_size``, ``learning_rate`` and ``balance_weight`` replace the
    training's; whatever ``train:`` says, the study uses Adam without weight decay, a cosine schedule,
    and keeps the epoch of the lowest validation loss (no trailing mean, no early stopping). The rest
    (``min_learning_rate``, ``energy_weight``, ``force_weight``, ``grad_clip_norm``, ``ema_decay``)
    comes from ``train:``.
    """
    s = cfg.moe_study
    return dataclasses.replace(cfg.train, max_epochs=s.max_epochs, batch_size=s.batch_size,
                               learning_rate=s.learning_rate, moe_balance_weight=s.balance_weight,
                               optimizer="adam", weight_decay=0.0, scheduler="cosine", selection_window=1,
                               early_stopping_patience=max(1, s.max_epochs))


def dataset_species(cfg: Config, dataset_name: str) -> tuple[str, ...]:
    """Species of a study dataset: the configuration's for ``pt_co``, the EMT elements for ``emt_alloys``, the
    ``moe_study.periodic`` elements for ``periodic``."""
    species = {"pt_co": cfg.species, "emt_alloys": cfg.moe_study.emt.elements,
               "periodic": cfg.moe_study.periodic.elements}
    if dataset_name not in species:
        raise ValueError(f"unknown MoE study dataset {dataset_name!r}; valid: {list(DATASETS)}")
    return tuple(species[dataset_name])


def _subset(frames: list, n: int, seed: int) -> list:
    if n <= 0 or n >= len(frames):
        return frames
    keep = np.sort(np.random.default_rng([seed, 0x3E5]).choice(len(frames), size=n, replace=False))
    return [frames[i] for i in keep]


def train_variant(
    cfg: Config,
    *,
    dataset: str | Path,
    dataset_name: str,
    variant: str,
    checkpoint: str | Path,
    metrics: str | Path,
    summary: str | Path,
) -> dict:
    """Train one variant on one dataset; write its checkpoint, per-epoch metrics (CSV) and summary (JSON).

    The summary holds the test-split MAEs, active and total parameters, the stability status and, for
    MoE variants, the test-set expert load per layer, element and expert.
    """
    torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    species = dataset_species(cfg, dataset_name)
    splits = read_splits(str(dataset), ("train", "validation", "test"))
    check_species(splits["train"] + splits["validation"] + splits["test"], species, what=f"the {dataset_name} frames")
    train_frames = _subset(splits["train"], cfg.moe_study.max_train_frames, cfg.seed)
    dtype = DTYPES[cfg.train.dtype]
    model = build_model(variant_config(cfg, variant), species, dtype=dtype, seed=cfg.seed * 1000 + _MODEL_SEED)
    model.set_scale_shift(scales=force_rms_scales(train_frames, species), shifts=fit_energy_shifts(train_frames, species))
    prep = {"species": species, "r_maxes": [model.r_max], "dtype": dtype, "lf_data": "all"}
    train, validation, test = (prepare_samples(f, **prep) for f in (train_frames, splits["validation"], splits["test"]))
    result = train_single(model, train, validation, study_train_config(cfg), seed=cfg.seed)
    errors = evaluate_errors(result.model, test)
    active, total = parameter_counts(result.model)
    out = {
        "dataset": dataset_name, "labels": DATASETS[dataset_name], "is_dft": dataset_name == "pt_co",
        "variant": variant, "species": list(species), "moe": dataclasses.asdict(result.model.config.moe),
        "active_params": active, "total_params": total,
        "test_energy_mae_mev_atom": errors.energy_mae_mev_atom, "test_force_mae_mev_a": errors.force_mae_mev_a,
        "n_train": len(train), "n_validation": len(validation), "n_test": len(test),
        "epochs": len(result.metrics), "best_epoch": result.best_epoch, "status": result.status,
        "precision": cfg.train.dtype, "wall_s": time.perf_counter() - t0, "dataset_sha256": sha256_file(dataset),
        "layers": layer_names(result.model), "load": [],
    }
    if moe_modules(result.model) and "model" in errors.routing.loads:
        out["load"] = errors.routing.fractions("model").tolist()  # [layer][species][expert]
    save_checkpoint(checkpoint, result.model, metadata={"study": "moe", "variant": variant, "dataset": dataset_name,
                                                        "status": result.status, "best_epoch": result.best_epoch})
    write_metrics(metrics, result.metrics or [{"epoch": 0}])
    Path(summary).parent.mkdir(parents=True, exist_ok=True)
    Path(summary).write_text(json.dumps(out, indent=1))
    log.info("%s / %s: test E %.2f meV/atom, F %.1f meV/A, %d/%d active/total parameters, %s",
             dataset_name, variant, errors.energy_mae_mev_atom, errors.force_mae_mev_a, active, total, result.status)
    return out
