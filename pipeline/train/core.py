"""The one training core: epochs, optimisation steps, EMA, validation, selection, schedule, early stopping,
metrics rows, training state and resume, for every training of the package.

A caller supplies its named trainable models, an :class:`Objective` (the batches of an epoch, the loss of
one batch, the validation of given weights, the metrics row and log line of an epoch) and the ``train:``
section (:class:`~pipeline.config.TrainConfig`); :func:`train` does the rest. Callers: the stages of
:mod:`pipeline.train.loop` (HF, LF against an anchor, the symmetric pair) and the single models of
:mod:`pipeline.train.single` (the MoE routing study).

What :func:`train` owns:

- one optimiser (``train.optimizer``: Adam/AdamW, one parameter group per model, ``learning_rate``,
  ``weight_decay``) and the schedule (``plateau`` on the validation loss, ``cosine`` over ``max_epochs``
  down to ``min_learning_rate``, or ``none``), stepped once per epoch;
- every step: the objective's loss; a check that it is finite (summed over processes); ``zero_grad``,
  ``backward``, each model's gradient clipped to ``grad_clip_norm`` separately (0: no clipping), the
  optimiser step, the update of each model's exponential moving average (``ema_decay``; 0: none) and
  then the objective's bookkeeping of the step (:attr:`Step.record`);
- every epoch: the objective's validation of the EMA weights; the selected weights are those of the
  epoch with the lowest trailing mean of the validation loss over ``selection_window`` epochs, and
  training stops after ``early_stopping_patience`` epochs without a lower mean
  (:class:`~pipeline.train.selection.Selection`); the objective's metrics row; the training state
  (:mod:`pipeline.train.state`, written atomically: weights, EMA, optimiser, schedule, selection, RNG,
  metrics) and the metrics CSV, by rank 0;
- resume from a training state: the run goes on after the last completed epoch and, since the batches
  of an epoch are a function of ``(seed, epoch)``, ends with the weights of an uninterrupted run;
- a non-finite training or validation loss, handled per the caller's ``on_non_finite`` policy:
  ``"raise"`` raises :class:`NonFiniteLossError` with the objective's message (the state of the last
  completed epoch stays on disk), ``"stop"`` ends the training there and returns the message as the
  result's ``status`` (with the weights selected so far);
- at the end: the selected weights loaded into the live models, in eval mode.
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

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pipeline.atomic import write_atomic
from pipeline.config import TrainConfig
from pipeline.errors import PipelineInputError
from pipeline.train.ddp import DistInfo, all_reduce_sum, barrier
from pipeline.train.selection import Selection
from pipeline.train.state import capture_rng, load_state, restore_rng, save_state

log = logging.getLogger(__name__)

#: Policies for a non-finite loss (see the module docstring).
NON_FINITE_POLICIES = ("raise", "stop")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("plateau", "cosine", "none")


class NonFiniteLossError(PipelineInputError, RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and batch."""


@dataclass
class Step:
    """The loss of one batch, as an :class:`Objective` returns it.

    Attributes
    ----------
    loss : torch.Tensor
        0-d loss of this process's part of the batch; its gradient is the step's.
    record : callable, optional
        Bookkeeping of the batch, called after the optimiser step and the EMA update.
    detail : any
        What the objective's non-finite message may show (e.g. the values of the loss terms).
    """

    loss: torch.Tensor
    record: Callable[[], None] | None = None
    detail: Any = None


@dataclass
class Validation:
    """The validation loss of one epoch (the selection criterion) and the objective's own results."""

    loss: float
    detail: Any = None


@dataclass(frozen=True)
class EpochEnd:
    """What :meth:`Objective.row` gets after an epoch.

    ``epoch`` is the number of epochs completed (the 1-based number of this one); ``lr`` the learning
    rate of its steps and ``lr_after`` the rate after the schedule's step; ``selection`` the selection
    state after this epoch (``best_epoch``, ``smoothed``); ``wall_s`` this epoch's time and
    ``elapsed_s`` the time of all epochs so far (over resumes).
    """

    epoch: int
    lr: float
    lr_after: float
    validation: Validation
    selection: Selection
    wall_s: float
    elapsed_s: float


