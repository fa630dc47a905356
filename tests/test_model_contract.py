"""The potential contract (pipeline.models.contract): the expert and the static mixture satisfy it, the one ASE
calculator over it, routing statistics as outputs, and timing outside the mixture (float64)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.stress import full_3x3_to_voigt_6_stress
from md_support import SPECIES, mixture, slab_partition, tiny_slab

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.md import MixtureCalculator, MixtureEvaluator, MixturePotential
from pipeline.models import AllegroCalculator, PotentialCalculator, build_model
from pipeline.models.contract import (
    EXPERT_WEIGHTS,
    MOE_LAYER_BALANCE,
    VIRIAL,
    Potential,
    check_outputs,
)
from pipeline.models.mlp import ScalarMLP
from pipeline.models.moe import moe_modules
from pipeline.models.testing import pt_bulk, pt_co_slab, small_config, small_moe_config
from pipeline.train.routing import RoutingStats, balance_loss, layer_names

torch.set_num_threads(1)


def _expert():
    model = build_model(small_config(), SPECIES, dtype=torch.float64, seed=4).eval()
    model.set_scale_shift(scales=[0.8, 1.2, 1.0], shifts=[-6.0, -7.5, -4.5])
    return model


def _periodic_slab():
    atoms = pt_co_slab(size=(2, 2, 3))
    atoms.pbc = True  # a slab with vacuum, periodic in 3-d so that stress and virial are defined
    return atoms


def _potentials():
    """(name, potential, its own inputs for a structure) of every potential kind."""
    atoms = _periodic_slab()
    expert = torch.as_tensor((np.arange(len(atoms)) % 3 == 0).astype(np.int64))
    return [("expert", _expert(), {}), ("mixture", mixture(), {"expert": expert})]


def test_expert_and_mixture_satisfy_the_protocol():
    assert isinstance(_expert(), Potential)
    assert isinstance(mixture(), Potential)
    assert isinstance(build_model(small_moe_config("moe_element"), SPECIES), Potential)
    assert not isinstance(ScalarMLP(2, 2, hidden=(), activation="silu"), Potential)


@pytest.mark.parametrize("kind", ["expert", "mixture"])
def test_outputs_have_the_documented_keys_shapes_and_units(kind):
    name, potential, inputs = next(p for p in _potentials() if p[0] == kind)
    atoms = _periodic_slab()
    batch = collate([atoms], species=SPECIES, r_max=potential.r_max, with_targets=False)
    out = {key: value.detach() for key, value in potential(batch, compute_stress=True, **inputs).items()}
    check_outputs(out, batch, compute_forces=True, compute_stress=True)
    n = len(atoms)
    assert out[K.ENERGY].shape == (1,) and out[K.FORCES].shape == (n, 3) and out[VIRIAL].shape == (1, 3, 3)
    assert out[K.CENTER_MASK].all()
    # energy (eV) is the sum of the per-atom energies (eV)
    assert float(out[K.PER_ATOM_ENERGY].sum()) == pytest.approx(float(out[K.ENERGY][0]), abs=1e-10)
    # forces (eV/A) are -dE/dR: one component by central differences of the energy
    h, i = 1e-5, 3
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[i, 2] += sign * h
        b = collate([moved], species=SPECIES, r_max=potential.r_max, with_targets=False)
        energies.append(float(potential(b, compute_forces=False, **inputs)[K.ENERGY][0].detach()))
    assert float(out[K.FORCES][i, 2]) == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-6)
    # virial (eV) and stress (eV/A^3): W = -V * stress
    volume = atoms.get_volume()
    torch.testing.assert_close(out[VIRIAL], -volume * out[K.STRESS], atol=1e-10, rtol=1e-12)
    if kind == "mixture":
        weights = out[EXPERT_WEIGHTS]
        assert weights.shape == (n, 2)
        assert torch.equal(weights.argmax(1), inputs["expert"]) and torch.equal(weights.sum(1), torch.ones(n).double())
    with pytest.raises(ValueError, match="missing output 'virial'"):
        check_outputs({k: v for k, v in out.items() if k != VIRIAL}, batch, compute_stress=True)


@pytest.mark.parametrize("kind", ["expert", "mixture"])
def test_centre_subset_energy_is_the_sum_of_those_centres_energies(kind):
    _, potential, inputs = next(p for p in _potentials() if p[0] == kind)
    atoms = _periodic_slab()
    batch = collate([atoms], species=SPECIES, r_max=potential.r_max, with_targets=False)
    subset = torch.as_tensor(np.arange(len(atoms)) % 2 == 0)
    full, part, rest = ({key: value.detach() for key, value in potential(batch, centers=c, compute_stress=True,
                                                                          **inputs).items()}
                        for c in (None, subset, ~subset))
    check_outputs(part, batch, compute_stress=True)
    expected = full[K.PER_ATOM_ENERGY][subset].sum()
    assert float(part[K.ENERGY][0]) == pytest.approx(float(expected), abs=1e-10)
    torch.testing.assert_close(part[K.PER_ATOM_ENERGY][subset], full[K.PER_ATOM_ENERGY][subset], atol=1e-11, rtol=0)
    assert torch.equal(part[K.PER_ATOM_ENERGY][~subset], torch.zeros(int((~subset).sum()), dtype=torch.float64))
    assert torch.equal(part[K.CENTER_MASK], subset)
    for key in (K.ENERGY, K.FORCES, K.STRESS, VIRIAL):  # the two subsets add up to the full evaluation
        torch.testing.assert_close(part[key] + rest[key], full[key], atol=1e-10, rtol=0, msg=key)
    assert float(part[K.FORCES][~subset].abs().max()) > 0  # neighbours of the centres feel forces too


def _old_allegro_calculator(model, atoms):
    """The formulas of the former AllegroCalculator: stress straight from the model's stress output."""
    batch = collate([atoms], species=model.species, r_max=model.r_max, dtype=model.dtype, with_targets=False)
    out = model(batch, compute_forces=True, compute_stress=True, create_graph=False)
    return (float(out[K.ENERGY].detach()[0]), out[K.PER_ATOM_ENERGY].detach().double().numpy(),
            out[K.FORCES].detach().double().numpy(),
            full_3x3_to_voigt_6_stress(out[K.STRESS].detach().double().numpy()[0]))


