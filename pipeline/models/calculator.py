"""The one ASE calculator: any :class:`~pipeline.models.contract.Potential` (an expert, a mixture).

:class:`PotentialCalculator` builds the batch of the current ``Atoms`` (a graph builder: by default a
fresh :func:`~pipeline.data.neighbors.collate` neighbour list, for MD a Verlet list), calls the
potential with the potential's own inputs (e.g. the static mixture's ``expert``), and returns energy,
per-atom energies, forces and, when asked, the stress. The stress is computed one way, from the
potential's virial ``W = -dE/d(strain)`` (eV): ``stress = -W / V``, in ASE's sign convention and Voigt
order (xx, yy, zz, yz, xz, xy), and only for cells periodic in all three directions.

:class:`AllegroCalculator` (one expert) is this calculator; the mixture's ``MixtureCalculator``
(:mod:`pipeline.md.calculator`) is this calculator with the expert of every atom and a Verlet list.

>>> from ase.build import bulk
>>> from pipeline.config import ExpertConfig
>>> from pipeline.models import build_model
>>> model = build_model(ExpertConfig(l_max=1, num_layers=1, num_scalar_features=8, num_tensor_features=4), ("Pt",))
>>> atoms = bulk("Pt", "fcc", a=3.92)
>>> atoms.calc = AllegroCalculator(model)
>>> atoms.get_forces().shape, atoms.get_stress().shape
((1, 3), (6,))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from ase.stress import full_3x3_to_voigt_6_stress

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.models.allegro import AllegroModel
from pipeline.models.checkpoint import load_checkpoint
from pipeline.models.contract import VIRIAL, Potential

GraphBuilder = Callable[[Atoms], dict[str, torch.Tensor]]
"""Batch dict (:mod:`pipeline.data.keys`, structure and graph) of one ``Atoms``."""


class CollateGraph:
    """A fresh neighbour list at every call (:func:`~pipeline.data.neighbors.collate`) within ``r_max``."""

    def __init__(self, *, species: tuple[str, ...], r_max: float, dtype: torch.dtype) -> None:
        self.species, self.r_max, self.dtype = tuple(species), float(r_max), dtype

    def __call__(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        return collate([atoms], species=self.species, r_max=self.r_max, dtype=self.dtype, with_targets=False)


def stress_from_virial(virial: np.ndarray, volume: float) -> np.ndarray:
    """ASE stress in Voigt order (eV/A^3) from the virial ``W = -dE/d(strain)`` (3x3, eV): ``-W / V``."""
    return full_3x3_to_voigt_6_stress(-np.asarray(virial, dtype=np.float64) / volume)


class PotentialCalculator(Calculator):
    """Energy, per-atom energies, forces and stress of a :class:`~pipeline.models.contract.Potential`, in eV and A.

    Parameters
    ----------
    potential : Potential
        An expert or a mixture; it is moved to ``device`` and put in eval mode. Its dtype is used.
    inputs : mapping, optional
        The potential's own keyword inputs, passed to every call (tensors moved to ``device``); e.g.
        ``{"expert": (n_atoms,) int array}`` for the static mixture.
    graph : callable, optional
        ``graph(atoms) -> batch dict`` (:data:`GraphBuilder`); default: a fresh neighbour list within
        the potential's ``r_max`` at every call (:class:`CollateGraph`).
    device : str or torch.device, optional
        Where to evaluate (default: where the potential's parameters are).

    Stress (eV/A^3, ASE sign and Voigt order) is computed only when asked, only for cells periodic in
    all three directions, and always as ``-virial / volume``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict = {}
    nolabel = True

    def __init__(
        self,
        potential: Potential,
        *,
        inputs: Mapping[str, Any] | None = None,
        graph: GraphBuilder | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device) if device is not None else next(potential.parameters()).device
        self.potential = potential.to(self.device).eval()
        self.inputs = {name: torch.as_tensor(value, device=self.device) for name, value in (inputs or {}).items()}
        self.graph = graph if graph is not None else CollateGraph(
            species=potential.species, r_max=potential.r_max, dtype=potential.dtype
        )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:  # noqa: ANN001
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress and not self.atoms.pbc.all():
            raise PropertyNotImplementedError("stress needs a cell periodic in all three directions")
        batch = {key: value.to(self.device) for key, value in self.graph(self.atoms).items()}
        out = self.potential(batch, compute_forces=True, compute_stress=want_stress, **self.inputs)
        energy = float(out[K.ENERGY].detach().cpu()[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out[K.PER_ATOM_ENERGY].detach().cpu().double().numpy(),
            "forces": out[K.FORCES].detach().cpu().double().numpy(),
        }
        if want_stress:
            virial = out[VIRIAL].detach().cpu().double().numpy()[0]
            self.results["stress"] = stress_from_virial(virial, self.atoms.get_volume())


class AllegroCalculator(PotentialCalculator):
    """:class:`PotentialCalculator` of one :class:`AllegroModel` (a fresh neighbour list at every call).

    Parameters
    ----------
    model : AllegroModel
        The expert; it is put in eval mode. Its dtype is used for the evaluation.
    device : str or torch.device, optional
        Where to evaluate (default: where the model's parameters are).
    """

    def __init__(self, model: AllegroModel, *, device: str | torch.device | None = None, **kwargs) -> None:
        super().__init__(model, device=device, **kwargs)

    @property
    def model(self) -> AllegroModel:
        """The expert (the calculator's potential)."""
        return self.potential

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        species: list[str] | None = None,
        r_max: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> AllegroCalculator:
        """Calculator for the expert saved at ``path`` (species/cutoff checked when given)."""
        return cls(load_checkpoint(path, species=species, r_max=r_max, dtype=dtype, map_location=device), device=device)