class Objective:
    """What a training supplies to :func:`train`: override :meth:`batches`, :meth:`loss`, :meth:`validate`
    and :meth:`row`; :meth:`log_row` and the non-finite messages have defaults."""

    def batches(self, epoch: int) -> Sequence[Any]:
        """The batches of 0-based ``epoch``, one optimisation step each (called first in every epoch: reset
        the epoch's sums here)."""
        raise NotImplementedError

    def loss(self, epoch: int, index: int, batch: Any) -> Step:
        """The loss of batch ``index`` of ``epoch`` with the live models in training mode."""
        raise NotImplementedError

    def validate(self, epoch: int, models: Mapping[str, torch.nn.Module]) -> Validation:
        """The validation loss of ``models`` (the EMA weights, or the live ones without an EMA) after ``epoch``."""
        raise NotImplementedError

    def row(self, end: EpochEnd) -> dict[str, Any]:
        """The metrics row of the epoch that just ended."""
        raise NotImplementedError

    def log_row(self, row: dict[str, Any]) -> None:
        """Log one metrics row (rank 0 only)."""
        log.info("epoch %d", row.get("epoch", 0))

    def train_non_finite(self, epoch: int, index: int, n_batches: int, step: Step) -> str:
        """Message for a non-finite training loss at batch ``index`` of 0-based ``epoch``."""
        return f"non-finite training loss at epoch {epoch + 1}, batch {index + 1} of {n_batches}"

    def validation_non_finite(self, epoch: int, validation: Validation) -> str:
        """Message for a non-finite validation loss after 0-based ``epoch``."""
        return f"non-finite validation loss after epoch {epoch + 1}"


@dataclass
class CoreResult:
    """Outcome of :func:`train`: the live models with the selected weights loaded, and the run's record.

    ``status`` is ``"ok"``, or the non-finite message when the ``stop`` policy ended the run.
    """

    models: dict[str, torch.nn.Module]
    epochs: int
    best_epoch: int
    best_value: float
    stopped_early: bool
    metrics: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"


def build_optimizer(cfg: TrainConfig, models: Mapping[str, torch.nn.Module]) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``models``, one parameter group per model (in the mapping's order)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {sorted(OPTIMIZERS)}, got {cfg.optimizer!r}")
    groups = [{"params": list(model.parameters())} for model in models.values()]
    return OPTIMIZERS[cfg.optimizer](groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    """The learning-rate schedule of ``train.scheduler``, stepped once per epoch."""
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


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """Exponential moving average of ``model``'s weights and buffers (``None`` when ``decay`` <= 0)."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write the metrics rows as CSV atomically."""
    import pandas as pd

    table = pd.DataFrame(rows)
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))


def _non_finite(policy: str, message: str) -> str:
    if policy == "raise":
        raise NonFiniteLossError(message)
    return message


