"""The element-wise MoE routing study (paper B, arXiv 2603.07977; DESIGN.md section 1): one model per dataset,
variant and seed.

Every variant starts from the ``models.<moe_study.base_model>`` preset and is trained with the same data,
epochs and optimiser (:func:`study_train_config`, :func:`pipeline.train.single.train_single`); the seed
(``moe_study.seeds``) sets the initial weights and the batch order, the data and its splits keep the
top-level seed. Every MoE variant has the dense model's *active* parameter count: the hidden width of its
experts is solved for (:func:`equal_active_width`), and the total count is reported beside it.

The element-routed variants use ``A = top_k + num_shared`` active experts per atom (``moe_study``), split
between shared and routed ones:

============================  =============  =============  ========================  ==========================
variant                       routing        expert type    shared / routed (active)  paper claim tested
============================  =============  =============  ========================  ==========================
dense                         none           --             --                        baseline
moe_element_shared            element        non-linear     num_shared / top_k        best (shared experts help)
moe_element                   element        non-linear     0 / A                     shared experts help
moe_element_shared25          element        non-linear     A/4 / 3A/4                the shared/routed split
moe_element_shared75          element        non-linear     3A/4 / A/4                the shared/routed split
moe_configuration_shared      configuration  non-linear     num_shared / top_k        element routing is better
moe_global_shared             global         non-linear     num_shared / top_k        global routing is unstable
mole_element_shared           element        linear (MoLE)  num_shared / top_k        non-linear experts better
moe_atom_shared (optional)    atom           non-linear     num_shared / top_k        --
============================  =============  =============  ========================  ==========================

``configuration`` routing is by the structure's composition (smooth along any path at fixed composition);
``global`` routing is by the mean of the structure's current learned features, one top-k choice per
structure: **non-local and discontinuous, a study-only variant** (:mod:`pipeline.models.moe`). Each run
records its numerical stability (:mod:`pipeline.train.stability`): loss spikes and non-finite gradients
during training, energy jumps along MD-like paths of test frames after it, and the ``unstable`` verdict.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config, ExpertConfig, MoEConfig, MoEStudyConfig, TrainConfig
from pipeline.data.ingest import sha256_file
from pipeline.devices import DTYPES
from pipeline.models import (
    build_model,
    fit_energy_shifts,
    force_rms_scales,
    save_checkpoint,
)
from pipeline.models.moe import MoEMLP, moe_modules, parameter_counts
from pipeline.train.core import write_metrics
from pipeline.train.data import check_species, prepare_samples, read_splits
from pipeline.train.routing import layer_names
from pipeline.train.single import evaluate_errors, train_single
from pipeline.train.stability import loss_spikes, path_energy_jumps, unstable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One model of the study.

    Attributes
    ----------
    router : str or None
        Router of the MoE layers (:data:`pipeline.models.moe.ROUTERS`); ``None`` = dense.
    expert_type : str
        ``mlp`` (non-linear experts) or ``linear`` (MoLE).
    shared_fraction : float or None
        Share of the ``top_k + num_shared`` active experts that are shared (0 = all routed); ``None`` = the
        configured ``num_shared`` and ``top_k``.
    """

    router: str | None
    expert_type: str = "mlp"
    shared_fraction: float | None = None

    @property
    def routing(self) -> str:
        """The table's ``routing`` column: ``none`` for the dense model, else the router."""
        return self.router or "none"


VARIANTS: dict[str, Variant] = {
    "dense": Variant(None),
    "moe_element_shared": Variant("element"),
    "moe_element": Variant("element", shared_fraction=0.0),
    "moe_element_shared25": Variant("element", shared_fraction=0.25),
    "moe_element_shared75": Variant("element", shared_fraction=0.75),
    "moe_configuration_shared": Variant("configuration"),
    "moe_global_shared": Variant("global"),
    "mole_element_shared": Variant("element", "linear"),
    "moe_atom_shared": Variant("atom"),
}
DATASETS = {"pt_co": "DFT (GPAW PBE, shipped set)", "emt_alloys": "EMT (not DFT)",
            "periodic": "SevenNet-0 teacher (not DFT)"}
_MODEL_SEED = 303


