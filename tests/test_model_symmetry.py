"""Symmetries of the Allegro expert (float64): E(3) invariance/equivariance, permutations, periodic
images, batching and extensivity."""

import numpy as np
import pytest
import torch

from pipeline.data import keys as K
from pipeline.models import build_model
from pipeline.models.testing import (
    SPECIES,
    co_gas,
    evaluate,
    pt_bulk,
    pt_co_slab,
    random_rotation,
    small_config,
    small_moe_config,
    transform_atoms,
    validate_model_outputs,
)

torch.set_num_threads(1)
TOL = dict(atol=1e-9, rtol=1e-9)

CONFIGS = {
    "parity": small_config(parity=True, num_layers=3),
    "no_parity": small_config(parity=False, num_layers=3),
    "lmax1_one_layer": small_config(l_max=1, num_layers=1),
    # mixture-of-experts layers (latent MLPs and readout), every router and expert type
    "moe_element": small_moe_config("moe_element", num_layers=2),
    "moe_configuration": small_moe_config("moe_configuration", num_layers=2),
    "moe_atom": small_moe_config("moe_atom", num_layers=2),
    "mole_element": small_moe_config("mole_element", l_max=1, num_layers=1),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    return build_model(CONFIGS[request.param], SPECIES, dtype=torch.float64, seed=3).eval()


FRAMES = {"slab_co": pt_co_slab, "bulk": lambda: pt_bulk(repeat=(2, 1, 1)), "gas": co_gas}


def _outputs(model, atoms):
    stress = bool(atoms.pbc.all())
    out = evaluate(model, [atoms], r_max=model.r_max, compute_stress=stress)
    return {k: v.detach().numpy() for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(FRAMES))
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_reflection_translation(model, name, reflect):
    atoms = FRAMES[name]()
    rng = np.random.default_rng(7)
    rotation = random_rotation(rng, reflect=reflect)
    moved = transform_atoms(atoms, rotation, rng.normal(size=3) * 3.0)
    ref, out = _outputs(model, atoms), _outputs(model, moved)
    np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], **TOL)
    np.testing.assert_allclose(out[K.PER_ATOM_ENERGY], ref[K.PER_ATOM_ENERGY], **TOL)
    np.testing.assert_allclose(out[K.FORCES], ref[K.FORCES] @ rotation.T, **TOL)
    np.testing.assert_allclose(out[K.DESCRIPTORS], ref[K.DESCRIPTORS], **TOL)
    if atoms.pbc.all():
        np.testing.assert_allclose(out[K.STRESS][0], rotation @ ref[K.STRESS][0] @ rotation.T, **TOL)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_permutation(model, name):
    atoms = FRAMES[name]()
    perm = np.random.default_rng(1).permutation(len(atoms))
    ref, out = _outputs(model, atoms), _outputs(model, atoms[perm])
    np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], **TOL)
    np.testing.assert_allclose(out[K.PER_ATOM_ENERGY], ref[K.PER_ATOM_ENERGY][perm], **TOL)
    np.testing.assert_allclose(out[K.FORCES], ref[K.FORCES][perm], **TOL)


@pytest.mark.parametrize("name", ["slab_co", "bulk"])
def test_periodic_image_choice(model, name):
    atoms = FRAMES[name]()
    moved = atoms.copy()
    rng = np.random.default_rng(2)
    shifts = rng.integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc  # whole lattice vectors, periodic directions
    moved.positions += shifts @ atoms.cell.array
    wrapped = atoms.copy()
    wrapped.wrap()
    ref = _outputs(model, atoms)
    for other in (moved, wrapped):
        out = _outputs(model, other)
        np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], **TOL)
        np.testing.assert_allclose(out[K.FORCES], ref[K.FORCES], **TOL)
        if atoms.pbc.all():
            np.testing.assert_allclose(out[K.STRESS], ref[K.STRESS], **TOL)


@pytest.mark.parametrize("name", ["slab_co", "bulk"])
def test_supercell_is_extensive(model, name):
    atoms = FRAMES[name]()
    repeat = (2, 2, 1) if name == "slab_co" else (2, 1, 2)
    big = atoms.repeat(repeat)
    ref, out = _outputs(model, atoms), _outputs(model, big)
    np.testing.assert_allclose(out[K.ENERGY][0] / len(big), ref[K.ENERGY][0] / len(atoms), **TOL)
    n_copies = len(big) // len(atoms)
    np.testing.assert_allclose(out[K.FORCES], np.tile(ref[K.FORCES], (n_copies, 1)), **TOL)
    if atoms.pbc.all():
        np.testing.assert_allclose(out[K.STRESS], ref[K.STRESS], **TOL)


def test_batch_and_partition_contract(model):
    frames = [pt_co_slab(), pt_bulk(), co_gas(), pt_co_slab(size=(2, 2, 2), seed=5)]
    validate_model_outputs(model, frames, r_max=model.r_max)


def test_isolated_atom_energy_is_its_shift():
    model = build_model(small_config(), SPECIES, dtype=torch.float64, seed=0).eval()
    model.set_scale_shift(scales=[2.0, 3.0, 4.0], shifts=[-5.0, -7.0, -9.0])
    from ase import Atoms

    atoms = Atoms("PtCO", positions=[[0, 0, 0], [10, 0, 0], [0, 10, 0]])  # farther apart than r_max
    out = _outputs(model, atoms)
    np.testing.assert_allclose(out[K.PER_ATOM_ENERGY], [-5.0, -7.0, -9.0], atol=1e-12)
    np.testing.assert_allclose(out[K.FORCES], 0.0, atol=1e-12)
