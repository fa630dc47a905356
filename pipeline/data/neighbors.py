"""Neighbour lists (vesin) and batching of ase.Atoms into the batch dict of :mod:`pipeline.data.keys`.

Edges are full lists (``(i, j)`` and ``(j, i)``), sorted by centre, with integer lattice shifts so
that ``r_ij = pos[j] - pos[i] + S @ cell``. Periodicity is taken per direction from ``atoms.pbc``;
non-periodic directions (slabs, gas molecules without a cell) get no images.

>>> from ase.build import molecule
>>> batch = collate([molecule("CO")], species=("Pt", "C", "O"), r_max=5.0)
>>> batch["edge_index"].tolist(), batch["species"].tolist()  # molecule("CO") lists O first
([[0, 1], [1, 0]], [2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import vesin
from ase import Atoms
from ase.data import atomic_numbers as _ATOMIC_NUMBERS

from pipeline.data import keys as K


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], r_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list within ``r_max`` (A), sorted by centre then neighbour.

    Parameters
    ----------
    positions : (n_atoms, 3) array
        Cartesian positions, A.
    cell : (3, 3) array
        Rows are the cell vectors, A. Directions that are not periodic may be zero.
    pbc : three bools
        Periodicity along each cell vector.
    r_max : float
        Cutoff, A.

    Returns
    -------
    edge_index : (2, n_edges) int64
        ``[centre, neighbour]``.
    shifts : (n_edges, 3) int64
        Lattice shift of the neighbour image (zero along non-periodic directions).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if r_max <= 0:
        raise ValueError(f"r_max must be positive, got {r_max}")
    lengths = np.linalg.norm(cell, axis=1)
    if np.any(pbc & (lengths == 0)):
        bad = np.flatnonzero(pbc & (lengths == 0)).tolist()
        raise ValueError(f"periodic direction(s) {bad} have a zero cell vector")
    if np.all(pbc) and abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError("the cell of a fully periodic structure is degenerate (zero volume)")
    if len(positions) == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    nl = vesin.NeighborList(cutoff=float(r_max), full_list=True)
    i, j, shifts = nl.compute(positions, cell, pbc.tolist(), quantities="ijS")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    shifts = shifts.astype(np.int64)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return np.stack([i[order], j[order]]), shifts[order]


def species_indices(numbers: np.ndarray, species: Sequence[str]) -> np.ndarray:
    """Index of each atomic number in ``species`` (chemical symbols); unknown elements raise."""
    table = np.full(119, -1, dtype=np.int64)
    for index, symbol in enumerate(species):
        if symbol not in _ATOMIC_NUMBERS:
            raise ValueError(f"unknown chemical symbol {symbol!r} in species {list(species)}")
        table[_ATOMIC_NUMBERS[symbol]] = index
    out = table[np.asarray(numbers, dtype=np.int64)]
    if np.any(out < 0):
        from ase.data import chemical_symbols

        unknown = sorted({chemical_symbols[z] for z in np.asarray(numbers)[out < 0]})
        raise ValueError(f"elements {unknown} are not among the model species {list(species)}")
    return out


def _targets(atoms: Atoms) -> dict[str, np.ndarray | float]:
    """Energy, forces and stress stored on ``atoms`` (by a calculator or SinglePointCalculator)."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    out: dict[str, np.ndarray | float] = {}
    if results.get("energy") is not None:
        out[K.ENERGY] = float(results["energy"])
    if results.get("forces") is not None:
        out[K.FORCES] = np.asarray(results["forces"], dtype=np.float64).reshape(len(atoms), 3)
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        out[K.STRESS] = stress.reshape(3, 3)
    return out


