"""The training core on a toy regression: it learns, keeps the best-validation weights (trailing mean),
stops after the patience, resumes bit-identically from its state, and handles a non-finite loss per the
caller's policy (raise or stop with a status)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.train.core import (
    EpochEnd,
    NonFiniteLossError,
    Objective,
    Step,
    Validation,
    train,
)
from pipeline.train.data import batch_order
from pipeline.train.state import TrainingStateError

N_TRAIN, N_VAL, BATCH = 48, 16, 8


class Interrupted(Exception):
    """Stands in for a killed process."""


class Toy(torch.nn.Module):
    """A linear model with dropout (so that training draws random numbers)."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1, dtype=torch.float64)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(x)).squeeze(-1)


def _toy(seed: int = 0, dropout: float = 0.2) -> Toy:
    torch.manual_seed(seed)
    return Toy(dropout)


def _data() -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.normal(size=(N_TRAIN + N_VAL, 3)))
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 + 0.05 * torch.from_numpy(rng.normal(size=len(x)))
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


class ToyObjective(Objective):
    """Mean squared error; optionally scripted validation losses, a NaN at (epoch, batch), an interruption."""

    def __init__(self, model: Toy, *, seed: int = 0, scripted: list[float] | None = None,
                 nan_at: tuple[int, int] | None = None, nan_validation_at: int | None = None,
                 interrupt_at: int | None = None) -> None:
        self.model, self.seed, self.scripted = model, seed, scripted
        self.nan_at, self.nan_validation_at, self.interrupt_at = nan_at, nan_validation_at, interrupt_at
        self.x, self.y, self.xv, self.yv = _data()
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def batches(self, epoch: int) -> list[np.ndarray]:
        if epoch == self.interrupt_at:
            raise Interrupted(epoch)
        self.losses: list[float] = []
        return batch_order(N_TRAIN, BATCH, self.seed, epoch)

    def loss(self, epoch: int, index: int, batch: np.ndarray) -> Step:
        loss = ((self.model(self.x[batch]) - self.y[batch]) ** 2).mean()
        if (epoch, index) == self.nan_at:
            loss = loss * math.nan
        return Step(loss=loss, record=lambda: self.losses.append(float(loss.detach())), detail="toy terms")

    def validate(self, epoch: int, models) -> Validation:
        model = models["toy"]
        model.eval()
        with torch.no_grad():
            loss = float(((model(self.xv) - self.yv) ** 2).mean())
        self.snapshots.append(copy.deepcopy(model.state_dict()))
        if self.scripted is not None:
            loss = self.scripted[epoch]
        if epoch == self.nan_validation_at:
            loss = math.inf
        return Validation(loss=loss)

    def row(self, end: EpochEnd) -> dict:
        return {"epoch": end.epoch, "lr": end.lr, "train_loss": float(np.mean(self.losses)),
                "val_loss": end.validation.loss, "val_loss_smoothed": end.selection.smoothed,
                "best_epoch": end.selection.best_epoch, "elapsed_s": end.elapsed_s}


def _cfg(**kw) -> TrainConfig:
    base = {"max_epochs": 12, "learning_rate": 0.05, "scheduler": "cosine", "min_learning_rate": 1e-4,
            "ema_decay": 0.5, "grad_clip_norm": 10.0, "selection_window": 1, "early_stopping_patience": 100}
    return TrainConfig(**{**base, **kw})


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_core_learns_and_writes_one_row_per_epoch(tmp_path):
    model = _toy(dropout=0.0)
    objective = ToyObjective(model)
    result = train({"toy": model}, objective, _cfg(learning_rate=0.1), data_seed=0, metrics_csv=tmp_path / "m.csv")
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert result.status == "ok" and result.epochs == 12 and not result.stopped_early
    assert metrics["epoch"].tolist() == list(range(1, 13))
    assert list(metrics.columns) == list(result.metrics[0])  # the objective's column order
    assert metrics["val_loss"].iloc[-1] < 0.01 * metrics["val_loss"].iloc[0]
    assert metrics["train_loss"].iloc[-1] < 0.01 * metrics["train_loss"].iloc[0]
    assert metrics["lr"].iloc[-1] < metrics["lr"].iloc[0]  # the cosine schedule stepped
    assert not model.training  # returned in eval mode


