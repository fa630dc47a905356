"""The co-training loop end to end on a tiny EMT set: learning, determinism, resume after kill -9,
non-finite losses, corrupt and foreign training states."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.train.loop as loop_module
from pipeline.models import read_checkpoint
from pipeline.train import NonFiniteLossError, TrainingStateError, run_training
from pipeline.train.data import batch_order
from pipeline.train.state import state_path
from pipeline.train.testing import tiny_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _train(directory: Path, dataset: Path, cfg, pair: str = "cotrained", **kwargs):
    return run_training(cfg, pair=pair, dataset=dataset, hf_path=directory / "hf.pt", lf_path=directory / "lf.pt",
                        metrics_path=directory / "metrics.csv", state_dir=directory / "state", progress=False,
                        **kwargs)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for role in ("hf", "lf"):
        out.update({f"{role}.{k}": v for k, v in read_checkpoint(directory / f"{role}.pt")["state_dict"].items()})
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tiny_training_reduces_the_loss_and_writes_outputs(tmp_path, dataset):
    cfg = tiny_config(max_epochs=8, agreement_extra=2, agreement_extra_repeat=1, agreement_ramp_epochs=2)
    result = _train(tmp_path, dataset, cfg)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert len(metrics) == 8 and metrics["epoch"].tolist() == list(range(1, 9))
    assert metrics["train_loss"].iloc[-1] < 0.5 * metrics["train_loss"].iloc[0]
    assert metrics["val_loss"].min() < metrics["val_loss"].iloc[0]
    assert metrics["agreement_scale"].tolist()[:3] == [0.5, 1.0, 1.0]
    for column in ("val_hf_force_mae_mev_a", "val_lf_energy_rmse_mev_atom", "val_bulk_force_disagreement_mev_a", "lr"):
        assert np.isfinite(metrics[column]).all()
    meta = read_checkpoint(tmp_path / "hf.pt")["metadata"]
    assert meta["pair"] == "cotrained" and meta["best_epoch"] == result.best_epoch == int(metrics["val_loss"].idxmin()) + 1
    assert not state_path(tmp_path / "state").exists()  # removed after success


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, dataset):
    cfg = tiny_config(max_epochs=2)
    _train(tmp_path / "a", dataset, cfg)
    _train(tmp_path / "b", dataset, cfg)
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    other = dataclasses.replace(cfg, seed=1)
    _train(tmp_path / "c", dataset, other)
    assert not torch.equal(_weights(tmp_path / "a")["hf.readout.weights.0"], _weights(tmp_path / "c")["hf.readout.weights.0"])


def test_anchored_modes_leave_the_anchor_expert_as_trained_independently(tmp_path, dataset):
    # one epoch, constant rate: the best epoch and the schedule cannot couple the experts
    cfg = tiny_config(max_epochs=1, scheduler="none", agreement_mode="anchored", lambda_energy=5.0, lambda_force=5.0)
    _train(tmp_path / "co", dataset, cfg, pair="cotrained")
    _train(tmp_path / "ind", dataset, cfg, pair="independent")
    co, ind = _weights(tmp_path / "co"), _weights(tmp_path / "ind")
    _assert_same({k: v for k, v in co.items() if k.startswith("hf.")}, {k: v for k, v in ind.items() if k.startswith("hf.")})
    assert not torch.equal(co["lf.readout.weights.0"], ind["lf.readout.weights.0"])
    symmetric = tiny_config(max_epochs=1, scheduler="none", agreement_mode="symmetric", lambda_energy=5.0, lambda_force=5.0)
    _train(tmp_path / "sym", dataset, symmetric, pair="cotrained")
    sym = _weights(tmp_path / "sym")
    assert not torch.equal(sym["hf.readout.weights.0"], ind["hf.readout.weights.0"])
    assert not torch.equal(sym["lf.readout.weights.0"], ind["lf.readout.weights.0"])
    lf_anchor = tiny_config(max_epochs=1, scheduler="none", agreement_mode="anchored_lf", lambda_energy=5.0, lambda_force=5.0)
    _train(tmp_path / "lfa", dataset, lf_anchor, pair="cotrained")
    lfa = _weights(tmp_path / "lfa")
    _assert_same({k: v for k, v in lfa.items() if k.startswith("lf.")}, {k: v for k, v in ind.items() if k.startswith("lf.")})
    assert not torch.equal(lfa["hf.readout.weights.0"], ind["hf.readout.weights.0"])


def test_resume_after_kill_gives_the_same_weights(tmp_path, dataset):
    epochs = 12
    cfg = tiny_config(max_epochs=epochs, agreement_extra=2, agreement_extra_repeat=1, scheduler="cosine")
    _train(tmp_path / "straight", dataset, cfg)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "pipeline", "train", "--config-json", json.dumps(cfg.to_dict()),
               "--pair", "cotrained", "--dataset", str(dataset), "--hf", str(killed / "hf.pt"),
               "--lf", str(killed / "lf.pt"), "--metrics", str(killed / "metrics.csv"),
               "--state-dir", str(killed / "state"), "--no-progress"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = state_path(killed / "state")
    deadline = time.monotonic() + 120
    epoch = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            try:
                epoch = int(torch.load(state, weights_only=True)["epoch"])
            except Exception:  # noqa: BLE001 - only ever the complete old or new file (atomic replace)
                epoch = 0
            if epoch >= 2:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    saved_epoch = int(torch.load(state, weights_only=True)["epoch"])
    assert 2 <= saved_epoch < epochs and not (killed / "hf.pt").exists()

    result = _train(killed, dataset, cfg)
    assert result.epochs == epochs
    _assert_same(_weights(tmp_path / "straight"), _weights(killed))
    straight = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    resumed = pd.read_csv(killed / "metrics.csv")
    pd.testing.assert_series_equal(straight["val_loss"], resumed["val_loss"])


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_the_last_good_state(tmp_path, dataset, monkeypatch):
    cfg = tiny_config(max_epochs=4)
    n_train = sum(1 for line in open(dataset) if "split=train" in line)
    n_batches = len(batch_order(n_train, cfg.train.batch_size, cfg.seed, 0))
    real = loop_module.weighted_total
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, values = real(*args, **kwargs)
        if calls["n"] == 2 * n_batches + 2:  # epoch 3, batch 2
            loss = loss * float("nan")
        return loss, values

    monkeypatch.setattr(loop_module, "weighted_total", poisoned)
    with pytest.raises(NonFiniteLossError, match=rf"epoch 3, batch 2 of {n_batches}.*last completed epoch \(2\)"):
        _train(tmp_path / "nan", dataset, cfg)
    state = torch.load(state_path(tmp_path / "nan" / "state"), weights_only=True)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["models"]["hf"].values())
    assert not (tmp_path / "nan" / "hf.pt").exists()

    monkeypatch.setattr(loop_module, "weighted_total", real)
    _train(tmp_path / "nan", dataset, cfg)  # resumes from epoch 2 and finishes like an uninterrupted run
    _train(tmp_path / "clean", dataset, cfg)
    _assert_same(_weights(tmp_path / "nan"), _weights(tmp_path / "clean"))


def test_corrupt_or_foreign_state_is_a_clear_error(tmp_path, dataset):
    cfg = tiny_config(max_epochs=2)
    _train(tmp_path, dataset, cfg, keep_state=True)
    state = state_path(tmp_path / "state")
    good = state.read_bytes()

    other = tiny_config(max_epochs=2, learning_rate=0.02)
    with pytest.raises(TrainingStateError, match=r"different run.*train\.learning_rate \(checkpoint 0\.01, now 0\.02\)"):
        _train(tmp_path, dataset, other)
    with pytest.raises(TrainingStateError, match="different run.*pair"):
        _train(tmp_path, dataset, cfg, pair="independent")

    state.write_bytes(good[: len(good) // 2])
    with pytest.raises(TrainingStateError, match="corrupt, truncated"):
        _train(tmp_path, dataset, cfg)
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingStateError, match=f"delete {tmp_path / 'state'}"):
        _train(tmp_path, dataset, cfg)
    torch.save({"kind": "something else"}, state)
    with pytest.raises(TrainingStateError, match="not a co-training state"):
        _train(tmp_path, dataset, cfg)
