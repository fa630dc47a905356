"""ASE calculator for the mixture of experts: relax, run ASE MD or fit an EOS with it.

The expert of every atom is fixed when the calculator is made (by atom index), as in the LAMMPS runs.

>>> import numpy as np, torch
>>> from ase.build import bulk
>>> from pipeline.models import build_model
>>> from pipeline.models.testing import small_config
>>> hf = build_model(small_config(), ("Pt",), dtype=torch.float64, seed=0)
>>> lf = build_model(small_config(l_max=1, num_layers=1), ("Pt",), dtype=torch.float64, seed=1)
>>> atoms = bulk("Pt", "fcc", a=3.92, cubic=True)
>>> atoms.calc = MixtureCalculator(MixturePotential([hf, lf]), expert=np.array([0, 0, 1, 1]))
>>> atoms.get_forces().shape, atoms.get_stress().shape
((4, 3), (6,))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from ase.stress import full_3x3_to_voigt_6_stress

from pipeline.md.evaluator import MixtureEvaluator
from pipeline.md.potential import MixturePotential
from pipeline.models import load_checkpoint


class MixtureCalculator(Calculator):
    """Energy, per-atom energies, forces and stress of a :class:`MixturePotential`, in eV and A.

    Parameters
    ----------
    potential : MixturePotential
        The mixture (put in eval mode; its dtype is used).
    expert : (n_atoms,) int array
        Expert index of every atom of the structures this calculator will see (static, by index).
    skin : float
        Verlet skin (A) of the neighbour list kept between calls (0 = a new list at every call).
    device : str or torch.device, optional
        Where to evaluate (default: where the potential's parameters are).

    Stress (eV/A^3, ASE sign and Voigt order) is computed only when asked and only for cells periodic
    in all three directions.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict = {}
    nolabel = True

    def __init__(
        self,
        potential: MixturePotential,
        *,
        expert: np.ndarray,
        skin: float = 0.0,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        self.expert = np.asarray(expert, dtype=np.int64)
        self.skin = float(skin)
        self.device = device
        self._evaluator: MixtureEvaluator | None = None
        self._numbers: np.ndarray | None = None

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        *,
        expert: np.ndarray,
        names: Sequence[str] = ("hf", "lf"),
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        skin: float = 0.0,
    ) -> MixtureCalculator:
        """Calculator for the experts saved at ``paths`` (expert k = ``paths[k]``)."""
        experts = [load_checkpoint(p, dtype=dtype, map_location=device) for p in paths]
        return cls(MixturePotential(experts, names=names[: len(experts)]), expert=expert, skin=skin, device=device)

    def _evaluator_for(self, numbers: np.ndarray) -> MixtureEvaluator:
        if len(numbers) != len(self.expert):
            raise ValueError(f"this calculator's partition has {len(self.expert)} atoms, the structure has {len(numbers)}")
        if self._evaluator is None or not np.array_equal(self._numbers, numbers):
            self._evaluator = MixtureEvaluator(
                self.potential, numbers=numbers, expert=self.expert, skin=self.skin, device=self.device
            )
            self._numbers = np.array(numbers)
        return self._evaluator

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:  # noqa: ANN001 (ASE API)
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress and not self.atoms.pbc.all():
            raise PropertyNotImplementedError("stress needs a cell periodic in all three directions")
        evaluator = self._evaluator_for(self.atoms.numbers)
        result = evaluator(self.atoms.positions, self.atoms.cell.array, self.atoms.pbc, virial=want_stress)
        self.results = {
            "energy": result.energy,
            "free_energy": result.energy,
            "energies": result.energies,
            "forces": result.forces,
        }
        if want_stress:
            stress = -result.virial / self.atoms.get_volume()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
