"""Small Pt/CO structures with EMT labels, the fake DFT data of the ingestion tests.

EMT gives energies, forces and stress in milliseconds; a fixed offset between ``free_energy`` and
``energy`` stands in for the smearing entropy so the energy convention is visible in the tests.
"""

from __future__ import annotations

from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

ENTROPY_EV = -0.0123  # free_energy - energy of the fake labels


def emt_label(atoms: Atoms, *, stress: bool | None = None) -> Atoms:
    """``atoms`` with EMT energy/forces (and stress for 3D-periodic cells) in a SinglePointCalculator."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    zero = atoms.get_potential_energy()
    results = {"energy": zero, "free_energy": zero + ENTROPY_EV, "forces": atoms.get_forces()}
    if stress if stress is not None else atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def pt_bulk(a: float = 3.92, rattle_seed: int | None = 0) -> Atoms:
    atoms = bulk("Pt", "fcc", a=a, cubic=True)
    if rattle_seed is not None:
        atoms.rattle(0.03, seed=rattle_seed)
    return atoms


def pt_slab(*, co: bool = False, layers: int = 3, rattle_seed: int | None = None) -> Atoms:
    atoms = fcc111("Pt", (2, 2, layers), a=3.92, vacuum=6.0, periodic=True)
    if co:
        add_adsorbate(atoms, molecule("CO")[::-1], 1.85, "ontop")  # C down
    atoms.info.pop("adsorbate_info", None)
    if rattle_seed is not None:
        atoms.rattle(0.02, seed=rattle_seed)
    return atoms


def co_gas(bond: float = 1.14) -> Atoms:
    return Atoms("CO", positions=[[5, 5, 5], [5, 5, 5 + bond]], cell=[10, 10, 10], pbc=False)


def family_frames() -> list[Atoms]:
    """13 groups over the four families, 2 frames each, EMT-labelled, with ``info['group']``."""
    frames = []
    for k in range(4):
        for r in range(2):
            frames.append(emt_label(pt_bulk(3.85 + 0.05 * k, rattle_seed=10 * k + r)))
            frames[-1].info.update(group=f"bulk-{k}")
    for family, co in (("clean_slab", False), ("slab_co", True)):
        for k in range(3):
            for r in range(2):
                frames.append(emt_label(pt_slab(co=co, rattle_seed=100 * k + r)))
                frames[-1].info.update(group=f"{family}-{k}")
    for k in range(3):
        for r in range(2):
            frames.append(emt_label(co_gas(1.10 + 0.03 * k + 0.01 * r)))
            frames[-1].info.update(group=f"gas-{k}")
    return frames
