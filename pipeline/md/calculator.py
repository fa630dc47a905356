"""ASE calculator for the mixture of experts: relax, run ASE MD or fit an EOS with it.

:class:`MixtureCalculator` is the one ASE calculator of the project,
:class:`pipeline.models.calculator.PotentialCalculator`, over a :class:`MixturePotential`: its input
``expert`` (the expert of every atom, fixed when the calculator is made, by atom index, as in the
LAMMPS runs) and a Verlet list kept between calls (:class:`pipeline.md.evaluator.VerletBatch`). Energy,
forces and stress are computed exactly as for a single expert (stress = ``-virial / V``).

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
from ase import Atoms

from pipeline.md.evaluator import VerletBatch
from pipeline.md.potential import MixturePotential
from pipeline.models import load_checkpoint
from pipeline.models.calculator import PotentialCalculator
from pipeline.names import EXPERTS


class VerletGraph:
    """Graph builder of :class:`PotentialCalculator` for a system of ``n_atoms`` atoms: a Verlet list kept
    between calls (a new one when the atomic numbers change).

    Parameters
    ----------
    potential : MixturePotential
        Gives the species, the cutoff and the dtype.
    n_atoms : int
        Atoms the calculator's inputs are made for (a structure of another size raises ``ValueError``).
    skin : float
        Verlet skin, A (0 = a new list at every call).
    device : torch.device
    """

    def __init__(self, potential: MixturePotential, *, n_atoms: int, skin: float, device: torch.device) -> None:
        self.species, self.r_max, self.dtype = potential.species, potential.r_max, potential.dtype
        self.n_atoms, self.skin, self.device = int(n_atoms), float(skin), torch.device(device)
        self._batch: VerletBatch | None = None

    def __call__(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        numbers = atoms.numbers
        if len(numbers) != self.n_atoms:
            raise ValueError(f"this calculator's partition has {self.n_atoms} atoms, the structure has {len(numbers)}")
        if self._batch is None or not np.array_equal(self._batch.numbers, numbers):
            self._batch = VerletBatch(numbers=numbers, species=self.species, cutoff=self.r_max, skin=self.skin,
                                      dtype=self.dtype, device=self.device)
        return self._batch(atoms.positions, atoms.cell.array, atoms.pbc)


class MixtureCalculator(PotentialCalculator):
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
    in all three directions, from the virial (:class:`~pipeline.models.calculator.PotentialCalculator`).
    """

    def __init__(
        self,
        potential: MixturePotential,
        *,
        expert: np.ndarray,
        skin: float = 0.0,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> None:
        expert = np.asarray(expert, dtype=np.int64)
        device = torch.device(device) if device is not None else next(potential.parameters()).device
        graph = VerletGraph(potential, n_atoms=len(expert), skin=skin, device=device)
        super().__init__(potential, inputs={"expert": expert}, graph=graph, device=device, **kwargs)
        self.expert = expert
        self.skin = float(skin)

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        *,
        expert: np.ndarray,
        names: Sequence[str] = EXPERTS,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        skin: float = 0.0,
    ) -> MixtureCalculator:
        """Calculator for the experts saved at ``paths`` (expert k = ``paths[k]``)."""
        experts = [load_checkpoint(p, dtype=dtype, map_location=device) for p in paths]
        return cls(MixturePotential(experts, names=names[: len(experts)]), expert=expert, skin=skin, device=device)
