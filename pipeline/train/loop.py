"""The training loop of one stage: optimiser, schedule, EMA, smoothed selection, early stopping, resume.

:func:`train_experts` receives built experts (the trainable ones of a stage, :mod:`pipeline.train.pair`),
prepared data (:class:`TrainData`, with the anchor's outputs attached when the stage has one) and the
``train:`` section, and trains with the loss of :func:`pipeline.train.pair.batch_terms`:

- one optimiser (Adam/AdamW) over the trainable experts; each expert's gradient is clipped to
  ``train.grad_clip_norm`` separately; the plateau or cosine schedule steps once per epoch;
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

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pipeline.atomic import write_atomic
from pipeline.config import TrainConfig
from pipeline.errors import PipelineInputError
from pipeline.models import AllegroModel
from pipeline.train.data import Sample, batch_order, extra_order, make_batch, shard
from pipeline.train.ddp import DistInfo, all_reduce_sum, barrier, wrap
from pipeline.train.losses import LossWeights, weighted_total
from pipeline.train.metrics import ErrorSums, pair_errors
from pipeline.train.pair import CELLS, EXPERTS, Experts, batch_terms, cell_outputs, cell_terms, stage_outputs
from pipeline.train.routing import RoutingStats, balance_loss, layer_names
from pipeline.train.selection import Selection
from pipeline.train.state import capture_rng, load_state, restore_rng, save_state

log = logging.getLogger(__name__)

TERMS = ("hf_energy", "hf_forces", "hf_stress", "lf_energy", "lf_forces", "lf_stress", "agree_energy", "agree_forces",
         "mixture_forces")


class NonFiniteLossError(PipelineInputError, RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and batch."""


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


def _optimizer(cfg: TrainConfig, experts: Experts) -> torch.optim.Optimizer:
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in classes:
        raise ValueError(f"train.optimizer must be one of {sorted(classes)}, got {cfg.optimizer!r}")
    groups = [{"params": list(experts.experts[name].parameters())} for name in experts.names]
    return classes[cfg.optimizer](groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    builders: dict[str, Callable[[], Any]] = {
        "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_learning_rate),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=cfg.max_epochs, eta_min=cfg.min_learning_rate),
        "none": lambda: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0),
    }
    if cfg.scheduler not in builders:
        raise ValueError(f"train.scheduler must be one of {sorted(builders)}, got {cfg.scheduler!r}")
    return builders[cfg.scheduler]()


