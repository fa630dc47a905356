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


def pt_slab(*, surface_size: tuple[int, int] = (3, 3), layers: int = 4) -> Atoms:
    """A bare Pt(111) slab (36 atoms by default), unrattled."""
    return build_production_cell(MDSystemConfig(surface_size=surface_size, layers=layers, n_co=0, vacuum_a=5.0))


class EMTEvaluator:
    """ASE's EMT (a stable Pt potential, unlike the untrained experts) behind the evaluator's interface.

    For driver tests that need physical dynamics (temperatures, equilibration); positions in the frame of
    ``atoms``' cell (the LAMMPS frame of these slabs is the ASE frame).
    """

    def __init__(self, atoms: Atoms) -> None:
        from types import SimpleNamespace

        from ase.calculators.emt import EMT

        self.atoms = atoms.copy()
        self.atoms.calc = EMT()
        self.neighbors = SimpleNamespace(skin=1.0)
        self.potential = SimpleNamespace(species=SPECIES)
        self.n_calls = 0

    def __call__(self, positions, cell, pbc, *, virial: bool = False):
        from pipeline.md.evaluator import Evaluation

        self.n_calls += 1
        self.atoms.positions = positions
        distances = self.atoms.get_all_distances(mic=True) + np.eye(len(self.atoms)) * 1e9
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        return Evaluation(energy=self.atoms.get_potential_energy(), energies=self.atoms.get_potential_energies(),
                          forces=self.atoms.get_forces(), virial=None, min_distance=float(distances[i, j]),
                          closest_pair=(int(i), int(j)))

    def timing_summary(self) -> dict[str, float]:
        return {"calls": self.n_calls}