def test_one_calculator_gives_the_former_single_expert_results():
    model = _expert()
    atoms = pt_bulk(repeat=(2, 1, 1))
    energy, energies, forces, stress = _old_allegro_calculator(model, atoms)
    for calc in (AllegroCalculator(model), PotentialCalculator(model)):
        assert isinstance(calc, PotentialCalculator)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-12)
        np.testing.assert_allclose(atoms.get_potential_energies(), energies, atol=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-12)
        np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-12)
    assert AllegroCalculator(model).model is model


def test_mixture_calculator_is_the_one_calculator_and_matches_the_former_formulas():
    moe = mixture()
    atoms = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.1)
    expert = (np.arange(len(atoms)) % 3 == 0).astype(np.int64)
    calc = MixtureCalculator(moe, expert=expert, skin=0.5)
    assert isinstance(calc, PotentialCalculator)
    atoms.calc = calc
    # former MixtureCalculator: virial W = -stress * V from the evaluator, then stress = -W / V
    result = MixtureEvaluator(moe, numbers=atoms.numbers, expert=expert, skin=0.0)(
        atoms.positions, atoms.cell.array, atoms.pbc, virial=True)
    assert atoms.get_potential_energy() == pytest.approx(result.energy, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), result.forces, atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), full_3x3_to_voigt_6_stress(-result.virial / atoms.get_volume()),
                               atol=1e-12)
    small = atoms[:-1].copy()
    small.calc = calc
    with pytest.raises(ValueError, match="partition has"):
        small.get_potential_energy()


def _strain_energy(atoms, eps: np.ndarray) -> float:
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    strained.calc = atoms.calc
    return strained.get_potential_energy()


@pytest.mark.parametrize("kind", ["expert", "mixture"])
def test_stress_is_the_finite_difference_strain_derivative_of_the_energy(kind):
    atoms = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.1)
    if kind == "expert":
        calc = AllegroCalculator(_expert())
    else:
        calc = MixtureCalculator(mixture(), expert=(np.arange(len(atoms)) % 2).astype(np.int64))
    atoms.calc = calc
    analytic = atoms.get_stress(voigt=False)
    h, volume = 1e-5, atoms.get_volume()
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = h / (1 if a == b else 2)  # symmetric strain, d/d eps_ab
            probe = atoms.copy()
            probe.calc = calc
            numeric[a, b] = (_strain_energy(probe, eps) - _strain_energy(probe, -eps)) / (2 * h) / volume
    np.testing.assert_allclose(analytic, numeric, atol=2e-8)
    assert np.abs(analytic).max() > 1e-4
    np.testing.assert_allclose(atoms.get_stress(), full_3x3_to_voigt_6_stress(analytic), atol=0)  # Voigt order


