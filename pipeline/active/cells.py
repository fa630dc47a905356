"""The small exploration cells of the active-learning loop: Pt(111) slabs with CO, an adatom or a vacancy.

Every cell is small enough to label with DFT (13 to 47 atoms): 2x2 and 3x3 surface cells of 4 or 5 layers,
1/9 to 1/2 monolayer (ML) of upright CO on top, bridge or hollow sites, a Pt adatom on an fcc hollow, or a
top-layer vacancy. :data:`CELLS` names them (the names are the allowed values of
``active.explore.cells``); :func:`build_cell` builds one with the lattice constant, C-O bond and site
heights of the ``sample:`` section (the same geometry rules as the shipped set's sampling), periodic in
x and y, with ``vacuum_a`` of vacuum below the slab and above the highest atom.

Surface cells are addressed by integer offsets ``(i, j)`` along the surface lattice vectors a1, a2 of
:func:`ase.build.fcc111` (60 degrees apart), so ``(0, 0), (1, 1), (2, 2)`` of a 3x3 cell are the
(sqrt3 x sqrt3)R30 sites of 1/3 ML.

>>> atoms = build_cell("3x3x4-co-top", lattice_constant_a=3.97, sites=SiteHeights(), vacuum_a=7.0)
>>> len(atoms), atoms.get_chemical_formula(), atoms.info["coverage_ml"]
(38, 'COPt36', 0.1111111111111111)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate

from pipeline.config import SampleSlabCOConfig
from pipeline.data.sampling import make_slab

_ASE_SITE = {"top": "ontop", "bridge": "bridge", "fcc": "fcc", "hcp": "hcp"}


@dataclass(frozen=True)
class SiteHeights:
    """Height of the C atom above the top Pt layer per site (A) and the C-O bond (A)."""

    top: float = 1.85
    bridge: float = 1.50
    fcc: float = 1.30
    hcp: float = 1.30
    bond: float = 1.16

    @classmethod
    def from_sample(cls, cfg: SampleSlabCOConfig) -> SiteHeights:
        """The heights of the ``sample.slab_co`` section."""
        return cls(top=cfg.height_top_a, bridge=cfg.height_bridge_a, fcc=cfg.height_fcc_a, hcp=cfg.height_hcp_a,
                   bond=cfg.c_o_bond_a)


@dataclass(frozen=True)
class CellSpec:
    """One exploration cell.

    Attributes
    ----------
    size, layers : int
        ``size x size`` Pt(111) surface cell, ``layers`` Pt layers.
    co : tuple of (site, (i, j))
        One upright CO per entry, C down, on ``site`` (top, bridge, fcc, hcp) of surface cell ``(i, j)``.
    adatom : bool
        A Pt adatom on the fcc hollow of surface cell (1, 1); a CO whose site is ``adatom`` sits on top of it.
    vacancy : bool
        The top-layer Pt atom of surface cell (1, 1) is removed.
    """

    size: int
    layers: int
    co: tuple[tuple[str, tuple[int, int]], ...] = ()
    adatom: bool = False
    vacancy: bool = False

    @property
    def coverage_ml(self) -> float:
        """CO molecules per surface Pt atom of the ideal surface cell."""
        return len(self.co) / self.size**2


def _one(site: str, size: int, layers: int) -> CellSpec:
    return CellSpec(size, layers, ((site, (0, 0)),))


CELLS: dict[str, CellSpec] = {
    "2x2x4-clean": CellSpec(2, 4),
    **{f"2x2x4-co-{s}": _one(s, 2, 4) for s in ("top", "bridge", "fcc", "hcp")},
    **{f"2x2x5-co-{s}": _one(s, 2, 5) for s in ("top", "bridge")},
    "2x2x4-2co": CellSpec(2, 4, (("top", (0, 0)), ("fcc", (1, 1)))),
    **{f"3x3x4-co-{s}": _one(s, 3, 4) for s in ("top", "bridge", "fcc", "hcp")},
    "3x3x4-3co": CellSpec(3, 4, (("top", (0, 0)), ("top", (1, 1)), ("fcc", (2, 2)))),
    "3x3x4-adatom": CellSpec(3, 4, adatom=True),
    "3x3x4-adatom-co": CellSpec(3, 4, (("adatom", (1, 1)),), adatom=True),
    "3x3x4-vacancy-co": CellSpec(3, 4, (("top", (0, 0)),), vacancy=True),
    "3x3x5-co-top": _one("top", 3, 5),
    "3x3x5-vacancy-co": CellSpec(3, 5, (("top", (0, 0)),), vacancy=True),
}
"""The named exploration cells (the allowed values of ``active.explore.cells``)."""


def _top_layer(slab: Atoms) -> np.ndarray:
    """Indices of the Pt atoms of the top layer of an ideal ase.build slab."""
    z = slab.positions[:, 2]
    return np.flatnonzero(z > z.max() - 0.5)


def _surface_point(slab: Atoms, offset: tuple[int, int]) -> np.ndarray:
    """xy of the top-layer atom of surface cell 0 shifted by ``offset`` surface lattice vectors."""
    info = slab.info["adsorbate_info"]
    cell = np.asarray(info["cell"])  # (2, 2) rows = a1, a2 of the primitive surface cell (A)
    top = _top_layer(slab)
    origin = slab.positions[top[np.argmin(np.linalg.norm(slab.positions[top, :2], axis=1))], :2]
    return origin + np.asarray(offset, dtype=float) @ cell


def build_cell(name: str, *, lattice_constant_a: float, sites: SiteHeights, vacuum_a: float) -> Atoms:
    """The exploration cell ``name`` of :data:`CELLS` (positions in A), with its description in ``info``.

    ``info`` gets ``al_cell`` (the name), ``family`` (``slab_co`` with CO, else ``clean_slab``),
    ``slab_size``, ``layers``, ``coverage_ml``, ``adatom`` and ``vacancy``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if name not in CELLS:
        raise ValueError(f"unknown exploration cell {name!r}; known: {', '.join(CELLS)}")
    spec = CELLS[name]
    slab = make_slab(lattice_constant_a, spec.size, spec.layers, vacuum_a)
    adatom_xy = None
    if spec.vacancy:
        top = _top_layer(slab)
        target = _surface_point(slab, (1, 1))
        d = slab.cell.array[:2, :2]
        frac = np.linalg.solve(d.T, (slab.positions[top, :2] - target).T).T  # fractional xy offsets
        frac -= np.round(frac)
        del slab[int(top[np.argmin(np.linalg.norm(frac @ d, axis=1))])]
    if spec.adatom:
        interlayer = lattice_constant_a / np.sqrt(3.0)  # (111) layer spacing (A)
        add_adsorbate(slab, "Pt", interlayer, "fcc", offset=(1, 1))
        adatom_xy = slab.positions[-1, :2].copy()
    for site, offset in spec.co:
        co = Atoms("CO", positions=[(0.0, 0.0, 0.0), (0.0, 0.0, sites.bond)])
        if site == "adatom":
            if adatom_xy is None:
                raise ValueError(f"cell {name}: a CO on the adatom needs adatom=True")
            add_adsorbate(slab, co, lattice_constant_a / np.sqrt(3.0) + sites.top, tuple(adatom_xy), mol_index=0)
        else:
            add_adsorbate(slab, co, getattr(sites, site), _ASE_SITE[site], offset=offset, mol_index=0)
    slab.info.pop("adsorbate_info", None)
    slab.center(vacuum=vacuum_a, axis=2)
    slab.pbc = (True, True, False)
    slab.wrap()
    slab.info.update(
        al_cell=name,
        family="slab_co" if spec.co else "clean_slab",
        slab_size=spec.size,
        layers=spec.layers,
        coverage_ml=spec.coverage_ml,
        adatom=spec.adatom,
        vacancy=spec.vacancy,
    )
    return slab
