"""The ASE calculator of one expert against the model, and the scale/shift estimates."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator

from pipeline.data import keys as K
from pipeline.models import (
    AllegroCalculator,
    build_model,
    fit_energy_shifts,
    force_rms_scales,
    save_checkpoint,
)
from pipeline.models.testing import (
    SPECIES,
    co_gas,
    evaluate,
    pt_bulk,
    pt_co_slab,
    small_config,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    m = build_model(small_config(), SPECIES, dtype=torch.float64, seed=4).eval()
    m.set_scale_shift(scales=[0.8, 1.2, 1.0], shifts=[-6.0, -7.5, -4.5])
    return m


def test_calculator_matches_model(model):
    atoms = pt_bulk(repeat=(2, 1, 1))
    atoms.calc = AllegroCalculator(model)
    out = evaluate(model, [atoms], r_max=model.r_max, compute_stress=True)
    assert atoms.get_potential_energy() == pytest.approx(float(out[K.ENERGY][0].detach()), abs=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_potential_energies(), out[K.PER_ATOM_ENERGY].detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), out[K.FORCES].detach().numpy(), atol=1e-12)
    stress = out[K.STRESS][0].detach().numpy()
    np.testing.assert_allclose(atoms.get_stress(voigt=False), stress, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], atol=1e-12)


def test_calculator_slab_and_gas(model):
    for atoms in (pt_co_slab(), co_gas()):
        atoms.calc = AllegroCalculator(model)
        assert np.isclose(atoms.get_potential_energies().sum(), atoms.get_potential_energy())
        assert atoms.get_forces().shape == (len(atoms), 3)
        with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
            atoms.get_stress()


def test_calculator_from_checkpoint(model, tmp_path):
    path = tmp_path / "expert.pt"
    save_checkpoint(path, model)
    atoms = pt_co_slab()
    atoms.calc = AllegroCalculator.from_checkpoint(path, species=list(SPECIES), r_max=model.r_max)
    expected = evaluate(model, [atoms], r_max=model.r_max)[K.ENERGY][0]
    assert atoms.get_potential_energy() == pytest.approx(float(expected.detach()), abs=1e-12)


def test_calculator_float32(model):
    atoms = pt_co_slab()
    atoms.calc = AllegroCalculator(build_model(small_config(), SPECIES, dtype=torch.float32, seed=4))
    assert atoms.get_forces().dtype == np.float64 and np.isfinite(atoms.get_forces()).all()


def _labelled(symbols, energy, forces):
    atoms = Atoms(symbols)
    atoms.positions = np.arange(3 * len(atoms), dtype=float).reshape(-1, 3) * 4.0
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def test_fit_energy_shifts_and_force_scales():
    ref = {"Pt": -6.0, "C": -9.0, "O": -5.0}
    frames = []
    rng = np.random.default_rng(0)
    for symbols in ("Pt4", "Pt2CO", "Pt3C", "PtO2", "CO"):
        atoms = Atoms(symbols)
        energy = sum(ref[s] for s in atoms.get_chemical_symbols())
        forces = np.where(atoms.numbers[:, None] == 78, 2.0, 0.5) * rng.choice([-1.0, 1.0], size=(len(atoms), 3))
        frames.append(_labelled(symbols, energy, forces))
    np.testing.assert_allclose(fit_energy_shifts(frames, SPECIES), [ref[s] for s in SPECIES], atol=1e-10)
    np.testing.assert_allclose(force_rms_scales(frames, SPECIES), [2.0, 0.5, 0.5], atol=1e-12)
    only_pt = [_labelled("Pt2", -12.0, np.ones((2, 3)))]
    np.testing.assert_allclose(force_rms_scales(only_pt, SPECIES), [1.0, 1.0, 1.0])  # global RMS fallback
    with pytest.raises(ValueError, match="at least one frame with an energy"):
        fit_energy_shifts([Atoms("Pt")], SPECIES)


def test_float32_model_close_to_float64(model):
    single = build_model(model.config, SPECIES, dtype=torch.float32)
    single.load_state_dict(model.state_dict())  # same weights, cast to float32
    atoms = pt_co_slab()
    ref = evaluate(model, [atoms], r_max=model.r_max)
    out = evaluate(single.eval(), [atoms], r_max=model.r_max)
    assert out[K.ENERGY].dtype == torch.float32 and out[K.FORCES].dtype == torch.float32
    torch.testing.assert_close(out[K.ENERGY].double(), ref[K.ENERGY], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[K.FORCES].double(), ref[K.FORCES], rtol=1e-4, atol=1e-4)
