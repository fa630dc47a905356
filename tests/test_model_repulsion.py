"""The ZBL repulsion prior: the published ZBL formula, a C2 switch, exact forces, additivity, old checkpoints."""

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

from pipeline.config import ConfigError, RepulsionConfig, config_from_dict
from pipeline.data import keys as K
from pipeline.models import build_model
from pipeline.models.allegro import expert_config_from_dict
from pipeline.models.repulsion import ZBLRepulsion, smooth_switch
from pipeline.models.testing import SPECIES, evaluate, pt_bulk, small_config, validate_model_outputs

torch.set_num_threads(1)


def zbl_reference(z1: int, z2: int, r: float) -> float:
    """ZBL universal screened Coulomb energy (eV), Ziegler, Biersack & Littmark (1985), eq. 2-78."""
    a = 0.8854 * 0.529177 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (0.1818 * np.exp(-3.2 * x) + 0.5099 * np.exp(-0.9423 * x) + 0.2802 * np.exp(-0.4029 * x)
           + 0.02817 * np.exp(-0.2016 * x))
    return 14.3996 * z1 * z2 / r * phi


def _prior(config=RepulsionConfig()):
    z = torch.tensor([atomic_numbers[s] for s in SPECIES])
    return ZBLRepulsion(config, z).to(torch.float64)


@pytest.mark.parametrize(("a", "b", "r"), [("Pt", "Pt", 0.5), ("Pt", "C", 0.4), ("C", "O", 0.3), ("O", "O", 0.2)])
def test_pair_energy_is_zbl_inside_the_switch(a, b, r):
    prior = _prior()
    i, j = SPECIES.index(a), SPECIES.index(b)
    energy = float(prior.pair_energy(torch.tensor([r], dtype=torch.float64), torch.tensor([i]), torch.tensor([j])))
    assert energy == pytest.approx(zbl_reference(atomic_numbers[a], atomic_numbers[b], r), rel=2e-3)


def test_pair_energy_vanishes_beyond_outer_fraction_and_decreases_monotonically():
    prior, config = _prior(), RepulsionConfig()
    for a in SPECIES:
        for b in SPECIES:
            i, j = SPECIES.index(a), SPECIES.index(b)
            r_out = config.outer_fraction * (covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])
            r = torch.linspace(0.1, r_out + 0.5, 400, dtype=torch.float64)
            e = prior.pair_energy(r, torch.full_like(r, i, dtype=torch.long), torch.full_like(r, j, dtype=torch.long))
            assert torch.all(e[r >= r_out] == 0)
            assert torch.all(torch.diff(e) <= 0), f"{a}-{b}: the prior must repel at every distance"
            assert float(e[0]) > 100.0  # eV at 0.1 A: a wall


def test_switch_is_c2_smooth_at_both_ends():
    r_in, r_out = torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    for r0 in (1.0, 1.5):
        r = torch.tensor(r0, dtype=torch.float64, requires_grad=True)
        s = smooth_switch(r, r_in, r_out)
        (d1,) = torch.autograd.grad(s, r, create_graph=True)
        (d2,) = torch.autograd.grad(d1, r)
        assert abs(float(d1.detach())) < 1e-12 and abs(float(d2)) < 1e-9
    assert float(smooth_switch(torch.tensor(1.25, dtype=torch.float64), r_in, r_out)) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def pair_of_models():
    """The same weights with and without the prior (float64)."""
    with_prior = build_model(small_config(), SPECIES, dtype=torch.float64, seed=3).eval()
    without = build_model(small_config(repulsion=RepulsionConfig(enabled=False)), SPECIES, dtype=torch.float64,
                          seed=3).eval()
    for m in (with_prior, without):
        m.set_scale_shift(scales=[0.7, 1.3, 0.9], shifts=[-3.0, -2.0, -1.0])
    return with_prior, without


