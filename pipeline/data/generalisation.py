"""The generalisation set: structures that no training family of :mod:`pipeline.data.sampling` contains.

The training sampler builds bulk fcc Pt (1, 4, 8, 27, 32 atoms), clean Pt(111) 2x2 and 3x3 slabs of
``sample.clean_slab.layers`` (4) layers, CO at 1/4 ML (2x2: top, bridge, fcc, hcp), 1/2 ML (2x2 pairs) and
1/9 ML (3x3: top and fcc only), and gas-phase CO. The builder here makes what none of these contains
(:data:`KINDS`; one ideal geometry and one thermally rattled copy of each):

- ``thick_slab``, ``thick_slab_co_top``, ``thick_slab_co_bridge``, ``thick_slab_co_hcp``: 2x2 slabs with
  ``generalisation.thick_layers`` (6) layers, clean and with CO (1/4 ML);
- ``co_bridge_3x3``, ``co_hcp_3x3``: 1/9 ML CO at the 3x3 sites the sampler leaves out;
- ``coverage_2_9``, ``coverage_3_9``: 2/9 ML (top + fcc, far apart) and 1/3 ML (sqrt3 x sqrt3 R30 top) on 3x3;
  ``coverage_3_4``: the (2x2)-3CO structure (3/4 ML: top + fcc + hcp, 3.2 A apart) on a 2x2 slab;
- ``adatom``, ``adatom_co``: a Pt adatom in an fcc hollow of a 2x2 slab, bare and with CO on top of it;
- ``vacancy``, ``vacancy_co``: a 2x2 slab of 5 layers with one top-layer atom missing, bare and with CO on
  top of a neighbour of the vacancy;
- ``step``, ``step_co``: the stepped Pt(211) surface (3-atom (111) terraces, :func:`ase.build.fcc211`),
  bare and with CO on top of a step-edge atom;
- ``bulk_vacancy``: a 31-atom fcc cell (2x2x2 cubic minus one atom).

Every cell has at most ~42 atoms, so that one GPAW single point at the shipped ``label:`` settings costs a
few CPU-minutes at most (:func:`pipeline.data.sampling.estimated_cost`). Every frame's ``info`` has
``family`` (``bulk``, ``clean_slab``, ``slab_co``), ``group`` (the ideal and the rattled copy of one
kind share it), ``config_type`` (= the kind), ``structure_id`` (``gen-<kind>-<ideal|rattle>``; never a
training id), ``generalisation_kind``, ``ideal``, ``perturbation`` and ``sample_index``; CO frames also
``site`` and ``coverage_ml``.

Deterministic for ``generalisation.seed``: each rattled copy draws from its own generator seeded by
``(seed, crc32(structure id))``, as in the training sampler. The rattle is Gaussian, ``rattle_stdev_a`` on Pt
and ``rattle_adsorbate_stdev_a`` on C and O (so that the C-O bond stays within ~0.1 A of its length).

>>> from pipeline.config import config_from_dict
>>> frames = build_generalisation_set(config_from_dict({}))
>>> len(frames) >= 30, max(len(f) for f in frames) <= 50
(True, True)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, fcc211
from ase.io import write

from pipeline.atomic import write_atomic
from pipeline.config import Config, SampleSlabCOConfig
from pipeline.data.sampling import _rng, split_chunks

log = logging.getLogger(__name__)

STRUCTURE_ID_PREFIX = "gen-"
KINDS: tuple[str, ...] = (
    "thick_slab", "thick_slab_co_top", "thick_slab_co_bridge", "thick_slab_co_hcp", "co_bridge_3x3", "co_hcp_3x3",
    "coverage_2_9", "coverage_3_9", "coverage_3_4", "adatom", "adatom_co", "vacancy", "vacancy_co", "step", "step_co",
    "bulk_vacancy",
)
_ASE_SITE = {"top": "ontop", "bridge": "bridge", "fcc": "fcc", "hcp": "hcp"}


def _slab(a: float, size: tuple[int, int], layers: int, vacuum_a: float) -> Atoms:
    """Ideal Pt(111) slab (ase tags: 1 = top layer), pbc (True, True, False)."""
    slab = fcc111("Pt", (*size, layers), a=a, vacuum=vacuum_a, periodic=False)
    slab.pbc = (True, True, False)
    return slab


def _add_co(slab: Atoms, co: SampleSlabCOConfig, site: str, *, offset_a: tuple[float, float] = (0.0, 0.0)) -> None:
    """Upright CO at ``site`` of the first surface cell, moved in-plane by ``offset_a`` (A); in place."""
    height = {"top": co.height_top_a, "bridge": co.height_bridge_a, "fcc": co.height_fcc_a,
              "hcp": co.height_hcp_a}[site]
    add_adsorbate(slab, Atoms("CO", positions=[(0, 0, 0), (0, 0, co.c_o_bond_a)]), height, _ASE_SITE[site],
                  mol_index=0)
    slab.positions[-2:, :2] += np.asarray(offset_a, dtype=float)


def _co_above(atoms: Atoms, index: int, co: SampleSlabCOConfig) -> None:
    """Upright CO on top of atom ``index`` (C at ``height_top_a`` above it); in place."""
    c = atoms.positions[index] + [0.0, 0.0, co.height_top_a]
    atoms += Atoms("CO", positions=[c, c + [0.0, 0.0, co.c_o_bond_a]])


def _finish_slab(atoms: Atoms, vacuum_a: float) -> Atoms:
    """Re-centre along z (``vacuum_a`` below the slab and above the highest atom), drop ase.build info."""
    atoms.center(vacuum=vacuum_a, axis=2)
    atoms.pbc = (True, True, False)
    atoms.info.pop("adsorbate_info", None)
    return atoms


def _top_atoms(atoms: Atoms) -> np.ndarray:
    """Indices of the highest Pt layer (within 0.3 A of the highest Pt atom)."""
    pt = np.flatnonzero(atoms.numbers == 78)
    z = atoms.positions[pt, 2]
    return pt[z > z.max() - 0.3]


def _nearest(atoms: Atoms, candidates: Sequence[int], point: np.ndarray) -> int:
    """The candidate atom closest to ``point`` in the surface plane (minimum image in x, y)."""
    d = atoms.positions[list(candidates)] - point
    frac = np.linalg.solve(atoms.cell.array[:2, :2].T, d[:, :2].T).T
    frac -= np.round(frac)
    d_xy = frac @ atoms.cell.array[:2, :2]
    return int(list(candidates)[int(np.argmin(np.linalg.norm(d_xy, axis=1)))])


def _build_kind(kind: str, cfg: Config) -> tuple[Atoms, str, dict]:
    """The ideal structure of one kind: (atoms, family, extra info)."""
    s = cfg.sample
    a, vac, co, g = s.lattice_constant_a, s.clean_slab.vacuum_a, s.slab_co, cfg.generalisation
    a_nn = a / np.sqrt(2.0)
    if kind == "thick_slab":
        return _finish_slab(_slab(a, (2, 2), g.thick_layers, vac), vac), "clean_slab", {"slab_size": 2}
    if kind in ("thick_slab_co_top", "thick_slab_co_bridge", "thick_slab_co_hcp"):
        site = kind.rsplit("_", 1)[1]
        atoms = _slab(a, (2, 2), g.thick_layers, vac)
        _add_co(atoms, co, site)
        return _finish_slab(atoms, vac), "slab_co", {"site": site, "coverage_ml": 0.25, "slab_size": 2}
    if kind in ("co_bridge_3x3", "co_hcp_3x3"):
        site = kind.split("_")[1]
        atoms = _slab(a, (3, 3), s.clean_slab.layers, vac)
        _add_co(atoms, co, site)
        return _finish_slab(atoms, vac), "slab_co", {"site": site, "coverage_ml": 1 / 9, "slab_size": 3}
    if kind == "coverage_2_9":
        atoms = _slab(a, (3, 3), s.clean_slab.layers, vac)
        _add_co(atoms, co, "top")
        _add_co(atoms, co, "fcc", offset_a=(1.5 * a_nn, 0.5 * np.sqrt(3.0) * a_nn))
        return _finish_slab(atoms, vac), "slab_co", {"site": "top+fcc", "coverage_ml": 2 / 9, "slab_size": 3}
    if kind == "coverage_3_4":
        atoms = _slab(a, (2, 2), s.clean_slab.layers, vac)
        _add_co(atoms, co, "top")
        _add_co(atoms, co, "fcc", offset_a=(1.5 * a_nn, 0.5 * np.sqrt(3.0) * a_nn))  # + a1 + a2 of the 1x1 cell
        _add_co(atoms, co, "hcp")
        atoms.wrap()
        return _finish_slab(atoms, vac), "slab_co", {"site": "top+fcc+hcp", "coverage_ml": 0.75, "slab_size": 2}
    if kind == "coverage_3_9":
        atoms = _slab(a, (3, 3), s.clean_slab.layers, vac)
        # sqrt3 x sqrt3 R30: top sites at 0, a1 + a2 and 2 (a1 + a2) of the 3x3 surface cell (a1, a2 at 60 deg)
        step = np.array([1.5 * a_nn, 0.5 * np.sqrt(3.0) * a_nn])
        for k in range(3):
            _add_co(atoms, co, "top", offset_a=tuple(k * step))
        atoms.wrap()
        return _finish_slab(atoms, vac), "slab_co", {"site": "top", "coverage_ml": 1 / 3, "slab_size": 3}
    if kind in ("adatom", "adatom_co"):
        atoms = _slab(a, (2, 2), s.clean_slab.layers, vac)
        add_adsorbate(atoms, "Pt", a / np.sqrt(3.0), "fcc")  # one (111) interlayer spacing above the top layer
        extra = {"slab_size": 2}
        if kind == "adatom_co":
            _co_above(atoms, len(atoms) - 1, co)
            extra.update(site="adatom_top", coverage_ml=0.25)
        return _finish_slab(atoms, vac), "slab_co" if kind == "adatom_co" else "clean_slab", extra
    if kind in ("vacancy", "vacancy_co"):
        atoms = _slab(a, (2, 2), g.vacancy_layers, vac)
        top = _top_atoms(atoms)
        removed = atoms.positions[top[0]].copy()
        del atoms[int(top[0])]
        extra = {"slab_size": 2}
        if kind == "vacancy_co":
            neighbour = _nearest(atoms, _top_atoms(atoms), removed)
            _co_above(atoms, neighbour, co)
            extra.update(site="vacancy_neighbour_top", coverage_ml=0.25)
        return _finish_slab(atoms, vac), "slab_co" if kind == "vacancy_co" else "clean_slab", extra
    if kind in ("step", "step_co"):
        atoms = fcc211("Pt", (3, 2, g.step_layers), a=a, vacuum=vac, orthogonal=True)
        extra = {"slab_size": 2}
        if kind == "step_co":
            _co_above(atoms, int(_top_atoms(atoms)[0]), co)
            extra.update(site="step_edge_top", coverage_ml=0.5)
        return _finish_slab(atoms, vac), "slab_co" if kind == "step_co" else "clean_slab", extra
    if kind == "bulk_vacancy":
        atoms = bulk("Pt", "fcc", a=a, cubic=True).repeat(2)
        del atoms[0]
        return atoms, "bulk", {}
    raise ValueError(f"unknown generalisation kind {kind!r}; known: {', '.join(KINDS)}")


def build_generalisation_set(cfg: Config, kinds: Sequence[str] | None = None) -> list[Atoms]:
    """The generalisation structures, unlabelled: for each kind its ideal geometry and a rattled copy.

    Parameters
    ----------
    cfg : Config
        Uses ``generalisation`` (seed, layers, rattle) and ``sample`` (lattice constant, vacuum, CO heights
        and bond: the same as the training structures).
    kinds : sequence of str, optional
        Subset of :data:`KINDS` (default: ``generalisation.kinds``).

    Returns
    -------
    list of ase.Atoms
        ``2 * len(kinds)`` frames, ideal before rattled, in the order of ``kinds``.
    """
    g = cfg.generalisation
    frames: list[Atoms] = []
    for kind in kinds if kinds is not None else g.kinds:
        ideal, family, extra = _build_kind(kind, cfg)
        for perturbation in ("none", "rattle"):
            atoms = ideal.copy()
            sid = f"{STRUCTURE_ID_PREFIX}{kind}-{'ideal' if perturbation == 'none' else 'rattle'}"
            if perturbation == "rattle":
                sigma = np.where(atoms.numbers == 78, g.rattle_stdev_a, g.rattle_adsorbate_stdev_a)[:, None]
                atoms.positions += sigma * _rng(g.seed, sid).standard_normal(size=atoms.positions.shape)
                if atoms.pbc.all():
                    atoms.wrap()
            atoms.info.clear()
            atoms.info.update(family=family, group=f"{STRUCTURE_ID_PREFIX}{kind}", config_type=kind,
                              structure_id=sid, generalisation_kind=kind, ideal=perturbation == "none",
                              perturbation=perturbation, **extra)
            frames.append(atoms)
    for index, atoms in enumerate(frames):
        atoms.info["sample_index"] = index
    return frames


def min_distance(atoms: Atoms) -> float:
    """Shortest interatomic distance of ``atoms`` (A), periodic images included."""
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    return float(d[np.triu_indices(len(atoms), k=1)].min())


def write_generalisation_chunks(cfg: Config, outputs: Sequence[str | Path]) -> list[list[Atoms]]:
    """Build the set and write ``len(outputs)`` chunk files (extxyz, unlabelled) of similar estimated DFT cost.

    Raises
    ------
    ValueError
        If the number of outputs differs from ``generalisation.n_chunks``, or two atoms of a structure are
        closer than ``generalisation.min_distance_a``.
    """
    if len(outputs) != cfg.generalisation.n_chunks:
        raise ValueError(f"sample-generalisation: got {len(outputs)} output files but generalisation.n_chunks is "
                         f"{cfg.generalisation.n_chunks}")
    frames = build_generalisation_set(cfg)
    close = [(f.info["structure_id"], round(min_distance(f), 3)) for f in frames
             if min_distance(f) < cfg.generalisation.min_distance_a]
    if close:
        raise ValueError(f"generalisation structures with atoms closer than generalisation.min_distance_a "
                         f"({cfg.generalisation.min_distance_a} A): {close}")
    chunks = split_chunks(frames, len(outputs), cfg.label)
    for path, chunk in zip(outputs, chunks):
        write_atomic(path, _writer(chunk))
        log.info("wrote %d generalisation structures to %s", len(chunk), path)
    return chunks


def _writer(frames: list[Atoms]) -> Callable[[Path], None]:
    return lambda tmp: write(tmp, frames, format="extxyz")