def train(
    models: Mapping[str, torch.nn.Module],
    objective: Objective,
    cfg: TrainConfig,
    *,
    data_seed: int,
    on_non_finite: str = "raise",
    state_file: str | Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    metrics_csv: str | Path | None = None,
    info: DistInfo = DistInfo(),
    progress: bool = False,
) -> CoreResult:
    """Train ``models`` in place with ``objective`` (see the module docstring).

    Parameters
    ----------
    models : mapping
        The trainable models ``{name: module}`` on ``info.device``; the order sets the optimiser's
        parameter groups and the order of clipping and EMA updates.
    objective : Objective
        Batches, loss, validation and metrics of the caller.
    cfg : TrainConfig
        Read here: ``optimizer``, ``learning_rate``, ``weight_decay``, ``scheduler``, ``plateau_factor``,
        ``plateau_patience``, ``min_learning_rate``, ``max_epochs``, ``grad_clip_norm``, ``ema_decay``,
        ``selection_window``, ``early_stopping_patience``.
    data_seed : int
        The seed of the batch order (recorded in the training state).
    on_non_finite : {"raise", "stop"}
        What a non-finite training or validation loss does.
    state_file : path, optional
        Training state: resumed from when it exists, written after every epoch (rank 0).
    fingerprint : dict, optional
        What a saved state must match to be resumed (:func:`~pipeline.train.state.load_state`).
    metrics_csv : path, optional
        Per-epoch metrics CSV, rewritten after every epoch (rank 0).
    info : DistInfo
        Process rank and device (DDP).
    progress : bool
        Show a tqdm bar per epoch (rank 0).
    """
    if on_non_finite not in NON_FINITE_POLICIES:
        raise ValueError(f"on_non_finite must be one of {NON_FINITE_POLICIES}, got {on_non_finite!r}")
    names = tuple(models)
    opt = build_optimizer(cfg, models)
    sched = build_scheduler(cfg, opt)
    emas = {name: build_ema(models[name], cfg.ema_decay) for name in names}
    fingerprint = dict(fingerprint or {})

    start, rows, finished, status = 0, [], False, "ok"
    selection = Selection(window=cfg.selection_window, patience=cfg.early_stopping_patience)
    best: dict[str, Any] = {name: copy.deepcopy(models[name].state_dict()) for name in names}
    saved = load_state(state_file, fingerprint, map_location=info.device) if state_file else None
    if saved is not None:
        for name in names:
            models[name].load_state_dict(saved["models"][name])
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

    elapsed = float(rows[-1]["elapsed_s"]) if rows and "elapsed_s" in rows[-1] else 0.0
    epoch = start
    while not finished and epoch < cfg.max_epochs:
        t0 = time.perf_counter()
        batches = objective.batches(epoch)
        for name in names:
            models[name].train()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.max_epochs}", unit="batch", leave=False,
                   disable=not (progress and info.is_main), file=sys.stderr, mininterval=2.0)
        for index, batch in enumerate(bar):
            step = objective.loss(epoch, index, batch)
            total = all_reduce_sum(step.loss.detach().reshape(1).to(torch.float64), info) / info.world_size
            if not torch.isfinite(total).all():
                status = _non_finite(on_non_finite, objective.train_non_finite(epoch, index, len(batches), step))
                break
            opt.zero_grad(set_to_none=True)
            step.loss.backward()
            if cfg.grad_clip_norm > 0:
                for name in names:
                    torch.nn.utils.clip_grad_norm_(models[name].parameters(), cfg.grad_clip_norm)
            opt.step()
            for name in names:
                if emas[name] is not None:
                    emas[name].update_parameters(models[name])
            if step.record is not None:
                step.record()
            bar.set_postfix_str(f"loss {float(total):.4g}", refresh=False)
        bar.close()
        if status != "ok":
            break

        evals = {name: (emas[name].module if emas[name] is not None else models[name]) for name in names}
        validation = objective.validate(epoch, evals)
        if not math.isfinite(validation.loss):
            status = _non_finite(on_non_finite, objective.validation_non_finite(epoch, validation))
            break
        lr = opt.param_groups[0]["lr"]
        if cfg.scheduler == "plateau":
            sched.step(validation.loss)
        else:
            sched.step()
        epoch += 1
        if selection.update(validation.loss):
            best = {name: copy.deepcopy(evals[name].state_dict()) for name in names}
        finished = selection.stop() or epoch >= cfg.max_epochs
        wall = time.perf_counter() - t0
        elapsed += wall
        row = objective.row(EpochEnd(epoch=epoch, lr=lr, lr_after=opt.param_groups[0]["lr"], validation=validation,
                                     selection=selection, wall_s=wall, elapsed_s=elapsed))
        rows.append(row)
        if info.is_main:
            objective.log_row(row)
            if state_file:
                save_state(state_file, {
                    "fingerprint": fingerprint, "epoch": epoch, "finished": finished,
                    "models": {n: models[n].state_dict() for n in names},
                    "ema": {n: (emas[n].state_dict() if emas[n] is not None else {}) for n in names},
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best": best,
                    "selection": selection.state_dict(), "rng": capture_rng(), "data_seed": data_seed,
                    "metrics": rows,
                })
            if metrics_csv:
                write_metrics(metrics_csv, rows)
        barrier(info)

    if info.is_main and metrics_csv and rows:
        write_metrics(metrics_csv, rows)
    for name in names:
        models[name].load_state_dict(best[name])
        models[name].eval()
    return CoreResult(models=dict(models), epochs=epoch, best_epoch=selection.best_epoch,
                      best_value=selection.best_value, stopped_early=epoch < cfg.max_epochs, metrics=rows,
                      status=status)
