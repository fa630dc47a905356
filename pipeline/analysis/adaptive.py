"""Adaptive versus static HF/LF partition in MD with a moving CO: energy and momentum conservation, the HF
centres over time, LF next to carbon, and the speed of a step (issue 18).

Three ASE NVE runs (VelocityVerlet, float64, ``md.run.timestep_fs``) of the production cell (``md.system``)
WITHOUT fixed atoms (total momentum conserved), from the same Maxwell-Boltzmann velocities at
``md.run.temperature_k`` (zero total momentum, seed ``seed``) equilibrated by ``equilibration_steps`` of
Langevin NVT at that temperature without the bias:

- ``A``: adaptive partition (:class:`~pipeline.md.adaptive.AdaptiveCalculator`, radii and margin of
  ``md.partition.adaptive``, inner radius defaulting to the LF checkpoint's ``r_max``);
- ``B``: static partition (:class:`~pipeline.md.calculator.MixtureCalculator`, the rule of ``md.partition``
  applied once to the starting cell);
- ``C``: full HF (:class:`~pipeline.models.calculator.AllegroCalculator` on the HF checkpoint);
- ``D``: the static partition without its surface layers (rule ``adsorbate_radius`` only: substrate atoms
  within ``radius_a`` of an adsorbate atom at the start are HF): a static partition as local as the adaptive
  one, which the CO leaves when it moves (``pt_near_c_lf_fraction``).

So that the CO really crosses the surface in a short run, the C atom of the first CO feels a static lateral
harmonic well (:class:`LateralWell`), part of the Hamiltonian,

    E_bias = 0.5 k |xy_C - xy_target|^2,   xy_target = xy_C(0) + offset * u,

``u`` a unit vector along a surface direction (default a + b of the surface cell: top -> hollow -> bridge ->
hollow -> top), summed with the potential by :class:`ase.calculators.mixing.SumCalculator`, so the conserved
energy E_pot + E_bias + E_kin is the one analysed (:func:`pipeline.md.thermo.energy_drift`). The well breaks
translation invariance; the momentum drift is therefore measured with the bias force's impulse subtracted:
in velocity Verlet the total momentum changes by exactly dt/2 (F_n + F_{n+1}) summed over atoms per step,
so P(t) - P(0) - sum_n dt/2 (F^bias_n + F^bias_{n+1}) is the momentum the potential alone created
(zero for a translation-invariant potential, up to round-off).

The speed of one step (energy + forces, Verlet list kept, median after warm-up, interleaved repeats) is
timed on a ~``speed_n_atoms`` slab with the speed table's CO coverage (``analysis.speed.co_coverage`` per
top-layer Pt, ``analysis.speed.layers`` layers, :func:`pipeline.analysis.speed.timing_slab`).

The protocol's settings are ``analysis.adaptive`` (:class:`~pipeline.config.AnalysisAdaptiveConfig`). One
call of :func:`adaptive_table` is one training seed (its co-trained pair, and the seed of its velocities);
:func:`seeds_table` stacks the seeds' tables and adds mean and std rows per run.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.mixing import SumCalculator
from ase.geometry import find_mic
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:  # ase >= 3.29 (MaxwellBoltzmannDistribution deprecated there)
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ase 3.23-3.28
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.md.verlet import VelocityVerlet

from pipeline.analysis._common import pyplot, save_figure, write_table
from pipeline.analysis.speed import timing_slab
from pipeline.config import AnalysisAdaptiveConfig, Config
from pipeline.devices import resolve_device
from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.md.adaptive import (
    ENERGY_DISAGREEMENT,
    LAMBDA,
    AdaptiveCalculator,
    AdaptiveMixturePotential,
    centre_counts,
)
from pipeline.md.calculator import MixtureCalculator, VerletGraph
from pipeline.md.partition import HF, partition_atoms
from pipeline.md.potential import MixturePotential
from pipeline.md.system import build_production_cell
from pipeline.md.thermo import energy_drift
from pipeline.models import AllegroCalculator, AllegroModel, load_checkpoint

log = logging.getLogger(__name__)

COLUMNS = ("run", "partition", "steps", "temperature_k", "drift_mev_atom_ps", "drift_stderr_mev_atom_ps",
           "momentum_drift", "co_displacement_a", "hf_centres_mean", "hf_centres_min", "hf_centres_max",
           "speedup_vs_hf")
SHELL_COLUMNS = ("shell_atoms_mean", "shell_abs_de_mev_mean", "shell_abs_de_mev_max", "switch_force_rms_mev_a",
                 "switch_force_max_mev_a")  # run A only (shell_disagreement), then the same with the independent LF
EXTRA_COLUMNS = ("fluctuation_mev_atom", "pt_near_c_lf_fraction", "timestep_fs", "bias_k_ev_a2", "bias_offset_a",
                 "n_atoms", "lf_centres_mean", "shell_centres_mean", "momentum_drift_raw", "co_final_displacement_a",
                 "c_nearest_pt_max_a", "md_step_ms", "speed_n_atoms", "speed_hf_centres", "speed_step_ms",
                 "speedup_vs_hf_one_pass", "speed_full_hf_one_pass_ms", "completed",
                 *SHELL_COLUMNS, *(f"{c}_independent" for c in SHELL_COLUMNS))
RUNS = {"A": "adaptive", "B": "static", "C": "full_hf", "D": "static_local"}  # run -> partition
NEAR_C_A = 3.0  # a Pt atom this close to a C atom must be HF (pt_near_c_lf_fraction), A


# ------------------------------------------------------------------------------------------------ the bias


class LateralWell(Calculator):
    """Static lateral harmonic well on one atom: ``E = 0.5 k |xy_i - xy_target|^2`` (eV), forces ``-dE/dR``.

    Positions are taken as they are (ASE's MD does not wrap them), so the well is smooth. Use it summed
    with a potential (:class:`ase.calculators.mixing.SumCalculator`).

    Parameters
    ----------
    index : int
        The atom in the well.
    k : float
        Spring constant, eV/A^2.
    target : (2,) array
        Centre of the well in the xy plane, A.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    nolabel = True

    def __init__(self, *, index: int, k: float, target, **kwargs) -> None:
        super().__init__(**kwargs)
        self.index, self.k = int(index), float(k)
        self.target = np.asarray(target, dtype=np.float64).reshape(2)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:  # noqa: ANN001
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions[self.index, :2] - self.target
        forces = np.zeros((len(self.atoms), 3))
        forces[self.index, :2] = -self.k * d
        energy = 0.5 * self.k * float(d @ d)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def bias_target(atoms: Atoms, index: int, *, offset_a: float, direction: tuple[float, float]) -> np.ndarray:
    """xy of the well's centre: the atom's start plus ``offset_a`` along ``direction[0] a + direction[1] b``."""
    vector = np.asarray(direction, dtype=np.float64) @ atoms.cell.array[:2, :2]
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ValueError(f"the bias direction must not be zero, got {list(direction)}")
    return atoms.positions[index, :2] + offset_a * vector / norm


# ----------------------------------------------------------------------------------- partition per step


class PartitionProbe:
    """Every atom's HF weight and the centres each expert evaluated, at the last force evaluation.

    ``adaptive``: from the potential's own outputs (a forward hook: :data:`~pipeline.md.adaptive.LAMBDA`,
    :func:`~pipeline.md.adaptive.centre_counts`); otherwise constant weights (``1`` HF, ``0`` LF).
    """

    def __init__(self, *, potential: AdaptiveMixturePotential | None = None, weights: np.ndarray | None = None):
        if (potential is None) == (weights is None):
            raise ValueError("give either the adaptive potential or constant weights")
        self._out: dict[str, torch.Tensor] | None = None
        self._weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if potential is not None:
            potential.register_forward_hook(self._hook)

    def _hook(self, module, args, out) -> None:  # noqa: ANN001, ARG002
        self._out = out

    def __call__(self) -> tuple[np.ndarray, dict[str, int]]:
        """``(lambda (n_atoms,), {"hf", "lf", "shell"} centre counts)`` of the last evaluation."""
        if self._weights is not None:
            w = self._weights
            return w, {"hf": int(np.sum(w > 0)), "lf": int(np.sum(w < 1)), "shell": int(np.sum((w > 0) & (w < 1)))}
        if self._out is None:
            raise RuntimeError("the adaptive potential has not been called yet")
        return self._out[LAMBDA].detach().cpu().double().numpy(), centre_counts(self._out)


# ----------------------------------------------------------------------------------------------- one run


@dataclass
class RunTrace:
    """Per-step records of one NVE run (step 0 = the start). Energies eV, momenta amu A/fs, lengths A."""

    n_atoms: int
    timestep_fs: float
    time_ps: list[float] = field(default_factory=list)
    econserve_ev: list[float] = field(default_factory=list)
    ebias_ev: list[float] = field(default_factory=list)
    temp_k: list[float] = field(default_factory=list)
    momentum: list[np.ndarray] = field(default_factory=list)  # P(t) - P(0)
    momentum_potential: list[np.ndarray] = field(default_factory=list)  # P(t) - P(0) - bias impulse
    c_xy: list[np.ndarray] = field(default_factory=list)  # the biased C atom
    c_nearest_pt_a: list[float] = field(default_factory=list)
    lam: list[np.ndarray] = field(default_factory=list)
    counts: list[dict[str, int]] = field(default_factory=list)
    pt_near_c_lf: list[bool] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    snapshots: list[Atoms] = field(default_factory=list)  # every snapshot_every steps, from step 0
    completed: bool = True

    @property
    def steps(self) -> int:
        return len(self.time_ps) - 1

    def thermo(self) -> pd.DataFrame:
        """The table :func:`pipeline.md.thermo.energy_drift` reads."""
        return pd.DataFrame({"time_ps": self.time_ps, "econserve_ev": self.econserve_ev, "temp_k": self.temp_k,
                             "atoms": self.n_atoms})

    def displacement(self) -> np.ndarray:
        """Lateral displacement of the biased C atom from its start, per step, A."""
        xy = np.asarray(self.c_xy)
        return np.linalg.norm(xy - xy[0], axis=1)


def _pt_near_c(
    atoms: Atoms, carbon: np.ndarray, platinum: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean over ``platinum``: within ``radius`` of any C atom (minimum image); also the distances (n_C, n_Pt)."""
    vectors = atoms.positions[platinum][None, :, :] - atoms.positions[carbon][:, None, :]
    _, lengths = find_mic(vectors.reshape(-1, 3), atoms.cell, atoms.pbc)
    lengths = lengths.reshape(len(carbon), len(platinum))
    return (lengths < radius).any(axis=0), lengths


def run_nve(
    atoms: Atoms,
    potential: Calculator,
    probe: Callable[[], tuple[np.ndarray, dict[str, int]]],
    *,
    steps: int,
    timestep_fs: float,
    temperature_k: float,
    seed: int,
    bias: LateralWell | None,
    biased_atom: int,
    max_temperature_k: float = math.inf,
    max_energy_change_ev_atom: float = math.inf,
    equilibration_steps: int = 0,
    friction_per_fs: float = 0.01,
    snapshot_every: int = 0,
) -> RunTrace:
    """NVE (velocity Verlet) of a copy of ``atoms`` with ``potential`` (+ ``bias``), Maxwell-Boltzmann start.

    Parameters
    ----------
    atoms : ase.Atoms
        The start; not modified. No constraints are kept (every atom moves).
    potential : ase Calculator
    probe : callable
        ``probe() -> (lambda, centre counts)`` after each force evaluation (:class:`PartitionProbe`).
    steps, timestep_fs, temperature_k, seed
        Run length, step (fs), temperature of the Maxwell-Boltzmann velocities (K; total momentum removed)
        and their random seed.
    bias : LateralWell, optional
        Added to the Hamiltonian (``SumCalculator``).
    biased_atom : int
        The C atom whose lateral position is recorded.
    max_temperature_k, max_energy_change_ev_atom : float
        Blow-up limits: the run stops (``completed`` False) when the temperature or the change of the
        conserved energy per atom exceeds them, or an energy is not finite.
    equilibration_steps, friction_per_fs
        Langevin NVT steps at ``temperature_k`` with ``potential`` alone (no bias) before the NVE run, and
        their friction (1/fs); the NVE run (with the bias) starts where they end, total momentum removed.
    snapshot_every : int
        Keep a copy of the atoms (positions only) every this many steps in ``trace.snapshots`` (0 = none).
    """
    atoms = atoms.copy()
    atoms.set_constraint()
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if equilibration_steps > 0:
        atoms.calc = potential
        # fixcm False: ASE's centre-of-mass-fixing Langevin does not sample NVT exactly; the momentum is removed after
        Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_k, friction=friction_per_fs / units.fs,
                 fixcm=False, rng=np.random.default_rng(seed + 1)).run(equilibration_steps)
        Stationary(atoms)
    atoms.calc = potential if bias is None else SumCalculator([potential, bias])
    symbols = np.asarray(atoms.get_chemical_symbols())
    carbon, platinum = np.flatnonzero(symbols == "C"), np.flatnonzero(symbols == "Pt")
    dt = timestep_fs * units.fs
    dyn = VelocityVerlet(atoms, timestep=dt)
    trace = RunTrace(n_atoms=len(atoms), timestep_fs=float(timestep_fs))
    p0 = None
    impulse = np.zeros(3)
    previous_bias_force = None

    def record(step: int, seconds: float) -> bool:
        nonlocal p0, impulse, previous_bias_force
        epot = atoms.get_potential_energy()  # potential + bias
        ekin = atoms.get_kinetic_energy()
        p = atoms.get_momenta().sum(axis=0)
        bias_force = bias.get_forces(atoms).sum(axis=0) if bias is not None else np.zeros(3)
        if p0 is None:
            p0 = p.copy()
        else:
            impulse = impulse + 0.5 * dt * (previous_bias_force + bias_force)
        previous_bias_force = bias_force
        lam, counts = probe()
        near, lengths = _pt_near_c(atoms, carbon, platinum, NEAR_C_A)
        trace.time_ps.append(step * timestep_fs / 1000.0)
        trace.econserve_ev.append(float(epot + ekin))
        trace.ebias_ev.append(float(bias.get_potential_energy(atoms)) if bias is not None else 0.0)
        trace.temp_k.append(float(atoms.get_temperature()))
        trace.momentum.append((p - p0) * units.fs)  # amu A/fs
        trace.momentum_potential.append((p - p0 - impulse) * units.fs)
        trace.c_xy.append(atoms.positions[biased_atom, :2].copy())
        row = int(np.flatnonzero(carbon == biased_atom)[0]) if biased_atom in carbon else None
        trace.c_nearest_pt_a.append(float(lengths[row].min()) if row is not None and lengths.size else float("nan"))
        trace.lam.append(lam.astype(np.float32))
        trace.counts.append(counts)
        trace.pt_near_c_lf.append(bool(np.any(lam[platinum[near]] < 1.0)))
        trace.step_s.append(seconds)
        if snapshot_every and step % snapshot_every == 0:
            trace.snapshots.append(Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc))
        e = trace.econserve_ev[-1]
        if not np.isfinite(e) or trace.temp_k[-1] > max_temperature_k or \
                abs(e - trace.econserve_ev[0]) / len(atoms) > max_energy_change_ev_atom:
            log.warning("run stopped at step %d: conserved energy %.6g eV (start %.6g), temperature %.1f K",
                        step, e, trace.econserve_ev[0], trace.temp_k[-1])
            trace.completed = False
            return False
        return True

    record(0, float("nan"))
    for step in range(1, steps + 1):
        start = time.perf_counter()
        dyn.step()
        if not record(step, time.perf_counter() - start):
            break
    return trace


def trace_row(run: str, partition: str, trace: RunTrace, *, bias_k: float, bias_offset_a: float) -> dict[str, object]:
    """One row of the table (columns of :data:`COLUMNS` and :data:`EXTRA_COLUMNS` except the speed ones)."""
    if trace.steps >= 2:
        figures = energy_drift(trace.thermo())
    else:  # stopped at once: nothing to fit
        figures = dict.fromkeys(("mean_temperature_k", "drift_mev_atom_ps", "drift_stderr_mev_atom_ps",
                                 "fluctuation_mev_atom"), float("nan"))
    hf = np.array([c["hf"] for c in trace.counts], dtype=np.float64)
    lf = np.array([c["lf"] for c in trace.counts], dtype=np.float64)
    shell = np.array([c["shell"] for c in trace.counts], dtype=np.float64)
    displacement = trace.displacement()
    return {
        "run": run,
        "partition": partition,
        "steps": trace.steps,
        "temperature_k": figures["mean_temperature_k"],
        "drift_mev_atom_ps": figures["drift_mev_atom_ps"],
        "drift_stderr_mev_atom_ps": figures["drift_stderr_mev_atom_ps"],
        "momentum_drift": float(np.max(np.linalg.norm(trace.momentum_potential, axis=1))),
        "co_displacement_a": float(displacement.max()),
        "hf_centres_mean": float(hf.mean()),
        "hf_centres_min": int(hf.min()),
        "hf_centres_max": int(hf.max()),
        "speedup_vs_hf": float("nan"),
        "fluctuation_mev_atom": figures["fluctuation_mev_atom"],
        "pt_near_c_lf_fraction": float(np.mean(trace.pt_near_c_lf)),
        "timestep_fs": trace.timestep_fs,
        "bias_k_ev_a2": float(bias_k),
        "bias_offset_a": float(bias_offset_a),
        "n_atoms": trace.n_atoms,
        "lf_centres_mean": float(lf.mean()),
        "shell_centres_mean": float(shell.mean()),
        "momentum_drift_raw": float(np.max(np.linalg.norm(trace.momentum, axis=1))),
        "co_final_displacement_a": float(displacement[-1]),
        "c_nearest_pt_max_a": float(np.nanmax(trace.c_nearest_pt_a)),
        "md_step_ms": 1000.0 * float(np.nanmean(trace.step_s)) if trace.steps else float("nan"),
        "completed": bool(trace.completed),
    }


# -------------------------------------------------------------------------------- the switching shell

def shell_disagreement(
    hf: AllegroModel, lf: AllegroModel, snapshots: Sequence[Atoms], settings: PartitionSettings
) -> dict[str, float]:
    """What switching costs in the shell (0 < lambda < 1) of the adaptive potential of ``hf`` and ``lf``.

    On every snapshot: ``|e_i^HF - e_i^LF|`` of the shell atoms (meV), and the switching force
    ``F^sw = -sum_i (e_i^HF - e_i^LF) d lambda_i / dR``, obtained exactly as the potential's forces minus its
    forces with lambda frozen at its values (meV/A, norm per atom; RMS over the atoms on which it acts, i.e.
    the shell atoms and their neighbours within r_out of an adsorbate atom, and the adsorbate atoms).

    Returns ``{column: value}`` for :data:`SHELL_COLUMNS` (means and maxima over all snapshots' atoms).
    """
    potential = AdaptiveMixturePotential(hf, lf, r_in=settings.r_in, r_out=settings.r_out, margin=settings.margin)
    potential.to(settings.device).eval()
    shell_counts, de, force = [], [], []
    for atoms in snapshots:
        batch = collate([atoms], species=potential.species, r_max=potential.r_max, with_targets=False,
                        dtype=potential.dtype)
        batch = {key: value.to(settings.device) for key, value in batch.items()}
        potential.centres.reset()
        out = potential(batch, compute_forces=True)
        lam = out[LAMBDA].detach()
        frozen = potential(batch, compute_forces=True, weights=lam)
        shell = ((lam > 0) & (lam < 1)).cpu().numpy()
        shell_counts.append(int(shell.sum()))
        de.append(np.abs(out[ENERGY_DISAGREEMENT].detach().double().cpu().numpy()[shell]))
        norms = torch.linalg.vector_norm((out[K.FORCES] - frozen[K.FORCES]).detach().double(), dim=1).cpu().numpy()
        force.append(norms[norms > 0])
    de_all = np.concatenate(de) if de else np.zeros(0)
    f_all = np.concatenate(force) if force else np.zeros(0)
    return {
        "shell_atoms_mean": float(np.mean(shell_counts)) if shell_counts else float("nan"),
        "shell_abs_de_mev_mean": 1000.0 * float(de_all.mean()) if de_all.size else float("nan"),
        "shell_abs_de_mev_max": 1000.0 * float(de_all.max()) if de_all.size else float("nan"),
        "switch_force_rms_mev_a": 1000.0 * float(np.sqrt(np.mean(f_all**2))) if f_all.size else 0.0,
        "switch_force_max_mev_a": 1000.0 * float(f_all.max()) if f_all.size else 0.0,
    }


# --------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class PartitionSettings:
    """How the cases are built (from ``md``): radii and margin of the adaptive partition, the Verlet skin, the
    device, and the chunk sizes of the timed adaptive, static and full-HF cases (``md.centres_per_chunk``)."""

    r_in: float
    r_out: float
    margin: float
    skin: float
    device: torch.device = torch.device("cpu")
    chunks: tuple[int, int] = (0, 0)  # centres per chunk of HF and LF in the timed adaptive, static, full-HF cases


def make_case(
    partition: str, hf: AllegroModel, lf: AllegroModel, atoms: Atoms, settings: PartitionSettings,
    expert: np.ndarray | None = None,
) -> tuple[Calculator, PartitionProbe]:
    """Calculator and probe of one partition: ``adaptive``, ``static`` or ``static_local`` (``expert`` per atom),
    or ``full_hf``."""
    n = len(atoms)
    if partition == "adaptive":
        potential = AdaptiveMixturePotential(hf, lf, r_in=settings.r_in, r_out=settings.r_out, margin=settings.margin)
        return (AdaptiveCalculator(potential, skin=settings.skin, device=settings.device),
                PartitionProbe(potential=potential))
    if partition in ("static", "static_local"):
        if expert is None:
            raise ValueError("the static partition needs the expert of every atom")
        calc = MixtureCalculator(MixturePotential([hf, lf], names=("hf", "lf")), expert=expert, skin=settings.skin,
                                 device=settings.device)
        return calc, PartitionProbe(weights=(np.asarray(expert) == HF).astype(np.float64))
    if partition == "full_hf":
        graph = VerletGraph(hf, n_atoms=n, skin=settings.skin, device=settings.device)
        return AllegroCalculator(hf, graph=graph, device=settings.device), PartitionProbe(weights=np.ones(n))
    raise ValueError(f"unknown partition {partition!r}; known: {list(RUNS.values())}")


def time_cases(cases: Mapping[str, Calculator], atoms: Atoms, *, repeats: int, warmup: int) -> dict[str, float]:
    """Median wall time (s) of one energy + forces evaluation per case (interleaved repeats after warm-up;
    the Verlet list and the adaptive centre sets are built during the warm-up and kept)."""
    def once(calc: Calculator) -> float:
        device = getattr(calc, "device", torch.device("cpu"))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for calc in cases.values():
        for _ in range(max(warmup, 1)):
            once(calc)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(max(repeats, 1)):
        for name, calc in cases.items():
            samples[name].append(once(calc))
    return {name: statistics.median(values) for name, values in samples.items()}


def speed_cases(
    hf: AllegroModel, lf: AllegroModel, slab: Atoms, settings: PartitionSettings, static: Mapping[str, np.ndarray],
) -> tuple[dict[str, Calculator], dict[str, PartitionProbe]]:
    """The timed cases: ``adaptive`` (:class:`~pipeline.md.adaptive.AdaptiveCalculator`), every static partition
    of ``static`` (``{name: expert per atom}``) and ``full_hf`` as the MD stage runs them
    (:class:`~pipeline.md.calculator.MixtureCalculator`), all with the centres in chunks of ``settings.chunks``,
    and ``full_hf_one_pass`` (the MD runs' :class:`~pipeline.models.calculator.AllegroCalculator`, one pass)."""
    n = len(slab)
    cases, probes = {}, {}
    cases["adaptive"], probes["adaptive"] = make_case("adaptive", hf, lf, slab, settings)
    cases["adaptive"].potential.set_centres_per_chunk(list(settings.chunks))
    partitions = [(name, (hf, lf), expert) for name, expert in static.items()]
    for name, experts, partition in (*partitions, ("full_hf", (hf,), np.zeros(n, dtype=np.int64))):
        potential = MixturePotential(list(experts), names=("hf", "lf")[: len(experts)])
        potential.set_centres_per_chunk(list(settings.chunks[: len(experts)]))
        cases[name] = MixtureCalculator(potential, expert=partition, skin=settings.skin, device=settings.device)
        probes[name] = PartitionProbe(weights=(np.asarray(partition) == HF).astype(np.float64))
    cases["full_hf_one_pass"], probes["full_hf_one_pass"] = make_case("full_hf", hf, lf, slab, settings)
    return cases, probes


def speed_figures(
    hf: AllegroModel, lf: AllegroModel, slab: Atoms, settings: PartitionSettings, static: Mapping[str, np.ndarray],
    *, repeats: int, warmup: int,
) -> dict[str, dict[str, float]]:
    """``{case: {"seconds", "hf_centres", "speedup_vs_hf", "speedup_vs_hf_one_pass"}}`` on the timing slab
    (cases of :func:`speed_cases`)."""
    cases, probes = speed_cases(hf, lf, slab, settings, static)
    seconds = time_cases(cases, slab, repeats=repeats, warmup=warmup)
    out = {}
    for name, t in seconds.items():
        out[name] = {"seconds": t, "hf_centres": probes[name]()[1]["hf"], "speedup_vs_hf": seconds["full_hf"] / t,
                     "speedup_vs_hf_one_pass": seconds["full_hf_one_pass"] / t}
        log.info("speed: %d atoms, %s: %.1f ms per step (%d HF centres)", len(slab), name, 1000 * t,
                 out[name]["hf_centres"])
    return out


def adaptive_runs(
    hf: AllegroModel,
    lf: AllegroModel,
    atoms: Atoms,
    *,
    static: Mapping[str, np.ndarray],
    settings: PartitionSettings,
    timestep_fs: float,
    temperature_k: float,
    seed: int,
    protocol: AnalysisAdaptiveConfig = AnalysisAdaptiveConfig(),
    speed_slab: Atoms | None = None,
    speed_static: Mapping[str, np.ndarray] | None = None,
    max_temperature_k: float = math.inf,
    max_energy_change_ev_atom: float = math.inf,
    lf_independent: AllegroModel | None = None,
    shell_snapshots: int = 16,
) -> tuple[pd.DataFrame, dict[str, RunTrace]]:
    """The runs of :data:`RUNS` on ``atoms`` with the bias of ``protocol``: adaptive, full HF and every static
    partition in ``static`` (``{"static": expert, "static_local": expert}``, expert per atom; a run whose
    partition is missing is skipped), and the speed on ``speed_slab`` (its static partitions ``speed_static``;
    no speed without a slab). Run A's row also has :data:`SHELL_COLUMNS` on ``shell_snapshots`` snapshots of its
    trajectory (:func:`shell_disagreement`), with ``lf`` and, suffixed ``_independent``, with ``lf_independent``
    beside the same HF (the independently trained LF of the same seed; NaN without it).

    Returns the table (:data:`COLUMNS` + :data:`EXTRA_COLUMNS`) and ``{run: trace}``.
    """
    carbon = np.flatnonzero(np.asarray(atoms.get_chemical_symbols()) == "C")
    if protocol.bias_molecule >= len(carbon):
        raise ValueError(f"cannot bias CO {protocol.bias_molecule}: the cell has {len(carbon)} C atoms")
    biased = int(carbon[protocol.bias_molecule])
    target = bias_target(atoms, biased, offset_a=protocol.bias_offset_a, direction=protocol.bias_direction)
    rows, traces = [], {}
    for run, partition in RUNS.items():
        if partition.startswith("static") and partition not in static:
            continue
        calc, probe = make_case(partition, hf, lf, atoms, settings, static.get(partition))
        bias = LateralWell(index=biased, k=protocol.bias_k_ev_a2, target=target) if protocol.bias_k_ev_a2 else None
        log.info("run %s (%s): %d atoms, %d steps of %g fs, bias k %g eV/A^2 on atom %d towards %s", run, partition,
                 len(atoms), protocol.steps, timestep_fs, protocol.bias_k_ev_a2, biased, np.round(target, 3).tolist())
        trace = run_nve(atoms, calc, probe, steps=protocol.steps, timestep_fs=timestep_fs, temperature_k=temperature_k,
                        seed=seed, bias=bias, biased_atom=biased, max_temperature_k=max_temperature_k,
                        max_energy_change_ev_atom=max_energy_change_ev_atom,
                        equilibration_steps=protocol.equilibration_steps, friction_per_fs=protocol.friction_per_fs,
                        snapshot_every=max(1, protocol.steps // max(shell_snapshots - 1, 1)) if run == "A" else 0)
        row = trace_row(run, partition, trace, bias_k=protocol.bias_k_ev_a2, bias_offset_a=protocol.bias_offset_a)
        log.info("run %s: %d steps, %.1f ms/step, %.0f K, drift %.4g +- %.2g meV/atom/ps, CO moved %.2f A, HF centres "
                 "%.0f (%d-%d), LF next to C in %.0f %% of the steps", run, row["steps"], row["md_step_ms"],
                 row["temperature_k"], row["drift_mev_atom_ps"], row["drift_stderr_mev_atom_ps"],
                 row["co_displacement_a"], row["hf_centres_mean"], row["hf_centres_min"], row["hf_centres_max"],
                 100 * row["pt_near_c_lf_fraction"])
        rows.append(row)
        traces[run] = trace
    for row in rows:
        row.update(dict.fromkeys([*SHELL_COLUMNS, *(f"{c}_independent" for c in SHELL_COLUMNS)], float("nan")))
        if row["run"] == "A":
            row.update(shell_disagreement(hf, lf, traces["A"].snapshots, settings))
            if lf_independent is not None:
                shell = shell_disagreement(hf, lf_independent, traces["A"].snapshots, settings)
                row.update({f"{key}_independent": value for key, value in shell.items()})
            log.info("switching shell (run A, %d snapshots): |e_HF - e_LF| %.1f meV mean (independent LF: %.1f), "
                     "switching force RMS %.1f meV/A (independent LF: %.1f)", len(traces["A"].snapshots),
                     row["shell_abs_de_mev_mean"], row["shell_abs_de_mev_mean_independent"],
                     row["switch_force_rms_mev_a"], row["switch_force_rms_mev_a_independent"])
    speed = None
    if speed_slab is not None:
        if speed_static is None:
            raise ValueError("the speed slab needs its static partitions (speed_static)")
        speed = speed_figures(hf, lf, speed_slab, settings, speed_static, repeats=protocol.speed_repeats,
                              warmup=protocol.speed_warmup)
    for row in rows:
        figures = speed.get(row["partition"]) if speed else None
        row["speedup_vs_hf"] = figures["speedup_vs_hf"] if figures else float("nan")
        row["speed_n_atoms"] = len(speed_slab) if figures else 0
        row["speed_hf_centres"] = figures["hf_centres"] if figures else 0
        row["speed_step_ms"] = 1000.0 * figures["seconds"] if figures else float("nan")
        row["speedup_vs_hf_one_pass"] = figures["speedup_vs_hf_one_pass"] if figures else float("nan")
        row["speed_full_hf_one_pass_ms"] = 1000.0 * speed["full_hf_one_pass"]["seconds"] if figures else float("nan")
    return pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS]), traces


def static_partitions(atoms: Atoms, cfg: Config) -> dict[str, np.ndarray]:
    """``{"static": the md.partition rule, "static_local": the same without surface layers}`` of ``atoms``
    (expert per atom); ``static_local`` only for rule ``adsorbate_radius`` with ``surface_layers`` > 0."""
    rule = cfg.md.partition
    out = {"static": partition_atoms(atoms, rule, cfg.regions)}
    if rule.rule == "adsorbate_radius" and rule.surface_layers > 0:
        out["static_local"] = partition_atoms(atoms, replace(rule, surface_layers=0), cfg.regions)
    return out


@dataclass
class AdaptiveResult:
    """The table, the traces and what the notes say about them."""

    table: pd.DataFrame
    traces: dict[str, RunTrace]
    settings: PartitionSettings
    protocol: AnalysisAdaptiveConfig
    static_rule: str = ""
    co_coverage: float = float("nan")
    threads: int = 1
    seed: int = 0


def adaptive_table(
    cfg: Config, *, hf: str | Path, lf: str | Path, seed: int | None = None,
    protocol: AnalysisAdaptiveConfig | None = None, lf_independent: str | Path | None = None,
) -> AdaptiveResult:
    """The table and the traces of one seed's experts saved at ``hf`` and ``lf`` (and the independently trained
    LF of the same seed at ``lf_independent``, for the switching-shell columns only).

    ``seed`` (default ``cfg.seed``) draws the velocities; ``protocol`` defaults to ``cfg.analysis.adaptive``.
    Uses ``md.system`` (the cell, no fixed atoms), ``md.partition`` (static rule; adaptive radii and margin,
    the inner radius defaulting to the LF checkpoint's ``r_max``), ``md.run.timestep_fs`` and
    ``temperature_k``, ``md.neighbor_skin_a``, ``md.safety``, ``analysis.speed`` (layers, CO coverage),
    ``analysis.lattice_constant_a``, ``regions``, ``species``, ``device``, ``torch_threads``.
    """
    seed = cfg.seed if seed is None else int(seed)
    protocol = cfg.analysis.adaptive if protocol is None else protocol
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    hf_model, lf_model = (load_checkpoint(p, species=list(cfg.species), dtype=torch.float64, map_location=device)
                          for p in (hf, lf))
    lf_ind_model = None if lf_independent is None else load_checkpoint(
        lf_independent, species=list(cfg.species), dtype=torch.float64, map_location=device)
    r_in, r_out = cfg.md.partition.adaptive.radii(float(lf_model.r_max))
    settings = PartitionSettings(r_in=r_in, r_out=r_out, margin=cfg.md.partition.adaptive.margin_a,
                                 skin=cfg.md.neighbor_skin_a, device=device,
                                 chunks=cfg.md.centres_per_chunk.for_experts(("hf", "lf")))
    atoms = build_production_cell(cfg.md.system)
    s = cfg.analysis.speed
    slab = None
    if protocol.speed_n_atoms > 0:
        slab = timing_slab(protocol.speed_n_atoms, layers=s.layers, co_coverage=s.co_coverage,
                           lattice_constant_a=cfg.analysis.lattice_constant_a)
    table, traces = adaptive_runs(
        hf_model, lf_model, atoms, static=static_partitions(atoms, cfg), settings=settings,
        timestep_fs=cfg.md.run.timestep_fs, temperature_k=cfg.md.run.temperature_k, seed=seed, protocol=protocol,
        speed_slab=slab, speed_static=static_partitions(slab, cfg) if slab is not None else None,
        max_temperature_k=cfg.md.safety.max_temperature_k,
        max_energy_change_ev_atom=cfg.md.safety.max_energy_change_ev_atom, lf_independent=lf_ind_model,
    )
    table.insert(0, "seed", seed)
    rule = cfg.md.partition.rule
    if rule == "adsorbate_radius":
        rule += f", radius_a {cfg.md.partition.radius_a:g} A, surface_layers {cfg.md.partition.surface_layers}"
    return AdaptiveResult(table=table, traces=traces, settings=settings, protocol=protocol, static_rule=rule,
                          co_coverage=float(s.co_coverage), threads=cfg.torch_threads, seed=seed)


# ---------------------------------------------------------------------------------------- figure, files


def plot_adaptive(traces: Mapping[str, RunTrace], png: str | Path) -> None:
    """Run A's lambda of every atom that was ever (partly) switched, over time (atoms x steps, sorted by
    the first step at which lambda left its start value); HF centres and the biased C atom's lateral
    displacement of every run over time."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.4, 1.0, 1.0]})
    ax_l, ax_n, ax_d = axes
    first = traces.get("A", next(iter(traces.values())))
    lam = np.asarray(first.lam, dtype=np.float64)  # [steps + 1, n_atoms]
    t = np.asarray(first.time_ps)
    changed = np.flatnonzero((lam.max(axis=0) - lam.min(axis=0) > 1e-6) | ((lam > 0) & (lam < 1)).any(axis=0))
    if changed.size:
        moved = np.abs(lam[:, changed] - lam[0, changed]) > 1e-6
        onset = np.where(moved.any(axis=0), moved.argmax(axis=0), lam.shape[0])
        order = changed[np.lexsort((-lam[0, changed], onset))]
        image = ax_l.imshow(lam[:, order].T, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                            extent=(t[0], t[-1] if len(t) > 1 else 1.0, -0.5, len(order) - 0.5),
                            interpolation="nearest")
        fig.colorbar(image, ax=ax_l, label="lambda (HF weight)")
        ax_l.set_ylabel(f"switching atoms ({len(order)} of {lam.shape[1]}), by onset")
    else:
        ax_l.text(0.5, 0.5, "no atom's lambda changed", ha="center", va="center", transform=ax_l.transAxes)
    ax_l.set_xlabel("time (ps)")
    for ax in axes:
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
    ax_l.set_title("run A (adaptive): lambda over time", fontsize=10)
    for run, trace in traces.items():
        label = f"{run} ({RUNS.get(run, run)})"
        ax_n.plot(trace.time_ps, [c["hf"] for c in trace.counts], label=label)
        ax_d.plot(trace.time_ps, trace.displacement(), label=label)
    ax_n.set_xlabel("time (ps)")
    ax_n.set_ylabel("HF centres")
    ax_n.set_title("atoms evaluated by HF", fontsize=10)
    ax_n.legend(fontsize=8)
    ax_d.set_xlabel("time (ps)")
    ax_d.set_ylabel("lateral displacement of the biased C (A)")
    ax_d.set_title("CO motion", fontsize=10)
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png)


def write_adaptive(
    result: AdaptiveResult, *, csv: str | Path, md: str | Path, png: str | Path, pair: str = "cotrained",
    checkpoints: Mapping[str, str | Path] | None = None,
) -> None:
    """Write the table (CSV + Markdown with notes) and the figure."""
    table, settings, protocol = result.table, result.settings, result.protocol
    first = table.iloc[0]
    radii = (f"r_in {settings.r_in:g} A, r_out {settings.r_out:g} A, margin {settings.margin:g} A, Verlet skin "
             f"{settings.skin:g} A")
    files = f" ({', '.join(f'{k}: {v}' for k, v in checkpoints.items())})" if checkpoints else ""
    notes = [
        f"Experts: the {pair} pair of training seed {result.seed}{files}, float64, {settings.device}, torch threads "
        f"{result.threads}; MD only, no data split is involved. Cell: md.system "
        f"({int(first['n_atoms'])} atoms) with NO fixed atoms; ASE velocity Verlet NVE at {first['timestep_fs']:g} fs "
        "from Maxwell-Boltzmann velocities at md.run.temperature_k (total momentum removed; same velocities "
        f"for every run) after {protocol.equilibration_steps} steps of Langevin NVT at that temperature (friction "
        f"{protocol.friction_per_fs:g}/fs, without the bias). A: adaptive partition (AdaptiveCalculator, " + radii + "); B: static partition "
        f"(MixtureCalculator, rule {result.static_rule} applied once to the starting cell); C: full HF "
        "(AllegroCalculator); D (rule adsorbate_radius only): the static partition without its surface layers, "
        "i.e. HF = adsorbates and the substrate atoms within radius_a of them at the start, as local as A. The "
        f"velocities are drawn with seed {result.seed} (ase thermalize_momenta).",
        f"Bias (part of the Hamiltonian, ase SumCalculator): E_bias = 0.5 k |xy_C - xy_target|^2 on the C atom of "
        f"CO {protocol.bias_molecule}, k = {protocol.bias_k_ev_a2:g} eV/A^2, xy_target = xy_C(0) + "
        f"{protocol.bias_offset_a:g} A along {protocol.bias_direction[0]:g} a + {protocol.bias_direction[1]:g} b of "
        "the surface cell. Drift, its block-averaged standard error and the fluctuation (meV/atom/ps, meV/atom): "
        "pipeline.md.thermo.energy_drift on E_pot + E_bias + E_kin at every step. co_displacement_a: the largest "
        "lateral displacement of the biased C atom; c_nearest_pt_max_a: its largest distance to the nearest Pt "
        "(chemisorbed: about 1.9 A).",
        "momentum_drift (amu A/fs): max_t |P(t) - P(0) - I_bias(t)|, I_bias the bias force's impulse as velocity "
        "Verlet applies it, sum dt/2 (F_bias(t_n) + F_bias(t_n+1)), i.e. the momentum the potential alone created "
        "(no separate unbiased run); momentum_drift_raw: max |P(t) - P(0)| with the bias's impulse.",
        "hf_centres_*: per step, atoms evaluated by HF (adaptive: centre_counts of the potential's output, the HF "
        "centre set including the margin; static: the HF atoms of the partition; full HF: all atoms). "
        "lf_centres_mean / shell_centres_mean: LF centres and centres evaluated by both. pt_near_c_lf_fraction: "
        f"fraction of steps with a Pt atom within {NEAR_C_A:g} A of a C atom (minimum image) evaluated by LF, even "
        "partly (lambda < 1, or LF in the static partition).",
        f"speedup_vs_hf: t(full HF) / t(case), one evaluation of energy + forces of a {int(first['speed_n_atoms'])}-"
        f"atom Pt(111) slab (analysis.speed.layers layers) with CO on top sites at coverage {result.co_coverage:g} "
        "per top-layer Pt (analysis.speed.co_coverage), Verlet list and centre sets kept, median of "
        f"{protocol.speed_repeats} interleaved repeats after {protocol.speed_warmup} warm-up evaluations "
        "(time.perf_counter). Full HF, the static partitions (same rules as B and D) and the adaptive partition are timed "
        f"with the centres in chunks of {settings.chunks[0]} (HF) / {settings.chunks[1]} (LF) (md.centres_per_chunk; "
        "full HF and static as the MD stage runs them). speedup_vs_hf_one_pass: against full HF in one "
        "pass (the MD runs' AllegroCalculator; speed_full_hf_one_pass_ms), which is slow on large cells (memory). "
        "speed_hf_centres: the HF centres on that slab; speed_step_ms: the case's median time. md_step_ms: mean "
        "wall time of one MD step of the run (224-atom cell: integration and bookkeeping included). CPU timings "
        "on a loaded machine are noisy.",
        "Switching shell (run A only; pipeline.analysis.adaptive.shell_disagreement on "
        f"{len(result.traces['A'].snapshots) if 'A' in result.traces else 0} snapshots of its trajectory): "
        "shell_atoms_mean: atoms with 0 < lambda < 1; shell_abs_de_mev_mean/max: |e_i^HF - e_i^LF| of those atoms "
        "(meV); switch_force_rms/max_mev_a: the switching force -sum_i (e_i^HF - e_i^LF) grad lambda_i per atom "
        "(meV/A; the potential's forces minus its forces with lambda frozen; RMS over the atoms it acts on). "
        "Columns *_independent: the same HF with the independently trained LF of the same seed instead of the "
        "co-trained one, on the same snapshots (NaN when that checkpoint was not given).",
    ]
    if not table["completed"].all():
        notes.append("WARNING: runs with completed = False stopped early (md.safety limits): their figures cover "
                     "the steps before the stop only.")
    write_table(table, csv=csv, md=md, title="Adaptive vs static partition: conservation, HF centres, speed",
                notes=notes, floatfmt=".4g")
    plot_adaptive(result.traces, png)


def protocol_with(base: AnalysisAdaptiveConfig | None = None, **overrides) -> AnalysisAdaptiveConfig:
    """``base`` (default: the schema's defaults) with the given non-None fields replaced."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if "bias_direction" in values:
        values["bias_direction"] = tuple(float(x) for x in values["bias_direction"])
    return replace(base if base is not None else AnalysisAdaptiveConfig(), **values)


# ------------------------------------------------------------------------------------------- over seeds

SEED_STATS = ("mean", "std")
DRIFT_SIGMAS = 3.0  # |drift| <= this many block-averaged standard errors
MAX_FLUCTUATION_RATIO = 1.5  # adaptive fluctuation / full-HF fluctuation
MAX_MOMENTUM_DRIFT = 1e-9  # amu A/fs: round-off
MIN_CO_DISPLACEMENT_A = 3.0
MIN_SPEEDUP = 2.0


def seeds_table(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The seeds' tables (each with a ``seed`` column) stacked, ordered by run and seed, then a ``mean`` and a
    ``std`` row (sample std, ddof 1; NaN for one seed) per run over the numeric columns."""
    rows = pd.concat(list(tables), ignore_index=True)
    if rows.empty:
        raise ValueError("no seed tables")
    rows = rows.sort_values(["run", "seed"], kind="stable").reset_index(drop=True)
    front = ["run", "partition", "seed"]
    rows = rows[front + [c for c in rows.columns if c not in front]]
    numeric = [c for c in rows.columns if c not in front and pd.api.types.is_numeric_dtype(rows[c])
               and not pd.api.types.is_bool_dtype(rows[c])]
    out = []
    for run, group in rows.groupby("run", sort=True):
        out.append(group)
        stats = [{"run": run, "partition": group["partition"].iloc[0], "seed": name,
                  **getattr(group[numeric], name)(**({"ddof": 1} if name == "std" else {})).to_dict()}
                 for name in SEED_STATS]
        out.append(pd.DataFrame(stats))
    table = pd.concat(out, ignore_index=True)
    table["seed"] = table["seed"].astype(str)
    return table


def _std(values: pd.Series) -> float:
    """Sample standard deviation (NaN for fewer than two values)."""
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def seed_rows(table: pd.DataFrame, run: str) -> pd.DataFrame:
    """The per-seed rows of ``run`` (no mean/std rows), indexed by seed."""
    rows = table[(table["run"] == run) & ~table["seed"].isin(SEED_STATS)]
    return rows.set_index("seed")


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """The issue's criteria, checked for every seed and quoted as mean +- std over the seeds (table of
    :func:`seeds_table`)."""
    a, c = seed_rows(table, "A"), seed_rows(table, "C")
    n = len(a)
    lines = []

    def line(label: str, values: pd.Series, ok: pd.Series, criterion: str, fmt: str = ".3g") -> None:
        lines.append(f"{label}: {values.mean():{fmt}} +- {_std(values):.2g} over {len(values)} seeds "
                     f"({', '.join(f'{v:{fmt}}' for v in values)}); {criterion}: {int(ok.sum())} of {len(ok)} seeds.")

    z = a["drift_mev_atom_ps"].abs() / a["drift_stderr_mev_atom_ps"]
    line("A (adaptive) |drift| / stderr", z, z <= DRIFT_SIGMAS, f"within {DRIFT_SIGMAS:g} standard errors of zero")
    if len(c):
        # like with like: the same integrator and timestep with full HF shows what is not the switching's
        zc = c["drift_mev_atom_ps"].abs() / c["drift_stderr_mev_atom_ps"]
        line("C (full HF) |drift| / stderr", zc, zc <= DRIFT_SIGMAS, f"within {DRIFT_SIGMAS:g} standard errors of zero")
        cc = c.reindex(a.index)
        za = (a["drift_mev_atom_ps"] - cc["drift_mev_atom_ps"]).abs() / np.hypot(a["drift_stderr_mev_atom_ps"],
                                                                                 cc["drift_stderr_mev_atom_ps"])
        line("|drift(A) - drift(C)| / combined stderr", za, za <= DRIFT_SIGMAS,
             f"adaptive drift within {DRIFT_SIGMAS:g} combined standard errors of full HF's")
        ratio = a["fluctuation_mev_atom"] / c["fluctuation_mev_atom"].reindex(a.index)
        line("A / C energy fluctuation", ratio, ratio <= MAX_FLUCTUATION_RATIO, f"<= {MAX_FLUCTUATION_RATIO:g}")
    line("A momentum drift (amu A/fs)", a["momentum_drift"], a["momentum_drift"] <= MAX_MOMENTUM_DRIFT,
         f"<= {MAX_MOMENTUM_DRIFT:g} (round-off)")
    line("A CO displacement (A)", a["co_displacement_a"], a["co_displacement_a"] >= MIN_CO_DISPLACEMENT_A,
         f">= {MIN_CO_DISPLACEMENT_A:g} A")
    for run in ("A", "B", "D"):
        rows = seed_rows(table, run)
        if len(rows):
            speed = rows["speedup_vs_hf"]
            line(f"{run} ({RUNS[run]}) speedup vs full HF", speed, speed >= MIN_SPEEDUP, f">= {MIN_SPEEDUP:g}x",
                 fmt=".2f")
            lf = rows["pt_near_c_lf_fraction"]
            line(f"{run} ({RUNS[run]}) fraction of steps with LF on a Pt within {NEAR_C_A:g} A of C", lf, lf == 0,
                 "zero", fmt=".3f")
    if "shell_abs_de_mev_mean" in a:
        for key, label, unit in (("shell_abs_de_mev_mean", "shell |e_HF - e_LF|", "meV"),
                                 ("switch_force_rms_mev_a", "switching force RMS", "meV/A")):
            co, ind = a[key], a[f"{key}_independent"]
            lines.append(f"A {label} ({unit}): co-trained LF {co.mean():.3g} +- {_std(co):.2g}, independent LF "
                         f"{ind.mean():.3g} +- {_std(ind):.2g}; co-trained smaller for "
                         f"{int((co < ind).sum())} of {len(co)} seeds.")
    if n < 3:
        lines.append(f"Only {n} seed(s): the project asks for at least 3 before a verdict.")
    return lines


def write_seeds_table(table: pd.DataFrame, *, csv: str | Path, md: str | Path, seed_tables: Sequence[str | Path] = (),
                      figures: Sequence[str | Path] = ()) -> None:
    """Write the table over seeds (CSV + Markdown with the verdicts and where the per-seed notes are)."""
    notes = [
        "One row per run and training seed (each seed: its own co-trained pair and its own Maxwell-Boltzmann "
        "velocities), then the mean and the sample standard deviation over the seeds. Runs: A adaptive, B static "
        "(md.partition), C full HF, D static without surface layers. The protocol, units and column definitions "
        "are in the per-seed tables" + (f" ({', '.join(map(str, seed_tables))})" if seed_tables else "") + "; the "
        "figures of lambda over time, HF centres and CO motion per seed: "
        + (", ".join(map(str, figures)) if figures else "-") + ". MD only: no data split is involved.",
        "Verdicts (every criterion checked for every seed):",
        *[f"- {line}" for line in verdict_lines(table)],
    ]
    write_table(table, csv=csv, md=md, title="Adaptive vs static partition over training seeds", notes=notes,
                floatfmt=".4g")
