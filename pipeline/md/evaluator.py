"""NumPy-facing evaluation of the mixture for MD engines: positions in, energy / forces / virial out.

:class:`MixtureEvaluator` keeps the static data of one system (species, expert of every atom) and the
Verlet list (:class:`pipeline.md.neighbors.VerletList`) on the torch device, and turns a set of
positions (A) into an :class:`Evaluation` in eV and eV/A. The LAMMPS callback and the ASE calculator
both call it, so they compute the same function by the same code.

>>> import numpy as np, torch
>>> from ase.build import molecule
>>> from pipeline.models import build_model
>>> from pipeline.models.testing import small_config
>>> from pipeline.md.potential import MixturePotential
>>> moe = MixturePotential([build_model(small_config(), ("Pt", "C", "O"), dtype=torch.float64, seed=0)])
>>> co = molecule("CO")
>>> ev = MixtureEvaluator(moe, numbers=co.numbers, expert=np.zeros(2, dtype=int), skin=0.5)
>>> result = ev(co.positions, np.zeros((3, 3)), (False, False, False))
>>> result.forces.shape, round(result.min_distance, 3)
((2, 3), 1.15)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data import keys as K
from pipeline.data.neighbors import species_indices
from pipeline.md.neighbors import VerletList
from pipeline.md.potential import MixturePotential


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the mixture (float64 NumPy, eV and A).

    Attributes
    ----------
    energy : float
        Total potential energy, eV.
    energies : (n_atoms,) array
        Per-atom energies, eV (sum = ``energy``).
    forces : (n_atoms, 3) array
        -dE/dR, eV/A.
    virial : (3, 3) array or None
        ``W = -dE/d(strain)``, eV (``W = -V * stress``; LAMMPS's virial), when asked.
    min_distance : float
        Shortest pair distance in the neighbour list, A (``inf`` without pairs).
    closest_pair : tuple of int
        The two atoms (indices) at ``min_distance`` (``(-1, -1)`` without pairs).
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray | None
    min_distance: float
    closest_pair: tuple[int, int] = (-1, -1)


class MixtureEvaluator:
    """Evaluate a :class:`MixturePotential` on one system whose atoms keep their identity.

    Parameters
    ----------
    potential : MixturePotential
        The mixture (moved to ``device``, eval mode).
    numbers : (n_atoms,) int array
        Atomic numbers.
    expert : (n_atoms,) int array
        Expert index of every atom (static).
    skin : float
        Verlet skin, A (0 = rebuild the neighbour list at every call).
    device : str or torch.device, optional
        Where to evaluate (default: where the potential's parameters are).
    centres_per_chunk : int or sequence of int (one per expert), optional
        Set the potential's :attr:`~pipeline.md.potential.MixturePotential.centres_per_chunk` (0 = one
        pass; default: leave it as it is).

    Attributes
    ----------
    neighbors : VerletList
    n_calls : int
    model_time_s : float
        Total wall time (s) of the evaluations (neighbour-list update, pair split, energies, backward pass).
    expert_time_s : dict[str, float]
        Accumulated time (s) per expert: forward only in one-pass mode (the backward pass is shared and not
        split), forward and backward with ``centres_per_chunk`` > 0.
    """

    def __init__(
        self,
        potential: MixturePotential,
        *,
        numbers: np.ndarray,
        expert: np.ndarray,
        skin: float,
        device: str | torch.device | None = None,
        centres_per_chunk: int | Sequence[int] | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(potential.parameters()).device
        self.potential = potential.to(self.device).eval()
        if centres_per_chunk is not None:
            self.potential.set_centres_per_chunk(centres_per_chunk)
        self.potential.record_timings = True
        numbers = np.asarray(numbers, dtype=np.int64)
        expert = np.asarray(expert, dtype=np.int64)
        if expert.shape != numbers.shape:
            raise ValueError(f"expert has shape {expert.shape}, the system has {numbers.shape[0]} atoms")
        self.n_atoms = int(numbers.shape[0])
        self.species = torch.as_tensor(species_indices(numbers, potential.species), device=self.device)
        self.expert = torch.as_tensor(expert, device=self.device)
        self.potential.check_expert(self.expert, self.n_atoms)
        self.neighbors = VerletList(cutoff=potential.r_max, skin=skin)
        self._edges: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n_calls = 0
        self.model_time_s = 0.0
        self.expert_time_s = {name: 0.0 for name in potential.names}

    def batch(self, positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool]) -> dict[str, torch.Tensor]:
        """The batch dict of the current positions (Verlet list updated, on the device)."""
        positions, rebuilt = self.neighbors.update(positions, cell, pbc)
        if rebuilt or self._edges is None:
            self._edges = (
                torch.as_tensor(self.neighbors.edge_index, device=self.device),
                torch.as_tensor(self.neighbors.shifts, device=self.device),
            )
        dtype = self.potential.dtype
        return {
            K.POSITIONS: torch.as_tensor(positions, dtype=dtype, device=self.device),
            K.SPECIES: self.species,
            K.CELL: torch.as_tensor(np.asarray(cell, dtype=np.float64).reshape(1, 3, 3), dtype=dtype, device=self.device),
            K.PBC: torch.as_tensor(np.asarray(pbc, dtype=bool).reshape(1, 3), device=self.device),
            K.BATCH: torch.zeros(self.n_atoms, dtype=torch.int64, device=self.device),
            K.NUM_ATOMS: torch.tensor([self.n_atoms], device=self.device),
            K.EDGE_INDEX: self._edges[0],
            K.EDGE_CELL_SHIFT: self._edges[1],
            K.R_MAX: torch.tensor(self.neighbors.cutoff + self.neighbors.skin, dtype=torch.float64),
        }

    def __call__(
        self, positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], *, virial: bool = False
    ) -> Evaluation:
        """Energy, per-atom energies, forces (and the virial) at ``positions``.

        Parameters
        ----------
        positions : (n_atoms, 3) array
            Positions, A, in atom-identity order (the order of ``numbers`` / ``expert``).
        cell : (3, 3) array
            Rows are the cell vectors, A. For ``virial`` the cell must have a non-zero volume (any
            third vector works for a slab: it cancels).
        pbc : three bools
        virial : bool
            Also compute ``W = -dE/d(strain)``.
        """
        if np.shape(positions) != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape ({self.n_atoms}, 3), got {np.shape(positions)}")
        start = time.perf_counter()
        batch = self.batch(positions, cell, pbc)
        split, lengths = self.potential.split_edges(batch, self.expert)
        out = self.potential(batch, expert=self.expert, compute_forces=True, compute_stress=virial, split=split)
        energies = out[K.PER_ATOM_ENERGY].detach().double().cpu().numpy()
        forces = out[K.FORCES].detach().double().cpu().numpy()
        w = None
        if virial:
            volume = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64))))
            w = -out[K.STRESS].detach().double().cpu().numpy()[0] * volume
        min_distance, closest = float("inf"), (-1, -1)
        if lengths.numel():
            shortest = int(torch.argmin(lengths))
            min_distance = float(lengths[shortest])
            closest = (int(self.neighbors.edge_index[0, shortest]), int(self.neighbors.edge_index[1, shortest]))
        self.model_time_s += time.perf_counter() - start
        for name, seconds in self.potential.timings.items():
            self.expert_time_s[name] += seconds
        self.n_calls += 1
        return Evaluation(
            energy=float(energies.sum()), energies=energies, forces=forces, virial=w, min_distance=min_distance,
            closest_pair=closest,
        )

    def timing_summary(self) -> dict[str, float]:
        """Calls, neighbour-list builds and times (s): model total, list builds, forward per expert and
        each expert's share of the forward time."""
        summary: dict[str, float] = {
            "calls": self.n_calls,
            "neighbor_builds": self.neighbors.n_builds,
            "neighbor_time_s": self.neighbors.build_time_s,
            "model_time_s": self.model_time_s,
        }
        summary.update({f"forward_{name}_s": seconds for name, seconds in self.expert_time_s.items()})
        total = sum(self.expert_time_s.values())
        summary.update({f"forward_share_{name}": seconds / total if total > 0 else float("nan")
                        for name, seconds in self.expert_time_s.items()})
        return summary
