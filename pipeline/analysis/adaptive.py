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
- ``C``: full HF (:class:`~pipeline.models.calculator.AllegroCalculator` on the HF checkpoint).

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

The defaults of the protocol are in ONE place, :class:`AdaptiveProtocol`.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
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
from ase.md.verlet import VelocityVerlet

from pipeline.analysis._common import pyplot, save_figure, write_table
from pipeline.analysis.speed import timing_slab
from pipeline.config import Config
from pipeline.devices import resolve_device
from pipeline.md.adaptive import LAMBDA, AdaptiveCalculator, AdaptiveMixturePotential, centre_counts
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
EXTRA_COLUMNS = ("fluctuation_mev_atom", "pt_near_c_lf_fraction", "timestep_fs", "bias_k_ev_a2", "bias_offset_a",
                 "n_atoms", "lf_centres_mean", "shell_centres_mean", "momentum_drift_raw", "co_final_displacement_a",
                 "c_nearest_pt_max_a", "md_step_ms", "speed_n_atoms", "speed_hf_centres", "speed_step_ms",
                 "speedup_vs_hf_one_pass", "speed_full_hf_one_pass_ms", "completed")
RUNS = {"A": "adaptive", "B": "static", "C": "full_hf"}  # run -> partition
NEAR_C_A = 3.0  # a Pt atom this close to a C atom must be HF (pt_near_c_lf_fraction), A