def expert_split(study: MoEStudyConfig, shared_fraction: float | None) -> tuple[int, int]:
    """``(num_shared, top_k)`` of a variant: ``round(f * A)`` of the ``A = top_k + num_shared`` active experts shared.

    Raises ``ValueError`` when a fraction in (0, 1) leaves no shared or no routed expert, or when more
    experts would be routed per atom than ``num_experts``.
    """
    if shared_fraction is None:
        return study.num_shared, study.top_k
    active = study.top_k + study.num_shared
    shared = int(round(shared_fraction * active))
    if 0 < shared_fraction < 1 and not 1 <= shared <= active - 1:
        raise ValueError(f"a shared fraction of {shared_fraction} of {active} active experts leaves no shared or "
                         "no routed expert: raise moe_study.top_k + num_shared")
    if active - shared > study.num_experts:
        raise ValueError(f"{active - shared} routed experts per atom but moe_study.num_experts = {study.num_experts}")
    return shared, active - shared


def variant_moe(cfg: Config, variant: str) -> MoEConfig:
    """The MoE settings of ``variant`` before the width is solved (``expert_width_factor`` 1); disabled for dense."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MoE study variant {variant!r}; valid: {list(VARIANTS)}")
    spec, s = VARIANTS[variant], cfg.moe_study
    if spec.router is None:
        return MoEConfig(enabled=False)
    num_shared, top_k = expert_split(s, spec.shared_fraction)
    return MoEConfig(enabled=True, layers=tuple(s.layers), num_experts=s.num_experts, top_k=top_k,
                     num_shared=num_shared, router=spec.router, expert_type=spec.expert_type, expert_width_factor=1.0)


@dataclass(frozen=True)
class WidthSolution:
    """The expert width that equalises active parameters (:func:`equal_active_width`).

    Attributes
    ----------
    factor : float
        ``expert_width_factor``: expert hidden widths are ``round(factor * dense width)`` (at least 1).
    widths : tuple of tuple of int
        Hidden widths of the experts of each MoE layer, in module order.
    active, total : int
        Active and total parameters of the MoE model at ``factor``.
    dense : int
        Parameters of the dense model (all active): the target.
    """

    factor: float
    widths: tuple[tuple[int, ...], ...]
    active: int
    total: int
    dense: int


def _layer_counts(layer: MoEMLP, hidden: Sequence[int], moe: MoEConfig, activation: str,
                  num_species: int) -> tuple[int, int]:
    """``(active, total)`` parameters of ``layer`` rebuilt with ``moe`` (its dense ``hidden`` widths)."""
    with torch.random.fork_rng(devices=[]):
        return MoEMLP(layer.in_dim, layer.out_dim, hidden=hidden, activation=activation, num_species=num_species,
                      moe=moe).parameter_counts()


def equal_active_width(base: ExpertConfig, moe: MoEConfig, species: Sequence[str]) -> WidthSolution:
    """Solve ``moe.expert_width_factor`` so that the MoE model's active parameters are closest to the dense model's.

    Every routed and shared expert of every MoE layer gets hidden widths ``round(factor * h)`` of the dense
    MLP's widths ``h``. The active count (:func:`pipeline.models.moe.parameter_counts`: shared experts, the
    router, ``top_k`` routed experts and everything outside the MoE layers) is a step function of the factor,
    constant between the factors ``w / h`` (``w`` = 1 .. 2h); each of those is tried, the one with the smallest
    ``|active - dense|`` wins (the smaller factor on a tie). Only the MoE layers are rebuilt per candidate.
    """
    n_species = len(species)
    dense = parameter_counts(build_model(dataclasses.replace(base, moe=MoEConfig(enabled=False)), species, seed=0))[0]
    unit = dataclasses.replace(moe, expert_width_factor=1.0)
    reference = build_model(dataclasses.replace(base, moe=unit), species, seed=0)
    layers = [(m, tuple(m.dims[1:-1])) for _, m in moe_modules(reference)]  # dense hidden widths at factor 1

    def moe_counts(factor: float) -> np.ndarray:
        """``(active, total)`` of the MoE layers alone."""
        moe_f = dataclasses.replace(moe, expert_width_factor=factor)
        return np.sum([_layer_counts(m, h, moe_f, base.activation, n_species) for m, h in layers], axis=0)

    outside = np.array(parameter_counts(reference)) - moe_counts(1.0)  # (active, total) outside the MoE layers

    def counts(factor: float) -> tuple[int, int]:
        active, total = outside + moe_counts(factor)
        return int(active), int(total)

    candidates = sorted({w / h for _, hidden in layers for h in hidden for w in range(1, 2 * h + 1)}) or [1.0]
    scored = [(abs(counts(f)[0] - dense), f) for f in candidates]
    factor = min(scored)[1]
    active, total = counts(factor)
    widths = tuple(tuple(max(1, round(h * factor)) for h in hidden) for _, hidden in layers)
    return WidthSolution(factor=factor, widths=widths, active=active, total=total, dense=dense)


def variant_config(cfg: Config, variant: str, species: Sequence[str], *,
                   base_model: str | None = None) -> tuple[ExpertConfig, WidthSolution | None]:
    """The expert config of ``variant`` for ``species`` (widths solved for equal active parameters) and the
    width solution (``None`` for the dense model); built on the ``models.<base_model>`` preset (default
    ``moe_study.base_model``)."""
    base: ExpertConfig = getattr(cfg.models, base_model or cfg.moe_study.base_model)
    moe = variant_moe(cfg, variant)
    if not moe.enabled:
        return dataclasses.replace(base, moe=moe), None
    solution = equal_active_width(base, moe, species)
    return dataclasses.replace(base, moe=dataclasses.replace(moe, expert_width_factor=solution.factor)), solution


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


def path_frames(frames: list, n: int) -> list:
    """``n`` test frames spread evenly over the split (all of them when there are fewer)."""
    if len(frames) <= n:
        return list(frames)
    return [frames[i] for i in np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))]


def fingerprint(cfg: Config, *, dataset_sha256: str, dataset_name: str, variant: str, seed: int,
                expert: ExpertConfig) -> dict:
    """What a saved training state of one study run must match to be resumed."""
    return {"study": "moe", "dataset": dataset_name, "dataset_sha256": dataset_sha256, "variant": variant,
            "seed": seed, "data_seed": cfg.seed, "expert": dataclasses.asdict(expert),
            "train": dataclasses.asdict(study_train_config(cfg)), "max_train_frames": cfg.moe_study.max_train_frames}


def router_probabilities(model: torch.nn.Module) -> list:
    """Element routers' probabilities ``[layer][species][expert]`` (``[]`` when a MoE layer is not element-routed)."""
    layers = [m for _, m in moe_modules(model)]
    if not layers or any(m.router.mode != "element" for m in layers):
        return []
    return [m.element_probabilities().double().tolist() for m in layers]


