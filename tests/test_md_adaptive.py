"""The adaptive mixture (pipeline.md.adaptive): smooth switching weights, exact derivatives, centre sets with a
margin, forced weights (static partition as a special case), the ASE calculator, energy conservation (float64)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.fd import FiniteDifferenceCalculator
from ase.md.verlet import VelocityVerlet
from md_support import SPECIES, experts, slab_partition

from pipeline.config import MDSystemConfig
from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.md.adaptive import (
    ENERGY_DISAGREEMENT,
    HF_CENTRES,
    LAMBDA,
    LF_CENTRES,
    AdaptiveCalculator,
    AdaptiveMixturePotential,
    centre_counts,
    switch,
)
from pipeline.md.calculator import MixtureCalculator
from pipeline.md.evaluator import ExpertTimer
from pipeline.md.potential import MixturePotential
from pipeline.md.system import build_production_cell
from pipeline.models import AllegroCalculator, PotentialCalculator
from pipeline.models.contract import EXPERT_WEIGHTS, VIRIAL, Potential, check_outputs
from pipeline.models.testing import pt_bulk, validate_model_outputs

torch.set_num_threads(1)

HF_INDEX, LF_INDEX = 0, 1
# tiny experts: HF r_max 4.0, LF r_max 3.5 -> defaults r_in = 3.5, r_out = 5.0 (margin 0.5)
R_IN, R_OUT = 3.5, 5.0


def _potential(**kwargs) -> AdaptiveMixturePotential:
    hf, lf = experts()
    return AdaptiveMixturePotential(hf, lf, **kwargs)


def _slab(*, layers: int = 4, vacuum: float = 5.0) -> Atoms:
    """3x3 Pt(111) + one CO on top (rattled): pure HF near the CO, a switching shell in the second layer,
    pure LF below (periodic in x, y)."""
    atoms = build_production_cell(MDSystemConfig(surface_size=(3, 3), layers=layers, n_co=1, vacuum_a=vacuum))
    atoms.rattle(0.05, seed=0)
    return atoms


def _batch(atoms: Atoms, potential) -> dict[str, torch.Tensor]:
    return collate([atoms], species=SPECIES, r_max=potential.r_max, with_targets=False)


def _energy(potential, atoms: Atoms, **inputs) -> float:
    return float(potential(_batch(atoms, potential), compute_forces=False, **inputs)[K.ENERGY][0].detach())


def _detached(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in out.items()}


# ----------------------------------------------------------------------------------------------------- switch


def test_switch_is_c2_at_both_radii():
    h = 1e-4

    def s(d: float) -> float:
        return float(switch(torch.tensor(d, dtype=torch.float64), R_IN, R_OUT))

    for r0 in (R_IN, R_OUT):
        value = s(r0)
        assert value == (1.0 if r0 == R_IN else 0.0)
        for side in (-1, 1):
            # one-sided first and second differences on each side of the radius
            d1 = side * (s(r0 + side * h) - value) / h
            d2 = (s(r0 + 2 * side * h) - 2 * s(r0 + side * h) + value) / h**2
            assert abs(s(r0 + side * 1e-9) - value) < 1e-12  # continuous value
            assert abs(d1) < 1e-6  # s' -> 0 from both sides (a C0 ramp would give 1/(r_out - r_in))
            assert abs(d2) < 1e-2  # s'' -> 0 from both sides (cubic smoothstep: a jump of 6/(r_out - r_in)^2 = 2.7)
    # not trivially flat in between: s(mid) = 1/2, slope -15/8/(r_out - r_in), s'' nonzero off-centre
    mid = 0.5 * (R_IN + R_OUT)
    assert s(mid) == pytest.approx(0.5, abs=1e-12)
    assert (s(mid + h) - s(mid - h)) / (2 * h) == pytest.approx(-15 / 8 / (R_OUT - R_IN), rel=1e-6)
    q = R_IN + 0.25 * (R_OUT - R_IN)
    assert abs((s(q + h) - 2 * s(q) + s(q - h)) / h**2) > 0.5


def test_lambda_of_an_atom_is_c2_across_the_radii():
    pot = _potential()

    def lam(distance: float) -> float:
        atoms = Atoms("CPt", positions=[[0.0, 0.0, 0.0], [distance, 0.3 * distance, 0.1]])
        atoms.positions[1] *= distance / np.linalg.norm(atoms.positions[1])
        value = pot.switching(_batch(atoms, pot))
        assert float(value[0]) == 1.0  # the adsorbate itself
        return float(value[1])

    h = 1e-4
    for r0 in (R_IN, R_OUT):
        left = [lam(r0 - k * h) for k in range(3)]
        right = [lam(r0 + k * h) for k in range(3)]
        assert left[0] == pytest.approx(right[0], abs=1e-12)
        assert abs((left[0] - left[1]) / h) < 1e-6 and abs((right[1] - right[0]) / h) < 1e-6
        assert abs((left[0] - 2 * left[1] + left[2]) / h**2) < 1e-2
        assert abs((right[0] - 2 * right[1] + right[2]) / h**2) < 1e-2
    assert lam(R_IN - 0.5) == 1.0 and lam(R_OUT + 0.5) == 0.0 and 0.0 < lam(0.5 * (R_IN + R_OUT)) < 1.0


def test_lambda_is_smooth_where_an_atom_is_equidistant_from_two_adsorbate_atoms():
    pot = _potential()
    # two C atoms 2 A apart; a Pt atom crossing their bisector plane x = 0 inside the switching shell
    y = 4.2

    def lam_and_grad(x: float) -> tuple[float, np.ndarray]:
        atoms = Atoms("CCPt", positions=[[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [x, y, 0.0]])
        batch = _batch(atoms, pot)
        pos = batch[K.POSITIONS].clone().requires_grad_(True)
        value = pot.switching(batch, positions=pos)[2]
        (grad,) = torch.autograd.grad(value, pos)
        return float(value.detach()), grad[2].numpy()

    d = np.hypot(1.0, y)
    assert R_IN < d < R_OUT
    value_0, grad_0 = lam_and_grad(0.0)
    assert 0.0 < value_0 < 1.0
    assert abs(grad_0[0]) < 1e-12  # symmetric: no force along x on the bisector
    eps = 1e-6
    (_, g_minus), (_, g_plus) = lam_and_grad(-eps), lam_and_grad(eps)
    # the gradient is continuous across the plane (a min over atoms would flip its x component here)
    np.testing.assert_allclose(g_minus, g_plus, atol=1e-5)
    # and it is the derivative: central differences of lambda on both sides of the plane
    for x0 in (-3e-3, 0.0, 3e-3):
        numeric = (lam_and_grad(x0 + 1e-5)[0] - lam_and_grad(x0 - 1e-5)[0]) / 2e-5
        assert lam_and_grad(x0)[1][0] == pytest.approx(numeric, abs=1e-8)


# ------------------------------------------------------------------------------------------------ derivatives


def test_forces_are_finite_differences_in_hf_lf_and_the_shell():
    pot = _potential()
    atoms = _slab()
    out = _detached(pot(_batch(atoms, pot)))
    lam, forces = out[LAMBDA].numpy(), out[K.FORCES].numpy()
    shell = np.flatnonzero((lam > 0) & (lam < 1))
    deep_lf = int(np.flatnonzero(lam == 0)[0])  # bottom layer
    c_atom = len(atoms) - 2
    under_co = int(np.argmin(np.linalg.norm(atoms.positions[:-2] - atoms.positions[c_atom], axis=1)))
    assert len(shell) >= 2 and lam[under_co] == 1.0
    probe = [c_atom, under_co, deep_lf, *shell[:2]]
    h = 1e-5
    for i in probe:
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, axis] += h
            minus.positions[i, axis] -= h
            numeric = -(_energy(pot, plus) - _energy(pot, minus)) / (2 * h)
            assert forces[i, axis] == pytest.approx(numeric, abs=5e-7), (i, axis, lam[i])
    # the switching term matters: with lambda frozen at its values, the forces of the shell atoms differ
    frozen = _detached(pot(_batch(atoms, pot), weights=torch.as_tensor(lam)))
    assert np.abs(frozen[K.FORCES].numpy()[shell] - forces[shell]).max() > 1e-3
    assert frozen[K.ENERGY][0] == pytest.approx(float(out[K.ENERGY][0]), abs=1e-10)


def test_virial_is_the_strain_derivative_of_the_energy():
    pot = _potential()
    atoms = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.1)
    atoms.symbols[0] = "C"
    atoms.calc = AdaptiveCalculator(pot)
    lam = pot.switching(_batch(atoms, pot)).detach().numpy()
    assert ((lam > 0) & (lam < 1)).sum() >= 4 and (lam == 0).any()  # shell and pure LF atoms in the cell
    analytic = atoms.get_stress()
    numeric = FiniteDifferenceCalculator(atoms.calc, eps_strain=1e-5).get_stress(atoms)
    np.testing.assert_allclose(analytic, numeric, atol=1e-7)
    assert np.abs(analytic).max() > 1e-3


def test_total_force_vanishes_on_a_free_slab():
    pot = _potential()
    out = _detached(pot(_batch(_slab(), pot)))
    assert np.abs(out[K.FORCES].numpy()).max() > 0.1
    np.testing.assert_allclose(out[K.FORCES].sum(dim=0).numpy(), 0.0, atol=1e-12)


# ------------------------------------------------------------------------------------- contract and subsets


def test_outputs_follow_the_contract_and_centre_subsets_add_up():
    pot = _potential()
    assert isinstance(pot, Potential)
    atoms = _slab(layers=3)
    atoms.pbc = True
    batch = _batch(atoms, pot)
    out = _detached(pot(batch, compute_stress=True))
    check_outputs(out, batch, compute_forces=True, compute_stress=True)
    lam = out[LAMBDA]
    torch.testing.assert_close(out[EXPERT_WEIGHTS], torch.stack([lam, 1 - lam], dim=1), rtol=0, atol=0)
    # the sets hold every atom of nonzero weight, and the margin puts more atoms in both
    assert bool(out[HF_CENTRES][lam > 0].all()) and bool(out[LF_CENTRES][lam < 1].all())
    counts = centre_counts(out)
    assert counts["hf"] > int((lam > 0).sum()) and counts["shell"] > int(((lam > 0) & (lam < 1)).sum())
    both = out[HF_CENTRES] & out[LF_CENTRES]
    assert bool((out[ENERGY_DISAGREEMENT][~both] == 0).all()) and bool((out[ENERGY_DISAGREEMENT][both] != 0).all())
    assert float(out[VIRIAL].abs().max()) > 1e-3
    # several structures in one batch, structure by structure, and a three-way partition of the centres
    other = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.1)
    other.symbols[5] = "O"
    validate_model_outputs(pot, [atoms, other, _slab(layers=3)], r_max=pot.r_max, atol=1e-9)


# ------------------------------------------------------------------------------------ centre sets and margin


def test_sets_are_kept_within_the_margin_and_rebuilt_beyond_it():
    pot = _potential(margin=1.0)
    fresh = AdaptiveMixturePotential(*pot.experts, margin=0.0)
    everything = AdaptiveMixturePotential(*pot.experts, margin=20.0)  # every atom in both sets
    atoms = _slab()
    c_atom = len(atoms) - 2
    top = np.flatnonzero(atoms.get_tags() == 1)
    vectors = atoms.get_distances(c_atom, top, mic=True, vector=True)  # from the C to the top layer
    distance = np.linalg.norm(vectors, axis=1)
    mover = int(top[np.argmax(distance)])  # top-layer atom just beyond r_out: pure LF at the start
    assert R_OUT < distance.max() < R_OUT + 0.4
    direction = -vectors[np.argmax(distance)] / distance.max()
    n_builds = []
    for step in (0.0, 0.45, 0.9):  # 0.45 < margin / 2: sets kept; 0.9: rebuilt
        moved = atoms.copy()
        moved.positions[mover] += step * direction
        batch = _batch(moved, pot)
        out = _detached(pot(batch, compute_stress=True))
        n_builds.append(pot.centres.n_builds)
        lam = out[LAMBDA]
        assert bool(out[HF_CENTRES][lam > 0].all()) and bool(out[LF_CENTRES][lam < 1].all())
        if step > 0:
            assert 0.0 < float(lam[mover]) < 1.0  # it entered the shell
        for reference in (fresh, everything):
            ref = _detached(reference(batch, compute_stress=True))
            for key in (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES, VIRIAL, LAMBDA):
                torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-10)
    assert n_builds == [1, 1, 2]
    assert centre_counts(_detached(everything(_batch(atoms, pot))))["shell"] == len(atoms) - 2


def test_r_in_below_the_lf_cutoff_is_refused_unless_allowed():
    hf, lf = experts()
    pot = AdaptiveMixturePotential(hf, lf)
    assert (pot.r_in, pot.r_out, pot.margin) == (lf.r_max, lf.r_max + 1.5, 0.5)
    with pytest.raises(ValueError, match="LF cutoff"):
        AdaptiveMixturePotential(hf, lf, r_in=3.0)
    assert AdaptiveMixturePotential(hf, lf, r_in=3.0, allow_lf_near_adsorbate=True).r_in == 3.0
    with pytest.raises(ValueError, match="r_in < r_out"):
        AdaptiveMixturePotential(hf, lf, r_in=4.0, r_out=4.0)
    with pytest.raises(ValueError, match="weights"):
        pot(_batch(_slab(layers=3), pot), weights=torch.full((30,), 1.5, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- forced weights


def test_forced_weights_give_the_experts_and_the_static_mixture():
    pot = _potential()
    hf, lf = pot.experts
    atoms = _slab(layers=3)
    batch = _batch(atoms, pot)
    n = len(atoms)

    def run(model, **inputs):
        return _detached(model(batch, compute_stress=True, **inputs))

    keys = (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES, VIRIAL)
    ones, zeros = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for weights, expert in ((ones, hf), (zeros, lf)):
        out, ref = run(pot, weights=weights), run(expert)
        for key in keys:
            torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-10)
    # a static partition is the special case lambda in {0, 1}
    expert_index = slab_partition(atoms)
    static = MixturePotential([hf, lf], names=("hf", "lf"))
    out = run(pot, weights=AdaptiveMixturePotential.weights_from_expert(expert_index))
    ref = run(static, expert=torch.as_tensor(expert_index))
    for key in (*keys, EXPERT_WEIGHTS):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-10)
    assert centre_counts(out) == {"hf": int((expert_index == 0).sum()), "lf": int((expert_index == 1).sum()),
                                  "shell": 0}
    # constant weights mix the two experts linearly
    out = run(pot, weights=torch.full((n,), 0.3, dtype=torch.float64))
    for key in keys:
        torch.testing.assert_close(out[key], 0.3 * run(hf)[key] + 0.7 * run(lf)[key], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------- calculator


def test_calculators_equal_the_module():
    pot = _potential()
    atoms = _slab(layers=3)
    out = _detached(pot(_batch(atoms, pot)))
    weights = np.linspace(0.0, 1.0, len(atoms))
    forced = _detached(pot(_batch(atoms, pot), weights=torch.as_tensor(weights)))
    for calc, ref in (
        (AdaptiveCalculator(pot, skin=0.5), out),
        (PotentialCalculator(pot), out),
        (AdaptiveCalculator(pot, weights=weights), forced),
        (PotentialCalculator(pot, inputs={"weights": weights}), forced),
    ):
        moved = atoms.copy()
        moved.calc = calc
        assert moved.get_potential_energy() == pytest.approx(float(ref[K.ENERGY][0]), abs=1e-10)
        np.testing.assert_allclose(moved.get_forces(), ref[K.FORCES].numpy(), atol=1e-10)
        np.testing.assert_allclose(moved.get_potential_energies(), ref[K.PER_ATOM_ENERGY].numpy(), atol=1e-10)
    # the MD evaluator's per-expert timer observes the adaptive mixture's expert calls as the static one's
    timer = ExpertTimer(pot, torch.device("cpu"))
    with timer.timing():
        pot(_batch(atoms, pot))
    assert all(seconds > 0 for seconds in timer.seconds.values()) and set(timer.seconds) == {"hf", "lf"}


def test_from_checkpoints(tmp_path):
    from pipeline.models import save_checkpoint

    hf, lf = experts()
    paths = [tmp_path / "hf.pt", tmp_path / "lf.pt"]
    for model, path in zip((hf, lf), paths):
        save_checkpoint(path, model)
    calc = AdaptiveCalculator.from_checkpoints(paths, r_out=5.5, margin=0.5)
    assert (calc.potential.r_in, calc.potential.r_out, calc.potential.margin) == (3.5, 5.5, 0.5)
    atoms = _slab(layers=3)
    atoms.calc = calc
    reference = AdaptiveMixturePotential(hf, lf, r_out=5.5)
    assert atoms.get_potential_energy() == pytest.approx(_energy(reference, atoms), abs=1e-10)


# -------------------------------------------------------------------------------------- energy conservation


def _nve(calc, atoms: Atoms, velocities: np.ndarray, *, dt_fs: float, steps: int, projectile: int | None = None):
    """Total energy (eV) per step, kinetic energy range (eV) and (adaptive) the projectile's lambda per step."""
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.set_velocities(velocities)
    total, kinetic, lam = [], [], []

    def record():
        total.append(atoms.get_total_energy())
        kinetic.append(atoms.get_kinetic_energy())
        if projectile is not None:
            lam.append(float(calc.potential.switching(calc.graph(atoms))[projectile].detach()))

    record()
    dynamics = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    dynamics.attach(record, interval=1)
    dynamics.run(steps)
    total = np.asarray(total)
    time_ps = np.arange(len(total)) * dt_fs * 1e-3
    slope, intercept = np.polyfit(time_ps, total, 1)
    return {
        "drift_ev_ps": float(slope),
        "fluctuation_ev": float(np.std(total - (slope * time_ps + intercept))),
        "max_deviation_ev": float(np.abs(total - total[0]).max()),
        "kinetic_range_ev": float(np.ptp(kinetic)),
        "lambda": np.asarray(lam),
    }


