"""Crystal cells of the periodic-table set (:mod:`pipeline.data.periodic_set`): length scales and builders.

Length scale of an element: its nearest-neighbour distance ``d_nn`` (A), from

- ``ase_reference``: the shortest interatomic distance in ASE's reference crystal (``ase.data.reference_states``,
  the cell :func:`ase.build.bulk` builds by default), for every element ASE can build (fcc, bcc, hcp, diamond,
  bct, rhombohedral reference states);
- ``covalent_radii``: twice the covalent radius (Cordero et al. 2008, ``ase.data.covalent_radii``) where ASE
  cannot build the reference crystal (B, Ga: no basis in ASE's data; H, N, O: diatomic molecules).

The reference lattice of an element is ASE's reference crystal itself. The other lattices (fcc, bcc, hcp with
ideal c/a, simple cubic, diamond) are built at the bond length Pauling's bond-order relation gives for their
coordination ``z`` (:func:`lattice_distance`): ``d(z) = d_nn + 0.6 A log10(z / z_ref)``, with ``z_ref`` the
coordination of the reference crystal (neighbours within 1.12 ``d_nn``) or, for the ``covalent_radii``
elements, whose ``d_nn`` is a single bond, their valence (:data:`VALENCE`). Without it, carbon in fcc at
diamond's 1.55 A bond would be compressed far outside any training data of the teacher (it returned energies of
thousands of eV per atom there), and a metal in diamond would have its close-packed bond. Alloys take the
composition-weighted mean of their elements' distances in the alloy's lattice (Vegard). Binary compounds use the rounded
experimental room-temperature lattice constants of :data:`COMPOUNDS` (standard tabulations such as the CRC
Handbook; about 1 % uncertain, less than the strains the sampler applies).

>>> d, source = nearest_neighbour_distance("Cu")
>>> round(d, 3), source
(2.553, 'ase_reference')
>>> len(element_cell("Cu", "diamond")), len(compound_cell(COMPOUNDS[0]))
(8, 8)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii, reference_states
from ase.neighborlist import neighbor_list

#: lattices every element can be built in ("reference" = ASE's crystal)
LATTICES = ("reference", "fcc", "bcc", "hcp", "sc", "diamond")
#: nearest-neighbour coordination of the lattices
COORDINATION = {"fcc": 12, "hcp": 12, "bcc": 8, "sc": 6, "diamond": 4}
#: valence of the elements whose length scale is twice the covalent radius (a single bond)
VALENCE = {"H": 1, "B": 3, "N": 3, "O": 2, "Ga": 3}
PAULING_A = 0.6  # A per decade of bond order (Pauling, J. Am. Chem. Soc. 69, 542 (1947))
_SHELL = 1.12  # neighbours within this factor of d_nn count as nearest (bcc's second shell is at 1.155)
#: the nearest-neighbour distance in units of the cubic lattice constant a (hcp: a itself, c = a sqrt(8/3))
_NN_PER_A = {"fcc": 1 / np.sqrt(2), "bcc": np.sqrt(3) / 2, "hcp": 1.0, "sc": 1.0, "diamond": np.sqrt(3) / 4}


@dataclass(frozen=True)
class Compound:
    """A binary compound prototype: ``formula`` in ASE's order (cation first), lattice constants in A."""

    formula: str
    prototype: str  # rocksalt, zincblende, wurtzite or cesiumchloride (ase.build.bulk's names)
    a: float
    c: float | None = None  # wurtzite only

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(Atoms(self.formula).get_chemical_symbols()))


#: Binary compounds (experimental room-temperature lattice constants, rounded, A). No oxide or fluoride of a
#: metal that Materials Project treats with PBE+U (V, Cr, Mn, Fe, Co, Ni, Mo, W): SevenNet-0 learned PBE+U there.
COMPOUNDS: tuple[Compound, ...] = (
    Compound("MgO", "rocksalt", 4.212),
    Compound("CaO", "rocksalt", 4.811),
    Compound("SrO", "rocksalt", 5.160),
    Compound("CdO", "rocksalt", 4.695),
    Compound("LiH", "rocksalt", 4.083),
    Compound("NaH", "rocksalt", 4.880),
    Compound("KH", "rocksalt", 5.700),
    Compound("ScN", "rocksalt", 4.500),
    Compound("TiC", "rocksalt", 4.328),
    Compound("TiN", "rocksalt", 4.242),
    Compound("VN", "rocksalt", 4.139),
    Compound("ZrC", "rocksalt", 4.698),
    Compound("ZrN", "rocksalt", 4.578),
    Compound("NbC", "rocksalt", 4.470),
    Compound("NbN", "rocksalt", 4.392),
    Compound("HfC", "rocksalt", 4.638),
    Compound("HfN", "rocksalt", 4.520),
    Compound("TaC", "rocksalt", 4.456),
    Compound("SiC", "zincblende", 4.360),
    Compound("BN", "zincblende", 3.615),
    Compound("GaN", "zincblende", 4.500),
    Compound("AlSb", "zincblende", 6.136),
    Compound("GaSb", "zincblende", 6.096),
    Compound("InSb", "zincblende", 6.479),
    Compound("AlN", "wurtzite", 3.112, 4.982),
    Compound("GaN", "wurtzite", 3.189, 5.185),
    Compound("InN", "wurtzite", 3.545, 5.703),
    Compound("ZnO", "wurtzite", 3.250, 5.207),
    Compound("BeO", "wurtzite", 2.698, 4.378),
    Compound("SiC", "wurtzite", 3.076, 5.048),
    Compound("CuZn", "cesiumchloride", 2.950),
    Compound("AgMg", "cesiumchloride", 3.280),
    Compound("AuZn", "cesiumchloride", 3.190),
    Compound("CuPd", "cesiumchloride", 2.988),
)


