"""Structure sampling of the periodic-table set of the MoE routing study (issue 20; labelled by a teacher, NOT DFT).

Element-wise routing is meant to learn periodic-table trends, which 7 EMT metals cannot show. This set spans
alkali and alkaline-earth metals, non-magnetic 3d, 4d and 5d transition metals, the noble metals, p-block metals,
metalloids and light non-metals (:data:`ELEMENT_FAMILIES`; ``moe_study.periodic.elements`` picks from them).
Magnetic 3d metals (:data:`MAGNETIC`) are never sampled: the teacher, SevenNet-0, learned spin-polarised PBE(+U)
for them, and the DFT check (:mod:`pipeline.data.teacher_check`) is spin-paired. No frame puts O with a metal that
Materials Project treats with PBE+U (:data:`PLUS_U`). Families (``info['family']``):

- ``bulk``: one element in ASE's reference crystal or in fcc, bcc, hcp, sc or diamond
  (:mod:`pipeline.data.periodic_lattice` gives the length scale and says where it comes from);
- ``alloy``: two metals of similar size (reference nearest-neighbour distances within ``size_mismatch_max``),
  random occupations of fcc/bcc/hcp supercells or ordered L1_2, L1_0 and B2 cells, at the Vegard length scale;
- ``compound``: rocksalt, zincblende, wurtzite and CsCl binaries at experimental lattice constants
  (:data:`pipeline.data.periodic_lattice.COMPOUNDS`);
- ``surface``: 2x2 slabs of 3 layers of a metal (fcc111/fcc100, bcc110/bcc100, hcp0001 after its reference
  lattice; pbc (True, True, False), ``vacuum_a`` on each side), clean or with one or two of H, C, N, O, CO, OH.

Bulk, alloy and compound cells get one perturbation (``info['perturbation']``): ``eos`` (isotropic strain up to
``iso_strain_max``, no rattle), ``strain`` (random symmetric strain up to ``strain_max`` and a rattle of
``rattle_stdev_a``) or ``rattle``; slabs are rattled (adsorbate atoms by half of ``rattle_stdev_a``). Cells are
repeated to 8 or 16 atoms (one bulk or random-alloy cell in ten to 32), never beyond ``max_atoms``. The elements
of each family are taken in turn (structure ``i`` of a family uses element ``i mod n``), so every element is
covered; every other choice draws from a generator seeded by ``(seed, crc32(structure id))``, so a structure does
not change when another family's count does.

Every frame carries ``info``: ``family``, ``elements`` (sorted symbols, space-separated), ``structure_id``,
``config_type`` (``family_lattice-or-prototype_perturbation``), ``group`` (frames of one element/lattice,
composition/prototype or substrate/facet: kept in one split), ``perturbation``, ``length_source``,
``sample_index``.

>>> from pipeline.config import MoEStudyPeriodicConfig
>>> frames = sample_periodic(MoEStudyPeriodicConfig(n_bulk=2, n_alloys=2, n_compounds=2, n_surfaces=2))
>>> sorted({f.info["family"] for f in frames}), max(len(f) for f in frames) <= 32
(['alloy', 'bulk', 'compound', 'surface'], True)
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bcc100, bcc110, fcc100, fcc111, hcp0001
from ase.io import write

from pipeline.atomic import write_atomic
from pipeline.config import MoEStudyPeriodicConfig
from pipeline.data.periodic_lattice import (
    COMPOUNDS,
    Compound,
    compound_cell,
    element_cell,
    lattice_cell,
    lattice_distance,
    nearest_neighbour_distance,
    reference_cell,
    reference_symmetry,
    supercell,
)

log = logging.getLogger(__name__)

FAMILIES = ("bulk", "alloy", "compound", "surface")
#: periodic-table family of every element the set can hold (the routing PCA colours by these)
ELEMENT_FAMILIES: dict[str, str] = {
    **dict.fromkeys(("Li", "Na", "K"), "alkali"),
    **dict.fromkeys(("Be", "Mg", "Ca", "Sr"), "alkaline earth"),
    **dict.fromkeys(("Sc", "Ti", "V", "Zn"), "3d (non-magnetic)"),
    **dict.fromkeys(("Y", "Zr", "Nb", "Mo", "Ru", "Rh", "Pd", "Cd"), "4d"),
    **dict.fromkeys(("Hf", "Ta", "W", "Re", "Os", "Ir", "Pt"), "5d"),
    **dict.fromkeys(("Cu", "Ag", "Au"), "noble"),
    **dict.fromkeys(("Al", "Ga", "In", "Sn", "Pb"), "p-block metal"),
    **dict.fromkeys(("B", "Si", "Ge", "Sb"), "metalloid"),
    **dict.fromkeys(("H", "C", "N", "O"), "non-metal"),
}
#: spin-polarised in the teacher's training data: never sampled
MAGNETIC = frozenset({"Cr", "Mn", "Fe", "Co", "Ni"})
#: Materials Project's PBE+U metals (+U with O or F present): never in a frame with O
PLUS_U = frozenset({"V", "Cr", "Mn", "Fe", "Co", "Ni", "Mo", "W"})
_METAL_FAMILIES = ("alkali", "alkaline earth", "3d (non-magnetic)", "4d", "5d", "noble", "p-block metal")
_MOLECULAR = frozenset({"H", "N", "O"})  # diatomic gases: in compounds and adsorbates only
_FACETS = {"fcc": (fcc111, fcc100), "bcc": (bcc110, bcc100), "hcp": (hcp0001,)}
#: adsorbates: (symbols, positions relative to the binding atom in A, heights above the top layer at
#: (ontop, bridge, hollow) sites in A)
ADSORBATES: dict[str, tuple[str, tuple[tuple[float, float, float], ...], tuple[float, float, float]]] = {
    "H": ("H", ((0, 0, 0),), (1.55, 1.20, 0.95)),
    "C": ("C", ((0, 0, 0),), (1.75, 1.40, 1.05)),
    "N": ("N", ((0, 0, 0),), (1.80, 1.40, 1.10)),
    "O": ("O", ((0, 0, 0),), (1.85, 1.45, 1.20)),
    "CO": ("CO", ((0, 0, 0), (0, 0, 1.15)), (1.85, 1.55, 1.35)),
    "OH": ("OH", ((0, 0, 0), (0, 0, 0.97)), (2.00, 1.60, 1.40)),
}
_PERTURBATIONS = ("eos", "strain", "rattle")
_PERTURBATION_P = (0.2, 0.4, 0.4)


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def check_elements(elements: Sequence[str]) -> None:
    """Raise ``ValueError`` for a magnetic 3d metal or an element the set does not know."""
    magnetic = sorted(set(elements) & MAGNETIC)
    if magnetic:
        raise ValueError(f"magnetic elements {magnetic} cannot be in the periodic set (the teacher is spin-polarised "
                         "there, the DFT check spin-paired)")
    unknown = sorted(set(elements) - set(ELEMENT_FAMILIES))
    if unknown:
        raise ValueError(f"elements {unknown} are not in pipeline.data.periodic_set.ELEMENT_FAMILIES")


def element_roles(elements: Sequence[str]) -> dict[str, list[str]]:
    """The elements of each family, in ``elements`` order: ``bulk`` (not H, N, O), ``alloy`` (metals),
    ``compound`` (the :data:`COMPOUNDS` whose elements are all present, as ``formula/prototype``), ``surface``
    (metals with an fcc, bcc or hcp reference crystal)."""
    check_elements(elements)
    chosen = set(elements)
    metals = [s for s in elements if ELEMENT_FAMILIES[s] in _METAL_FAMILIES]
    return {
        "bulk": [s for s in elements if s not in _MOLECULAR],
        "alloy": metals,
        "compound": [c.formula + "/" + c.prototype for c in COMPOUNDS if set(c.elements) <= chosen],
        "surface": [s for s in metals if reference_symmetry(s) in _FACETS and reference_cell(s) is not None],
    }


# ----------------------------------------------------------------------------------------------
# perturbations and tags
# ----------------------------------------------------------------------------------------------


def _strain(atoms: Atoms, eps: np.ndarray) -> None:
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)


def perturb(atoms: Atoms, kind: str, cfg: MoEStudyPeriodicConfig, rng: np.random.Generator) -> Atoms:
    """Apply perturbation ``kind`` (``eos``, ``strain`` or ``rattle``; see the module docstring) in place."""
    if kind == "eos":
        _strain(atoms, np.eye(3) * rng.uniform(-cfg.iso_strain_max, cfg.iso_strain_max))
    elif kind == "strain":
        eps = rng.uniform(-cfg.strain_max, cfg.strain_max, size=(3, 3))
        _strain(atoms, 0.5 * (eps + eps.T))
        atoms.rattle(cfg.rattle_stdev_a, rng=rng)
    elif kind == "rattle":
        atoms.rattle(cfg.rattle_stdev_a, rng=rng)
    else:
        raise ValueError(f"unknown perturbation {kind!r}; valid: {list(_PERTURBATIONS)}")
    return atoms


def _target(rng: np.random.Generator, max_atoms: int, *, allow_large: bool) -> int:
    """Supercell size: 8 or 16 atoms, 32 for one cell in ten when ``allow_large`` (capped by ``max_atoms``)."""
    target = int(rng.choice((8, 16)))
    if allow_large and rng.random() < 0.1:
        target = 32
    return min(target, max_atoms)


def _tag(atoms: Atoms, *, family: str, sid: str, config_type: str, group: str, perturbation: str,
         length_source: str) -> Atoms:
    atoms.info.clear()
    atoms.info.update(family=family, elements=" ".join(sorted(set(atoms.get_chemical_symbols()))),
                      structure_id=sid, config_type=config_type, group=group, perturbation=perturbation,
                      length_source=length_source, ideal=False)
    return atoms


# ----------------------------------------------------------------------------------------------
# the four families
# ----------------------------------------------------------------------------------------------


def bulk_frame(symbol: str, sid: str, cfg: MoEStudyPeriodicConfig, seed: int) -> Atoms:
    """One elemental cell: reference crystal or fcc/bcc/hcp/sc/diamond, repeated, perturbed."""
    rng = _rng(seed, sid)
    lattice = str(rng.choice(("reference", "reference", "fcc", "bcc", "hcp", "sc", "diamond")))
    atoms = supercell(element_cell(symbol, lattice), _target(rng, cfg.max_atoms, allow_large=True))
    kind = str(rng.choice(_PERTURBATIONS, p=_PERTURBATION_P))
    perturb(atoms, kind, cfg, rng)
    name = lattice
    if lattice == "reference":  # ASE's reference crystal, or fcc where ASE cannot build it (element_cell)
        name = reference_symmetry(symbol) if reference_cell(symbol) is not None else "fcc"
    return _tag(atoms, family="bulk", sid=sid, config_type=f"bulk_{name}_{kind}", group=f"bulk-{symbol}-{name}",
                perturbation=kind, length_source=nearest_neighbour_distance(symbol)[1])


def alloy_partner(first: str, metals: Sequence[str], cfg: MoEStudyPeriodicConfig, rng: np.random.Generator) -> str:
    """A random second metal whose nearest-neighbour distance is within ``size_mismatch_max`` of ``first``'s
    (the nearest in size when none is)."""
    d0 = nearest_neighbour_distance(first)[0]
    others = [m for m in metals if m != first]
    mismatch = np.array([abs(nearest_neighbour_distance(m)[0] - d0) / d0 for m in others])
    fits = [m for m, x in zip(others, mismatch) if x <= cfg.size_mismatch_max]
    return str(rng.choice(fits)) if fits else others[int(np.argmin(mismatch))]


def alloy_frame(first: str, metals: Sequence[str], sid: str, cfg: MoEStudyPeriodicConfig, seed: int) -> Atoms:
    """One binary alloy cell: random occupation of an fcc/bcc/hcp supercell, or ordered L1_2, L1_0 or B2."""
    rng = _rng(seed, sid)
    second = alloy_partner(first, metals, cfg, rng)
    kind = str(rng.choice(("random_fcc", "random_bcc", "random_hcp", "L1_2", "L1_0", "B2")))
    if kind.startswith("random"):
        x = float(rng.choice((0.25, 0.5, 0.75)))
        lattice = kind.removeprefix("random_")
        d = (1 - x) * lattice_distance(first, lattice) + x * lattice_distance(second, lattice)
        atoms = supercell(lattice_cell(lattice, d, first), _target(rng, cfg.max_atoms, allow_large=True))
        n_second = max(1, min(len(atoms) - 1, int(round(x * len(atoms)))))
        symbols = np.array([first] * len(atoms), dtype=object)
        symbols[rng.choice(len(atoms), size=n_second, replace=False)] = second
        atoms.set_chemical_symbols(list(symbols))
    else:
        # fcc cubic cell sites: (0,0,0), (0,.5,.5), (.5,0,.5), (.5,.5,0); bcc cubic: (0,0,0), (.5,.5,.5)
        lattice, pattern = {"L1_2": ("fcc", (1, 0, 0, 0)), "L1_0": ("fcc", (0, 1, 1, 0)), "B2": ("bcc", (0, 1))}[kind]
        x = sum(pattern) / len(pattern)
        d = (1 - x) * lattice_distance(first, lattice) + x * lattice_distance(second, lattice)
        cell = lattice_cell(lattice, d, first)
        cell.set_chemical_symbols([second if p else first for p in pattern])
        atoms = supercell(cell, _target(rng, cfg.max_atoms, allow_large=False))
    perturbation = str(rng.choice(_PERTURBATIONS, p=_PERTURBATION_P))
    perturb(atoms, perturbation, cfg, rng)
    pair = "".join(sorted((first, second)))
    sources = ", ".join(sorted({nearest_neighbour_distance(s)[1] for s in (first, second)}))
    return _tag(atoms, family="alloy", sid=sid, config_type=f"alloy_{kind}_{perturbation}",
                group=f"alloy-{pair}-{kind}", perturbation=perturbation, length_source=f"vegard({sources})")


def compound_frame(compound: Compound, sid: str, cfg: MoEStudyPeriodicConfig, seed: int) -> Atoms:
    """One binary compound cell (:data:`COMPOUNDS`), repeated to 8 or 16 atoms, perturbed."""
    rng = _rng(seed, sid)
    atoms = supercell(compound_cell(compound), _target(rng, cfg.max_atoms, allow_large=False))
    kind = str(rng.choice(_PERTURBATIONS, p=_PERTURBATION_P))
    perturb(atoms, kind, cfg, rng)
    return _tag(atoms, family="compound", sid=sid, config_type=f"compound_{compound.prototype}_{kind}",
                group=f"compound-{compound.formula}-{compound.prototype}", perturbation=kind,
                length_source="experimental")


def _site_height(site: str, heights: tuple[float, float, float]) -> float:
    if site == "ontop":
        return heights[0]
    return heights[1] if "bridge" in site else heights[2]


def surface_frame(symbol: str, adsorbates: Sequence[str], sid: str, cfg: MoEStudyPeriodicConfig, seed: int) -> Atoms:
    """A 2x2, 3-layer slab of ``symbol`` (a facet of its reference lattice at ASE's reference lattice constants),
    clean or with one or two adsorbates from ``adsorbates`` on random sites, rattled (adsorbates half as much)."""
    rng = _rng(seed, sid)
    lattice = reference_symmetry(symbol)
    build = _FACETS[lattice][int(rng.integers(len(_FACETS[lattice])))]
    ref = reference_cell(symbol)
    kwargs = {"a": ref.cell.lengths()[0]}
    if lattice == "hcp":
        kwargs["c"] = ref.cell.lengths()[2]
    slab = build(symbol, size=(2, 2, 3), vacuum=cfg.vacuum_a, **kwargs)
    allowed = [a for a in adsorbates if not (symbol in PLUS_U and "O" in a)]
    n_ads = int(rng.choice((0, 1, 1, 2))) if allowed else 0
    placed = []
    sites = list(slab.info["adsorbate_info"]["sites"])
    for k in range(n_ads):
        name = str(rng.choice(allowed))
        symbols, positions, heights = ADSORBATES[name]
        site = str(rng.choice(sites))
        add_adsorbate(slab, Atoms(symbols, positions=positions), _site_height(site, heights), position=site,
                      offset=(k, k))
        placed.append(f"{name}@{site}")
    slab.center(vacuum=cfg.vacuum_a, axis=2)
    # adsorbate atoms (after the 12 slab atoms) move half as much: their bonds are stiff
    scale = np.where(np.arange(len(slab)) < 12, cfg.rattle_stdev_a, 0.5 * cfg.rattle_stdev_a)
    slab.positions += rng.normal(size=(len(slab), 3)) * scale[:, None]
    facet = build.__name__
    adsorbate = "+".join(p.split("@")[0] for p in placed) or "clean"
    atoms = _tag(slab, family="surface", sid=sid, config_type=f"surface_{facet}_{adsorbate}",
                 group=f"surface-{symbol}-{facet}", perturbation="rattle", length_source="ase_reference")
    atoms.info["adsorbates"] = " ".join(placed) or "none"
    return atoms


# ----------------------------------------------------------------------------------------------
# the set
# ----------------------------------------------------------------------------------------------


def sample_periodic(cfg: MoEStudyPeriodicConfig) -> list[Atoms]:
    """Every structure of the periodic-table set, in a fixed order (bulk, alloy, compound, surface), deterministic
    for ``cfg.seed``; ``info['sample_index']`` numbers them."""
    roles = element_roles(cfg.elements)
    compounds = {c.formula + "/" + c.prototype: c for c in COMPOUNDS}
    adsorbates = [a for a in ADSORBATES if set(Atoms(ADSORBATES[a][0]).get_chemical_symbols()) <= set(cfg.elements)]
    counts = {"bulk": "n_bulk", "alloy": "n_alloys", "compound": "n_compounds", "surface": "n_surfaces"}
    plan = [(family, getattr(cfg, key)) for family, key in counts.items()]
    for family, n in plan:
        if n and len(roles[family]) < (2 if family == "alloy" else 1):
            raise ValueError(f"moe_study.periodic.elements {list(cfg.elements)} give no {family} structure "
                             f"(add elements or set moe_study.periodic.{counts[family]}: 0)")
    frames: list[Atoms] = []
    for family, n in plan:
        members = roles[family]
        for i in range(n):
            sid = f"periodic_{family}_{i:04d}"
            member = members[i % len(members)]
            if family == "bulk":
                atoms = bulk_frame(member, sid, cfg, cfg.seed)
            elif family == "alloy":
                atoms = alloy_frame(member, members, sid, cfg, cfg.seed)
            elif family == "compound":
                atoms = compound_frame(compounds[member], sid, cfg, cfg.seed)
            else:
                atoms = surface_frame(member, adsorbates, sid, cfg, cfg.seed)
            if len(atoms) > cfg.max_atoms:
                raise ValueError(f"{sid} has {len(atoms)} atoms > moe_study.periodic.max_atoms {cfg.max_atoms}")
            frames.append(atoms)
    for index, atoms in enumerate(frames):
        atoms.info["sample_index"] = index
    return frames


def write_periodic(cfg: MoEStudyPeriodicConfig, output: str | Path) -> list[Atoms]:
    """Sample the periodic-table set and write it, unlabelled, to ``output`` (extxyz) for the label stage."""
    frames = sample_periodic(cfg)
    write_atomic(output, lambda tmp: write(tmp, frames, format="extxyz"))
    log.info("wrote %d periodic-set structures (%d elements) to %s", len(frames), len(cfg.elements), output)
    return frames
