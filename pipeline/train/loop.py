"""The co-training loop of an HF/LF expert pair: optimiser, schedule, EMA, early stopping, resume.

:func:`train_pair` receives built experts and prepared data (:class:`TrainData`) and trains them with
the loss of :mod:`pipeline.train.losses` (:func:`pipeline.train.pair.batch_terms`):

- one optimiser (Adam/AdamW) over both experts; each expert's gradient is clipped to
  ``train.grad_clip_norm`` separately; the plateau or cosine schedule steps once per epoch;
  (with ``plateau`` the rate follows the pair's joint validation loss, so the anchor expert of an
  ``anchored``/``anchored_lf`` run equals its independent twin exactly only with ``cosine``/``none``);
- an exponential moving average of each expert's weights (``torch.optim.swa_utils.AveragedModel``)
  is validated every epoch and the best one (lowest validation loss) is returned;
- the validation loss is the full-weight loss (agreement at the un-ramped lambdas) on the validation
  frames, so epochs stay comparable during the ramp; early stopping after
  ``train.early_stopping_patience`` epochs without improvement;
- the agreement weights ramp linearly: epoch e (0-based) uses ``lambda * min(1, (e + 1) / ramp)``;
- the batch order is a function of ``(seed, epoch)`` and the state (weights, EMA, optimiser,
  schedule, best-so-far, RNG, metrics) is saved atomically after every epoch, so a run killed at any
  point and resumed from its state ends with the same weights as an uninterrupted run;
- experts with mixture-of-experts layers add ``train.moe_balance_weight`` times their load-balancing
  loss to the training loss, and each epoch's metrics row gets ``train_moe_balance`` and the expert
  load per element and layer (:mod:`pipeline.train.routing`); dense experts change nothing;
- a non-finite loss stops the run with :class:`NonFiniteLossError` naming the epoch and batch; the
  state of the last completed epoch stays on disk.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pipeline.config import TrainConfig
from pipeline.errors import PipelineInputError
from pipeline.models import AllegroModel
from pipeline.train.data import Sample, batch_order, extra_order, make_batch, shard
from pipeline.train.ddp import DistInfo, all_reduce_sum, barrier, wrap
from pipeline.train.losses import LossWeights, weighted_total
from pipeline.train.metrics import ErrorSums, pair_errors
from pipeline.train.pair import EXPERTS, ExpertPair, batch_terms
from pipeline.train.routing import RoutingStats, balance_loss, layer_names
from pipeline.train.state import capture_rng, load_state, restore_rng, save_state

log = logging.getLogger(__name__)

TERMS = ("hf_energy", "hf_forces", "hf_stress", "lf_energy", "lf_forces", "lf_stress", "agree_energy", "agree_forces")


class NonFiniteLossError(PipelineInputError, RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and batch."""


@dataclass(frozen=True)
class TrainData:
    """Prepared frames (:func:`pipeline.train.data.prepare_samples`): training, validation, extra bulk cells."""

    train: list[Sample]
    validation: list[Sample]
    extra: list[Sample] = field(default_factory=list)


@dataclass
class TrainResult:
    """Outcome of :func:`train_pair`: the best EMA experts and the per-epoch metrics rows."""

    hf: AllegroModel
    lf: AllegroModel
    epochs: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    metrics: list[dict[str, Any]]


def agreement_scale(epoch: int, ramp_epochs: int) -> float:
    """Fraction of the agreement weights used in (0-based) ``epoch``."""
    return 1.0 if ramp_epochs <= 0 else min(1.0, (epoch + 1) / ramp_epochs)


def loss_weights(cfg: TrainConfig, scale: float = 1.0) -> LossWeights:
    return LossWeights(cfg.energy_weight, cfg.force_weight, cfg.stress_weight,
                       scale * cfg.lambda_energy, scale * cfg.lambda_force,
                       huber_energy=cfg.huber_delta_energy_ev_atom, huber_forces=cfg.huber_delta_force_ev_a)