def _conventional(build) -> Atoms:
    """The cubic, else orthorhombic, else primitive cell ``build(**kwargs)`` gives."""
    for kwargs in ({"cubic": True}, {"orthorhombic": True}, {}):
        try:
            return build(**kwargs)
        except (ValueError, RuntimeError, KeyError, TypeError, AssertionError):
            continue
    raise ValueError("no cell could be built")


def reference_cell(symbol: str) -> Atoms | None:
    """ASE's reference crystal of ``symbol`` (conventional cell where ASE has one), or None when ASE cannot build it."""
    try:
        return _conventional(lambda **kw: bulk(symbol, **kw))
    except ValueError:
        return None


def reference_symmetry(symbol: str) -> str | None:
    """The lattice of ASE's reference state (``fcc``, ``bcc``, ``hcp``, ``diamond``, ...), None when there is none."""
    state = reference_states[atomic_numbers[symbol]]
    return None if state is None else str(state.get("symmetry"))


@functools.lru_cache(maxsize=None)
def nearest_neighbour_distance(symbol: str) -> tuple[float, str]:
    """``(d_nn in A, source)``: ``ase_reference`` or ``covalent_radii`` (see the module docstring)."""
    cell = reference_cell(symbol)
    if cell is not None:
        cutoff = 2.0 * max(np.cbrt(cell.get_volume() / len(cell)), 1.0)
        distances = neighbor_list("d", cell, cutoff)
        if distances.size:
            return float(distances.min()), "ase_reference"
    return float(2.0 * covalent_radii[atomic_numbers[symbol]]), "covalent_radii"


@functools.lru_cache(maxsize=None)
def reference_coordination(symbol: str) -> float:
    """Mean nearest-neighbour count in ASE's reference crystal (within 1.12 ``d_nn``), or the valence
    (:data:`VALENCE`) of an element whose ``d_nn`` comes from covalent radii."""
    d, source = nearest_neighbour_distance(symbol)
    if source == "covalent_radii":
        if symbol not in VALENCE:
            raise ValueError(f"no valence for {symbol}: add it to pipeline.data.periodic_lattice.VALENCE")
        return float(VALENCE[symbol])
    cell = reference_cell(symbol)
    return float(len(neighbor_list("i", cell, _SHELL * d)) / len(cell))


def lattice_distance(symbol: str, lattice: str) -> float:
    """Nearest-neighbour distance (A) of ``symbol`` in ``lattice`` by Pauling's bond-order relation (module docstring).

    >>> round(lattice_distance("C", "diamond"), 3), round(lattice_distance("C", "fcc"), 3)
    (1.546, 1.832)
    """
    if lattice not in COORDINATION:
        raise ValueError(f"unknown lattice {lattice!r}; valid: {sorted(COORDINATION)}")
    d, _ = nearest_neighbour_distance(symbol)
    return d + PAULING_A * float(np.log10(COORDINATION[lattice] / reference_coordination(symbol)))


def lattice_cell(lattice: str, d_nn: float, symbol: str) -> Atoms:
    """A conventional ``lattice`` cell (fcc 4, bcc 2, hcp 4, sc 1, diamond 8 atoms) of ``symbol`` at nearest-neighbour
    distance ``d_nn`` (A); hcp with the ideal c/a = sqrt(8/3)."""
    if lattice not in _NN_PER_A:
        raise ValueError(f"unknown lattice {lattice!r}; valid: {sorted(_NN_PER_A)}")
    a = d_nn / _NN_PER_A[lattice]
    if lattice == "hcp":
        return bulk(symbol, "hcp", a=a, c=a * np.sqrt(8 / 3), orthorhombic=True)
    return bulk(symbol, lattice, a=a, cubic=lattice != "sc")


def element_cell(symbol: str, lattice: str) -> Atoms:
    """``symbol`` in ``lattice`` (one of :data:`LATTICES`) at :func:`lattice_distance`; ``reference`` is ASE's
    reference crystal itself (its own lattice constants; fcc for the ``covalent_radii`` elements)."""
    if lattice == "reference":
        cell = reference_cell(symbol)
        if cell is not None:
            return cell
        lattice = "fcc"
    return lattice_cell(lattice, lattice_distance(symbol, lattice), symbol)


def compound_cell(compound: Compound) -> Atoms:
    """The conventional cell of ``compound`` (rocksalt and zincblende 8, wurtzite 4, CsCl 2 atoms)."""
    if compound.prototype == "wurtzite":
        return bulk(compound.formula, "wurtzite", a=compound.a, c=compound.c)
    return _conventional(lambda **kw: bulk(compound.formula, compound.prototype, a=compound.a, **kw))


def supercell(atoms: Atoms, target: int) -> Atoms:
    """``atoms`` repeated, one shortest periodic axis at a time, while the result has at most ``target`` atoms."""
    reps = np.ones(3, dtype=int)
    while len(atoms) * reps.prod() * 2 <= target:
        lengths = np.where(atoms.pbc, atoms.cell.lengths() * reps, np.inf)
        reps[int(np.argmin(lengths))] *= 2
    return atoms.repeat(tuple(int(r) for r in reps))
