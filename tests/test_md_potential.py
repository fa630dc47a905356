"""The mixture potential: derivatives, additivity, equivalence to one model, the Verlet list, the ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.calculators.fd import FiniteDifferenceCalculator
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from md_support import SPECIES, experts, mixture, slab_partition, tiny_slab

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.md import (
    MixtureCalculator,
    MixtureEvaluator,
    MixturePotential,
    expert_costs,
)
from pipeline.models import AllegroCalculator
from pipeline.models.testing import pt_bulk, pt_co_slab, validate_model_outputs

torch.set_num_threads(1)


def _energy(moe: MixturePotential, atoms, expert) -> float:
    batch = collate([atoms], species=SPECIES, r_max=moe.r_max, with_targets=False)
    return float(moe(batch, expert=torch.as_tensor(expert), compute_forces=False)[K.ENERGY][0].detach())


def test_forces_are_finite_differences_of_the_energy_across_the_interface():
    moe = mixture()
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    batch = collate([atoms], species=SPECIES, r_max=moe.r_max, with_targets=False)
    forces = moe(batch, expert=torch.as_tensor(expert))[K.FORCES].numpy()
    # atoms on both sides of the HF/LF interface (top and middle layer), and the CO
    hf, lf = np.flatnonzero(expert == 0), np.flatnonzero(expert == 1)
    probe = [hf[0], hf[-1], hf[-2], lf[-1], lf[-2], lf[0]]
    h = 1e-5
    for i in probe:
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, axis] += h
            minus.positions[i, axis] -= h
            numeric = -(_energy(moe, plus, expert) - _energy(moe, minus, expert)) / (2 * h)
            assert forces[i, axis] == pytest.approx(numeric, abs=5e-7), (i, axis)
    assert np.abs(forces[probe]).max() > 1e-2  # the check is not on vanishing forces


def test_stress_is_the_strain_derivative_of_the_energy():
    moe = mixture()
    atoms = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.1)
    expert = (np.arange(len(atoms)) % 3 == 0).astype(np.int64)
    atoms.calc = MixtureCalculator(moe, expert=expert)
    analytic = atoms.get_stress()
    numeric = FiniteDifferenceCalculator(atoms.calc, eps_strain=1e-5).get_stress(atoms)
    np.testing.assert_allclose(analytic, numeric, atol=1e-7)
    assert np.abs(analytic).max() > 1e-4


def test_per_atom_energies_sum_to_the_total_and_split_by_expert():
    moe = mixture()
    atoms = tiny_slab()
    expert = torch.as_tensor(slab_partition(atoms))
    batch = collate([atoms], species=SPECIES, r_max=moe.r_max, with_targets=False)
    out = moe(batch, expert=expert)
    assert float(out[K.PER_ATOM_ENERGY].sum().detach()) == pytest.approx(float(out[K.ENERGY][0].detach()), abs=1e-10)
    # each atom's energy is its own expert's centre-subset energy
    hf, lf = moe.experts
    for k, model in enumerate((hf, lf)):
        sub = collate([atoms], species=SPECIES, r_max=model.r_max, with_targets=False)
        alone = model(sub, centers=expert == k, compute_forces=False)[K.PER_ATOM_ENERGY]
        torch.testing.assert_close(out[K.PER_ATOM_ENERGY][expert == k], alone[expert == k], atol=1e-12, rtol=0)


def test_identical_experts_reproduce_the_single_model():
    hf, _ = experts()
    moe = MixturePotential([hf, hf], names=("a", "b"))
    atoms = pt_co_slab(size=(2, 2, 3))
    atoms.pbc = True  # stress needs a 3-d periodic cell
    batch = collate([atoms], species=SPECIES, r_max=hf.r_max + 1.0, with_targets=False)  # list longer than r_max
    expert = torch.as_tensor(np.random.default_rng(0).integers(0, 2, size=len(atoms)))
    mixed = moe(batch, expert=expert, compute_stress=True)
    single = hf(collate([atoms], species=SPECIES, r_max=hf.r_max, with_targets=False), compute_stress=True)
    for key in (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES, K.STRESS):
        torch.testing.assert_close(mixed[key], single[key], atol=1e-11, rtol=0, msg=key)


def test_mixture_passes_the_model_output_checker():
    moe = mixture()
    frames = [pt_co_slab(size=(2, 2, 3)), pt_bulk(repeat=(2, 1, 1))]

    def model(batch, **kwargs):
        expert = batch[K.SPECIES] % 2  # a fixed per-atom rule that puts atoms on both experts
        return moe(batch, expert=expert, **kwargs)

    validate_model_outputs(model, frames, r_max=moe.r_max)


@pytest.mark.parametrize("chunks", [1, (3, 5), (2, 0), (0, 4)])
def test_chunked_evaluation_equals_one_pass(chunks):
    """Centres in chunks (each with its own backward pass) give the one-pass energies, forces and stress."""
    one_pass, chunked = mixture(), mixture()
    chunked.set_centres_per_chunk(chunks)
    frames = [tiny_slab(), pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.1)]
    for atoms, expert in ((frames[0], slab_partition(frames[0])),
                          (frames[1], (np.arange(len(frames[1])) % 3 == 0).astype(np.int64))):
        batch = collate([atoms], species=SPECIES, r_max=one_pass.r_max, with_targets=False)
        for centers in (None, torch.as_tensor(np.arange(len(atoms)) % 2 == 0)):
            ref = one_pass(batch, expert=torch.as_tensor(expert), centers=centers, compute_stress=True)
            out = chunked(batch, expert=torch.as_tensor(expert), centers=centers, compute_stress=True)
            for key in (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES, K.STRESS, K.DESCRIPTORS):
                torch.testing.assert_close(out[key], ref[key], atol=1e-12, rtol=1e-10, msg=key)
            assert torch.equal(out[K.CENTER_MASK], ref[K.CENTER_MASK])
            assert not out[K.FORCES].requires_grad
    expert = torch.as_tensor(slab_partition(frames[0]))
    sizes = [int(m.sum()) for _, m in chunked.centre_chunks(expert)]
    assert sum(sizes) == len(frames[0])


def test_chunked_timings_and_bad_chunk_sizes():
    moe = mixture()
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    ev = MixtureEvaluator(moe, numbers=atoms.numbers, expert=expert, skin=0.5, centres_per_chunk=(4, 4))
    ev(atoms.positions, atoms.cell.array, atoms.pbc)
    assert ev.expert_time_s["hf"] > 0 and ev.expert_time_s["lf"] > 0
    with pytest.raises(ValueError, match="one entry per expert"):
        MixtureEvaluator(mixture(), numbers=atoms.numbers, expert=expert, skin=0.5, centres_per_chunk=(4, 4, 4))
    with pytest.raises(ValueError, match=">= 0"):
        MixtureEvaluator(mixture(), numbers=atoms.numbers, expert=expert, skin=0.5, centres_per_chunk=-1)


def test_wrong_expert_tensor_is_rejected():
    moe = mixture()
    atoms = tiny_slab()
    batch = collate([atoms], species=SPECIES, r_max=moe.r_max, with_targets=False)
    with pytest.raises(ValueError, match="expert indices"):
        moe(batch, expert=torch.full((len(atoms),), 2))
    with pytest.raises(ValueError, match="shape"):
        moe(batch, expert=torch.zeros(3, dtype=torch.int64))


def test_verlet_list_is_reused_and_survives_wrapping():
    moe = mixture()
    atoms = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.05)
    expert = (np.arange(len(atoms)) % 2).astype(np.int64)
    reused = MixtureEvaluator(moe, numbers=atoms.numbers, expert=expert, skin=1.0)
    fresh = MixtureEvaluator(moe, numbers=atoms.numbers, expert=expert, skin=0.0)
    cell, pbc = atoms.cell.array, atoms.pbc
    reused(atoms.positions, cell, pbc)
    rng = np.random.default_rng(3)
    moved = atoms.positions + rng.uniform(-0.25, 0.25, size=atoms.positions.shape)  # < skin / 2
    wrapped = moved.copy()
    wrapped[0] += cell[0]  # an atom wrapped through the boundary by the MD code
    wrapped[5] -= cell[1] + cell[2]
    a = reused(wrapped, cell, pbc)
    b = fresh(moved, cell, pbc)
    assert reused.neighbors.n_builds == 1
    assert a.energy == pytest.approx(b.energy, abs=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-10)
    np.testing.assert_allclose(a.energies, b.energies, atol=1e-10)
    far = moved.copy()
    far[3] += 0.6  # beyond skin / 2: rebuild
    reused(far, cell, pbc)
    assert reused.neighbors.n_builds == 2


def test_calculator_matches_the_potential_and_runs_ase_md():
    moe = mixture()
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    batch = collate([atoms], species=SPECIES, r_max=moe.r_max, with_targets=False)
    out = moe(batch, expert=torch.as_tensor(expert))
    atoms.calc = MixtureCalculator(moe, expert=expert, skin=0.5)
    assert atoms.get_potential_energy() == pytest.approx(float(out[K.ENERGY][0].detach()), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), out[K.FORCES].numpy(), atol=1e-10)
    np.testing.assert_allclose(atoms.get_potential_energies(), out[K.PER_ATOM_ENERGY].detach().numpy(), atol=1e-10)
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.01, size=(len(atoms), 3)))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.25 * units.fs).run(40)
    assert abs(atoms.get_total_energy() - e0) / len(atoms) < 1e-5


def test_calculator_relaxes_a_structure():
    moe = mixture()
    atoms = tiny_slab()
    atoms.calc = MixtureCalculator(moe, expert=slab_partition(atoms), skin=0.3)
    energies = [atoms.get_potential_energy()]
    optimizer = BFGS(atoms, logfile=None, maxstep=0.02)  # untrained experts: small, safe steps
    for _ in range(5):
        optimizer.run(fmax=1e-3, steps=1)
        energies.append(atoms.get_potential_energy())
    assert np.all(np.diff(energies) < 0), energies


def test_one_expert_mixture_equals_the_single_expert_calculator():
    hf, _ = experts()
    atoms = pt_bulk(repeat=(2, 2, 2), cubic=True)
    results = []
    for calc in (MixtureCalculator(MixturePotential([hf]), expert=np.zeros(len(atoms), dtype=np.int64)), AllegroCalculator(hf)):
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_stress().copy()))
    (e1, f1, s1), (e2, f2, s2) = results
    assert e1 == pytest.approx(e2, abs=1e-10)
    np.testing.assert_allclose(f1, f2, atol=1e-10)
    np.testing.assert_allclose(s1, s2, atol=1e-10)


def test_expert_costs_cover_each_expert_and_the_mixture():
    moe = mixture()
    atoms = tiny_slab()
    expert = torch.as_tensor(slab_partition(atoms))
    batch = collate([atoms], species=SPECIES, r_max=moe.r_max, with_targets=False)
    costs = expert_costs(moe, batch, expert, repeats=1, warmup=0)
    assert set(costs) == {"hf", "lf", "mixture"}
    assert all(value > 0 for value in costs.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_evaluation_matches_cpu(dtype):
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    cpu = MixtureEvaluator(mixture(dtype=dtype), numbers=atoms.numbers, expert=expert, skin=1.0, device="cpu")
    gpu = MixtureEvaluator(mixture(dtype=dtype), numbers=atoms.numbers, expert=expert, skin=1.0, device="cuda")
    a = cpu(atoms.positions, atoms.cell.array, atoms.pbc)
    b = gpu(atoms.positions, atoms.cell.array, atoms.pbc)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    assert a.energy == pytest.approx(b.energy, abs=tol * len(atoms))
    np.testing.assert_allclose(a.forces, b.forces, atol=tol)