def _optimizer(cfg: TrainConfig, pair: ExpertPair) -> torch.optim.Optimizer:
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in classes:
        raise ValueError(f"train.optimizer must be one of {sorted(classes)}, got {cfg.optimizer!r}")
    groups = [{"params": list(pair.hf.parameters())}, {"params": list(pair.lf.parameters())}]
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
    hf: AllegroModel,
    lf: AllegroModel,
    samples: list[Sample],
    *,
    weights: LossWeights,
    stress: bool = False,
    batch_size: int = 16,
    info: DistInfo = DistInfo(),
) -> tuple[float, dict[str, float], ErrorSums]:
    """Loss, mean loss terms and error sums of the experts on ``samples`` (split over processes).

    Agreement terms are always computed here (weighted by ``weights``); models are put in eval mode.
    """
    hf.eval(), lf.eval()
    local = shard(np.arange(len(samples)), info.rank, info.world_size)
    sums = torch.zeros(len(TERMS), 2, dtype=torch.float64)
    errors = ErrorSums()
    for start in range(0, len(local), batch_size):
        batch = make_batch([samples[i] for i in local[start : start + batch_size]], info.device)
        outputs = {
            name: model(batch.graph(model.r_max), compute_stress=stress, create_graph=False)
            for name, model in (("hf", hf), ("lf", lf))
        }
        for name, (s, c) in batch_terms(outputs, batch, stress=stress, huber=weights.huber).items():
            sums[TERMS.index(name)] += torch.stack([s.detach().to(torch.float64).cpu(), c.cpu()])
        pair_errors(errors, outputs, batch)
    sums = all_reduce_sum(sums, info)
    errors.reduce(lambda t: all_reduce_sum(t, info))
    values = {name: float(s / c) if c > 0 else 0.0 for name, (s, c) in zip(TERMS, sums.tolist())}
    loss = sum(weights.of(name) * value for name, value in values.items())
    return float(loss), values, errors


def _fmt(row: dict[str, Any]) -> str:
    return (
        f"epoch {row['epoch']:4d} | loss train {row['train_loss']:.4g} val {row['val_loss']:.4g} | "
        f"val HF E {row['val_hf_energy_mae_mev_atom']:.2f} meV/atom F {row['val_hf_force_mae_mev_a']:.1f} meV/A | "
        f"LF E {row['val_lf_energy_mae_mev_atom']:.2f} F {row['val_lf_force_mae_mev_a']:.1f} | "
        f"bulk HF-LF E {row['val_bulk_energy_disagreement_mev_atom']:.2f} F {row['val_bulk_force_disagreement_mev_a']:.1f} | "
        f"lr {row['lr']:.2e} | {row['wall_s']:.1f} s{' *' if row['best_epoch'] == row['epoch'] else ''}"
    )


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write the metrics rows as CSV atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)


