"""Numerical stability of a training run and of a trained model: the ``unstable`` column of the MoE study.

Three measures, settings in ``moe_study.stability`` (:class:`~pipeline.config.MoEStudyStabilityConfig`):

- **loss spikes** (:func:`loss_spikes`): epochs whose mean training loss exceeds ``spike_factor`` times the
  lowest mean training loss of the earlier epochs (a blow-up of the training, counted from the learning curve,
  so a resumed run counts like an uninterrupted one; single batches are not compared, because the batches of a
  many-element set differ in difficulty far more than a factor of a few);
- **non-finite gradients** (:func:`gradients_finite`): optimiser steps whose gradient (after clipping)
  holds a NaN or an infinity;
- **energy jumps along MD-like paths** (:func:`path_energy_jumps`): for a few frames, the straight path
  ``x(t) = x0 + t d``, ``t`` in [0, 1], with ``d`` Gaussian per atom and component (standard deviation
  ``path_amplitude_a``, the size of thermal displacements), sampled at ``path_steps + 1`` points and
  evaluated in float64. Between neighbouring points the energy change is compared with the work of the
  forces (trapezoid rule)::

      r_i = | E_{i+1} - E_i + (F_i + F_{i+1}) . (x_{i+1} - x_i) / 2 |

  For an energy with continuous forces ``r_i = O(h^3)`` (h the step; below 1e-4 meV at the defaults on the
  periodic set, measured);
  a jump of the energy by dE inside a step (a routing switch of a top-k router that depends on the
  positions, ``atom`` or ``global``) gives ``r_i ~ |dE|`` however small the step. ``max r_i`` (meV) and
  ``max r_i / |x_{i+1} - x_i|`` (meV/A: the largest finite-difference error of the force projected on the
  path) are reported.

:func:`unstable` combines them with the thresholds of the configuration: a run is unstable when training
stopped on a non-finite loss or diverged, when any gradient was non-finite, when it had more than
``max_loss_spikes`` spikes, or when some path has ``max r_i`` above ``max_path_jump_mev``.

>>> loss_spikes([5.0, 2.0, 1.0, 1.5, 2.5, 0.9], factor=2.0)
1
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from pipeline.config import MoEStudyStabilityConfig
from pipeline.data import keys as K
from pipeline.data.neighbors import collate


def loss_spikes(losses: Sequence[float], *, factor: float) -> int:
    """Epochs whose mean training loss (``losses``, one per epoch in order) exceeds ``factor`` times the lowest
    of the earlier epochs' (non-finite losses are not spikes: the training stops on them and says so)."""
    if factor <= 1:
        raise ValueError(f"the spike factor must be > 1, got {factor}")
    count, best = 0, np.inf
    for loss in losses:
        if np.isfinite(loss):
            count += int(loss > factor * best)
            best = min(best, float(loss))
    return count


def max_loss_jump(losses: Sequence[float]) -> float:
    """Largest ratio of an epoch's mean training loss to the lowest of the earlier epochs' (1 or less: no jump;
    the continuous form of :func:`loss_spikes`, which counts ratios above a factor).

    >>> max_loss_jump([4.0, 2.0, 3.0, 1.0, 5.0])
    5.0
    """
    values = np.asarray([x for x in losses if np.isfinite(x)], dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(np.max(values[1:] / np.minimum.accumulate(values)[:-1]))


def gradients_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (parameters without a gradient are skipped)."""
    return all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


@dataclass(frozen=True)
class PathCheck:
    """Energy-force consistency along the paths of :func:`path_energy_jumps`.

    Attributes
    ----------
    max_jump_mev : float
        Largest ``r_i`` over steps and paths, meV.
    max_force_error_mev_a : float
        Largest ``r_i / |dx_i|``, meV/A.
    per_path_mev : tuple of float
        Largest ``r_i`` of each path, meV.
    step_a : float
        Mean step length ``|dx_i|``, A.
    """

    max_jump_mev: float
    max_force_error_mev_a: float
    per_path_mev: tuple[float, ...]
    step_a: float


def straight_path(atoms: Atoms, *, steps: int, amplitude_a: float, seed: int) -> list[Atoms]:
    """``steps + 1`` copies of ``atoms`` at ``x0 + t d``, t = 0, 1/steps, ..., 1 (``d`` ``(n_atoms, 3)``: Gaussian,
    standard deviation ``amplitude_a`` in A, from the generator seeded by ``seed``)."""
    d = np.random.default_rng(seed).normal(0.0, amplitude_a, size=(len(atoms), 3))
    frames = []
    for t in np.linspace(0.0, 1.0, steps + 1):
        a = atoms.copy()
        a.calc = None
        a.positions = atoms.positions + t * d
        frames.append(a)
    return frames


def path_residuals(energies: np.ndarray, forces: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step: ``r_i`` (eV) and ``|dx_i|`` (A) from energies ``(n,)`` eV, forces and positions ``(n, atoms, 3)``."""
    dx = np.diff(positions, axis=0)  # [n-1, atoms, 3]
    work = 0.5 * ((forces[1:] + forces[:-1]) * dx).sum(axis=(1, 2))  # [n-1]
    return np.abs(np.diff(energies) + work), np.linalg.norm(dx.reshape(len(dx), -1), axis=1)


def path_check(model: torch.nn.Module, paths: Sequence[Sequence[Atoms]]) -> PathCheck:
    """Energy-force consistency of ``model`` along given paths (each a sequence of frames of the same atoms).

    The model is evaluated in float64 (a copy; the original is untouched); the points of one path are the
    structures of one batch.
    """
    model64 = copy.deepcopy(model).double().eval()
    species, r_max = model64.species, model64.r_max
    per_path, worst_force, steps_a = [], 0.0, []
    for path in paths:
        batch = collate(list(path), species=species, r_max=r_max, dtype=torch.float64, with_targets=False)
        out = model64(batch, compute_forces=True, create_graph=False)
        energies = out[K.ENERGY].detach().numpy()
        forces = out[K.FORCES].detach().numpy().reshape(len(path), len(path[0]), 3)
        positions = np.stack([a.positions for a in path])
        r, h = path_residuals(energies, forces, positions)
        per_path.append(1000.0 * float(r.max()))
        worst_force = max(worst_force, 1000.0 * float((r / np.maximum(h, 1e-30)).max()))
        steps_a.append(float(h.mean()))
    return PathCheck(max_jump_mev=max(per_path, default=0.0), max_force_error_mev_a=worst_force,
                     per_path_mev=tuple(per_path), step_a=float(np.mean(steps_a)) if steps_a else 0.0)


def path_energy_jumps(
    model: torch.nn.Module, frames: Sequence[Atoms], *, steps: int, amplitude_a: float, seed: int
) -> PathCheck:
    """:func:`path_check` along one straight MD-like path per frame (:func:`straight_path`; module docstring)."""
    return path_check(model, [straight_path(atoms, steps=steps, amplitude_a=amplitude_a, seed=seed * 100_003 + i)
                              for i, atoms in enumerate(frames)])


def unstable(cfg: MoEStudyStabilityConfig, *, status: str, loss_spikes: int, nonfinite_grads: int,
             max_path_jump_mev: float) -> bool:
    """The study's verdict (module docstring): any of the measures beyond its threshold."""
    return (status != "ok" or nonfinite_grads > 0 or loss_spikes > cfg.max_loss_spikes
            or not np.isfinite(max_path_jump_mev) or max_path_jump_mev > cfg.max_path_jump_mev)