def _ema(model: AllegroModel, decay: float) -> AveragedModel | None:
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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
    for name in ("hf", "lf"):
        if math.isfinite(row.get(f"val_{name}_force_mae_mev_a", math.nan)):
            parts.append(f"val {name.upper()} E {row[f'val_{name}_energy_mae_mev_atom']:.2f} meV/atom "
                         f"F {row[f'val_{name}_force_mae_mev_a']:.1f} meV/A")
    if math.isfinite(row.get("val_bulk_force_disagreement_mev_a", math.nan)):
        parts.append(f"bulk HF-LF E {row['val_bulk_energy_disagreement_mev_atom']:.2f} "
                     f"F {row['val_bulk_force_disagreement_mev_a']:.1f}")
    parts.append(f"lr {row['lr']:.2e} | {row['wall_s']:.1f} s{' *' if row['best_epoch'] == row['epoch'] else ''}")
    return " | ".join(parts)


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write the metrics rows as CSV atomically."""
    import pandas as pd

    table = pd.DataFrame(rows)
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))


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
    names = experts.names
    if anchor is not None and anchor in names:
        raise ValueError(f"the anchor {anchor!r} cannot also be trained")
    model = wrap(experts, info)
    opt = _optimizer(cfg, experts)
    sched = _scheduler(cfg, opt)
    emas = {name: _ema(experts.experts[name], cfg.ema_decay) for name in names}
    agreeing = agrees(cfg) and set(names) | ({anchor} if anchor else set()) == set(EXPERTS)
    use_cells = agreeing and bool(data.cells)
    stress = cfg.stress_weight > 0
    fingerprint = dict(fingerprint or {})

    start, rows, finished = 0, [], False
    selection = Selection(window=cfg.selection_window, patience=cfg.early_stopping_patience)
    best: dict[str, Any] = {}
    saved = load_state(state_file, fingerprint, map_location=info.device) if state_file else None
    if saved is not None:
        for name in names:
            experts.experts[name].load_state_dict(saved["models"][name])
            if emas[name] is not None:
                emas[name].load_state_dict(saved["ema"][name])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        restore_rng(saved["rng"])
        start, best = int(saved["epoch"]), dict(saved["best"])
        selection = Selection.from_state(saved["selection"])
        rows, finished = list(saved["metrics"]), bool(saved["finished"])
        if info.is_main:
            log.info("resumed from %s after epoch %d%s", state_file, start, " (already finished)" if finished else "")

    full_weights = loss_weights(cfg)
    elapsed = float(rows[-1]["elapsed_s"]) if rows else 0.0
    epoch = start
    while not finished and epoch < cfg.max_epochs:
        t0 = time.perf_counter()
        weights = loss_weights(cfg, agreement_scale(epoch, cfg.agreement_ramp_epochs))
        batches = batch_order(len(data.train), cfg.batch_size, seed, epoch)
        cell_order = extra_order(len(data.cells), cfg.cells.per_batch, len(batches), seed, epoch)
        experts.train()
        term_sums = torch.zeros(len(TERMS), dtype=torch.float64)
        train_errors = ErrorSums()
        routing, balance_sum = RoutingStats(), 0.0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.max_epochs}", unit="batch", leave=False,
                   disable=not (progress and info.is_main), file=sys.stderr, mininterval=2.0)
        for index, global_batch in enumerate(bar):
            batch = make_batch([data.train[i] for i in shard(global_batch, info.rank, info.world_size)], info.device)
            local_cells = shard(cell_order[index], info.rank, info.world_size) if use_cells else []
            cells = make_batch([data.cells[j] for j in local_cells], info.device) if len(local_cells) else None
            live = model(batch, cells, stress=stress, create_graph=True)
            outputs = stage_outputs(live, batch, cells, anchor)
            terms = batch_terms(outputs, batch, cells, trainable=names, agreement=agreeing, stress=stress,
                                huber=weights.huber)
            loss, values = weighted_total(terms, weights, global_counts=lambda c: all_reduce_sum(c, info),
                                          world_size=info.world_size)
            balance = balance_loss({n: live[n] for n in names})  # None unless an expert has MoE layers
            if balance is not None:
                balance_sum += float(balance.detach())
                if cfg.moe_balance_weight > 0:
                    loss = loss + cfg.moe_balance_weight * balance
                for name in names:
                    routing.add(name, live[name])
            total = all_reduce_sum(loss.detach().reshape(1).to(torch.float64), info) / info.world_size
            if not torch.isfinite(total).all():
                raise NonFiniteLossError(
                    f"non-finite training loss at epoch {epoch + 1}, batch {index + 1} of {len(batches)} "
                    f"(local terms: {values}); stopped. The state of the last completed epoch ({epoch}) "
                    f"is kept{f' in {state_file}' if state_file else ''}; lower train.learning_rate or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm > 0:
                for name in names:
                    torch.nn.utils.clip_grad_norm_(experts.experts[name].parameters(), cfg.grad_clip_norm)
            opt.step()
            for name in names:
                if emas[name] is not None:
                    emas[name].update_parameters(experts.experts[name])
            term_sums += torch.tensor([values.get(name, 0.0) for name in TERMS], dtype=torch.float64)
            pair_errors(train_errors, outputs, batch)
            bar.set_postfix_str(f"loss {float(total):.4g}", refresh=False)
        bar.close()

        term_means = all_reduce_sum(term_sums, info) / len(batches)
        train_errors.reduce(lambda t: all_reduce_sum(t, info))
        evals = {name: (emas[name].module if emas[name] is not None else experts.experts[name]) for name in names}
        val_loss, val_terms, val_errors = evaluate(
            evals, data.validation, weights=full_weights, cells=data.validation_cells if use_cells else (),
            anchor=anchor, agreement=agreeing, stress=stress, batch_size=4 * cfg.batch_size, info=info)
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(f"non-finite validation loss after epoch {epoch + 1}: {val_terms}")
        lr = opt.param_groups[0]["lr"]
        if cfg.scheduler == "plateau":
            sched.step(val_loss)
        else:
            sched.step()
        epoch += 1
        if selection.update(val_loss):
            best = {name: copy.deepcopy(evals[name].state_dict()) for name in names}
        finished = selection.stop() or epoch >= cfg.max_epochs
        wall = time.perf_counter() - t0
        elapsed += wall
        train_loss = float(sum(weights.of(n) * v for n, v in zip(TERMS, term_means.tolist())))
        row = {"epoch": epoch, "lr": lr, "agreement_scale": agreement_scale(epoch - 1, cfg.agreement_ramp_epochs),
               "train_loss": train_loss, **{f"train_{n}": v for n, v in zip(TERMS, term_means.tolist())},
               "val_loss": val_loss, "val_loss_smoothed": selection.smoothed,
               **{f"val_{n}": v for n, v in val_terms.items()},
               **train_errors.summary("train"), **val_errors.summary("val"),
               "best_epoch": selection.best_epoch, "wall_s": wall, "elapsed_s": elapsed}
        if routing.loads:  # MoE experts only: balance loss and expert load per element and layer
            row["train_moe_balance"] = balance_sum / len(batches)
            row.update(routing.columns({n: (layer_names(experts.experts[n]), experts.experts[n].species)
                                        for n in names}))
        rows.append(row)
        if info.is_main:
            log.info(_fmt(row))
            if state_file:
                save_state(state_file, {
                    "fingerprint": fingerprint, "epoch": epoch, "finished": finished,
                    "models": {n: experts.experts[n].state_dict() for n in names},
                    "ema": {n: (emas[n].state_dict() if emas[n] is not None else {}) for n in names},
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best": best,
                    "selection": selection.state_dict(), "rng": capture_rng(), "data_seed": seed, "metrics": rows,
                })
            if metrics_csv:
                write_metrics(metrics_csv, rows)
        barrier(info)

    if info.is_main and metrics_csv and rows:
        write_metrics(metrics_csv, rows)
    for name in names:
        experts.experts[name].load_state_dict(best[name])
        experts.experts[name].eval()
    return TrainResult(models={n: experts.experts[n] for n in names}, epochs=epoch, best_epoch=selection.best_epoch,
                       best_val_loss=selection.best_value, stopped_early=epoch < cfg.max_epochs, metrics=rows)
