"""A tiny EMT-labelled Pt/CO dataset and tiny experts, for tests and smoke runs of the train stage.

EMT labels are NOT DFT (EMT's CO chemistry is wrong); they only give fast, consistent energies and
forces. :func:`write_tiny_dataset` runs the real ingest stage on the frames, so the dataset has the
splits and per-atom bulk/complex regions the trainer expects.

>>> cfg = tiny_config(max_epochs=2)
>>> cfg.models.hf.num_layers, cfg.train.max_epochs
(1, 2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from pipeline.config import Config, config_from_dict

TINY_EXPERT = {
    "r_max": 4.0,
    "l_max": 1,
    "parity": False,
    "num_layers": 1,
    "num_scalar_features": 8,
    "num_tensor_features": 4,
    "num_bessels": 4,
    "two_body_mlp_hidden": [8],
    "latent_mlp_hidden": [8],
    "readout_mlp_hidden": [8],
    "avg_num_neighbors": 20.0,
}


def _label(atoms: Atoms, group: str, family: str) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info.update(group=group, family=family)
    return atoms


def tiny_frames(seed: int = 0) -> list[Atoms]:
    """About 30 EMT-labelled frames: rattled bulk Pt cells, 2x2x3 Pt(111) slabs with and without CO, CO gas."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, a in enumerate((3.86, 3.90, 3.94, 3.98, 4.02, 3.92)):
        for r in range(2):
            atoms = bulk("Pt", "fcc", a=a, cubic=True)
            atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
            frames.append(_label(atoms, f"bulk-{k}", "bulk"))
    for family, co in (("clean_slab", False), ("slab_co", True)):
        for k in range(5):
            for r in range(2):
                atoms = fcc111("Pt", (2, 2, 3), a=3.92, vacuum=5.0, periodic=True)
                if co:
                    add_adsorbate(atoms, molecule("CO")[::-1], 1.85, "ontop")
                atoms.info.pop("adsorbate_info", None)
                atoms.positions += rng.normal(0, 0.04, atoms.positions.shape)
                frames.append(_label(atoms, f"{family}-{k}", family))
    for k in range(3):
        bond = 1.10 + 0.04 * k
        atoms = Atoms("CO", positions=[[4, 4, 4], [4, 4, 4 + bond]], cell=[8, 8, 8], pbc=False)
        frames.append(_label(atoms, f"gas-{k}", "gas"))
    return frames


def tiny_config(**train: Any) -> Config:
    """Tiny experts (r_max 4 A, l_max 1, one layer, 8 features), a short, fixed ``train:`` baseline
    (independent of the shipped defaults; two small bulk and two slab mixture cells) and an
    ``md.partition`` radius of 3 A (so that the tiny slabs have LF atoms); ``train`` overrides keys."""
    settings = {"max_epochs": 3, "batch_size": 4, "learning_rate": 0.01, "early_stopping_patience": 100,
                "selection_window": 1, "ema_decay": 0.5, "scheduler": "plateau", "energy_weight": 1.0,
                "agreement_mode": "anchored", "lambda_energy": 1.0, "lambda_force": 1.0, "lambda_mixture": 1.0,
                "agreement_ramp_epochs": 0,
                "cells": {"bulk": 2, "bulk_repeat": [1, 1, 4], "slab": 2, "slab_min_lateral_a": 5.0, "per_batch": 1},
                **train}
    return config_from_dict({
        "seed": 0,
        "device": "cpu",
        "models": {"hf": dict(TINY_EXPERT), "lf": {**TINY_EXPERT, "num_scalar_features": 4}},
        "ingest": {"validation_fraction": 0.2, "test_fraction": 0.2},
        "md": {"partition": {"radius_a": 3.0}},
        "train": settings,
    })


def write_tiny_dataset(directory: str | Path, cfg: Config | None = None, frames: list[Atoms] | None = None) -> Path:
    """Ingest :func:`tiny_frames` (or ``frames``) into ``directory/dataset.extxyz``; returns its path."""
    from pipeline.data.ingest import ingest, write_ingest_outputs

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "raw.extxyz"
    ase.io.write(raw, frames if frames is not None else tiny_frames(), format="extxyz")
    result = ingest(cfg or tiny_config(), paths=[raw])
    dataset = directory / "dataset.extxyz"
    write_ingest_outputs(result, dataset=dataset, manifest=directory / "manifest.json",
                         rejected=directory / "rejected.csv", stats_csv=directory / "stats.csv",
                         stats_md=directory / "stats.md")
    return dataset
