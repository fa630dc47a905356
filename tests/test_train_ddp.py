"""Data-parallel training (torch DDP, gloo backend, 2 CPU processes under torchrun) matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.models import build_model, read_checkpoint
from pipeline.train import run_training
from train_support import tiny_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for role in ("hf", "lf"):
        out.update({f"{role}.{k}": v for k, v in read_checkpoint(directory / f"{role}.pt")["state_dict"].items()})
    return out


@pytest.mark.timeout(180)
def test_two_gloo_processes_match_single_process_training(tmp_path):
    cfg = tiny_config(max_epochs=2, dtype="float64", agreement_mode="symmetric",
                      cells={"bulk": 2, "bulk_repeat": [1, 1, 4], "slab": 2, "slab_min_lateral_a": 5.0, "per_batch": 2})
    dataset = write_tiny_dataset(tmp_path / "data")
    single = tmp_path / "single"
    run_training(cfg, stage="pair", pair="cotrained", dataset=dataset, hf_path=single / "hf.pt", lf_path=single / "lf.pt",
                 metrics_path=single / "metrics.csv", state_dir=single / "state", progress=False)

    ddp = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pipeline", "train", "--config-json", json.dumps(cfg.to_dict()), "--stage", "pair", "--pair", "cotrained",
               "--dataset", str(dataset), "--hf", str(ddp / "hf.pt"), "--lf", str(ddp / "lf.pt"),
               "--metrics", str(ddp / "metrics.csv"), "--state-dir", str(ddp / "state"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=170, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr

    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-8, worst  # summation order only
    initial = build_model(cfg.models.hf, cfg.species, dtype=torch.float64, seed=cfg.seed * 1000 + 101).state_dict()
    moved = max(float((a[f"hf.{k}"] - v).abs().max()) for k, v in initial.items() if "scale_shift" not in k)
    assert moved > 1e-3  # both runs really trained (from the same initial weights)
    m1, m2 = pd.read_csv(single / "metrics.csv"), pd.read_csv(ddp / "metrics.csv")
    for column in ("train_loss", "val_loss", "val_hf_force_mae_mev_a", "val_bulk_energy_disagreement_mev_atom"):
        pd.testing.assert_series_equal(m1[column], m2[column], rtol=1e-8)


@pytest.mark.timeout(180)
def test_two_gloo_processes_train_an_moe_expert(tmp_path):
    """DDP with routed experts, some of which no atom of a shard chooses (top-1 of 4, three elements)."""
    raw = tiny_config(max_epochs=1, agreement_mode="symmetric").to_dict()
    raw["models"]["lf"]["moe"] = {"enabled": True, "num_experts": 4, "top_k": 1, "num_shared": 0}
    dataset = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pipeline", "train", "--config-json", json.dumps(raw), "--stage", "pair", "--pair", "cotrained",
               "--dataset", str(dataset), "--hf", str(out / "hf.pt"), "--lf", str(out / "lf.pt"),
               "--metrics", str(out / "metrics.csv"), "--state-dir", str(out / "state"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=170, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics.csv")
    assert np.isfinite(metrics["train_loss"]).all() and "train_moe_balance" in metrics
