"""Stability measures of the MoE study (pipeline.train.stability): loss spikes, non-finite gradients, and
energy-force consistency along a path on which a position-dependent (global) router switches (float64)."""

import numpy as np
import torch

from pipeline.config import MoEConfig, MoEStudyStabilityConfig
from pipeline.data import keys as K
from pipeline.models import build_model
from pipeline.models.testing import SPECIES, co_gas, evaluate, pt_co_slab, small_config
from pipeline.train.stability import (
    gradients_finite,
    loss_spikes,
    path_check,
    path_energy_jumps,
    path_residuals,
    straight_path,
    unstable,
)

torch.set_num_threads(1)


def _model(router: str, seed: int = 0):
    moe = MoEConfig(enabled=True, num_experts=3, top_k=1, num_shared=1, router=router)
    return build_model(small_config(moe=moe), SPECIES, dtype=torch.float64, seed=seed).eval()


def _co_stretch(ts: np.ndarray) -> list:
    atoms = co_gas()
    axis = (atoms.positions[1] - atoms.positions[0]) / np.linalg.norm(atoms.positions[1] - atoms.positions[0])
    path = []
    for t in ts:
        a = atoms.copy()
        a.positions[1] = a.positions[0] + axis * t
        path.append(a)
    return path


def test_loss_spikes_are_epochs_above_factor_times_the_best_earlier_epoch():
    assert loss_spikes([10.0, 5.0, 2.0, 1.0, 0.8], factor=2.0) == 0  # a decreasing curve has none
    assert loss_spikes([10.0, 1.0, 2.5, 3.0, 0.9, 1.7, float("nan")], factor=2.0) == 2
    assert loss_spikes([], factor=2.0) == 0


def test_gradients_finite_flags_a_nan_gradient():
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    assert gradients_finite(model)
    model.weight.grad[0, 0] = float("nan")
    assert not gradients_finite(model)


def test_path_residual_is_the_trapezoid_work_error():
    """E = x^2 on one coordinate: the trapezoid rule is exact for a quadratic; a step of the energy shows up."""
    x = np.linspace(0.0, 1.0, 11)
    positions = np.zeros((11, 1, 3))
    positions[:, 0, 0] = x
    forces = np.zeros_like(positions)
    forces[:, 0, 0] = -2 * x
    r, h = path_residuals(x**2, forces, positions)
    assert np.allclose(r, 0.0, atol=1e-14) and np.allclose(h, 0.1)
    r_jump, _ = path_residuals(x**2 + 0.5 * (x > 0.55), forces, positions)
    assert np.argmax(r_jump) == 5 and np.isclose(r_jump.max(), 0.5)


def test_element_routing_forces_equal_finite_differences_where_a_global_router_switches():
    """Stretching CO: the global (whole-structure, top-1) router switches experts on the path, so its energy
    jumps (the path check reports a jump far above the threshold, at any step: unstable); the element-routed
    model's residual is below it and shrinks like h^3 with the step h, and its forces equal the finite-difference
    derivative of its energy along the same path."""
    ts = np.linspace(0.9, 3.5, 261)
    path = _co_stretch(ts)
    fine = _co_stretch(np.linspace(0.9, 3.5, 521))
    global_model, element = _model("global"), _model("element")
    routed = [evaluate(global_model, [p], r_max=global_model.r_max, compute_forces=False)[K.MOE_LOAD].numpy()
              for p in path]
    assert any(not np.array_equal(a, b) for a, b in zip(routed[:-1], routed[1:])), "the global router must switch"
    cfg = MoEStudyStabilityConfig()
    jumped, jumped_fine = path_check(global_model, [path]), path_check(global_model, [fine])
    assert min(jumped.max_jump_mev, jumped_fine.max_jump_mev) > 10 * cfg.max_path_jump_mev
    assert unstable(cfg, status="ok", loss_spikes=0, nonfinite_grads=0, max_path_jump_mev=jumped.max_jump_mev)

    smooth, smooth_fine = path_check(element, [path]), path_check(element, [fine])
    assert smooth.max_jump_mev < 0.2 * cfg.max_path_jump_mev
    assert smooth.max_jump_mev / smooth_fine.max_jump_mev > 5  # O(h^3): 8 for a halved step
    assert not unstable(cfg, status="ok", loss_spikes=0, nonfinite_grads=0, max_path_jump_mev=smooth.max_jump_mev)
    probe, delta = ts[::20], 1e-5  # forces at points of the path against central differences of the energy
    out = evaluate(element, _co_stretch(probe), r_max=element.r_max)
    axis = path[1].positions[1] - path[0].positions[1]
    axis /= np.linalg.norm(axis)
    force = out[K.FORCES].detach().numpy().reshape(len(probe), 2, 3)[:, 1] @ axis
    energy = evaluate(element, _co_stretch(np.r_[probe - delta, probe + delta]), r_max=element.r_max,
                      compute_forces=False)[K.ENERGY].detach().numpy()
    fd = -(energy[len(probe):] - energy[: len(probe)]) / (2 * delta)  # eV/A
    np.testing.assert_allclose(force, fd, atol=1e-6, rtol=0)


def test_straight_paths_of_a_slab_are_smooth_for_element_routing():
    model = _model("element")
    frames = [pt_co_slab(seed=s) for s in range(2)]
    check = path_energy_jumps(model, frames, steps=64, amplitude_a=0.05, seed=0)
    assert len(check.per_path_mev) == 2 and check.max_jump_mev < 1e-2 and check.step_a > 0
    a, b = straight_path(frames[0], steps=4, amplitude_a=0.05, seed=1), straight_path(frames[0], steps=4,
                                                                                      amplitude_a=0.05, seed=1)
    assert np.array_equal(a[-1].positions, b[-1].positions) and np.array_equal(a[0].positions, frames[0].positions)


def test_unstable_thresholds():
    cfg = MoEStudyStabilityConfig(max_loss_spikes=2, max_path_jump_mev=1.0)
    ok = {"status": "ok", "loss_spikes": 2, "nonfinite_grads": 0, "max_path_jump_mev": 0.5}
    assert not unstable(cfg, **ok)
    for change in ({"status": "non-finite loss at epoch 3"}, {"loss_spikes": 3}, {"nonfinite_grads": 1},
                   {"max_path_jump_mev": 1.5}, {"max_path_jump_mev": float("nan")}):
        assert unstable(cfg, **{**ok, **change}), change