def test_nve_conserves_energy_while_an_atom_crosses_the_switching_shell():
    pot = _potential()
    hf, lf = pot.experts
    atoms = _slab(layers=3, vacuum=8.0)
    oxygen = len(atoms) - 1
    # a Pt atom 6.3 A above the O flies down at 0.03 A/fs: in 100 fs it crosses the whole shell (lambda 0 -> 1)
    atoms += Atoms("Pt", positions=[atoms.positions[oxygen] + [0.3, 0.2, 6.3]])
    projectile = len(atoms) - 1
    velocities = np.random.default_rng(1).normal(scale=0.002, size=(len(atoms), 3))  # A/fs
    velocities[projectile] = [0.0, 0.0, -0.03]
    velocities = velocities / units.fs  # ASE velocity units
    adaptive = _nve(AdaptiveCalculator(pot, skin=0.5), atoms, velocities, dt_fs=0.5, steps=200, projectile=projectile)
    half_step = _nve(AdaptiveCalculator(copy.deepcopy(pot), skin=0.5), atoms, velocities, dt_fs=0.25, steps=400)
    lam0 = pot.switching(_batch(atoms, pot)).detach().numpy()
    static_mixture = MixturePotential([hf, lf], names=("hf", "lf"))
    static = _nve(MixtureCalculator(static_mixture, expert=np.where(lam0 >= 0.5, 0, 1), skin=0.5), atoms, velocities,
                  dt_fs=0.5, steps=200)
    full_hf = _nve(AllegroCalculator(hf), atoms, velocities, dt_fs=0.5, steps=200)
    for name, run in (("adaptive dt 0.5 fs", adaptive), ("adaptive dt 0.25 fs", half_step),
                      ("static dt 0.5 fs", static), ("full HF dt 0.5 fs", full_hf)):  # shown with -s or on failure
        print(f"{name}: drift {run['drift_ev_ps']:.2e} eV/ps, fluctuation {run['fluctuation_ev']:.2e} eV, "
              f"max |E - E0| {run['max_deviation_ev']:.2e} eV, kinetic energy range {run['kinetic_range_ev']:.2f} eV")
    lam = adaptive["lambda"]
    assert lam[0] == 0.0 and lam[-1] == 1.0 and np.any((lam > 0.1) & (lam < 0.9))
    assert pot.centres.n_builds > 2  # the sets were rebuilt on the way
    # fluctuations tiny against the kinetic energy exchanged
    assert adaptive["fluctuation_ev"] < 1e-3 * adaptive["kinetic_range_ev"]
    assert adaptive["max_deviation_ev"] < 5e-3 * adaptive["kinetic_range_ev"]
    # the error is the integrator's: it falls as dt^2 (a force inconsistent with the energy would not)
    ratio = adaptive["max_deviation_ev"] / half_step["max_deviation_ev"]
    assert 3.0 < ratio < 5.5, ratio
    assert abs(half_step["drift_ev_ps"]) * 0.1 < 3.0 * half_step["max_deviation_ev"]
    # same order as the static mixture and full HF (the switching term adds curvature: untrained experts disagree
    # by ~0.2 eV/atom in the shell)
    assert adaptive["max_deviation_ev"] < 20 * max(static["max_deviation_ev"], full_hf["max_deviation_ev"])


