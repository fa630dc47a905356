"""Forces and stress against finite differences, and smoothness at the cutoff (float64)."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.fd import calculate_numerical_stress

from pipeline.data import keys as K
from pipeline.models import AllegroCalculator, build_model
from pipeline.models.testing import (
    SPECIES,
    evaluate,
    pt_bulk,
    pt_co_slab,
    small_moe_config,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["dense", "moe_element", "mole_configuration"])
def model(request):
    m = build_model(small_moe_config(request.param, num_layers=2), SPECIES, dtype=torch.float64, seed=11).eval()
    m.set_scale_shift(scales=[0.7, 1.3, 0.9], shifts=[-3.0, -2.0, -1.0])
    return m


def _energy(model, atoms):
    return float(evaluate(model, [atoms], r_max=model.r_max, compute_forces=False)[K.ENERGY][0].detach())


def test_forces_match_finite_differences(model):
    atoms = pt_co_slab(size=(2, 2, 2), rattle=0.1)
    forces = evaluate(model, [atoms], r_max=model.r_max)[K.FORCES].detach().numpy()
    h = 1e-5
    rng = np.random.default_rng(0)
    for atom in [*rng.choice(len(atoms) - 2, 3, replace=False), len(atoms) - 2, len(atoms) - 1]:
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            numerical = -(_energy(model, plus) - _energy(model, minus)) / (2 * h)
            assert forces[atom, axis] == pytest.approx(numerical, abs=1e-7, rel=1e-6)


@pytest.mark.parametrize("cubic", [False, True])
def test_stress_matches_finite_differences(model, cubic):
    atoms = pt_bulk(repeat=(1, 1, 1) if cubic else (2, 1, 1), cubic=cubic, rattle=0.1)
    atoms.set_cell(atoms.cell.array + np.random.default_rng(3).normal(scale=0.05, size=(3, 3)), scale_atoms=True)
    atoms.calc = AllegroCalculator(model)
    analytic = atoms.get_stress(voigt=False)
    numerical = calculate_numerical_stress(atoms, eps=1e-6, voigt=False, force_consistent=False)
    np.testing.assert_allclose(analytic, numerical, atol=1e-8, rtol=1e-6)
    assert np.abs(analytic).max() > 1e-4  # a real test, not zeros


def test_energy_and_forces_smooth_across_cutoff(model):
    """A Pt atom moves out of range of a CO molecule: E and F are continuous at r_max, then constant."""
    r_max = model.r_max

    def system(d):
        return Atoms("COPt", positions=[[0, 0, 0], [0, 0, 1.15], [d, 0.0, 0.0]])

    def outputs(d):
        out = evaluate(model, [system(d)], r_max=r_max)
        return float(out[K.ENERGY][0].detach()), out[K.FORCES].detach().numpy()

    e_far, f_far = outputs(r_max + 0.5)  # Pt beyond the cutoff of both C and O
    far_o = np.hypot(r_max + 1e-3, 1.15)  # O is farther than C, so only C-Pt is near the cutoff here
    assert far_o > r_max
    energies, forces = [], []
    for eps in (1e-2, 1e-3, 1e-4):
        e, f = outputs(r_max - eps)
        energies.append(abs(e - e_far))
        forces.append(np.abs(f - f_far).max())
        e_out, f_out = outputs(r_max + eps)
        assert e_out == pytest.approx(e_far, abs=1e-12)
        np.testing.assert_allclose(f_out, f_far, atol=1e-12)
    # the envelope has zero value, slope and curvature at r_max: E - E_far falls at least like eps^3
    # and F - F_far like eps^2 (faster where several enveloped factors multiply), down to round-off
    assert energies[0] > 0 and forces[0] > 0
    for i in (1, 2):
        assert energies[i] <= max(energies[i - 1] * 2e-2, 1e-13)
        assert forces[i] <= max(forces[i - 1] * 0.2, 1e-11)
    assert energies[2] < 1e-9 and forces[2] < 1e-6


def test_forces_without_grad_mode(model):
    atoms = pt_co_slab()
    with torch.no_grad():
        out = evaluate(model, [atoms], r_max=model.r_max)
    assert torch.isfinite(out[K.FORCES]).all()
    assert out[K.FORCES].abs().max() > 0


def test_create_graph_allows_force_training(model):
    atoms = pt_co_slab()
    model.train()
    try:
        out = evaluate(model, [atoms], r_max=model.r_max, compute_stress=True)
        loss = out[K.FORCES].square().sum() + out[K.STRESS].nan_to_num().square().sum()
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    finally:
        model.eval()
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
