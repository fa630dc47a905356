"""Small systems and untrained experts for the MD tests (float64, fast on one CPU thread)."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from pipeline.config import MDPartitionConfig, MDSystemConfig, RegionConfig
from pipeline.md.partition import partition_atoms
from pipeline.md.potential import MixturePotential
from pipeline.md.system import build_production_cell
from pipeline.models import build_model
from pipeline.models.testing import small_config

SPECIES = ("Pt", "C", "O")


def tiny_slab(*, rattle: float = 0.05, seed: int = 0) -> Atoms:
    """2x2x3 Pt(111) + one CO on top (14 atoms), rattled."""
    atoms = build_production_cell(MDSystemConfig(surface_size=(2, 2), layers=3, n_co=1, vacuum_a=5.0))
    atoms.rattle(rattle, seed=seed)
    return atoms


def slab_partition(atoms: Atoms) -> np.ndarray:
    """Default rule (CO + top layer + neighbours -> HF): the HF/LF interface runs through the slab."""
    return partition_atoms(atoms, MDPartitionConfig(radius_a=3.0), RegionConfig())


def experts(*, dtype: torch.dtype = torch.float64, lf_r_max: float = 3.5) -> tuple:
    """An untrained HF expert (l_max 2, 2 layers, r_max 4) and a smaller LF one with a shorter cutoff."""
    hf = build_model(small_config(), SPECIES, dtype=dtype, seed=0)
    lf = build_model(small_config(l_max=1, num_layers=1, r_max=lf_r_max), SPECIES, dtype=dtype, seed=1)
    # non-trivial per-species scales and shifts, as after training
    hf.set_scale_shift(scales=[0.5, 0.4, 0.3], shifts=[-5.0, -7.0, -6.0])
    lf.set_scale_shift(scales=[0.6, 0.5, 0.2], shifts=[-5.2, -7.1, -6.2])
    return hf, lf


def mixture(**kwargs) -> MixturePotential:
    hf, lf = experts(**kwargs)
    return MixturePotential([hf, lf], names=("hf", "lf"))