# ---------------------------------------------------------------------------------------------- centre chunks


CHUNK_KEYS = (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES, VIRIAL, K.STRESS, LAMBDA, EXPERT_WEIGHTS, K.DESCRIPTORS,
              ENERGY_DISAGREEMENT)


def test_chunked_evaluation_equals_one_pass():
    pot = _potential()
    atoms = _slab()
    atoms.pbc = True
    batch = _batch(atoms, pot)
    assert pot.centres_per_chunk == 0 and pot.chunk_size(HF_INDEX) == pot.chunk_size(LF_INDEX) == 0
    ref = _detached(pot(batch, compute_stress=True))
    lam = ref[LAMBDA]
    n_hf, n_lf = int(ref[HF_CENTRES].sum()), int(ref[LF_CENTRES].sum())
    shell = (lam > 0) & (lam < 1)
    assert int(shell.sum()) >= 2 and n_hf > 10 and n_lf > 10
    # 1, sizes that do not divide the counts, one chunked expert only, one chunk per expert
    for sizes in (1, 3, 7, (5, 11), (0, 4), (6, 0), 1000):
        pot.set_centres_per_chunk(sizes)
        chunks = pot.centre_chunks([ref[HF_CENTRES], ref[LF_CENTRES]])
        if sizes != 1000:
            assert len(chunks) > 2
        # every centre in exactly one chunk of its expert: shell atoms in one HF and one LF chunk
        for k, key in ((HF_INDEX, HF_CENTRES), (LF_INDEX, LF_CENTRES)):
            count = sum(mask.long() for j, mask in chunks if j == k)
            assert torch.equal(count.bool(), ref[key]) and int(count.max()) == 1
        out = _detached(pot(batch, compute_stress=True))
        assert set(out) == set(ref)
        # chunks evaluate only the atoms of the kept sets whose terms are not exactly zero (margin 0's sets)
        assert torch.equal(out[HF_CENTRES], lam > 0) and torch.equal(out[LF_CENTRES], lam < 1)
        assert torch.equal(out[K.CENTER_MASK], ref[K.CENTER_MASK])
        both = out[HF_CENTRES] & out[LF_CENTRES]
        torch.testing.assert_close(out[ENERGY_DISAGREEMENT], torch.where(both, ref[ENERGY_DISAGREEMENT], 0.0),
                                   rtol=0, atol=1e-10)
        for key in CHUNK_KEYS:
            if key != ENERGY_DISAGREEMENT:
                torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-10, msg=f"{sizes}: {key}")
        assert torch.equal(out[LAMBDA], lam)
    assert n_hf > int((lam > 0).sum()) and n_lf > int((lam < 1).sum())  # the margin's atoms were skipped
    # the test has teeth: the gradient of lambda (also on the adsorbate atoms) is a large part of the forces
    frozen = _detached(pot(batch, compute_stress=True, weights=lam))
    adsorbate = torch.as_tensor(np.isin(atoms.numbers, (6, 8)))
    assert float((frozen[K.FORCES] - ref[K.FORCES])[adsorbate].abs().max()) > 1e-4
    assert float((frozen[K.FORCES] - ref[K.FORCES])[shell].abs().max()) > 1e-3
    assert float((frozen[VIRIAL] - ref[VIRIAL]).abs().max()) > 1e-4
    # forced weights, centre subsets and energy only, chunked
    weights = torch.linspace(0.0, 1.0, len(atoms), dtype=torch.float64)
    subset = torch.arange(len(atoms)) % 3 == 1
    for inputs in ({"weights": weights}, {"centers": subset}, {"centers": subset, "weights": weights}):
        pot.set_centres_per_chunk(0)
        one = _detached(pot(batch, compute_stress=True, **inputs))
        pot.set_centres_per_chunk((3, 5))
        out = _detached(pot(batch, compute_stress=True, **inputs))
        for key in CHUNK_KEYS:
            if key != ENERGY_DISAGREEMENT or "weights" in inputs:  # forced weights: the sets are exact
                torch.testing.assert_close(out[key], one[key], rtol=0, atol=1e-10, msg=f"{list(inputs)}: {key}")
    out = _detached(pot(batch, compute_forces=False))
    assert K.FORCES not in out
    torch.testing.assert_close(out[K.ENERGY], ref[K.ENERGY], rtol=0, atol=1e-10)
    # no centre at all: zeros of the right shapes
    empty = _detached(pot(batch, centers=torch.zeros(len(atoms), dtype=torch.bool)))
    assert float(empty[K.ENERGY].abs().max()) == 0.0 and empty[K.FORCES].shape == (len(atoms), 3)