def _old_routing_statistics(model, batch):
    """What the MoE modules used to keep after a call (``last_balance``, ``last_load``), for element
    routing over every atom as a centre: the formulas of the former ``MoEMLP._record``."""
    species = batch[K.SPECIES]
    balances, loads = [], []
    for _, m in moe_modules(model):
        with torch.no_grad():
            probs, index, _ = m.gates(m.router.proj(m.router.embedding))  # [n_species, N], [n_species, k]
        p_tok, i_tok = probs[species], index[species]  # tokens = centre atoms
        slots = torch.zeros_like(p_tok).scatter_(1, i_tok, 1.0)
        frac = slots.sum(0) / (len(species) * m.top_k)
        balances.append(m.num_experts * (frac * p_tok.mean(0)).sum())
        loads.append(slots.new_zeros(m.num_species, m.num_experts).index_add(0, species, slots).double())
    return torch.stack(balances), torch.stack(loads)


def test_routing_statistics_are_outputs_equal_to_the_former_module_state():
    model = build_model(small_moe_config("moe_element"), SPECIES, dtype=torch.float64, seed=1)
    frames = [pt_co_slab(), pt_bulk(repeat=(2, 1, 1))]
    batches = [collate([a], species=SPECIES, r_max=model.r_max, with_targets=False) for a in frames]
    outs = [model(b) for b in batches]
    for batch, out in zip(batches, outs):  # each output holds its own call's routing, not the last call's
        balance, load = _old_routing_statistics(model, batch)
        torch.testing.assert_close(out[MOE_LAYER_BALANCE].detach(), balance, atol=1e-12, rtol=0)
        torch.testing.assert_close(out[K.MOE_LOAD], load, atol=0, rtol=0)
        torch.testing.assert_close(out[K.MOE_BALANCE_LOSS].detach(), balance.sum(), atol=1e-12, rtol=0)
    for _, m in moe_modules(model):  # the modules keep nothing from the calls
        assert not any(isinstance(v, torch.Tensor) for v in vars(m).values())
    stats = RoutingStats()
    for out in outs:
        stats.add("model", out)
    torch.testing.assert_close(stats.loads["model"], outs[0][K.MOE_LOAD] + outs[1][K.MOE_LOAD])
    torch.testing.assert_close(balance_loss({"model": outs[1]}), outs[1][K.MOE_BALANCE_LOSS])
    assert len(layer_names(model)) == outs[0][K.MOE_LOAD].shape[0]
    assert balance_loss({"dense": _expert()(batches[0])}) is None


@pytest.mark.parametrize("variant", ["moe_element", "moe_configuration", "dense"])
def test_deepcopy_after_a_forward_needs_no_clearing(variant):
    model = build_model(small_moe_config(variant), SPECIES, dtype=torch.float64, seed=3).train()
    batch = collate([pt_co_slab()], species=SPECIES, r_max=model.r_max, with_targets=False)
    out = model(batch, compute_stress=True)  # training mode: the derivative graph is kept
    copied = copy.deepcopy(model)  # no state of the call on the modules, nothing to clear
    again = copied(batch, compute_stress=True)
    torch.testing.assert_close(again[K.ENERGY], out[K.ENERGY], atol=0, rtol=0)
    torch.testing.assert_close(again[K.FORCES], out[K.FORCES], atol=0, rtol=0)
    moe = MixturePotential([model.eval(), _expert()])
    expert = torch.as_tensor(np.arange(len(batch[K.SPECIES])) % 2)
    first = moe(batch, expert=expert)
    torch.testing.assert_close(copy.deepcopy(moe)(batch, expert=expert)[K.ENERGY], first[K.ENERGY], atol=0, rtol=0)


@pytest.mark.parametrize("chunks", [0, (4, 4)])
def test_timing_lives_in_the_evaluator_not_in_the_mixture(chunks):
    moe = mixture()
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    ev = MixtureEvaluator(moe, numbers=atoms.numbers, expert=expert, skin=0.5, centres_per_chunk=chunks)
    ev(atoms.positions, atoms.cell.array, atoms.pbc)
    summary = ev.timing_summary()
    assert summary["forward_hf_s"] > 0 and summary["forward_lf_s"] > 0 and summary["model_time_s"] > 0
    assert summary["forward_share_hf"] + summary["forward_share_lf"] == pytest.approx(1.0)
    assert sum(summary[f"forward_{n}_s"] for n in ("hf", "lf")) <= summary["model_time_s"]
    assert not hasattr(moe, "timings") and not hasattr(moe, "record_timings")
    for call in moe.calls:  # the hooks were attached for the call only
        assert not call._forward_hooks and not call._forward_pre_hooks
    # the ExpertCall modules change nothing in the state of the mixture
    assert set(moe.state_dict()) == {f"experts.{k}.{key}" for k, m in enumerate(moe.experts) for key in m.state_dict()}
