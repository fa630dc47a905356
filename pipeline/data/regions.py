"""Structure families and per-atom region labels (bulk / complex) by a geometric rule.

Families (:data:`FAMILIES`), used when ``info['family']`` does not name one:

- ``gas``: no substrate atom, or not periodic in the surface plane (a molecule or cluster);
- ``clean_slab`` / ``slab_co``: non-periodic along the third cell vector, or a vacuum gap along the
  surface normal larger than ``regions.vacuum_min_a``; ``slab_co`` when it has adsorbate atoms;
- ``bulk``: everything else (periodic, no vacuum gap);
- ``close_contact``: adsorbate-on-slab frames far from equilibrium, made to teach the repulsive wall
  (``info['config_type']`` among :data:`CLOSE_CONTACT_CONFIG_TYPES`: CO pressed into the surface,
  O-down, flat-lying and strongly distorted "hot" CO). They are their own family so that the split
  stratifies them and the accuracy table reports them apart from near-equilibrium frames.

Per-atom environments (:data:`ENVIRONMENTS`), in order of precedence:

- ``adsorbate``: atoms of ``regions.adsorbate_species`` (and of any other non-substrate element);
- ``adsorbate_neighbourhood``: substrate atoms within ``regions.adsorbate_radius_a`` of an adsorbate
  atom, periodic images included;
- ``surface``: substrate atoms in the ``surface_layers_top`` outermost layers on the adsorbate side
  (the +normal side of a clean slab) and the ``surface_layers_bottom`` outermost on the other side;
  layers are single-linkage clusters of heights along the surface normal (gap > layer_tolerance_a);
- ``bulk``: the rest.

``region`` is ``bulk`` for environment ``bulk`` and ``complex`` otherwise. In a bulk crystal no layer is a
surface, so a pure Pt crystal is all bulk; every atom of a gas-phase frame is complex.
The surface normal is n = a x b / |a x b| (a, b the first two cell vectors); heights are measured along n,
from the largest gap in the periodic direction, so slabs that wrap across the cell boundary are handled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import vesin
from ase import Atoms

from pipeline.config import RegionConfig

FAMILIES = ("bulk", "clean_slab", "slab_co", "close_contact", "gas")
REGIONS = ("bulk", "complex")
ENVIRONMENTS = ("adsorbate", "adsorbate_neighbourhood", "surface", "bulk")
SLAB_FAMILIES = ("clean_slab", "slab_co", "close_contact")
# config_type of the close-contact series of pipeline.data.sampling (CO/Pt(111) far from equilibrium)
CLOSE_CONTACT_CONFIG_TYPES = ("close", "flipped", "lying", "hot")


def substrate_mask(atoms: Atoms, cfg: RegionConfig) -> np.ndarray:
    """Boolean ``(n_atoms,)``: True for atoms of ``cfg.substrate_species``; the others are adsorbates."""
    return np.isin(atoms.get_chemical_symbols(), list(cfg.substrate_species))


def surface_normal(atoms: Atoms) -> np.ndarray:
    """Unit normal (3,) of the plane of the first two cell vectors; +z when they are degenerate."""
    normal = np.cross(atoms.cell.array[0], atoms.cell.array[1])
    norm = np.linalg.norm(normal)
    if norm < 1e-12:
        return np.array([0.0, 0.0, 1.0])
    normal = normal / norm
    c = atoms.cell.array[2]
    return -normal if np.dot(c, normal) < 0 else normal


def heights(atoms: Atoms) -> tuple[np.ndarray, float]:
    """Atom heights along the surface normal (A, lowest atom at 0) and the largest vacuum gap (A).

    Along a periodic third cell vector the heights are unwrapped from the largest gap between
    consecutive atom planes (the vacuum), so a slab split by the cell boundary comes out contiguous.
    Without periodicity along it the gap is infinite.
    """
    n = surface_normal(atoms)
    period = float(np.dot(atoms.cell.array[2], n))
    if not atoms.pbc[2] or period <= 1e-12:
        h = atoms.positions @ n
        return h - h.min(), float("inf")
    frac = atoms.cell.scaled_positions(atoms.positions)[:, 2] % 1.0
    h = frac * period
    order = np.sort(h)
    gaps = np.diff(np.concatenate([order, [order[0] + period]]))
    k = int(np.argmax(gaps))
    start = order[(k + 1) % len(order)]
    return (h - start) % period, float(gaps[k])


def cluster_layers(h: np.ndarray, tolerance: float) -> np.ndarray:
    """Layer index (0 = lowest) per height: a new layer starts where sorted heights jump > tolerance.

    >>> cluster_layers(np.array([0.0, 2.3, 0.1, 4.6, 2.2]), 0.7).tolist()
    [0, 1, 0, 2, 1]
    """
    if len(h) == 0:
        return np.zeros(0, dtype=int)
    order = np.argsort(h, kind="stable")
    jumps = np.diff(h[order]) > tolerance
    layer_sorted = np.concatenate([[0], np.cumsum(jumps)])
    layers = np.empty(len(h), dtype=int)
    layers[order] = layer_sorted
    return layers


def infer_family(atoms: Atoms, cfg: RegionConfig) -> str:
    """The family of a frame from its geometry alone (see the module docstring)."""
    substrate = substrate_mask(atoms, cfg)
    if not substrate.any() or not (atoms.pbc[0] or atoms.pbc[1]):
        return "gas"
    _, vacuum = heights(atoms)
    if vacuum > cfg.vacuum_min_a:
        return "slab_co" if (~substrate).any() else "clean_slab"
    return "bulk"


def family_of(atoms: Atoms, cfg: RegionConfig) -> tuple[str, str]:
    """``(family, how)``: ``info['family']`` when it names one of :data:`FAMILIES` (how = ``info``),
    else :func:`infer_family` (how = ``geometry``). An adsorbate-on-slab frame whose
    ``info['config_type']`` is one of :data:`CLOSE_CONTACT_CONFIG_TYPES` is ``close_contact``."""
    given = atoms.info.get("family")
    if isinstance(given, str) and given in FAMILIES:
        family, how = given, "info"
    else:
        family, how = infer_family(atoms, cfg), "geometry"
    if family == "slab_co" and atoms.info.get("config_type") in CLOSE_CONTACT_CONFIG_TYPES:
        family = "close_contact"
    return family, how


def _surface_layers(atoms: Atoms, substrate: np.ndarray, cfg: RegionConfig) -> np.ndarray:
    """Boolean ``(n_atoms,)``: substrate atoms in the outermost top/bottom layers of a slab."""
    h, _ = heights(atoms)
    layers = cluster_layers(h[substrate], cfg.layer_tolerance_a)
    n_layers = int(layers.max()) + 1 if len(layers) else 0
    adsorbate = ~substrate
    top_is_high = True
    if adsorbate.any():
        top_is_high = h[adsorbate].mean() >= h[substrate].mean()
    top_k, bottom_k = cfg.surface_layers_top, cfg.surface_layers_bottom
    high_k, low_k = (top_k, bottom_k) if top_is_high else (bottom_k, top_k)
    outer = set(range(max(n_layers - high_k, 0), n_layers)) | set(range(min(low_k, n_layers)))
    chosen = np.isin(layers, sorted(outer))
    mask = np.zeros(len(atoms), dtype=bool)
    mask[np.nonzero(substrate)[0][chosen]] = True
    return mask


def label_regions(atoms: Atoms, family: str, cfg: RegionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom ``region`` and ``environment`` labels.

    Parameters
    ----------
    atoms : ase.Atoms
        One frame (positions in A).
    family : str
        One of :data:`FAMILIES` (decides whether surface layers exist).
    cfg : RegionConfig
        Substrate/adsorbate species, ``adsorbate_radius_a``, surface layer counts, layer tolerance.

    Returns
    -------
    region : numpy.ndarray of str, shape (n_atoms,)
        ``bulk`` or ``complex``.
    environment : numpy.ndarray of str, shape (n_atoms,)
        One of :data:`ENVIRONMENTS`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    substrate = substrate_mask(atoms, cfg)
    adsorbate = ~substrate
    env = np.full(len(atoms), "bulk", dtype=f"<U{max(map(len, ENVIRONMENTS))}")
    if family == "gas":
        env[:] = "surface"  # substrate atoms of a cluster are all exposed
    elif family in SLAB_FAMILIES:
        env[_surface_layers(atoms, substrate, cfg)] = "surface"
    if adsorbate.any() and substrate.any():
        i, j = vesin.ase_neighbor_list("ij", atoms, cfg.adsorbate_radius_a)
        near = np.unique(j[adsorbate[i] & substrate[j]])
        env[near] = "adsorbate_neighbourhood"
    env[adsorbate] = "adsorbate"
    region = np.where(env == "bulk", "bulk", "complex").astype("<U7")
    return region, env


def region_summary(frames: Sequence[Atoms]) -> pd.DataFrame:
    """Atom counts per family (rows, plus ``all``) and environment / region (columns).

    Frames must carry ``info['family']`` and the per-atom arrays ``region`` and ``environment``.
    """
    rows = []
    for atoms in frames:
        env, count = np.unique(atoms.arrays["environment"], return_counts=True)
        row = {"family": atoms.info["family"], **dict(zip(env.tolist(), count.tolist()))}
        row["bulk_atoms"] = int(np.sum(atoms.arrays["region"] == "bulk"))
        row["complex_atoms"] = int(np.sum(atoms.arrays["region"] == "complex"))
        rows.append(row)
    columns = ["family", *ENVIRONMENTS, "bulk_atoms", "complex_atoms"]
    table = pd.DataFrame(rows, columns=columns).fillna(0)
    table = table.groupby("family", sort=True).sum().astype(int)
    table.loc["all"] = table.sum()
    return table.reset_index()