@dataclass(frozen=True)
class AdaptiveProtocol:
    """The protocol's own settings (proposed config keys ``analysis.adaptive.*``; everything else comes from
    ``md`` and ``analysis.speed``).

    Attributes
    ----------
    steps : int
        NVE steps of each run (at ``md.run.timestep_fs``).
    bias_k_ev_a2 : float
        Spring constant k of the lateral well on the biased C atom, eV/A^2.
    bias_offset_a : float
        Distance of the well's centre from the C atom's start, A.
    bias_direction : (2,) floats
        Direction of the offset in units of the surface cell vectors (a, b); (1, 1): a + b.
    bias_molecule : int
        Which CO is biased (0 = the first C atom).
    speed_n_atoms : int
        Size of the timing slab (about), atoms.
    speed_repeats, speed_warmup : int
        Timed and warm-up evaluations per case.
    equilibration_steps : int
        Langevin NVT steps at ``md.run.temperature_k`` (friction ``friction_per_fs``, without the bias) before
        each NVE run, so that the NVE run is at the configured temperature (Maxwell-Boltzmann velocities
        alone lose about half their kinetic energy to the potential); 0 = none.
    friction_per_fs : float
        Langevin friction of the equilibration, 1/fs.
    """

    steps: int = 1500
    equilibration_steps: int = 300
    friction_per_fs: float = 0.01
    bias_k_ev_a2: float = 0.1
    bias_offset_a: float = 4.0
    bias_direction: tuple[float, float] = (1.0, 1.0)
    bias_molecule: int = 0
    speed_n_atoms: int = 2000
    speed_repeats: int = 5
    speed_warmup: int = 2


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
    """
    atoms = atoms.copy()
    atoms.set_constraint()
    # Maxwell-Boltzmann momenta (drawn here: the ASE function changed between the supported versions)
    sigma = np.sqrt(atoms.get_masses() * units.kB * temperature_k)[:, None]
    atoms.set_momenta(np.random.default_rng(seed).standard_normal((len(atoms), 3)) * sigma)
    Stationary(atoms)
    if equilibration_steps > 0:
        atoms.calc = potential
        Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_k, friction=friction_per_fs / units.fs,
                 rng=np.random.default_rng(seed + 1)).run(equilibration_steps)
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
    """Calculator and probe of one partition: ``adaptive``, ``static`` (``expert`` per atom) or ``full_hf``."""
    n = len(atoms)
    if partition == "adaptive":
        potential = AdaptiveMixturePotential(hf, lf, r_in=settings.r_in, r_out=settings.r_out, margin=settings.margin)
        return (AdaptiveCalculator(potential, skin=settings.skin, device=settings.device),
                PartitionProbe(potential=potential))
    if partition == "static":
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
    hf: AllegroModel, lf: AllegroModel, slab: Atoms, settings: PartitionSettings, expert: np.ndarray,
) -> tuple[dict[str, Calculator], dict[str, PartitionProbe]]:
    """The timed cases: ``adaptive`` (:class:`~pipeline.md.adaptive.AdaptiveCalculator`), ``static`` and
    ``full_hf`` as the MD stage runs them (:class:`~pipeline.md.calculator.MixtureCalculator`), all three with
    the centres in chunks of ``settings.chunks``, and ``full_hf_one_pass`` (the MD runs'
    :class:`~pipeline.models.calculator.AllegroCalculator`, one pass)."""
    n = len(slab)
    cases, probes = {}, {}
    cases["adaptive"], probes["adaptive"] = make_case("adaptive", hf, lf, slab, settings)
    cases["adaptive"].potential.set_centres_per_chunk(list(settings.chunks))
    for name, experts, partition in (("static", (hf, lf), expert), ("full_hf", (hf,), np.zeros(n, dtype=np.int64))):
        potential = MixturePotential(list(experts), names=("hf", "lf")[: len(experts)])
        potential.set_centres_per_chunk(list(settings.chunks[: len(experts)]))
        cases[name] = MixtureCalculator(potential, expert=partition, skin=settings.skin, device=settings.device)
        probes[name] = PartitionProbe(weights=(np.asarray(partition) == HF).astype(np.float64))
    cases["full_hf_one_pass"], probes["full_hf_one_pass"] = make_case("full_hf", hf, lf, slab, settings)
    return cases, probes


def speed_figures(
    hf: AllegroModel, lf: AllegroModel, slab: Atoms, settings: PartitionSettings, expert: np.ndarray, *,
    repeats: int, warmup: int,
) -> dict[str, dict[str, float]]:
    """``{case: {"seconds", "hf_centres", "speedup_vs_hf", "speedup_vs_hf_one_pass"}}`` on the timing slab
    (cases of :func:`speed_cases`)."""
    cases, probes = speed_cases(hf, lf, slab, settings, expert)
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
    expert: np.ndarray,
    settings: PartitionSettings,
    timestep_fs: float,
    temperature_k: float,
    seed: int,
    protocol: AdaptiveProtocol = AdaptiveProtocol(),
    speed_slab: Atoms | None = None,
    speed_expert: np.ndarray | None = None,
    max_temperature_k: float = math.inf,
    max_energy_change_ev_atom: float = math.inf,
) -> tuple[pd.DataFrame, dict[str, RunTrace]]:
    """Runs A (adaptive), B (static, ``expert``), C (full HF) of ``atoms`` with the bias of ``protocol``, and the
    speed on ``speed_slab`` (partition ``speed_expert`` for the static case; no speed without a slab).

    Returns the table (:data:`COLUMNS` + :data:`EXTRA_COLUMNS`) and ``{run: trace}``.
    """
    carbon = np.flatnonzero(np.asarray(atoms.get_chemical_symbols()) == "C")
    if protocol.bias_molecule >= len(carbon):
        raise ValueError(f"cannot bias CO {protocol.bias_molecule}: the cell has {len(carbon)} C atoms")
    biased = int(carbon[protocol.bias_molecule])
    target = bias_target(atoms, biased, offset_a=protocol.bias_offset_a, direction=protocol.bias_direction)
    rows, traces = [], {}
    for run, partition in RUNS.items():
        calc, probe = make_case(partition, hf, lf, atoms, settings, expert)
        bias = LateralWell(index=biased, k=protocol.bias_k_ev_a2, target=target) if protocol.bias_k_ev_a2 else None
        log.info("run %s (%s): %d atoms, %d steps of %g fs, bias k %g eV/A^2 on atom %d towards %s", run, partition,
                 len(atoms), protocol.steps, timestep_fs, protocol.bias_k_ev_a2, biased, np.round(target, 3).tolist())
        trace = run_nve(atoms, calc, probe, steps=protocol.steps, timestep_fs=timestep_fs, temperature_k=temperature_k,
                        seed=seed, bias=bias, biased_atom=biased, max_temperature_k=max_temperature_k,
                        max_energy_change_ev_atom=max_energy_change_ev_atom,
                        equilibration_steps=protocol.equilibration_steps, friction_per_fs=protocol.friction_per_fs)
        row = trace_row(run, partition, trace, bias_k=protocol.bias_k_ev_a2, bias_offset_a=protocol.bias_offset_a)
        log.info("run %s: %d steps, %.1f ms/step, %.0f K, drift %.4g +- %.2g meV/atom/ps, CO moved %.2f A, HF centres "
                 "%.0f (%d-%d)", run, row["steps"], row["md_step_ms"], row["temperature_k"], row["drift_mev_atom_ps"],
                 row["drift_stderr_mev_atom_ps"], row["co_displacement_a"], row["hf_centres_mean"],
                 row["hf_centres_min"], row["hf_centres_max"])
        rows.append(row)
        traces[run] = trace
    speed = None
    if speed_slab is not None:
        if speed_expert is None:
            raise ValueError("the speed slab needs its static partition (speed_expert)")
        speed = speed_figures(hf, lf, speed_slab, settings, speed_expert, repeats=protocol.speed_repeats,
                              warmup=protocol.speed_warmup)
    for row in rows:
        figures = speed[row["partition"]] if speed else None
        row["speedup_vs_hf"] = figures["speedup_vs_hf"] if figures else float("nan")
        row["speed_n_atoms"] = len(speed_slab) if figures else 0
        row["speed_hf_centres"] = figures["hf_centres"] if figures else 0
        row["speed_step_ms"] = 1000.0 * figures["seconds"] if figures else float("nan")
        row["speedup_vs_hf_one_pass"] = figures["speedup_vs_hf_one_pass"] if figures else float("nan")
        row["speed_full_hf_one_pass_ms"] = 1000.0 * speed["full_hf_one_pass"]["seconds"] if figures else float("nan")
    return pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS]), traces


@dataclass
class AdaptiveResult:
    """The table, the traces and what the notes say about them."""

    table: pd.DataFrame
    traces: dict[str, RunTrace]
    settings: PartitionSettings
    protocol: AdaptiveProtocol
    static_rule: str = ""
    co_coverage: float = float("nan")
    threads: int = 1


def adaptive_table(
    cfg: Config, *, hf: str | Path, lf: str | Path, protocol: AdaptiveProtocol = AdaptiveProtocol()
) -> AdaptiveResult:
    """The table and the traces for the experts saved at ``hf`` and ``lf``.

    Uses ``md.system`` (the cell, no fixed atoms), ``md.partition`` (static rule; adaptive radii and margin,
    the inner radius defaulting to the LF checkpoint's ``r_max``), ``md.run.timestep_fs`` and
    ``temperature_k``, ``md.neighbor_skin_a``, ``md.safety``, ``analysis.speed`` (layers, CO coverage),
    ``analysis.lattice_constant_a``, ``regions``, ``species``, ``seed``, ``device``, ``torch_threads``.
    """
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    hf_model, lf_model = (load_checkpoint(p, species=list(cfg.species), dtype=torch.float64, map_location=device)
                          for p in (hf, lf))
    r_in, r_out = cfg.md.partition.adaptive.radii(float(lf_model.r_max))
    settings = PartitionSettings(r_in=r_in, r_out=r_out, margin=cfg.md.partition.adaptive.margin_a,
                                 skin=cfg.md.neighbor_skin_a, device=device,
                                 chunks=cfg.md.centres_per_chunk.for_experts(("hf", "lf")))
    atoms = build_production_cell(cfg.md.system)
    expert = partition_atoms(atoms, cfg.md.partition, cfg.regions)
    s = cfg.analysis.speed
    slab = None
    if protocol.speed_n_atoms > 0:
        slab = timing_slab(protocol.speed_n_atoms, layers=s.layers, co_coverage=s.co_coverage,
                           lattice_constant_a=cfg.analysis.lattice_constant_a)
    table, traces = adaptive_runs(
        hf_model, lf_model, atoms, expert=expert, settings=settings, timestep_fs=cfg.md.run.timestep_fs,
        temperature_k=cfg.md.run.temperature_k, seed=cfg.seed, protocol=protocol, speed_slab=slab,
        speed_expert=partition_atoms(slab, cfg.md.partition, cfg.regions) if slab is not None else None,
        max_temperature_k=cfg.md.safety.max_temperature_k,
        max_energy_change_ev_atom=cfg.md.safety.max_energy_change_ev_atom,
    )
    rule = cfg.md.partition.rule
    if rule == "adsorbate_radius":
        rule += f", radius_a {cfg.md.partition.radius_a:g} A"
    return AdaptiveResult(table=table, traces=traces, settings=settings, protocol=protocol, static_rule=rule,
                          co_coverage=float(s.co_coverage), threads=cfg.torch_threads)


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
        f"Experts: the {pair} pair{files}, float64, {settings.device}, torch threads {result.threads}. Cell: md.system "
        f"({int(first['n_atoms'])} atoms) with NO fixed atoms; ASE velocity Verlet NVE at {first['timestep_fs']:g} fs "
        "from Maxwell-Boltzmann velocities at md.run.temperature_k (total momentum removed; same velocities "
        f"for every run) after {protocol.equilibration_steps} steps of Langevin NVT at that temperature (friction "
        f"{protocol.friction_per_fs:g}/fs, without the bias). A: adaptive partition (AdaptiveCalculator, " + radii + "); B: static partition "
        f"(MixtureCalculator, rule {result.static_rule} applied once to the starting cell); C: full HF "
        "(AllegroCalculator).",
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
        "(time.perf_counter). Full HF, the static partition (same rule as B) and the adaptive partition are timed "
        f"with the centres in chunks of {settings.chunks[0]} (HF) / {settings.chunks[1]} (LF) (md.centres_per_chunk; "
        "full HF and static as the MD stage runs them). speedup_vs_hf_one_pass: against full HF in one "
        "pass (the MD runs' AllegroCalculator; speed_full_hf_one_pass_ms), which is slow on large cells (memory). "
        "speed_hf_centres: the HF centres on that slab; speed_step_ms: the case's median time. md_step_ms: mean "
        "wall time of one MD step of the run (224-atom cell: integration and bookkeeping included). CPU timings "
        "on a loaded machine are noisy.",
    ]
    if not table["completed"].all():
        notes.append("WARNING: runs with completed = False stopped early (md.safety limits): their figures cover "
                     "the steps before the stop only.")
    write_table(table, csv=csv, md=md, title="Adaptive vs static partition: conservation, HF centres, speed",
                notes=notes, floatfmt=".4g")
    plot_adaptive(result.traces, png)


def protocol_with(**overrides) -> AdaptiveProtocol:
    """:class:`AdaptiveProtocol` with the given (non-None) fields replaced."""
    values = asdict(AdaptiveProtocol())
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["bias_direction"] = tuple(float(x) for x in values["bias_direction"])
    return AdaptiveProtocol(**values)
