"""The training stages end to end on a tiny EMT set: learning, per-expert selection, the frozen anchor,
determinism, resume after kill -9, non-finite losses, corrupt and foreign training states."""

from __future__ import annotations

import dataclasses
import hashlib
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
from train_support import tiny_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _hf(directory: Path, dataset: Path, cfg, **kwargs):
    return run_training(cfg, stage="hf", dataset=dataset, hf_path=directory / "hf.pt",
                        metrics_path=directory / "hf.csv", state_dir=directory / "hf_state", progress=False, **kwargs)


def _lf(directory: Path, dataset: Path, cfg, anchor: Path, pair: str = "cotrained", **kwargs):
    return run_training(cfg, stage="lf", pair=pair, dataset=dataset, anchor_path=anchor, lf_path=directory / "lf.pt",
                        metrics_path=directory / "metrics.csv", state_dir=directory / "state", progress=False,
                        **kwargs)


def _pair(directory: Path, dataset: Path, cfg, pair: str = "cotrained", **kwargs):
    return run_training(cfg, stage="pair", pair=pair, dataset=dataset, hf_path=directory / "hf.pt",
                        lf_path=directory / "lf.pt", metrics_path=directory / "metrics.csv",
                        state_dir=directory / "state", progress=False, **kwargs)


def _weights(*paths: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in paths:
        out.update({f"{path.stem}.{k}": v for k, v in read_checkpoint(path)["state_dict"].items()})
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def anchor(tmp_path_factory, dataset):
    """A tiny HF expert trained alone (the frozen anchor of the LF stages)."""
    directory = tmp_path_factory.mktemp("anchor")
    _hf(directory, dataset, tiny_config(max_epochs=4))
    return directory / "hf.pt"


def test_lf_stage_reduces_the_loss_and_writes_outputs(tmp_path, dataset, anchor):
    cfg = tiny_config(max_epochs=8, agreement_ramp_epochs=2)
    result = _lf(tmp_path, dataset, cfg, anchor)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert len(metrics) == 8 and metrics["epoch"].tolist() == list(range(1, 9))
    assert metrics["train_loss"].iloc[-1] < 0.9 * metrics["train_loss"].iloc[0]
    assert metrics["val_loss"].min() < 0.9 * metrics["val_loss"].iloc[0]
    assert metrics["val_lf_force_mae_mev_a"].iloc[-1] < metrics["val_lf_force_mae_mev_a"].iloc[0]
    assert metrics["agreement_scale"].tolist()[:3] == [0.5, 1.0, 1.0]
    assert (metrics["train_mixture_forces"] > 0).all() and (metrics["val_mixture_forces"] > 0).all()
    for column in ("val_lf_force_mae_mev_a", "val_lf_energy_rmse_mev_atom", "val_bulk_force_disagreement_mev_a", "lr"):
        assert np.isfinite(metrics[column]).all()
    meta = read_checkpoint(tmp_path / "lf.pt")["metadata"]
    assert meta["pair"] == "cotrained" and meta["best_epoch"] == result.best_epoch
    assert meta["best_epoch"] == int(metrics["val_loss_smoothed"].idxmin()) + 1  # own, smoothed validation loss
    assert meta["anchor_sha256"] == _sha(anchor)
    assert not state_path(tmp_path / "state").exists()  # removed after success


def test_hf_stage_selects_on_its_own_smoothed_loss_not_the_joint_one(tmp_path, dataset):
    # The joint (pair) stage with every lambda 0 trains the HF expert exactly like the HF stage (same initial
    # weights, batches, constant rate) but picks one epoch for both experts on the joint validation loss.
    cfg = tiny_config(max_epochs=8, scheduler="none", selection_window=1, learning_rate=0.1, lf_data="all")
    _hf(tmp_path / "alone", dataset, cfg)
    _pair(tmp_path / "joint", dataset, cfg, pair="independent")
    joint = pd.read_csv(tmp_path / "joint" / "metrics.csv")
    alone = pd.read_csv(tmp_path / "alone" / "hf.csv")
    np.testing.assert_allclose(alone["val_hf_forces"], joint["val_hf_forces"], rtol=1e-5)  # same HF trajectory
    own = (cfg.train.energy_weight * joint["val_hf_energy"] + cfg.train.force_weight * joint["val_hf_forces"])
    own_best = int(own.idxmin()) + 1
    joint_best = int(joint["val_loss_smoothed"].idxmin()) + 1
    # Each stage picks the argmin of its own criterion over the same HF trajectory. Whether the two argmins
    # differ depends on round-off at this large rate (epoch 5 vs 8 on one CPU, both 7 on another), so the
    # rules are asserted on whatever curves this machine produced, and the checkpoints must differ iff they do.
    assert read_checkpoint(tmp_path / "alone" / "hf.pt")["metadata"]["best_epoch"] == own_best
    assert read_checkpoint(tmp_path / "joint" / "hf.pt")["metadata"]["best_epoch"] == joint_best
    same = torch.equal(_weights(tmp_path / "alone" / "hf.pt")["hf.readout.weights.0"],
                       _weights(tmp_path / "joint" / "hf.pt")["hf.readout.weights.0"])
    assert same == (own_best == joint_best)


def test_lf_stages_leave_the_shared_hf_untouched(tmp_path, dataset, anchor):
    before = _sha(anchor)
    cfg = tiny_config(max_epochs=2, lambda_energy=5.0, lambda_force=5.0)
    _lf(tmp_path / "co", dataset, cfg, anchor, pair="cotrained")
    _lf(tmp_path / "ind", dataset, cfg, anchor, pair="independent")
    assert _sha(anchor) == before
    for pair in ("co", "ind"):
        assert read_checkpoint(tmp_path / pair / "lf.pt")["metadata"]["anchor_sha256"] == before
    co, ind = _weights(tmp_path / "co" / "lf.pt"), _weights(tmp_path / "ind" / "lf.pt")
    assert not torch.equal(co["lf.readout.weights.0"], ind["lf.readout.weights.0"])  # agreement changed LF
    independent = pd.read_csv(tmp_path / "ind" / "metrics.csv")
    assert (independent["train_agree_forces"] == 0).all() and (independent["train_mixture_forces"] == 0).all()


def test_symmetric_pair_moves_both_experts(tmp_path, dataset, anchor):
    cfg = tiny_config(max_epochs=1, scheduler="none", agreement_mode="symmetric", lambda_energy=5.0, lambda_force=5.0)
    _pair(tmp_path / "sym", dataset, cfg)
    _pair(tmp_path / "ind", dataset, cfg, pair="independent")
    sym, ind = _weights(tmp_path / "sym" / "hf.pt", tmp_path / "sym" / "lf.pt"), \
        _weights(tmp_path / "ind" / "hf.pt", tmp_path / "ind" / "lf.pt")
    assert not torch.equal(sym["hf.readout.weights.0"], ind["hf.readout.weights.0"])
    assert not torch.equal(sym["lf.readout.weights.0"], ind["lf.readout.weights.0"])


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, dataset, anchor):
    cfg = tiny_config(max_epochs=2)
    _lf(tmp_path / "a", dataset, cfg, anchor)
    _lf(tmp_path / "b", dataset, cfg, anchor)
    _assert_same(_weights(tmp_path / "a" / "lf.pt"), _weights(tmp_path / "b" / "lf.pt"))
    _lf(tmp_path / "c", dataset, dataclasses.replace(cfg, seed=1), anchor)
    assert not torch.equal(_weights(tmp_path / "a" / "lf.pt")["lf.readout.weights.0"],
                           _weights(tmp_path / "c" / "lf.pt")["lf.readout.weights.0"])