def train_pair(
    hf: AllegroModel,
    lf: AllegroModel,
    data: TrainData,
    cfg: TrainConfig,
    *,
    seed: int,
    fingerprint: dict[str, Any] | None = None,
    state_file: str | Path | None = None,
    metrics_csv: str | Path | None = None,
    info: DistInfo = DistInfo(),
    progress: bool = False,
) -> TrainResult:
    """Co-train ``hf`` and ``lf`` in place (see the module docstring); resume from ``state_file`` if present.

    Parameters
    ----------
    hf, lf : AllegroModel
        Experts with their scales and shifts set, on ``info.device``.
    data : TrainData
        Prepared training and validation frames (and extra bulk cells).
    cfg : TrainConfig
        The ``train:`` section (for the independent pair, with zero lambdas).
    seed : int
        Data-order seed: batch order of epoch e is a function of ``(seed, e)``.
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
        raise ValueError("train_pair needs training and validation frames")
    n_batches = -(-len(data.train) // cfg.batch_size)
    if info.world_size > 1 and len(data.train) // n_batches < info.world_size:
        raise ValueError(
            f"train.batch_size {cfg.batch_size} leaves batches smaller than the {info.world_size} processes; "
            f"use a batch size of at least {2 * info.world_size}"
        )
    pair = ExpertPair(hf, lf)
    model = wrap(pair, info)
    opt = _optimizer(cfg, pair)
    sched = _scheduler(cfg, opt)
    emas = {name: _ema(getattr(pair, name), cfg.ema_decay) for name in EXPERTS}
    agreeing = cfg.lambda_energy > 0 or cfg.lambda_force > 0
    use_extra = agreeing and bool(data.extra)
    stress = cfg.stress_weight > 0
    fingerprint = dict(fingerprint or {})

    start, best, bad_epochs, rows, finished = 0, {"epoch": 0, "val_loss": math.inf}, 0, [], False
    saved = load_state(state_file, fingerprint, map_location=info.device) if state_file else None
    if saved is not None:
        for name in EXPERTS:
            getattr(pair, name).load_state_dict(saved["models"][name])
            if emas[name] is not None:
                emas[name].load_state_dict(saved["ema"][name])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        restore_rng(saved["rng"])
        start, best, bad_epochs = int(saved["epoch"]), dict(saved["best"]), int(saved["bad_epochs"])
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
        extras = extra_order(len(data.extra), cfg.agreement_extra_per_batch, len(batches), seed, epoch)
        pair.train()
        term_sums = torch.zeros(len(TERMS), dtype=torch.float64)
        train_errors = ErrorSums()
        routing, balance_sum = RoutingStats(), 0.0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.max_epochs}", unit="batch", leave=False,
                   disable=not (progress and info.is_main), file=sys.stderr, mininterval=2.0)
        for index, global_batch in enumerate(bar):
            batch = make_batch([data.train[i] for i in shard(global_batch, info.rank, info.world_size)], info.device)
            local_extra = shard(extras[index], info.rank, info.world_size) if use_extra else []
            extra = make_batch([data.extra[j] for j in local_extra], info.device) if len(local_extra) else None
            outputs = model(batch, extra, stress=stress, create_graph=True)
            terms = batch_terms(outputs, batch, extra, stress=stress, mode=cfg.agreement_mode, agreement=agreeing,
                                huber=weights.huber)
            loss, values = weighted_total(terms, weights, global_counts=lambda c: all_reduce_sum(c, info),
                                          world_size=info.world_size)
            balance = balance_loss({n: outputs[n] for n in EXPERTS})  # None unless an expert has MoE layers
            if balance is not None:
                balance_sum += float(balance.detach())
                if cfg.moe_balance_weight > 0:
                    loss = loss + cfg.moe_balance_weight * balance
                for name in EXPERTS:
                    routing.add(name, outputs[name])
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
                for name in EXPERTS:
                    torch.nn.utils.clip_grad_norm_(getattr(pair, name).parameters(), cfg.grad_clip_norm)
            opt.step()
            for name in EXPERTS:
                if emas[name] is not None:
                    emas[name].update_parameters(getattr(pair, name))
            term_sums += torch.tensor([values.get(name, 0.0) for name in TERMS], dtype=torch.float64)
            pair_errors(train_errors, outputs, batch)
            bar.set_postfix_str(f"loss {float(total):.4g}", refresh=False)
        bar.close()

        term_means = all_reduce_sum(term_sums, info) / len(batches)
        train_errors.reduce(lambda t: all_reduce_sum(t, info))
        evals = {name: (emas[name].module if emas[name] is not None else getattr(pair, name)) for name in EXPERTS}
        val_loss, val_terms, val_errors = evaluate(evals["hf"], evals["lf"], data.validation, weights=full_weights,
                                                   stress=stress, batch_size=4 * cfg.batch_size, info=info)
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(f"non-finite validation loss after epoch {epoch + 1}: {val_terms}")
        lr = opt.param_groups[0]["lr"]
        if cfg.scheduler == "plateau":
            sched.step(val_loss)
        else:
            sched.step()
        epoch += 1
        if val_loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_loss,
                    **{name: copy.deepcopy(evals[name].state_dict()) for name in EXPERTS}}
            bad_epochs = 0
        else:
            bad_epochs += 1
        finished = bad_epochs >= cfg.early_stopping_patience or epoch >= cfg.max_epochs
        wall = time.perf_counter() - t0
        elapsed += wall
        train_loss = float(sum(weights.of(n) * v for n, v in zip(TERMS, term_means.tolist())))
        row = {"epoch": epoch, "lr": lr, "agreement_scale": agreement_scale(epoch - 1, cfg.agreement_ramp_epochs),
               "train_loss": train_loss, **{f"train_{n}": v for n, v in zip(TERMS, term_means.tolist())},
               "val_loss": val_loss, **{f"val_{n}": v for n, v in val_terms.items()},
               **train_errors.summary("train"), **val_errors.summary("val"),
               "best_epoch": best["epoch"], "wall_s": wall, "elapsed_s": elapsed}
        if routing.loads:  # MoE experts only: balance loss and expert load per element and layer
            row["train_moe_balance"] = balance_sum / len(batches)
            row.update(routing.columns({n: (layer_names(getattr(pair, n)), getattr(pair, n).species)
                                        for n in EXPERTS}))
        rows.append(row)
        if info.is_main:
            log.info(_fmt(row))
            if state_file:
                save_state(state_file, {
                    "fingerprint": fingerprint, "epoch": epoch, "finished": finished,
                    "models": {n: getattr(pair, n).state_dict() for n in EXPERTS},
                    "ema": {n: (emas[n].state_dict() if emas[n] is not None else {}) for n in EXPERTS},
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best": best,
                    "bad_epochs": bad_epochs, "rng": capture_rng(), "data_seed": seed, "metrics": rows,
                })
            if metrics_csv:
                write_metrics(metrics_csv, rows)
        barrier(info)

    if info.is_main and metrics_csv and rows:
        write_metrics(metrics_csv, rows)
    for name in EXPERTS:
        model_ = getattr(pair, name)
        model_.load_state_dict(best[name])
        model_.eval()
    return TrainResult(hf=pair.hf, lf=pair.lf, epochs=epoch, best_epoch=int(best["epoch"]),
                       best_val_loss=float(best["val_loss"]), stopped_early=epoch < cfg.max_epochs, metrics=rows)