def collate(
    frames: Sequence[Atoms],
    *,
    species: Sequence[str],
    r_max: float,
    dtype: torch.dtype = torch.float64,
    with_targets: bool = True,
) -> dict[str, torch.Tensor]:
    """Batch several structures (of any sizes) into one dict with a joint neighbour graph.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Structures; targets are read from ``atoms.calc.results`` when present.
    species : sequence of str
        The model's chemical symbols; :data:`keys.SPECIES` indexes into it.
    r_max : float
        Neighbour cutoff, A.
    dtype : torch.dtype
        Floating dtype of positions, cell and targets.
    with_targets : bool
        Carry energy and forces (when every frame has them) and stress (with
        :data:`keys.STRESS_MASK`, when any frame has it).

    Returns
    -------
    dict[str, torch.Tensor]
        The keys of :mod:`pipeline.data.keys`.
    """
    if len(frames) == 0:
        raise ValueError("collate needs at least one structure")
    positions, numbers, cells, pbcs, edges, shifts, batch = [], [], [], [], [], [], []
    offset = 0
    for index, atoms in enumerate(frames):
        pos = atoms.get_positions()
        cell = atoms.cell.array
        edge_index, edge_shift = neighbor_list(pos, cell, atoms.pbc, r_max)
        positions.append(pos)
        numbers.append(atoms.numbers)
        cells.append(cell)
        pbcs.append(atoms.pbc)
        edges.append(edge_index + offset)
        shifts.append(edge_shift)
        batch.append(np.full(len(atoms), index, dtype=np.int64))
        offset += len(atoms)
    numbers_all = np.concatenate(numbers).astype(np.int64)
    out = {
        K.POSITIONS: torch.as_tensor(np.concatenate(positions), dtype=dtype),
        K.ATOMIC_NUMBERS: torch.as_tensor(numbers_all),
        K.SPECIES: torch.as_tensor(species_indices(numbers_all, species)),
        K.CELL: torch.as_tensor(np.stack(cells), dtype=dtype),
        K.PBC: torch.as_tensor(np.stack(pbcs), dtype=torch.bool),
        K.BATCH: torch.as_tensor(np.concatenate(batch)),
        K.NUM_ATOMS: torch.as_tensor([len(a) for a in frames], dtype=torch.int64),
        K.EDGE_INDEX: torch.as_tensor(np.concatenate(edges, axis=1)),
        K.EDGE_CELL_SHIFT: torch.as_tensor(np.concatenate(shifts)),
        K.R_MAX: torch.tensor(float(r_max), dtype=torch.float64),
    }
    if with_targets:
        out.update(_collate_targets(frames, dtype))
    return out


def _collate_targets(frames: Sequence[Atoms], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    targets = [_targets(atoms) for atoms in frames]
    out: dict[str, torch.Tensor] = {}
    for key in (K.ENERGY, K.FORCES):
        present = [key in t for t in targets]
        if all(present):
            values = [np.atleast_1d(t[key]) for t in targets]
            out[key] = torch.as_tensor(np.concatenate(values), dtype=dtype)
        elif any(present):
            missing = [i for i, p in enumerate(present) if not p]
            raise ValueError(f"frames {missing[:10]} have no {key} while others do; batch them separately")
    has_stress = [K.STRESS in t for t in targets]
    if any(has_stress):
        stress = np.stack([t.get(K.STRESS, np.zeros((3, 3))) for t in targets])
        out[K.STRESS] = torch.as_tensor(stress, dtype=dtype)
        out[K.STRESS_MASK] = torch.as_tensor(has_stress, dtype=torch.bool)
    return out


def average_num_neighbors(frames: Sequence[Atoms], r_max: float) -> float:
    """Mean number of neighbours within ``r_max`` per atom over ``frames`` (for edge-sum normalisation)."""
    n_edges = sum(neighbor_list(a.get_positions(), a.cell.array, a.pbc, r_max)[0].shape[1] for a in frames)
    n_atoms = sum(len(a) for a in frames)
    if n_atoms == 0:
        raise ValueError("average_num_neighbors needs at least one atom")
    return n_edges / n_atoms
