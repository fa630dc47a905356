"""Tiny checkpoints, datasets and configurations for the analysis tests (fast on one CPU thread)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Config, config_from_dict
from pipeline.models import build_model, save_checkpoint
from train_support import TINY_EXPERT

SPECIES = ("Pt", "C", "O")


def tiny_analysis_config(**analysis) -> Config:
    """Tiny experts' configuration with a small, fast ``analysis:`` section (``analysis`` overrides it)."""
    section = {
        "dtype": "float64",
        "eos": {"n_volumes": 7, "volume_range": 0.06, "supercell": [1, 1, 2]},
        "interface": {"supercell": [1, 1, 6], "thermal_samples": 2},
        "speed": {"n_atoms": [40], "hf_fractions": [0.25, 0.5], "layers": 3, "repeats": 1, "warmup": 0},
        **analysis,
    }
    return config_from_dict({
        "seed": 0,
        "device": "cpu",
        "models": {"hf": dict(TINY_EXPERT), "lf": {**TINY_EXPERT, "num_scalar_features": 4}},
        "ingest": {"validation_fraction": 0.2, "test_fraction": 0.2},
        "md": {"partition": {"radius_a": 3.0}},
        "analysis": section,
    })


def write_pair(directory: str | Path, cfg: Config, *, seeds: tuple[int, int] = (0, 1), identical: bool = False) -> dict:
    """Untrained HF and LF experts of ``cfg`` with realistic per-species shifts saved under ``directory``.

    With ``identical`` the LF checkpoint is a copy of the HF expert. Returns ``{"hf": path, "lf": path}``.
    """
    directory = Path(directory)
    hf = build_model(cfg.models.hf, SPECIES, dtype=torch.float64, seed=seeds[0])
    lf = hf if identical else build_model(cfg.models.lf, SPECIES, dtype=torch.float64, seed=seeds[1])
    for model in {id(hf): hf, id(lf): lf}.values():
        model.set_scale_shift(scales=[0.5, 0.4, 0.3], shifts=[-5.0, -7.0, -6.0])
    paths = {"hf": directory / "hf.pt", "lf": directory / "lf.pt"}
    save_checkpoint(paths["hf"], hf)
    save_checkpoint(paths["lf"], lf)
    return paths

