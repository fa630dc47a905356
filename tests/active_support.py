"""Shared pieces of the active-learning tests: a tiny configuration and a tiny trained HF committee.

The committee members are the tiny experts of :mod:`train_support` trained for a few epochs on the
EMT-labelled tiny set (NOT DFT) with different seeds, as the loop trains its committee; the LF is the
co-trained LF of the first seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.config import Config, config_from_dict
from pipeline.train import run_training
from train_support import tiny_config, write_tiny_dataset

SEEDS = (0, 1, 2)


def tiny_active_config(**active) -> Config:
    """:func:`tiny_config` with EMT labels and a short exploration (two cells, 40 steps, two temperatures)."""
    raw = tiny_config(max_epochs=6).to_dict()
    raw["label"]["calculator"] = "emt"
    raw["active"] = {
        "committee_seeds": list(SEEDS),
        "explore": {"cells": ["2x2x4-co-top", "3x3x4-adatom-co"], "temperatures_k": [300.0, 900.0], "steps": 40,
                    "snapshot_interval": 10},
        "select": {"max_frames": 4, "chunk_size": 2},
        **active,
    }
    return config_from_dict(raw)


def train_committee(directory: Path, cfg: Config) -> dict[str, object]:
    """Train the tiny HF committee (one HF per seed) and seed 0's co-trained LF; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    dataset = write_tiny_dataset(directory / "data", cfg)
    hf = []
    for seed in SEEDS:
        path = directory / f"seed{seed}" / "hf.pt"
        run_training(dataclasses.replace(cfg, seed=seed), stage="hf", dataset=dataset, hf_path=path,
                     metrics_path=path.with_suffix(".csv"), state_dir=directory / f"seed{seed}" / "state",
                     progress=False)
        hf.append(path)
    lf = directory / "seed0" / "cotrained" / "lf.pt"
    run_training(cfg, stage="lf", pair="cotrained", dataset=dataset, anchor_path=hf[0], lf_path=lf,
                 metrics_path=lf.with_suffix(".csv"), state_dir=lf.parent / "state", progress=False)
    return {"dataset": dataset, "hf": hf, "lf": lf}