def train_variant(
    cfg: Config,
    *,
    dataset: str | Path,
    dataset_name: str,
    variant: str,
    checkpoint: str | Path,
    metrics: str | Path,
    summary: str | Path,
    seed: int | None = None,
    state: str | Path | None = None,
) -> dict:
    """Train one variant on one dataset with one seed; write its checkpoint, metrics (CSV) and summary (JSON).

    ``seed`` (default: the top-level seed) sets the initial weights and the batch order. With ``state`` the
    run is saved after every epoch and resumed from that file; the metrics CSV (the learning curve) is
    rewritten after every epoch. The summary holds the test-split MAEs, active and total parameters (and the
    width solution), the stability measures and verdict, the validation learning curve and, for MoE variants,
    the test-set expert load per layer, element and expert (and the element routers' probabilities).
    """
    torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    seed = cfg.seed if seed is None else int(seed)
    species = dataset_species(cfg, dataset_name)
    splits = read_splits(str(dataset), ("train", "validation", "test"))
    check_species(splits["train"] + splits["validation"] + splits["test"], species, what=f"the {dataset_name} frames")
    train_frames = _subset(splits["train"], cfg.moe_study.max_train_frames, cfg.seed)
    dtype = DTYPES[cfg.train.dtype]
    expert, width = variant_config(cfg, variant, species)
    model = build_model(expert, species, dtype=dtype, seed=seed * 1000 + _MODEL_SEED)
    model.set_scale_shift(scales=force_rms_scales(train_frames, species), shifts=fit_energy_shifts(train_frames, species))
    prep = {"species": species, "r_maxes": [model.r_max], "dtype": dtype, "lf_data": "all"}
    train, validation, test = (prepare_samples(f, **prep) for f in (train_frames, splits["validation"], splits["test"]))
    digest = sha256_file(dataset)
    stability = cfg.moe_study.stability
    result = train_single(model, train, validation, study_train_config(cfg), seed=seed, state_file=state,
                          fingerprint=fingerprint(cfg, dataset_sha256=digest, dataset_name=dataset_name,
                                                  variant=variant, seed=seed, expert=expert),
                          metrics_csv=metrics, check_gradients=True)
    errors = evaluate_errors(result.model, test)
    active, total = parameter_counts(result.model)
    path = path_energy_jumps(result.model, path_frames(splits["test"], stability.path_frames),
                             steps=stability.path_steps, amplitude_a=stability.path_amplitude_a, seed=seed)
    rows = result.metrics
    spikes = loss_spikes([r["train_loss"] for r in rows], factor=stability.spike_factor)
    nonfinite = int(sum(r.get("nonfinite_grads", 0) for r in rows))
    moe = result.model.config.moe
    spec = VARIANTS[variant]
    out = {
        "dataset": dataset_name, "labels": DATASETS[dataset_name], "is_dft": dataset_name == "pt_co",
        "variant": variant, "seed": seed, "routing": spec.routing, "base_model": cfg.moe_study.base_model,
        "expert_type": spec.expert_type if moe.enabled else "-",
        "shared_experts": moe.num_shared if moe.enabled else 0, "routed_experts": moe.num_experts if moe.enabled else 0,
        "top_k": moe.top_k if moe.enabled else 0,
        "species": list(species), "moe": dataclasses.asdict(moe),
        "train_species": [x for x in species if any(x in f.get_chemical_symbols() for f in train_frames)],
        "active_params": active, "total_params": total,
        "width": dataclasses.asdict(width) if width is not None else None,
        "test_energy_mae_mev_atom": errors.energy_mae_mev_atom, "test_force_mae_mev_a": errors.force_mae_mev_a,
        "n_train": len(train), "n_validation": len(validation), "n_test": len(test),
        # what one split keeps together (pipeline.data.periodic_ship; the ingest stage's splits are by group)
        "split_unit": str(splits["test"][0].info.get("split_unit", "group")),
        "epochs": len(rows), "best_epoch": result.best_epoch, "status": result.status,
        "loss_spikes": spikes, "nonfinite_grads": nonfinite,
        "path_jump_mev": path.max_jump_mev, "path_force_error_mev_a": path.max_force_error_mev_a,
        "path_step_a": path.step_a, "n_paths": len(path.per_path_mev),
        "unstable": unstable(stability, status=result.status, loss_spikes=spikes, nonfinite_grads=nonfinite,
                             max_path_jump_mev=path.max_jump_mev),
        "stability": dataclasses.asdict(stability),
        "precision": cfg.train.dtype, "train_wall_s": float(sum(r.get("wall_s", 0.0) for r in rows)),
        "wall_s": time.perf_counter() - t0, "dataset_sha256": digest,
        "curve": {key: [float(r[key]) for r in rows]
                  for key in ("epoch", "train_loss", "val_energy_mae_mev_atom", "val_force_mae_mev_a")},
        "layers": layer_names(result.model), "load": [], "router_probs": router_probabilities(result.model),
    }
    if moe_modules(result.model) and "model" in errors.routing.loads:
        out["load"] = errors.routing.fractions("model").tolist()  # [layer][species][expert]
    save_checkpoint(checkpoint, result.model, metadata={"study": "moe", "variant": variant, "dataset": dataset_name,
                                                        "seed": seed, "status": result.status,
                                                        "best_epoch": result.best_epoch})
    if not rows:  # stopped in the first epoch: the core wrote no metrics
        write_metrics(metrics, [{"epoch": 0}])
    Path(summary).parent.mkdir(parents=True, exist_ok=True)
    Path(summary).write_text(json.dumps(out, indent=1))
    log.info("%s / %s / seed %d: test E %.2f meV/atom, F %.1f meV/A, %d/%d active/total parameters, %s, "
             "path jump %.3g meV%s", dataset_name, variant, seed, errors.energy_mae_mev_atom, errors.force_mae_mev_a,
             active, total, result.status, path.max_jump_mev, " (unstable)" if out["unstable"] else "")
    return out
