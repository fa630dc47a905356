"""The train stage: dataset -> trained experts (checkpoints) and their per-epoch metrics.

Two pairs of experts are compared everywhere (:data:`PAIRS`): ``cotrained`` (agreement terms with the
lambdas of ``train:``) and ``independent`` (every lambda 0). They are trained in stages (:data:`STAGES`):

- ``hf``: the HF expert alone on its data terms, selected on its own validation loss. With
  ``train.agreement_mode: anchored`` (the default) this one HF expert belongs to *both* pairs, so every
  comparison of the pairs, and of a mixture against full HF, uses the same HF checkpoint;
- ``lf``: one LF expert trained against that frozen HF (``--anchor``): its cached outputs on the frames
  and on the mixture cells (:mod:`pipeline.train.anchor`, :mod:`pipeline.train.cells`) are the targets of
  the agreement terms of the co-trained pair; the independent pair's LF trains on its data alone (the
  anchor then only feeds the disagreement columns of its metrics). The LF is selected on its own
  validation loss (data + agreement on the validation frames and validation cells);
- ``pair``: ``train.agreement_mode: symmetric``: both experts of the co-trained pair train together,
  the agreement gradient reaching both, and are selected at one epoch on their joint validation loss.

Both experts share the per-species shifts (least-squares reference energies of the training frames,
:func:`pipeline.models.fit_energy_shifts`) and scales (force RMS per species,
:func:`pipeline.models.force_rms_scales`), so their per-atom energies are directly comparable; an LF
trained against an anchor copies the anchor's. The seed (``seed``) sets the initial weights, the batch
order and the mixture cells; the split has its own seed (``ingest.split_seed``).

>>> stage_train_config(TrainConfig(lambda_energy=2.0), "independent").lambda_energy
0.0
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch

from pipeline.config import Config, TrainConfig
from pipeline.data.ingest import sha256_file
from pipeline.data.splits import training_subset
from pipeline.devices import DTYPES
from pipeline.models import (
    AllegroModel,
    build_model,
    fit_energy_shifts,
    force_rms_scales,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.names import TRAIN_PAIRS
from pipeline.train.anchor import attach_anchor
from pipeline.train.cells import bulk_cells, slab_cells
from pipeline.train.data import check_species, prepare_samples, read_splits, reference_lattice_constant
from pipeline.train.ddp import DistInfo, init_distributed, shutdown
from pipeline.train.loop import TrainData, TrainResult, agrees, train_experts
from pipeline.train.state import state_path

log = logging.getLogger(__name__)

PAIRS = TRAIN_PAIRS  # the name pipeline.train exports
STAGES = ("hf", "lf", "pair")
_MODEL_SEED_OFFSET = {"hf": 101, "lf": 202}


def stage_train_config(cfg: TrainConfig, pair: str | None, stage: str = "hf") -> TrainConfig:
    """The ``train:`` section as used for ``pair`` in ``stage``: the independent pair has zero agreement
    weights, and an ``lf`` stage runs ``lf_max_epochs`` (when set) instead of ``max_epochs``."""
    if pair is not None and pair not in PAIRS:
        raise ValueError(f"pair must be one of {PAIRS}, got {pair!r}")
    if stage == "lf" and cfg.lf_max_epochs is not None:
        cfg = dataclasses.replace(cfg, max_epochs=cfg.lf_max_epochs)
    if pair == "independent":
        return dataclasses.replace(cfg, lambda_energy=0.0, lambda_force=0.0, lambda_mixture=0.0)
    return cfg


def build_expert(cfg: Config, name: str, train_frames: list, *, device: torch.device | str = "cpu",
                 like: AllegroModel | None = None) -> AllegroModel:
    """Expert ``name`` with initial weights fixed by ``cfg.seed`` and the scales and shifts of the training
    frames (or those of ``like``)."""
    model = build_model(getattr(cfg.models, name), cfg.species, dtype=DTYPES[cfg.train.dtype],
                        seed=cfg.seed * 1000 + _MODEL_SEED_OFFSET[name])
    if like is not None:
        model.set_scale_shift(scales=like.scale_shift.scales.tolist(), shifts=like.scale_shift.shifts.tolist())
    else:
        model.set_scale_shift(scales=force_rms_scales(train_frames, cfg.species),
                              shifts=fit_energy_shifts(train_frames, cfg.species))
    return model.to(device)


def mixture_cells(cfg: Config, splits: dict[str, list], cutoff: float) -> tuple[list, list]:
    """Training and validation mixture cells of ``cfg.train.cells`` (:mod:`pipeline.train.cells`)."""
    c = cfg.train.cells
    n_val = {kind: math.ceil(c.validation_fraction * n) for kind, n in (("bulk", c.bulk), ("slab", c.slab))}
    out = []
    for stream, split, counts in ((0, "train", {"bulk": c.bulk, "slab": c.slab}), (1, "validation", n_val)):
        cells = []
        if counts["bulk"]:
            symbol = cfg.regions.substrate_species[0]
            cells += bulk_cells(counts["bulk"], lattice_a=reference_lattice_constant(splits["train"], symbol),
                                repeat=c.bulk_repeat, volume_range=c.volume_range, uniaxial_max=c.uniaxial_max,
                                shear_max=c.shear_max, rattle_max_a=c.rattle_max_a, cutoff=cutoff, seed=cfg.seed,
                                symbol=symbol, stream=stream)
        cells += slab_cells(splits[split], counts["slab"], min_lateral_a=c.slab_min_lateral_a,
                            rattle_a=c.slab_rattle_a, partition=cfg.md.partition, regions=cfg.regions,
                            cutoff=cutoff, seed=cfg.seed, stream=stream)
        out.append(cells)
    return out[0], out[1]


def prepare_data(cfg: Config, splits: dict[str, list], r_maxes: list[float], *, cells: bool) -> TrainData:
    """Prepared training and validation frames and, with ``cells``, the mixture cells."""
    common = {"species": cfg.species, "r_maxes": r_maxes, "dtype": DTYPES[cfg.train.dtype]}
    train = prepare_samples(splits["train"], lf_data=cfg.train.lf_data, **common)
    validation = prepare_samples(splits["validation"], lf_data=cfg.train.lf_data, **common)
    if not cells:
        return TrainData(train=train, validation=validation)
    train_cells, validation_cells = mixture_cells(cfg, splits, max(r_maxes))
    return TrainData(train=train, validation=validation,
                     cells=prepare_samples(train_cells, labelled=False, **common),
                     validation_cells=prepare_samples(validation_cells, labelled=False, **common))


def with_anchor(data: TrainData, anchor: AllegroModel) -> TrainData:
    """``data`` with the frozen ``anchor``'s outputs attached to every frame and cell."""
    return TrainData(*(attach_anchor(part, anchor) if part else [] for part in
                       (data.train, data.validation, data.cells, data.validation_cells)))