def test_chunked_contract_calculator_and_timer():
    pot = _potential()
    pot.set_centres_per_chunk((4, 9))
    atoms = _slab(layers=3)
    atoms.pbc = True
    other = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.1)
    other.symbols[5] = "O"
    # batches of several structures (pairs of the centre sets sorted across structures) and centre partitions
    validate_model_outputs(pot, [atoms, other, _slab(layers=3)], r_max=pot.r_max, atol=1e-9)
    one_pass = AdaptiveMixturePotential(*pot.experts)
    ref = _detached(one_pass(_batch(atoms, pot)))
    calls = pot.centres.n_calls
    moved = atoms.copy()
    moved.calc = AdaptiveCalculator(pot, skin=0.5)
    assert moved.get_potential_energy() == pytest.approx(float(ref[K.ENERGY][0]), abs=1e-10)
    np.testing.assert_allclose(moved.get_forces(), ref[K.FORCES].numpy(), atol=1e-10)
    assert pot.centres.n_calls == calls + 1  # the centre sets are updated once per call, not per chunk
    timer = ExpertTimer(pot, torch.device("cpu"))
    with timer.timing():
        pot(_batch(atoms, pot))
    assert all(seconds > 0 for seconds in timer.seconds.values()) and set(timer.seconds) == {"hf", "lf"}
    # the no-chunk path is the one pass, bit for bit
    pot.set_centres_per_chunk(0)
    out = _detached(pot(_batch(atoms, pot)))
    for key in (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES):
        assert torch.equal(out[key], ref[key])
    with pytest.raises(ValueError, match=">= 0"):
        pot.set_centres_per_chunk(-1)
    with pytest.raises(ValueError, match="one entry per expert"):
        pot.set_centres_per_chunk([4])
    pot.set_centres_per_chunk([4, 0])
    assert (pot.chunk_size(HF_INDEX), pot.chunk_size(LF_INDEX)) == (4, 0)


