"""The training of one stage (HF, LF against a frozen anchor, or the symmetric pair) on the training core.

:func:`train_experts` receives built experts (the trainable ones of a stage, :mod:`pipeline.train.pair`),
prepared data (:class:`TrainData`, with the anchor's outputs attached when the stage has one) and the
``train:`` section, and trains them with :func:`pipeline.train.core.train` (which owns the optimiser,
schedule, EMA, selection, early stopping, training state and resume) and the stage's
:class:`StageObjective`:

- the loss of a batch is that of :func:`pipeline.train.pair.batch_terms`; one optimiser (Adam/AdamW) over
  the trainable experts; each expert's gradient is clipped to ``train.grad_clip_norm`` separately; the
  plateau or cosine schedule steps once per epoch;
- an exponential moving average of each expert's weights (``torch.optim.swa_utils.AveragedModel``) is
  validated every epoch on the stage's own validation loss: the data terms of its trainable experts plus,
  when it agrees, the agreement terms on the validation frames and the mixture term on the validation
  cells, at the un-ramped weights (so epochs stay comparable during the ramp);
- the selected weights are those of the epoch with the lowest *trailing mean* of that loss over
  ``train.selection_window`` epochs, and training stops after ``train.early_stopping_patience`` epochs
  without a lower mean (:class:`pipeline.train.selection.Selection`). A stage that trains one expert
  selects it on its own loss; the symmetric ``pair`` stage selects both experts at one epoch;
- the agreement weights ramp linearly: epoch e (0-based) uses ``lambda * min(1, (e + 1) / ramp)``;
- the batch order and the mixture cells of each batch are functions of ``(seed, epoch)``, and the state
  (weights, EMA, optimiser, schedule, selection, RNG, metrics) is saved atomically after every epoch, so
  a run killed at any point and resumed ends with the same weights as an uninterrupted run;
- experts with mixture-of-experts layers add ``train.moe_balance_weight`` times their load-balancing
  loss, and each epoch's metrics row gets ``train_moe_balance`` and the expert load per element and layer
  (:mod:`pipeline.train.routing`); dense experts change nothing;
- a non-finite loss stops the run with :class:`NonFiniteLossError` naming the epoch and batch; the
  state of the last completed epoch stays on disk.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.models import AllegroModel
from pipeline.train.core import EpochEnd, NonFiniteLossError, Objective, Step, Validation, train, write_metrics
from pipeline.train.data import Sample, batch_order, extra_order, make_batch, shard
from pipeline.train.ddp import DistInfo, all_reduce_sum, wrap
from pipeline.train.losses import LossWeights, weighted_total
from pipeline.train.metrics import ErrorSums, pair_errors
from pipeline.train.pair import CELLS, EXPERTS, Experts, batch_terms, cell_outputs, cell_terms, stage_outputs
from pipeline.train.routing import RoutingStats, balance_loss, layer_names

log = logging.getLogger(__name__)

__all__ = ["TERMS", "NonFiniteLossError", "StageObjective", "TrainData", "TrainResult", "agreement_scale", "agrees",
           "evaluate", "loss_weights", "train_experts", "write_metrics"]

TERMS = ("hf_energy", "hf_forces", "hf_stress", "lf_energy", "lf_forces", "lf_stress", "agree_energy", "agree_forces",
         "mixture_forces")


@dataclass(frozen=True)
class TrainData:
    """Prepared samples (:func:`pipeline.train.data.prepare_samples`): training and validation frames, and
    the mixture cells of training and of validation (:mod:`pipeline.train.cells`)."""

    train: list[Sample]
    validation: list[Sample]
    cells: list[Sample] = field(default_factory=list)
    validation_cells: list[Sample] = field(default_factory=list)


@dataclass
class TrainResult:
    """Outcome of :func:`train_experts`: the selected EMA experts and the per-epoch metrics rows."""

    models: dict[str, AllegroModel]
    epochs: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    metrics: list[dict[str, Any]]


def agreement_scale(epoch: int, ramp_epochs: int) -> float:
    """Fraction of the agreement weights used in (0-based) ``epoch``."""
    return 1.0 if ramp_epochs <= 0 else min(1.0, (epoch + 1) / ramp_epochs)


def loss_weights(cfg: TrainConfig, scale: float = 1.0) -> LossWeights:
    """The loss weights of ``train:`` with the agreement weights times ``scale``."""
    return LossWeights(cfg.energy_weight, cfg.force_weight, cfg.stress_weight,
                       scale * cfg.lambda_energy, scale * cfg.lambda_force, scale * cfg.lambda_mixture,
                       huber_energy=cfg.huber_delta_energy_ev_atom, huber_forces=cfg.huber_delta_force_ev_a)


def agrees(cfg: TrainConfig) -> bool:
    """Whether ``train:`` has any agreement weight."""
    return cfg.lambda_energy > 0 or cfg.lambda_force > 0 or cfg.lambda_mixture > 0


def evaluate(
    models: Mapping[str, AllegroModel],
    samples: Sequence[Sample],
    *,
    weights: LossWeights,
    cells: Sequence[Sample] = (),
    anchor: str | None = None,
    agreement: bool | None = None,
    stress: bool = False,
    batch_size: int = 16,
    info: DistInfo = DistInfo(),
) -> tuple[float, dict[str, float], ErrorSums]:
    """Loss, mean loss terms and error sums of ``models`` on ``samples`` and ``cells`` (split over processes).

    ``models`` are the live experts (put in eval mode); ``anchor`` names an expert whose cached outputs are
    attached to the samples. Data terms count for the live experts; agreement terms (default: when both
    experts are present) on the bulk atoms of ``samples`` and, with the mixture term, on ``cells``.
    """
    for model in models.values():
        model.eval()
    live = tuple(name for name in EXPERTS if name in models)
    present = set(live) | ({anchor} if anchor else set())
    agreement = present == set(EXPERTS) if agreement is None else agreement
    sums = torch.zeros(len(TERMS), 2, dtype=torch.float64)
    errors = ErrorSums()

    def add(terms: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (s, c) in terms.items():
            sums[TERMS.index(name)] += torch.stack([s.detach().to(torch.float64).cpu(), c.cpu()])

    local = shard(np.arange(len(samples)), info.rank, info.world_size)
    for start in range(0, len(local), batch_size):
        batch = make_batch([samples[i] for i in local[start : start + batch_size]], info.device)
        outputs = {name: models[name](batch.graph(models[name].r_max), compute_stress=stress, create_graph=False)
                   for name in live}
        outputs = stage_outputs(outputs, batch, None, anchor)
        add(batch_terms(outputs, batch, trainable=live, agreement=agreement, stress=stress, huber=weights.huber))
        pair_errors(errors, outputs, batch)
    if agreement and cells:
        local = shard(np.arange(len(cells)), info.rank, info.world_size)
        step = max(1, batch_size // 4)
        for start in range(0, len(local), step):
            batch = make_batch([cells[i] for i in local[start : start + step]], info.device)
            outputs = {name + CELLS: cell_outputs(models[name], batch, create_graph=False) for name in live}
            add(cell_terms(stage_outputs(outputs, None, batch, anchor), batch))
    sums = all_reduce_sum(sums, info)
    errors.reduce(lambda t: all_reduce_sum(t, info))
    values = {name: float(s / c) if c > 0 else 0.0 for name, (s, c) in zip(TERMS, sums.tolist())}
    loss = sum(weights.of(name) * value for name, value in values.items()
               if name.split("_", 1)[0] in live or name.startswith(("agree_", "mixture_")))
    return float(loss), values, errors


def _fmt(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']:4d} | loss train {row['train_loss']:.4g} val {row['val_loss']:.4g} "
             f"(mean {row['val_loss_smoothed']:.4g})"]
    for name in EXPERTS:
        if math.isfinite(row.get(f"val_{name}_force_mae_mev_a", math.nan)):
            parts.append(f"val {name.upper()} E {row[f'val_{name}_energy_mae_mev_atom']:.2f} meV/atom "
                         f"F {row[f'val_{name}_force_mae_mev_a']:.1f} meV/A")
    if math.isfinite(row.get("val_bulk_force_disagreement_mev_a", math.nan)):
        parts.append(f"bulk HF-LF E {row['val_bulk_energy_disagreement_mev_atom']:.2f} "
                     f"F {row['val_bulk_force_disagreement_mev_a']:.1f}")
    parts.append(f"lr {row['lr']:.2e} | {row['wall_s']:.1f} s{' *' if row['best_epoch'] == row['epoch'] else ''}")
    return " | ".join(parts)


class StageObjective(Objective):
    """Batches, loss, validation and metrics row of one stage (see the module docstring) for the core.

    Parameters
    ----------
    experts : Experts
        The trainable experts (wrapped for DDP here).
    data, cfg, seed, anchor, state_file, info
        As in :func:`train_experts`.
    """

    def __init__(self, experts: Experts, data: TrainData, cfg: TrainConfig, *, seed: int, anchor: str | None,
                 state_file: str | Path | None, info: DistInfo) -> None:
        self.experts, self.data, self.cfg, self.seed, self.anchor, self.info = experts, data, cfg, seed, anchor, info
        self.state_file = state_file
        self.names = experts.names
        self.model = wrap(experts, info)
        self.agreeing = agrees(cfg) and set(self.names) | ({anchor} if anchor else set()) == set(EXPERTS)
        self.use_cells = self.agreeing and bool(data.cells)
        self.stress = cfg.stress_weight > 0
        self.full_weights = loss_weights(cfg)

    def batches(self, epoch: int) -> list[np.ndarray]:
        cfg = self.cfg
        self.weights = loss_weights(cfg, agreement_scale(epoch, cfg.agreement_ramp_epochs))
        batches = batch_order(len(self.data.train), cfg.batch_size, self.seed, epoch)
        self.cell_order = extra_order(len(self.data.cells), cfg.cells.per_batch, len(batches), self.seed, epoch)
        self.n_batches = len(batches)
        self.term_sums = torch.zeros(len(TERMS), dtype=torch.float64)
        self.train_errors = ErrorSums()
        self.routing, self.balance_sum = RoutingStats(), 0.0
        return batches

    def loss(self, epoch: int, index: int, batch: np.ndarray) -> Step:
        info, data, names = self.info, self.data, self.names
        frames = make_batch([data.train[i] for i in shard(batch, info.rank, info.world_size)], info.device)
        local_cells = shard(self.cell_order[index], info.rank, info.world_size) if self.use_cells else []
        cells = make_batch([data.cells[j] for j in local_cells], info.device) if len(local_cells) else None
        live = self.model(frames, cells, stress=self.stress, create_graph=True)
        outputs = stage_outputs(live, frames, cells, self.anchor)
        terms = batch_terms(outputs, frames, cells, trainable=names, agreement=self.agreeing, stress=self.stress,
                            huber=self.weights.huber)
        loss, values = weighted_total(terms, self.weights, global_counts=lambda c: all_reduce_sum(c, info),
                                      world_size=info.world_size)
        balance = balance_loss({n: live[n] for n in names})  # None unless an expert has MoE layers
        if balance is not None:
            self.balance_sum += float(balance.detach())
            if self.cfg.moe_balance_weight > 0:
                loss = loss + self.cfg.moe_balance_weight * balance
            for name in names:
                self.routing.add(name, live[name])

        def record() -> None:
            self.term_sums += torch.tensor([values.get(name, 0.0) for name in TERMS], dtype=torch.float64)
            pair_errors(self.train_errors, outputs, frames)

        return Step(loss=loss, record=record, detail=values)

    def validate(self, epoch: int, models: Mapping[str, torch.nn.Module]) -> Validation:
        info = self.info
        self.term_means = all_reduce_sum(self.term_sums, info) / self.n_batches
        self.train_errors.reduce(lambda t: all_reduce_sum(t, info))
        val_loss, val_terms, val_errors = evaluate(
            models, self.data.validation, weights=self.full_weights,
            cells=self.data.validation_cells if self.use_cells else (), anchor=self.anchor, agreement=self.agreeing,
            stress=self.stress, batch_size=4 * self.cfg.batch_size, info=info)
        return Validation(loss=val_loss, detail=(val_terms, val_errors))

    def row(self, end: EpochEnd) -> dict[str, Any]:
        val_terms, val_errors = end.validation.detail
        means = self.term_means.tolist()
        train_loss = float(sum(self.weights.of(n) * v for n, v in zip(TERMS, means)))
        row = {"epoch": end.epoch, "lr": end.lr,
               "agreement_scale": agreement_scale(end.epoch - 1, self.cfg.agreement_ramp_epochs),
               "train_loss": train_loss, **{f"train_{n}": v for n, v in zip(TERMS, means)},
               "val_loss": end.validation.loss, "val_loss_smoothed": end.selection.smoothed,
               **{f"val_{n}": v for n, v in val_terms.items()},
               **self.train_errors.summary("train"), **val_errors.summary("val"),
               "best_epoch": end.selection.best_epoch, "wall_s": end.wall_s, "elapsed_s": end.elapsed_s}
        if self.routing.loads:  # MoE experts only: balance loss and expert load per element and layer
            experts = self.experts.experts
            row["train_moe_balance"] = self.balance_sum / self.n_batches
            row.update(self.routing.columns({n: (layer_names(experts[n]), experts[n].species) for n in self.names}))
        return row

    def log_row(self, row: dict[str, Any]) -> None:
        log.info(_fmt(row))

    def train_non_finite(self, epoch: int, index: int, n_batches: int, step: Step) -> str:
        return (f"non-finite training loss at epoch {epoch + 1}, batch {index + 1} of {n_batches} "
                f"(local terms: {step.detail}); stopped. The state of the last completed epoch ({epoch}) "
                f"is kept{f' in {self.state_file}' if self.state_file else ''}; lower train.learning_rate or "
                "check the data")

    def validation_non_finite(self, epoch: int, validation: Validation) -> str:
        return f"non-finite validation loss after epoch {epoch + 1}: {validation.detail[0]}"


def train_experts(
    models: Mapping[str, AllegroModel],
    data: TrainData,
    cfg: TrainConfig,
    *,
    seed: int,
    anchor: str | None = None,
    fingerprint: dict[str, Any] | None = None,
    state_file: str | Path | None = None,
    metrics_csv: str | Path | None = None,
    info: DistInfo = DistInfo(),
    progress: bool = False,
) -> TrainResult:
    """Train ``models`` in place (see the module docstring); resume from ``state_file`` if present.

    Parameters
    ----------
    models : mapping
        The trainable experts, ``{name: model}`` with names among ``hf``, ``lf``; scales and shifts set,
        on ``info.device``.
    data : TrainData
        Prepared frames and mixture cells; with ``anchor``, the anchor's outputs attached to all of them.
    cfg : TrainConfig
        The ``train:`` section (the independent LF stage has zero agreement weights).
    seed : int
        Data-order seed: batches (and their mixture cells) of epoch e are a function of ``(seed, e)``.
    anchor : str, optional
        Name of the frozen expert whose cached outputs the agreement terms use (``hf`` when training LF).
    fingerprint : dict, optional
        What a saved state must match to be resumed (checked by :func:`~pipeline.train.state.load_state`).
    state_file, metrics_csv : path, optional
        Training state (read if present, written every epoch) and per-epoch metrics CSV.
    info : DistInfo
        Process rank and device (DDP); rank 0 writes files.
    progress : bool
        Show a tqdm bar per epoch (rank 0).
    """
    if not data.train or not data.validation:
        raise ValueError("train_experts needs training and validation frames")
    n_batches = -(-len(data.train) // cfg.batch_size)
    if info.world_size > 1 and len(data.train) // n_batches < info.world_size:
        raise ValueError(
            f"train.batch_size {cfg.batch_size} leaves batches smaller than the {info.world_size} processes; "
            f"use a batch size of at least {2 * info.world_size}"
        )
    experts = Experts(models)
    if anchor is not None and anchor in experts.names:
        raise ValueError(f"the anchor {anchor!r} cannot also be trained")
    objective = StageObjective(experts, data, cfg, seed=seed, anchor=anchor, state_file=state_file, info=info)
    result = train({n: experts.experts[n] for n in experts.names}, objective, cfg, data_seed=seed,
                   on_non_finite="raise", state_file=state_file, fingerprint=fingerprint, metrics_csv=metrics_csv,
                   info=info, progress=progress)
    return TrainResult(models=result.models, epochs=result.epochs, best_epoch=result.best_epoch,
                       best_val_loss=result.best_value, stopped_early=result.stopped_early, metrics=result.metrics)
