"""Training of one model on energies and forces (the MoE routing study trains single models, not pairs).

The same ingredients as :mod:`pipeline.train.loop` for one model: Adam, cosine schedule, gradient
clipping, an EMA of the weights validated every epoch (the best one is kept), the data loss of
:func:`pipeline.train.losses.data_terms` plus ``balance_weight`` times the MoE load-balancing loss, and
per-epoch metrics with the expert load per element and layer (:mod:`pipeline.train.routing`). Instead
of raising on a non-finite loss it stops and reports it, because training stability is one of the
study's results.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.data import keys as K
from pipeline.models import AllegroModel
from pipeline.train.data import Sample, batch_order, make_batch
from pipeline.train.losses import data_terms
from pipeline.train.routing import RoutingStats, balance_loss, layer_names


@dataclass(frozen=True)
class SingleTrainSettings:
    """Budget and loss weights of one run (energies eV/atom, forces eV/A)."""

    max_epochs: int = 60
    batch_size: int = 8
    learning_rate: float = 3e-3
    min_learning_rate: float = 1e-5
    energy_weight: float = 10.0
    force_weight: float = 1.0
    balance_weight: float = 0.01
    grad_clip_norm: float = 10.0
    ema_decay: float = 0.99


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


def train_single(
    model: AllegroModel, train: list[Sample], validation: list[Sample], settings: SingleTrainSettings, *, seed: int
) -> SingleTrainResult:
    """Train ``model`` (in place) and return the best EMA weights by validation loss."""
    s = settings
    opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.max_epochs, eta_min=s.min_learning_rate)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(s.ema_decay), use_buffers=True)
    layers = (layer_names(model), model.species)
    result = SingleTrainResult(model=model)
    best_loss, best_state = math.inf, copy.deepcopy(model.state_dict())
    for epoch in range(s.max_epochs):
        t0 = time.perf_counter()
        model.train()
        routing, losses, balances = RoutingStats(), [], []
        for batch_index in batch_order(len(train), s.batch_size, seed, epoch):
            batch = make_batch([train[i] for i in batch_index])
            graph = batch.graph(model.r_max)
            out = model(graph, create_graph=True)
            all_frames, all_atoms = torch.ones_like(batch.lf_energy), torch.ones_like(batch.bulk)
            terms = data_terms(out, graph, atom_mask=all_atoms, frame_mask=all_frames)
            loss = s.energy_weight * terms["energy"][0] / terms["energy"][1]
            loss = loss + s.force_weight * terms["forces"][0] / terms["forces"][1]
            balance = balance_loss({"model": out})
            if balance is not None:
                balances.append(float(balance.detach()))
                routing.add("model", out)
                loss = loss + s.balance_weight * balance
            if not torch.isfinite(loss):
                result.status = f"non-finite loss at epoch {epoch + 1}"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip_norm)
            opt.step()
            ema.update_parameters(model)
            losses.append(float(loss.detach()))
        if result.status != "ok":
            break
        sched.step()
        val = evaluate_errors(ema.module, validation)
        val_loss = s.energy_weight * (val.energy_mae_mev_atom / 1000) ** 2 + s.force_weight * (val.force_mae_mev_a / 1000) ** 2
        if not math.isfinite(val_loss):
            result.status = f"non-finite validation error at epoch {epoch + 1}"
            break
        if val_loss < best_loss:
            best_loss, best_state, result.best_epoch = val_loss, copy.deepcopy(ema.module.state_dict()), epoch + 1
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_energy_mae_mev_atom": val.energy_mae_mev_atom,
               "val_force_mae_mev_a": val.force_mae_mev_a, "lr": opt.param_groups[0]["lr"],
               "wall_s": time.perf_counter() - t0}
        if balances:
            row["train_moe_balance"] = float(np.mean(balances))
            row.update(routing.columns({"model": layers}))
        result.metrics.append(row)
        logging.getLogger(__name__).info(
            "epoch %d: loss %.4g, val E %.2f meV/atom, F %.1f meV/A", epoch + 1, row["train_loss"],
            val.energy_mae_mev_atom, val.force_mae_mev_a)
    if result.status == "ok" and len(result.metrics) > 3 and best_loss < math.inf:
        last = result.metrics[-1]
        final = s.energy_weight * (last["val_energy_mae_mev_atom"] / 1000) ** 2 + s.force_weight * (last["val_force_mae_mev_a"] / 1000) ** 2
        if final > 10 * best_loss:
            result.status = f"diverged (final validation loss {final / best_loss:.0f}x the best)"
    model.load_state_dict(best_state)
    model.eval()
    return result