def test_lambda_of_an_atom_range_equals_the_full_lambda():
    pot = _potential()
    atoms = _slab()
    batch = _batch(atoms, pot)
    sets = pot.sets(batch)
    pos = batch[K.POSITIONS].to(pot.dtype)
    full = sets.weights(pos, batch[K.CELL], batch[K.BATCH], r_in=R_IN, r_out=R_OUT)
    adsorbate = sets.adsorbate
    for first, stop in ((0, len(atoms)), (0, 1), (3, 17), (20, 21), (9, 9), (30, len(atoms))):
        part = sets.weights(pos, batch[K.CELL], batch[K.BATCH], r_in=R_IN, r_out=R_OUT, atoms=(first, stop))
        inside = torch.zeros(len(atoms), dtype=torch.bool)
        inside[first:stop] = True
        assert torch.equal(part[inside | adsorbate], full[inside | adsorbate])
        assert bool((part[~inside & ~adsorbate] == 0).all())


def test_chunks_skip_exactly_the_atoms_of_zero_terms_at_the_radii():
    # Pt atoms at r_in and r_out exactly (and just inside r_out) from a C atom: lambda exactly 1 / 0 with zero
    # gradient there, so skipping them (LF at r_in, HF at r_out) changes nothing
    positions = [[0.0, 0.0, 0.0], [R_IN, 0.0, 0.0], [0.0, R_OUT, 0.0], [0.0, 0.0, R_OUT - 1e-7],
                 [-0.5 * (R_IN + R_OUT), 0.0, 0.0], [0.0, -R_OUT - 0.3, 0.0], [-2.0, 2.0, 0.0]]
    atoms = Atoms("CPt6", positions=positions)
    one_pass = _potential()
    chunked = AdaptiveMixturePotential(*one_pass.experts)
    chunked.set_centres_per_chunk(1)
    batch = _batch(atoms, one_pass)
    ref = _detached(one_pass(batch))
    out = _detached(chunked(batch))
    lam = ref[LAMBDA]
    # atom 3: lambda rounds to 0 but its gradient does not vanish: HF evaluates it
    assert lam.tolist()[:4] == [1.0, 1.0, 0.0, 0.0] and float(lam[5]) == 0.0
    assert out[HF_CENTRES].tolist() == [True, True, False, True, True, False, True]
    assert out[LF_CENTRES].tolist() == [False, False, True, True, True, True, False]
    assert bool(ref[HF_CENTRES][2]) and bool(ref[LF_CENTRES][1])  # the one pass evaluated them (margin)
    for key in (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-12)
