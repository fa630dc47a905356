"""Where the adsorbates are at the end of a slab MD run: still adsorbed, inside the slab, desorbed, broken.

Energy conservation says nothing about whether a trajectory is physical: a potential with a hole at
short range conserves energy while a molecule sinks into the surface. :func:`adsorbate_report`
compares the final structure with the initial one and flags, per carbon atom of a CO molecule,

- ``dissociated``: its nearest oxygen is farther than ``max_bond_a``;
- ``below_surface``: its height above the top substrate layer (the atoms of the initial top layer,
  followed by identity) fell below ``min_height_a`` (the molecule entered the slab);
- ``adsorbed``: otherwise, if a substrate atom is within ``max_substrate_bond_a`` (chemisorbed: Pt-C is
  1.85-2.1 A on top, bridge and hollow sites);
- ``desorbed``: otherwise (no substrate atom within bonding distance: the molecule left or floats).

Each molecule also reports its height and its C-substrate distance.

Heights are measured along the surface normal (:func:`pipeline.data.regions.heights`), distances
with the minimum-image convention. Lengths in A.

>>> from ase.build import add_adsorbate, fcc111
>>> from ase import Atoms
>>> slab = fcc111("Pt", (2, 2, 3), a=3.97, vacuum=6.0)
>>> add_adsorbate(slab, Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.15]]), 1.85, "ontop")
>>> moved = slab.copy(); moved.positions[-2:, 2] += 10.0   # CO leaves
>>> adsorbate_report(slab, moved, carbon="C", oxygen="O", substrate=("Pt",))["warnings"]
['C atom 12: desorbed (height 11.85 A above the top layer, nearest substrate atom 11.85 A)']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.geometry import get_distances

from pipeline.data.regions import cluster_layers, heights


def adsorbate_report(
    initial: Atoms,
    final: Atoms,
    *,
    carbon: str = "C",
    oxygen: str = "O",
    substrate: Sequence[str] = ("Pt",),
    layer_tolerance_a: float = 0.7,
    min_height_a: float = 0.5,
    max_substrate_bond_a: float = 2.5,
    max_bond_a: float = 1.6,
) -> dict[str, object]:
    """Per-molecule state of the CO adsorbates of a slab after MD (see the module docstring).

    Returns
    -------
    dict
        ``molecules``: one dict per carbon (``index``, ``height_a``, ``bond_a`` (C-O), ``substrate_a``
        (nearest substrate atom), ``state``);
        ``counts``: molecules per state (``adsorbed``, ``below_surface``, ``desorbed``,
        ``dissociated``); ``warnings``: one line per molecule that is not adsorbed.
        Empty lists and counts when the structure has no carbon or no substrate.
    """
    if len(initial) != len(final):
        raise ValueError(f"initial and final structures differ in size: {len(initial)} vs {len(final)}")
    symbols = np.array(initial.get_chemical_symbols())
    carbons = np.flatnonzero(symbols == carbon)
    oxygens = np.flatnonzero(symbols == oxygen)
    sub = np.flatnonzero(np.isin(symbols, list(substrate)))
    counts = {"adsorbed": 0, "below_surface": 0, "desorbed": 0, "dissociated": 0}
    out: dict[str, object] = {"molecules": [], "counts": counts, "warnings": []}
    if len(carbons) == 0 or len(sub) == 0:
        return out
    h0, _ = heights(initial)
    layer = cluster_layers(h0[sub], layer_tolerance_a)
    top = sub[layer == layer.max()]
    h, _ = heights(final)
    surface = float(np.mean(h[top]))
    bonds = np.full(len(carbons), np.inf)
    if len(oxygens):
        _, dist = get_distances(final.positions[carbons], final.positions[oxygens], cell=final.cell, pbc=final.pbc)
        bonds = dist.min(axis=1)
    _, to_substrate = get_distances(final.positions[carbons], final.positions[sub], cell=final.cell, pbc=final.pbc)
    nearest = to_substrate.min(axis=1)
    for c, bond, c_sub in zip(carbons, bonds, nearest):
        height = float(h[c] - surface)
        if bond > max_bond_a:
            state = "dissociated"
        elif height < min_height_a:
            state = "below_surface"
        elif c_sub <= max_substrate_bond_a:
            state = "adsorbed"
        else:
            state = "desorbed"
        counts[state] += 1
        out["molecules"].append({"index": int(c), "height_a": height, "bond_a": float(bond),
                                 "substrate_a": float(c_sub), "state": state})
        if state != "adsorbed":
            detail = (f"C-O {bond:.2f} A" if state == "dissociated" else
                      f"height {height:.2f} A above the top layer, nearest substrate atom {c_sub:.2f} A")
            out["warnings"].append(f"{carbon} atom {int(c)}: {state.replace('_', ' ')} ({detail})")
    return out
