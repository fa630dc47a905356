"""The HF/LF partition rules: which expert evaluates each atom of a cell (a pure function of the cell).

One of the rules of ``md.partition.rule`` (:data:`RULES`) maps a starting cell to an expert per atom;
the MD stage (:mod:`pipeline.md.partition`: partition files, pictures) applies it once, so the
assignment then belongs to the atom, and training applies it to the interface cells of the mixture
agreement term (:mod:`pipeline.train.cells`), so that co-training aims at the partition MD uses.
Experts are numbered in the order of :data:`EXPERTS` (0 = ``hf``, 1 = ``lf``).

>>> from pipeline.config import MDPartitionConfig, MDSystemConfig, RegionConfig
>>> from pipeline.md.system import build_production_cell
>>> atoms = build_production_cell(MDSystemConfig(surface_size=(3, 3), layers=4, n_co=1))
>>> expert = partition_atoms(atoms, MDPartitionConfig(rule="indices", indices=(0, 1)), RegionConfig())
>>> expert[:3].tolist(), int((expert == 0).sum())
([0, 0, 1], 2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.geometry import get_distances

from pipeline.config import MDPartitionConfig, RegionConfig
from pipeline.data.regions import (
    cluster_layers,
    family_of,
    heights,
    label_regions,
    substrate_mask,
)
from pipeline.names import EXPERTS

HF, LF = 0, 1


def _adsorbate_radius(atoms: Atoms, cfg: MDPartitionConfig, regions: RegionConfig) -> np.ndarray:
    """HF = the ``complex`` region of :func:`pipeline.data.regions.label_regions` with this rule's radius
    and top-layer count (no bottom layers)."""
    rule = dataclasses.replace(
        regions, adsorbate_radius_a=cfg.radius_a, surface_layers_top=cfg.surface_layers, surface_layers_bottom=0
    )
    family, _ = family_of(atoms, rule)
    region, _ = label_regions(atoms, family, rule)
    return region == "complex"


def _z_slab(atoms: Atoms, cfg: MDPartitionConfig, regions: RegionConfig) -> np.ndarray:
    h, _ = heights(atoms)
    return h >= cfg.min_height_a


def _indices(atoms: Atoms, cfg: MDPartitionConfig, regions: RegionConfig) -> np.ndarray:
    index = np.asarray(cfg.indices, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= len(atoms)):
        raise ValueError(f"md.partition.indices must lie in [0, {len(atoms)}), got range [{index.min()}, {index.max()}]")
    mask = np.zeros(len(atoms), dtype=bool)
    mask[index] = True
    return mask


def _closest_fraction(atoms: Atoms, cfg: MDPartitionConfig, regions: RegionConfig) -> np.ndarray:
    adsorbate = ~substrate_mask(atoms, regions)
    if not adsorbate.any():
        raise ValueError("the closest_fraction rule needs adsorbate atoms (regions.adsorbate_species) in the cell")
    _, dist = get_distances(atoms.positions, atoms.positions[adsorbate], cell=atoms.cell, pbc=atoms.pbc)
    nearest = dist.min(axis=1)  # [n_atoms], 0 for the adsorbate atoms
    count = int(round(cfg.hf_fraction * len(atoms)))
    order = np.lexsort((np.arange(len(atoms)), nearest))  # ties broken by index: deterministic
    mask = np.zeros(len(atoms), dtype=bool)
    mask[order[:count]] = True
    return mask


RULES: dict[str, Callable[[Atoms, MDPartitionConfig, RegionConfig], np.ndarray]] = {
    "adsorbate_radius": _adsorbate_radius,
    "z_slab": _z_slab,
    "indices": _indices,
    "closest_fraction": _closest_fraction,
}


def partition_atoms(atoms: Atoms, cfg: MDPartitionConfig, regions: RegionConfig) -> np.ndarray:
    """Expert of every atom by the rule ``cfg.rule``.

    Parameters
    ----------
    atoms : ase.Atoms
        The starting cell (positions in A).
    cfg : MDPartitionConfig
        Rule and its parameters.
    regions : RegionConfig
        Substrate and adsorbate species and the layer tolerance (A) used by the geometric rules.

    Returns
    -------
    numpy.ndarray of int64, shape (n_atoms,)
        :data:`HF` (0) or :data:`LF` (1) per atom.
    """
    if cfg.rule not in RULES:
        raise ValueError(f"unknown partition rule {cfg.rule!r}; known: {', '.join(RULES)}")
    hf = np.asarray(RULES[cfg.rule](atoms, cfg, regions), dtype=bool)
    return np.where(hf, HF, LF).astype(np.int64)


def bottom_layers(atoms: Atoms, n_layers: int, regions: RegionConfig) -> np.ndarray:
    """Boolean ``(n_atoms,)``: substrate atoms in the ``n_layers`` lowest layers (along the surface normal).

    Layers are clusters of heights (:func:`pipeline.data.regions.cluster_layers`, tolerance
    ``regions.layer_tolerance_a``).
    """
    mask = np.zeros(len(atoms), dtype=bool)
    substrate = substrate_mask(atoms, regions)
    if n_layers <= 0 or not substrate.any():
        return mask
    h, _ = heights(atoms)
    layers = cluster_layers(h[substrate], regions.layer_tolerance_a)
    mask[np.flatnonzero(substrate)[layers < n_layers]] = True
    return mask
