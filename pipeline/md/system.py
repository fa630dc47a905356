"""The production cell of the MD stage: a Pt(111) slab with CO molecules on spread-out top sites.

The slab is ``ase.build.fcc111`` (periodic in the surface plane, vacuum along z; cell rows a, b in the
xy plane, c along z, which is also LAMMPS's triclinic convention). CO sits C-down on top sites of the
upper surface chosen by farthest-point sampling over the top-layer atoms (periodic in-plane
distances), starting from the first top-layer atom, so the molecules are as far apart as the cell allows
and the choice is deterministic.

>>> from pipeline.config import MDSystemConfig
>>> atoms = build_production_cell(MDSystemConfig(surface_size=(3, 3), layers=4, n_co=2))
>>> len(atoms), atoms.get_chemical_formula(), atoms.pbc.tolist()
(40, 'C2O2Pt36', [True, True, False])
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import fcc111
from ase.geometry import get_distances

from pipeline.config import MDSystemConfig


def spread_sites(points: np.ndarray, count: int, cell: np.ndarray, pbc: tuple[bool, bool, bool]) -> list[int]:
    """Indices of ``count`` of ``points`` chosen by farthest-point sampling (periodic distances).

    Parameters
    ----------
    points : (n, 3) array
        Candidate positions, A.
    count : int
        How many to choose (at most ``n``).
    cell : (3, 3) array
        Rows are the cell vectors, A.
    pbc : three bools
        Periodicity of the distances.

    Returns
    -------
    list of int
        Chosen indices, the first being 0.
    """
    if count > len(points):
        raise ValueError(f"cannot place {count} molecules on {len(points)} top sites")
    if count == 0:
        return []
    _, dist = get_distances(points, points, cell=cell, pbc=pbc)  # [n, n]
    chosen = [0]
    nearest = dist[0].copy()
    for _ in range(count - 1):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, dist[nxt])
    return chosen


def build_production_cell(cfg: MDSystemConfig) -> Atoms:
    """Pt(111) slab of ``cfg.layers`` layers with ``cfg.n_co`` CO molecules on top sites.

    Parameters
    ----------
    cfg : MDSystemConfig
        Surface repeats, layers, lattice constant (A), vacuum (A), number of CO, C height above Pt
        and C-O bond (A).

    Returns
    -------
    ase.Atoms
        Pt atoms first (``fcc111`` order, tag = layer counted from the top, 1 = top layer), then C, O
        of each molecule; ``pbc = (True, True, False)``; ``info['n_co']``.
    """
    nx, ny = (int(v) for v in cfg.surface_size)
    slab = fcc111("Pt", size=(nx, ny, cfg.layers), a=cfg.lattice_constant_a, vacuum=cfg.vacuum_a, orthogonal=False)
    slab.pbc = (True, True, False)
    slab.info.pop("adsorbate_info", None)  # a dict extxyz cannot store
    top = np.flatnonzero(slab.get_tags() == 1)
    sites = top[spread_sites(slab.positions[top], cfg.n_co, slab.cell.array, (True, True, False))]
    molecules = []
    for site in sites:
        c_pos = slab.positions[site] + np.array([0.0, 0.0, cfg.co_height_a])
        molecules.append(Atoms("CO", positions=[c_pos, c_pos + np.array([0.0, 0.0, cfg.c_o_bond_a])]))
    atoms = slab.copy()
    for molecule in molecules:
        molecule.set_tags(0)
        atoms.extend(molecule)
    # keep the vacuum above the molecules as large as below the slab
    if molecules:
        top_z = atoms.positions[:, 2].max()
        bottom_z = atoms.positions[:, 2].min()
        cell = atoms.cell.array.copy()
        cell[2, 2] = top_z - bottom_z + 2 * cfg.vacuum_a
        atoms.set_cell(cell, scale_atoms=False)
        atoms.positions[:, 2] += cfg.vacuum_a - bottom_z
    atoms.info["n_co"] = int(cfg.n_co)
    return atoms