def fingerprint(cfg: Config, stage: str, pair: str | None, dataset_sha256: str, anchor_sha256: str | None,
                subset: tuple[float, int] | None = None) -> dict:
    """What a saved training state must match to be resumed (dense experts leave out their ``moe``; a
    ``subset`` = (training fraction < 1, subset seed) is added when given)."""
    models = dataclasses.asdict(cfg.models)
    train = dataclasses.asdict(stage_train_config(cfg.train, pair, stage))
    for expert in models.values():
        if not expert["moe"]["enabled"]:
            del expert["moe"]
    out = {
        "stage": stage, "pair": pair, "seed": cfg.seed, "species": list(cfg.species), "models": models,
        "train": train, "regions": dataclasses.asdict(cfg.regions),
        "partition": dataclasses.asdict(cfg.md.partition), "dataset_sha256": dataset_sha256,
        "anchor_sha256": anchor_sha256,
    }
    if subset is not None:
        out["train_subset"] = {"fraction": float(subset[0]), "seed": int(subset[1])}
    return out


def run_training(
    cfg: Config,
    *,
    stage: str,
    dataset: str | Path,
    metrics_path: str | Path,
    state_dir: str | Path,
    pair: str | None = None,
    hf_path: str | Path | None = None,
    lf_path: str | Path | None = None,
    anchor_path: str | Path | None = None,
    progress: bool = True,
    keep_state: bool = False,
    train_fraction: float = 1.0,
    subset_seed: int = 0,
) -> TrainResult:
    """Run one training stage on ``dataset``; write its checkpoints and metrics; resume from ``state_dir``.

    Parameters
    ----------
    cfg : Config
        The validated configuration (``models``, ``train``, ``regions``, ``md.partition``, ``species``,
        ``seed``, ``device``).
    stage : {"hf", "lf", "pair"}
        See the module docstring. ``hf`` writes ``hf_path``; ``lf`` reads ``anchor_path`` (the frozen HF
        checkpoint) and writes ``lf_path``; ``pair`` writes both.
    dataset : path
        The ingest stage's dataset (extxyz with ``split`` and per-atom ``region``).
    metrics_path : path
        Output per-epoch metrics, CSV (rewritten every epoch).
    state_dir : path
        Directory of the training state; resumed from when it holds one. The state file is removed
        after the checkpoints are written unless ``keep_state``.
    pair : {"cotrained", "independent"}
        The pair an ``lf`` or ``pair`` stage trains for (the independent pair's lambdas are 0).
    train_fraction : float
        Train on whole groups holding this fraction of each family's training frames
        (:func:`pipeline.data.splits.training_subset`, nested for one ``subset_seed``); the validation split is
        unchanged. 1 (default): every training frame.
    subset_seed : int
        Seed of the group order of the subset.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this runs data-parallel (:mod:`pipeline.train.ddp`).
    """
    needs = {"hf": ("hf_path",), "lf": ("lf_path", "anchor_path", "pair"), "pair": ("hf_path", "lf_path", "pair")}
    if stage not in needs:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    given = {"hf_path": hf_path, "lf_path": lf_path, "anchor_path": anchor_path, "pair": pair}
    missing = [key for key in needs[stage] if given[key] is None]
    if missing:
        raise ValueError(f"the {stage} stage needs {', '.join(missing)}")
    if stage == "pair" and pair == "cotrained" and cfg.train.agreement_mode != "symmetric":
        raise ValueError("the pair stage co-trains both experts symmetrically: set train.agreement_mode to "
                         f"symmetric (it is {cfg.train.agreement_mode!r}; anchored co-training is the hf + lf stages)")
    torch.set_num_threads(cfg.torch_threads)
    info = init_distributed(cfg.device)
    try:
        return _run(cfg, info, stage=stage, pair=pair, dataset=Path(dataset), hf_path=hf_path, lf_path=lf_path,
                    anchor_path=anchor_path, metrics_path=Path(metrics_path), state_dir=Path(state_dir),
                    progress=progress, keep_state=keep_state, subset=(train_fraction, subset_seed))
    finally:
        shutdown(info)