def test_selection_keeps_the_weights_of_the_lowest_trailing_mean():
    # raw minimum at epoch 2; the trailing mean over 2 epochs is lowest at epoch 5
    scripted = [5.0, 1.0, 6.0, 2.0, 2.0, 7.0, 8.0]
    model = _toy()
    objective = ToyObjective(model, scripted=scripted)
    result = train({"toy": model}, objective, _cfg(max_epochs=7, selection_window=2), data_seed=0)
    assert result.best_epoch == 5 and result.best_value == 2.0
    _assert_same(model.state_dict(), objective.snapshots[4])  # the EMA weights validated after epoch 5
    assert not torch.equal(objective.snapshots[4]["linear.weight"], objective.snapshots[-1]["linear.weight"])
    assert [row["best_epoch"] for row in result.metrics] == [1, 2, 2, 2, 5, 5, 5]


def test_early_stopping_after_the_patience():
    scripted = [3.0, 2.0, 1.0] + [2.0] * 20
    model = _toy()
    result = train({"toy": model}, ToyObjective(model, scripted=scripted),
                   _cfg(max_epochs=20, early_stopping_patience=3), data_seed=0)
    assert result.epochs == 6 and result.best_epoch == 3 and result.stopped_early
    assert len(result.metrics) == 6


def _run(state_file, interrupt_at=None, epochs=9, draw_seed=11):
    model = _toy()
    torch.manual_seed(draw_seed)  # the dropout draws of a fresh run start here
    objective = ToyObjective(model, interrupt_at=interrupt_at)
    result = train({"toy": model}, objective, _cfg(max_epochs=epochs), data_seed=3, state_file=state_file,
                   fingerprint={"run": "toy"})
    return model, result


def test_resume_from_the_state_gives_bit_identical_weights(tmp_path):
    straight, full = _run(tmp_path / "a" / "state.pt")
    with pytest.raises(Interrupted):
        _run(tmp_path / "b" / "state.pt", interrupt_at=4)
    assert int(torch.load(tmp_path / "b" / "state.pt", weights_only=True)["epoch"]) == 4
    resumed, again = _run(tmp_path / "b" / "state.pt", draw_seed=99)  # the saved random state is restored
    _assert_same(straight.state_dict(), resumed.state_dict())
    assert [r["train_loss"] for r in full.metrics] == [r["train_loss"] for r in again.metrics]
    assert again.best_epoch == full.best_epoch and again.epochs == 9
    # the toy does draw random numbers: other draws, other weights
    other, _ = _run(None, draw_seed=99)
    assert not torch.equal(other.state_dict()["linear.weight"], straight.state_dict()["linear.weight"])


def test_a_state_of_another_run_is_refused(tmp_path):
    _run(tmp_path / "state.pt", epochs=2)
    model = _toy()
    with pytest.raises(TrainingStateError, match="different run"):
        train({"toy": model}, ToyObjective(model), _cfg(max_epochs=2), data_seed=3, state_file=tmp_path / "state.pt",
              fingerprint={"run": "other"})


def test_non_finite_loss_raises_under_the_raise_policy_and_keeps_the_last_state(tmp_path):
    model = _toy()
    state = tmp_path / "state.pt"
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, batch 2 of 6"):
        train({"toy": model}, ToyObjective(model, nan_at=(2, 1)), _cfg(), data_seed=0, state_file=state,
              on_non_finite="raise")
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 2 and all(torch.isfinite(v).all() for v in saved["models"]["toy"].values())


def test_non_finite_loss_stops_with_a_status_under_the_stop_policy():
    model = _toy()
    objective = ToyObjective(model, nan_at=(2, 1))
    result = train({"toy": model}, objective, _cfg(), data_seed=0, on_non_finite="stop")
    assert result.status == "non-finite training loss at epoch 3, batch 2 of 6"
    assert result.epochs == 2 and len(result.metrics) == 2 and result.stopped_early
    _assert_same(model.state_dict(), objective.snapshots[result.best_epoch - 1])  # selected weights, finite
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())

    model = _toy()
    result = train({"toy": model}, ToyObjective(model, nan_validation_at=1), _cfg(), data_seed=0, on_non_finite="stop")
    assert result.status == "non-finite validation loss after epoch 2" and len(result.metrics) == 1
    model = _toy()
    with pytest.raises(NonFiniteLossError, match="validation loss after epoch 2"):
        train({"toy": model}, ToyObjective(model, nan_validation_at=1), _cfg(), data_seed=0)
    with pytest.raises(ValueError, match="on_non_finite"):
        train({"toy": model}, ToyObjective(model), _cfg(), data_seed=0, on_non_finite="ignore")
