"""Training of one model on energies and forces (the MoE routing study trains single models, not pairs).

:func:`train_single` runs the training core (:func:`pipeline.train.core.train`: optimiser, schedule,
gradient clipping, an EMA of the weights validated every epoch, selection of the best validated weights,
training state) with the :class:`SingleObjective`: the data loss of
:func:`pipeline.train.losses.data_terms` (mean squared energy-per-atom and force-component errors, every
frame and atom) plus ``train.moe_balance_weight`` times the MoE load-balancing loss, validated on the
squared MAEs of energies and forces, with per-epoch metrics holding the expert load per element and layer
(:mod:`pipeline.train.routing`). Instead of raising on a non-finite loss it stops and reports it, because
training stability is one of the study's results; with ``check_gradients`` it also counts, per epoch, the
optimiser steps with a non-finite gradient (column ``nonfinite_grads``; :mod:`pipeline.train.stability`).

The settings are a :class:`~pipeline.config.TrainConfig`; of its loss fields only ``energy_weight``,
``force_weight`` and ``moe_balance_weight`` are used (no Huber, stress or agreement terms). The study's
settings are :func:`pipeline.train.moe_study.study_train_config`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.data import keys as K
from pipeline.models import AllegroModel
from pipeline.train.core import EpochEnd, Objective, Step, Validation
from pipeline.train.core import train as train_core
from pipeline.train.data import Sample, batch_order, make_batch
from pipeline.train.losses import data_terms
from pipeline.train.routing import RoutingStats, balance_loss, layer_names
from pipeline.train.stability import gradients_finite

log = logging.getLogger(__name__)


@dataclass
class SingleTrainResult:
    """Best-EMA model, metrics rows, and a stability status (``ok``, ``non-finite ...``, ``diverged ...``)."""

    model: AllegroModel
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    status: str = "ok"


@dataclass
class ErrorTotals:
    """Energy (eV/atom) and force-component (eV/A) absolute errors, and the routing loads."""

    energy_abs: float = 0.0
    n_frames: int = 0
    force_abs: float = 0.0
    n_components: int = 0
    routing: RoutingStats = field(default_factory=RoutingStats)

    @property
    def energy_mae_mev_atom(self) -> float:
        return 1000.0 * self.energy_abs / max(self.n_frames, 1)

    @property
    def force_mae_mev_a(self) -> float:
        return 1000.0 * self.force_abs / max(self.n_components, 1)


def evaluate_errors(model: AllegroModel, samples: list[Sample], *, batch_size: int = 16) -> ErrorTotals:
    """MAE of energies per atom and force components, and routing loads, of ``model`` on ``samples``."""
    model.eval()
    totals = ErrorTotals()
    for start in range(0, len(samples), batch_size):
        graph = make_batch(samples[start : start + batch_size]).graph(model.r_max)
        out = model(graph, create_graph=False)
        n = graph[K.NUM_ATOMS].to(torch.float64)
        e_err = (out[K.ENERGY].detach().double() - graph[K.ENERGY].double()) / n
        f_err = out[K.FORCES].detach().double() - graph[K.FORCES].double()
        totals.energy_abs += float(e_err.abs().sum())
        totals.n_frames += int(e_err.numel())
        totals.force_abs += float(f_err.abs().sum())
        totals.n_components += int(f_err.numel())
        totals.routing.add("model", out)
    return totals


def validation_loss(cfg: TrainConfig, energy_mae_mev_atom: float, force_mae_mev_a: float) -> float:
    """The selection criterion: weighted squared MAEs of energy per atom (eV/atom) and force components (eV/A)."""
    return cfg.energy_weight * (energy_mae_mev_atom / 1000) ** 2 + cfg.force_weight * (force_mae_mev_a / 1000) ** 2


class SingleObjective(Objective):
    """Batches, loss, validation and metrics row of one model (see the module docstring) for the core."""

    def __init__(self, model: AllegroModel, train: list[Sample], validation: list[Sample], cfg: TrainConfig, *,
                 seed: int, check_gradients: bool = False) -> None:
        self.model, self.train, self.validation, self.cfg, self.seed = model, train, validation, cfg, seed
        self.layers = (layer_names(model), model.species)
        self.check_gradients = check_gradients

    def batches(self, epoch: int) -> list[np.ndarray]:
        self.routing, self.losses, self.balances = RoutingStats(), [], []
        self.nonfinite_grads = 0
        return batch_order(len(self.train), self.cfg.batch_size, self.seed, epoch)

    def _record(self, loss: torch.Tensor) -> None:
        """After the optimiser step: the batch loss and, with ``check_gradients``, whether the gradient was finite."""
        self.losses.append(float(loss.detach()))
        if self.check_gradients:
            self.nonfinite_grads += int(not gradients_finite(self.model))

    def loss(self, epoch: int, index: int, batch: np.ndarray) -> Step:
        cfg, model = self.cfg, self.model
        frames = make_batch([self.train[i] for i in batch])
        graph = frames.graph(model.r_max)
        out = model(graph, create_graph=True)
        all_frames, all_atoms = torch.ones_like(frames.lf_energy), torch.ones_like(frames.bulk)
        terms = data_terms(out, graph, atom_mask=all_atoms, frame_mask=all_frames)
        loss = cfg.energy_weight * terms["energy"][0] / terms["energy"][1]
        loss = loss + cfg.force_weight * terms["forces"][0] / terms["forces"][1]
        balance = balance_loss({"model": out})
        if balance is not None:
            self.balances.append(float(balance.detach()))
            self.routing.add("model", out)
            loss = loss + cfg.moe_balance_weight * balance
        return Step(loss=loss, record=lambda: self._record(loss))

    def validate(self, epoch: int, models: Mapping[str, torch.nn.Module]) -> Validation:
        val = evaluate_errors(models["model"], self.validation)
        return Validation(loss=validation_loss(self.cfg, val.energy_mae_mev_atom, val.force_mae_mev_a), detail=val)

    def row(self, end: EpochEnd) -> dict[str, Any]:
        val = end.validation.detail
        row = {"epoch": end.epoch, "train_loss": float(np.mean(self.losses)),
               "val_energy_mae_mev_atom": val.energy_mae_mev_atom, "val_force_mae_mev_a": val.force_mae_mev_a,
               "lr": end.lr_after, "wall_s": end.wall_s}
        if self.check_gradients:
            row["nonfinite_grads"] = self.nonfinite_grads
        if self.balances:
            row["train_moe_balance"] = float(np.mean(self.balances))
            row.update(self.routing.columns({"model": self.layers}))
        return row

    def log_row(self, row: dict[str, Any]) -> None:
        log.info("epoch %d: loss %.4g, val E %.2f meV/atom, F %.1f meV/A", row["epoch"], row["train_loss"],
                 row["val_energy_mae_mev_atom"], row["val_force_mae_mev_a"])

    def train_non_finite(self, epoch: int, index: int, n_batches: int, step: Step) -> str:
        return f"non-finite loss at epoch {epoch + 1}"

    def validation_non_finite(self, epoch: int, validation: Validation) -> str:
        return f"non-finite validation error at epoch {epoch + 1}"


def train_single(
    model: AllegroModel,
    train: list[Sample],
    validation: list[Sample],
    cfg: TrainConfig,
    *,
    seed: int,
    state_file: str | Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    metrics_csv: str | Path | None = None,
    check_gradients: bool = False,
) -> SingleTrainResult:
    """Train ``model`` (in place) and return it with the best EMA weights by validation loss.

    ``cfg`` sets the optimiser, schedule, EMA, clipping, selection and early stopping
    (:func:`pipeline.train.core.train`), the epochs, batch size and loss weights; ``seed`` the batch
    order. With ``state_file`` the run is saved after every epoch and resumed from it (``fingerprint``:
    what the state must match). With ``metrics_csv`` the metrics rows (the learning curve) are rewritten after
    every epoch. ``check_gradients`` adds the per-epoch count of steps with a non-finite gradient to the rows.
    A non-finite loss stops the run (``status`` says where); a final validation loss above 10 times the best
    gives ``status`` ``diverged ...``.
    """
    objective = SingleObjective(model, train, validation, cfg, seed=seed, check_gradients=check_gradients)
    core = train_core({"model": model}, objective, cfg, data_seed=seed, on_non_finite="stop", state_file=state_file,
                      fingerprint=fingerprint, metrics_csv=metrics_csv)
    result = SingleTrainResult(model=model, metrics=core.metrics, best_epoch=core.best_epoch, status=core.status)
    best_loss = core.best_value
    if result.status == "ok" and len(result.metrics) > 3 and best_loss < math.inf:
        last = result.metrics[-1]
        final = validation_loss(cfg, last["val_energy_mae_mev_atom"], last["val_force_mae_mev_a"])
        if final > 10 * best_loss:
            result.status = f"diverged (final validation loss {final / best_loss:.0f}x the best)"
    return result