def _run(cfg: Config, info: DistInfo, *, stage: str, pair: str | None, dataset: Path, hf_path, lf_path, anchor_path,
         metrics_path: Path, state_dir: Path, progress: bool, keep_state: bool,
         subset: tuple[float, int] = (1.0, 0)) -> TrainResult:
    train_cfg = stage_train_config(cfg.train, pair, stage)
    splits = read_splits(str(dataset))
    n_all = len(splits["train"])
    splits["train"] = training_subset(splits["train"], subset[0], seed=subset[1])
    if subset[0] < 1.0 and info.is_main:
        log.info("training fraction %g (subset seed %d): %d of %d training frames", subset[0], subset[1],
                 len(splits["train"]), n_all)
    check_species(splits["train"] + splits["validation"], cfg.species, what="the training and validation frames")
    anchor = None
    if stage == "lf":
        anchor = load_checkpoint(anchor_path, species=cfg.species, dtype=DTYPES[cfg.train.dtype],
                                 map_location=info.device).eval()
        for p in anchor.parameters():
            p.requires_grad_(False)
    names = {"hf": ("hf",), "lf": ("lf",), "pair": ("hf", "lf")}[stage]
    models = {name: build_expert(cfg, name, splits["train"], device=info.device, like=anchor) for name in names}
    r_maxes = [m.r_max for m in models.values()] + ([anchor.r_max] if anchor is not None else [])
    use_cells = stage != "hf" and agrees(train_cfg) and (train_cfg.cells.bulk + train_cfg.cells.slab) > 0
    data = prepare_data(cfg, splits, r_maxes, cells=use_cells)
    if anchor is not None:
        data = with_anchor(data, anchor)
    digest = sha256_file(dataset)
    anchor_digest = sha256_file(anchor_path) if anchor_path is not None else None
    if info.is_main:
        log.info("stage %s%s: %d training, %d validation frames, %d + %d mixture cells; device %s, %d process(es)",
                 stage, f" ({pair})" if pair else "", len(data.train), len(data.validation), len(data.cells),
                 len(data.validation_cells), info.device, info.world_size)
    state_file = state_path(state_dir)
    result = train_experts(models, data, train_cfg, seed=cfg.seed, anchor="hf" if anchor is not None else None,
                           fingerprint=fingerprint(cfg, stage, pair, digest, anchor_digest,
                                                   subset if subset[0] < 1.0 else None), state_file=state_file,
                           metrics_csv=metrics_path, info=info, progress=progress)
    if info.is_main:
        paths = {"hf": hf_path, "lf": lf_path}
        for role, model in result.models.items():
            save_checkpoint(paths[role], model, metadata={
                "role": role, "stage": stage, "pair": pair if stage != "hf" else "shared",
                "best_epoch": result.best_epoch, "epochs": result.epochs,
                "best_val_loss_smoothed": result.best_val_loss, "stopped_early": result.stopped_early,
                "selection": (f"own validation loss of the {stage} stage, trailing mean over "
                              f"{train_cfg.selection_window} epochs"),
                "seed": cfg.seed, "train": dataclasses.asdict(train_cfg), "dataset_sha256": digest,
                "anchor_sha256": anchor_digest,
                "weights": "exponential moving average" if train_cfg.ema_decay > 0 else "final",
                "train_fraction": float(subset[0]), "subset_seed": int(subset[1]),
                "n_train_frames": len(splits["train"]),
            })
        log.info("stage %s: selected epoch %d of %d (smoothed validation loss %.5g); wrote %s", stage,
                 result.best_epoch, result.epochs, result.best_val_loss,
                 ", ".join(str(paths[r]) for r in result.models))
        if not keep_state:
            state_file.unlink(missing_ok=True)
    return result
