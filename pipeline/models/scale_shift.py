"""Per-species scale and shift of atomic energies, and their estimates from training frames.

The network's raw atomic energy of atom i (species s) becomes ``scale[s] * e_i + shift[s]``:

- the shifts are per-element reference energies from a least-squares fit of the total energies,
  ``E_frame ~ sum_s n_s(frame) shift[s]`` (minimum-norm solution when elements always occur in
  fixed ratios, e.g. C and O only as CO; only the sums that occur in the data are determined);
- the scales are the RMS of the force components on atoms of each species (the global RMS for
  species without forces), the natural energy scale of a force-trained potential.

>>> import numpy as np
>>> from ase import Atoms
>>> from ase.calculators.singlepoint import SinglePointCalculator
>>> frames = []
>>> for n in (1, 2, 3):
...     atoms = Atoms("Pt" * n, positions=np.arange(3 * n).reshape(n, 3) * 3.0)
...     atoms.calc = SinglePointCalculator(atoms, energy=-5.0 * n, forces=np.ones((n, 3)))
...     frames.append(atoms)
>>> fit_energy_shifts(frames, ("Pt", "C")).round(6).tolist(), force_rms_scales(frames, ("Pt", "C")).tolist()
([-5.0, 0.0], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from pipeline.data.neighbors import species_indices


def _energy(atoms: Atoms) -> float | None:
    results = atoms.calc.results if atoms.calc is not None else {}
    return None if results.get("energy") is None else float(results["energy"])


def _forces(atoms: Atoms) -> np.ndarray | None:
    results = atoms.calc.results if atoms.calc is not None else {}
    return None if results.get("forces") is None else np.asarray(results["forces"], dtype=np.float64)


def fit_energy_shifts(frames: Sequence[Atoms], species: Sequence[str]) -> np.ndarray:
    """Least-squares per-element reference energies (eV), shape ``(len(species),)``.

    Frames without an energy are skipped; elements absent from every frame get 0.
    """
    rows, energies = [], []
    for atoms in frames:
        energy = _energy(atoms)
        if energy is None:
            continue
        rows.append(np.bincount(species_indices(atoms.numbers, species), minlength=len(species)))
        energies.append(energy)
    if not rows:
        raise ValueError("fit_energy_shifts needs at least one frame with an energy")
    counts = np.asarray(rows, dtype=np.float64)
    shifts, *_ = np.linalg.lstsq(counts, np.asarray(energies), rcond=None)
    return shifts


def force_rms_scales(frames: Sequence[Atoms], species: Sequence[str]) -> np.ndarray:
    """RMS force component (eV/A) on atoms of each species, shape ``(len(species),)``.

    Species without force data get the RMS over all atoms.
    """
    sums = np.zeros(len(species))
    counts = np.zeros(len(species))
    for atoms in frames:
        forces = _forces(atoms)
        if forces is None:
            continue
        index = species_indices(atoms.numbers, species)
        np.add.at(sums, index, (forces**2).sum(axis=1))
        np.add.at(counts, index, 3)
    if counts.sum() == 0:
        raise ValueError("force_rms_scales needs at least one frame with forces")
    global_rms = np.sqrt(sums.sum() / counts.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.where(counts > 0, np.sqrt(sums / np.maximum(counts, 1)), global_rms)
    return np.where(rms > 0, rms, 1.0)


class PerSpeciesScaleShift(torch.nn.Module):
    """``e -> scale[species] * e + shift[species]`` with fixed (buffer) scales and shifts.

    Shapes: ``energies`` ``(n,)``, ``species`` ``(n,)`` -> ``(n,)``.
    """

    def __init__(self, num_species: int) -> None:
        super().__init__()
        self.register_buffer("scales", torch.ones(num_species))
        self.register_buffer("shifts", torch.zeros(num_species))

    def set(self, *, scales: Sequence[float] | np.ndarray, shifts: Sequence[float] | np.ndarray) -> None:
        """Replace scales and shifts (one value per species)."""
        scales_t = torch.as_tensor(np.asarray(scales, dtype=np.float64), dtype=self.scales.dtype)
        shifts_t = torch.as_tensor(np.asarray(shifts, dtype=np.float64), dtype=self.shifts.dtype)
        for name, value in (("scales", scales_t), ("shifts", shifts_t)):
            if value.shape != self.scales.shape:
                raise ValueError(f"{name} must have shape {tuple(self.scales.shape)}, got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} must be finite, got {value.tolist()}")
        self.scales.copy_(scales_t)
        self.shifts.copy_(shifts_t)

    def forward(self, energies: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return energies * self.scales.index_select(0, species) + self.shifts.index_select(0, species)