def test_resume_after_kill_gives_the_same_weights(tmp_path, dataset):
    epochs = 12
    cfg = tiny_config(max_epochs=epochs, scheduler="cosine", agreement_mode="symmetric")
    _pair(tmp_path / "straight", dataset, cfg)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "pipeline", "train", "--config-json", json.dumps(cfg.to_dict()),
               "--stage", "pair", "--pair", "cotrained", "--dataset", str(dataset), "--hf", str(killed / "hf.pt"),
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

    result = _pair(killed, dataset, cfg)
    assert result.epochs == epochs
    _assert_same(_weights(tmp_path / "straight" / "hf.pt", tmp_path / "straight" / "lf.pt"),
                 _weights(killed / "hf.pt", killed / "lf.pt"))
    straight = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    resumed = pd.read_csv(killed / "metrics.csv")
    pd.testing.assert_series_equal(straight["val_loss"], resumed["val_loss"])


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_the_last_good_state(tmp_path, dataset, anchor, monkeypatch):
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
        _lf(tmp_path / "nan", dataset, cfg, anchor)
    state = torch.load(state_path(tmp_path / "nan" / "state"), weights_only=True)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["models"]["lf"].values())
    assert not (tmp_path / "nan" / "lf.pt").exists()

    monkeypatch.setattr(loop_module, "weighted_total", real)
    _lf(tmp_path / "nan", dataset, cfg, anchor)  # resumes from epoch 2 and finishes like an uninterrupted run
    _lf(tmp_path / "clean", dataset, cfg, anchor)
    _assert_same(_weights(tmp_path / "nan" / "lf.pt"), _weights(tmp_path / "clean" / "lf.pt"))


def test_corrupt_or_foreign_state_is_a_clear_error(tmp_path, dataset, anchor):
    cfg = tiny_config(max_epochs=2)

    def _train(directory, dataset, cfg, pair="cotrained", **kwargs):
        return _lf(directory, dataset, cfg, anchor, pair=pair, **kwargs)

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