def _compressed_frames() -> list[Atoms]:
    """CO squeezed to 0.8 A with C 1.0 A above a Pt atom, and a Pt pair at 1.3 A in a periodic cell."""
    cluster = Atoms("PtPtCO", positions=[[0, 0, 0], [2.7, 0.2, 0.1], [0.05, -0.03, 1.0], [0.1, 0.02, 1.8]])
    crystal = pt_bulk(repeat=(2, 1, 1), rattle=0.02)
    crystal.positions[1] = crystal.positions[0] + [0.9, 0.8, 0.5]  # 1.3 A from atom 0
    return [cluster, crystal]


def test_prior_adds_exactly_the_switched_zbl_sum(pair_of_models):
    with_prior, without = pair_of_models
    frames = _compressed_frames()
    diff = (evaluate(with_prior, frames, r_max=4.0, compute_forces=False)[K.ENERGY]
            - evaluate(without, frames, r_max=4.0, compute_forces=False)[K.ENERGY]).detach().numpy()
    prior, config = _prior(), RepulsionConfig()
    for atoms, delta in zip(frames, diff):
        expected = 0.0
        n = len(atoms)
        distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        for i in range(n):
            for j in range(i + 1, n):
                zi, zj = atoms.numbers[i], atoms.numbers[j]
                r_in = config.inner_fraction * (covalent_radii[zi] + covalent_radii[zj])
                r_out = config.outer_fraction * (covalent_radii[zi] + covalent_radii[zj])
                r = distances[i, j]
                if r < r_out:
                    t = min(max((r - r_in) / (r_out - r_in), 0.0), 1.0)
                    expected += zbl_reference(zi, zj, r) * (1 - (10 * t**3 - 15 * t**4 + 6 * t**5))
        assert expected > 1.0  # both frames are deep inside the prior's range
        assert delta == pytest.approx(expected, rel=2e-3)
    # no effect at all on an uncompressed crystal
    bulk = [pt_bulk(repeat=(2, 2, 1), rattle=0.05)]
    e1 = evaluate(with_prior, bulk, r_max=4.0)
    e0 = evaluate(without, bulk, r_max=4.0)
    assert torch.equal(e1[K.ENERGY], e0[K.ENERGY]) and torch.equal(e1[K.FORCES], e0[K.FORCES])


def test_forces_are_exact_gradients_inside_the_switch(pair_of_models):
    model, _ = pair_of_models
    atoms = _compressed_frames()[0]
    # put C-Pt inside the switch region (between r_in and r_out) so the switch's derivative is tested too
    atoms.positions[2] = [0.05, -0.03, 0.95]
    forces = evaluate(model, [atoms], r_max=4.0)[K.FORCES].detach().numpy()

    def energy(a):
        return float(evaluate(model, [a], r_max=4.0, compute_forces=False)[K.ENERGY][0])

    h = 1e-6
    for atom in range(len(atoms)):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            assert forces[atom, axis] == pytest.approx(-(energy(plus) - energy(minus)) / (2 * h), rel=1e-6, abs=1e-6)


def test_per_atom_sum_batching_and_centre_subsets_with_the_prior(pair_of_models):
    model, _ = pair_of_models
    validate_model_outputs(model, _compressed_frames(), r_max=4.0)


def test_checkpoint_config_without_repulsion_keeps_the_prior_off():
    values = dataclasses.asdict(small_config())
    values.pop("repulsion")
    assert expert_config_from_dict(values).repulsion.enabled is False
    values["repulsion"] = {"enabled": True, "inner_fraction": 0.3, "outer_fraction": 0.5}
    assert expert_config_from_dict(values).repulsion == RepulsionConfig(True, 0.3, 0.5)
    values["repulsion"]["bogus"] = 1
    with pytest.raises(ValueError, match="repulsion"):
        expert_config_from_dict(values)


def test_config_rejects_an_empty_switch():
    with pytest.raises(ConfigError, match="models.lf.repulsion.inner_fraction"):
        config_from_dict({"models": {"lf": {"repulsion": {"inner_fraction": 0.6, "outer_fraction": 0.5}}}})
