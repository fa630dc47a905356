"""Exploration MD of the active-learning loop: short Langevin runs of the current mixture and of full HF.

For one cell of :data:`pipeline.active.cells.CELLS`, one trajectory per potential of ``active.explore.runs``
(``mixture``: the first committee seed's HF on the atoms ``md.partition`` gives to HF and the pair's LF on
the rest, static by index as in production MD; ``hf``: that HF on every atom) and per temperature of
``active.explore.temperatures_k``. ASE's :class:`~ase.md.langevin.Langevin` integrates (a cross-check
integrator is enough for sampling; production MD stays in LAMMPS), with the bottom
``fixed_bottom_layers`` Pt layers fixed. A snapshot is taken every ``snapshot_interval`` steps.

Every step is checked (:func:`stop_reason`); a trajectory that becomes unphysical (two atoms closer than
``min_distance_a``, a C atom without an O atom within ``max_co_bond_a``, a temperature above
``max_temperature_k``, non-finite forces) stops there, the reason and step are recorded, and the last state
that passed every check is kept as one more candidate (``al_last_good``): it is where the potential went
wrong, the most useful frame to label. The unphysical state itself is never kept.

Randomness (velocities, Langevin noise) comes from a generator seeded by ``(active.seed, iteration,
crc32(trajectory id))``, so a trajectory is reproducible alone.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixAtoms
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from pipeline.active.cells import SiteHeights, build_cell
from pipeline.active.provenance import CONFIG_TYPE, snapshot_id, trajectory_id
from pipeline.atomic import write_atomic
from pipeline.config import ActiveExploreConfig, Config
from pipeline.md.partition import HF, bottom_layers, partition_atoms

log = logging.getLogger(__name__)

RUNS = ("mixture", "hf")
TRAJECTORY_COLUMNS = ("trajectory", "iteration", "run", "cell", "temperature_k", "n_atoms", "n_hf_atoms",
                      "steps_requested", "steps_done", "stopped", "reason", "snapshots", "mean_temperature_k",
                      "wall_s")


@dataclass
class TrajectoryRecord:
    """What happened in one exploration trajectory (one row of the trajectories table)."""

    trajectory: str
    iteration: int
    run: str
    cell: str
    temperature_k: float
    n_atoms: int
    n_hf_atoms: int
    steps_requested: int
    steps_done: int
    stopped: bool
    reason: str
    snapshots: int
    mean_temperature_k: float
    wall_s: float


def stop_reason(atoms: Atoms, cfg: ActiveExploreConfig, *, forces: np.ndarray | None = None) -> str | None:
    """Why ``atoms`` is unphysical, or ``None`` when it passes every check.

    Parameters
    ----------
    atoms : ase.Atoms
        The current state (positions in A, momenta set).
    cfg : ActiveExploreConfig
        ``min_distance_a``, ``max_co_bond_a`` (A) and ``max_temperature_k`` (K).
    forces : (n_atoms, 3) array, optional
        The current forces (eV/A); checked to be finite.
    """
    if forces is not None and not np.all(np.isfinite(forces)):
        return "non-finite forces"
    d = atoms.get_all_distances(mic=True)  # [n, n] (A); the cells are small (<= ~50 atoms)
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    if d[i, j] < cfg.min_distance_a:
        return (f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) {d[i, j]:.3f} A apart "
                f"(< min_distance_a {cfg.min_distance_a} A)")
    symbols = np.array(atoms.get_chemical_symbols())
    carbons, oxygens = np.flatnonzero(symbols == "C"), np.flatnonzero(symbols == "O")
    if len(carbons) and len(oxygens):
        bonds = d[np.ix_(carbons, oxygens)].min(axis=1)
        k = int(np.argmax(bonds))
        if bonds[k] > cfg.max_co_bond_a:
            return f"CO dissociated: C atom {carbons[k]} has no O within {cfg.max_co_bond_a} A ({bonds[k]:.3f} A)"
    temperature = atoms.get_temperature()
    if not np.isfinite(temperature) or temperature > cfg.max_temperature_k:
        return f"temperature {temperature:.0f} K above max_temperature_k {cfg.max_temperature_k:.0f} K"
    return None


def _snapshot(atoms: Atoms, info: dict, *, step: int, trajectory: str, last_good: bool = False) -> Atoms:
    """A bare copy of ``atoms`` (numbers, positions, cell, pbc; wrapped) with the provenance ``info``."""
    snap = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    snap.wrap()
    snap.info.update(info)
    snap.info.update(al_step=int(step), structure_id=snapshot_id(trajectory, step), al_last_good=bool(last_good))
    return snap


def run_trajectory(
    atoms: Atoms,
    calc: Calculator,
    cfg: ActiveExploreConfig,
    *,
    temperature_k: float,
    rng: np.random.Generator,
    info: dict,
    fixed: np.ndarray | None = None,
) -> tuple[list[Atoms], dict]:
    """Langevin MD of ``atoms`` with ``calc``; snapshots every ``cfg.snapshot_interval`` steps.

    Parameters
    ----------
    atoms : ase.Atoms
        The starting cell (not modified; a copy is integrated).
    calc : ase Calculator
        The potential (energy and forces in eV, eV/A).
    cfg : ActiveExploreConfig
        Steps, time step (fs), friction (1/fs), snapshot interval and the stop limits.
    temperature_k : float
        Thermostat temperature and initial Maxwell-Boltzmann temperature (K).
    rng : numpy.random.Generator
        Source of the initial velocities and of the Langevin noise.
    info : dict
        Provenance written into every snapshot's ``info`` (must hold ``al_trajectory``).
    fixed : (n_atoms,) bool array, optional
        Atoms held fixed (FixAtoms).

    Returns
    -------
    snapshots : list of ase.Atoms
        Unlabelled snapshots (steps ``k * snapshot_interval``, k >= 1), plus the last good state of a
        stopped trajectory.
    summary : dict
        ``steps_done``, ``stopped``, ``reason``, ``mean_temperature_k``.
    """
    work = atoms.copy()
    work.calc = calc
    if fixed is not None and fixed.any():
        work.set_constraint(FixAtoms(mask=fixed))
    thermalize_momenta(work, temperature_K=temperature_k, rng=rng)
    dyn = Langevin(work, cfg.timestep_fs * units.fs, temperature_K=temperature_k,
                   friction=cfg.friction_per_fs / units.fs, fixcm=False, rng=rng)
    trajectory = info["al_trajectory"]
    snapshots: list[Atoms] = []
    previous: tuple[int, Atoms] | None = None
    temperatures: list[float] = []
    reason = None
    for _ in dyn.irun(cfg.steps):
        step = int(dyn.nsteps)
        reason = stop_reason(work, cfg, forces=work.get_forces())
        if reason is not None:
            reason = f"step {step}: {reason}"
            break
        temperatures.append(work.get_temperature())
        if step > 0 and step % cfg.snapshot_interval == 0:
            snapshots.append(_snapshot(work, info, step=step, trajectory=trajectory))
        previous = (step, work.copy())
    stopped = reason is not None
    if stopped and previous is not None and previous[0] > 0 and previous[0] % cfg.snapshot_interval:
        snapshots.append(_snapshot(previous[1], info, step=previous[0], trajectory=trajectory, last_good=True))
    return snapshots, {
        "steps_done": int(dyn.nsteps) - (1 if stopped else 0),
        "stopped": stopped,
        "reason": reason or "",
        "mean_temperature_k": float(np.mean(temperatures)) if temperatures else float("nan"),
    }


def trajectory_info(start: Atoms, *, iteration: int, run: str, temperature_k: float, timestep_fs: float) -> dict:
    """The provenance ``info`` of every snapshot of one trajectory from the cell ``start`` (built by
    :func:`pipeline.active.cells.build_cell`); see :mod:`pipeline.active.provenance`."""
    cell = str(start.info["al_cell"])
    name = trajectory_id(iteration, run, cell, temperature_k)
    info = {key: start.info[key] for key in ("family", "slab_size", "layers", "coverage_ml", "adatom", "vacancy")}
    info.update(al_iteration=int(iteration), al_source_run=run, al_cell=cell, al_temperature_k=float(temperature_k),
                al_timestep_fs=float(timestep_fs), al_trajectory=name, group=name, config_type=CONFIG_TYPE)
    return info


def _calculator(run: str, expert: np.ndarray, *, hf: Path, lf: Path | None, cfg: Config) -> Calculator:
    """The ASE calculator of one exploration run: full HF, or the HF/LF mixture with a static ``expert``."""
    from pipeline.md.calculator import MixtureCalculator
    from pipeline.models.calculator import AllegroCalculator

    dtype = getattr(torch, cfg.active.dtype)
    if run == "hf":
        return AllegroCalculator.from_checkpoint(hf, species=list(cfg.species), dtype=dtype)
    if run == "mixture":
        if lf is None:
            raise ValueError("the mixture run needs an LF checkpoint (--lf)")
        return MixtureCalculator.from_checkpoints([hf, lf], expert=expert, dtype=dtype, skin=cfg.md.neighbor_skin_a)
    raise ValueError(f"unknown exploration run {run!r}; known: {', '.join(RUNS)}")


def explore_cell(
    cfg: Config, cell: str, *, iteration: int, hf: str | Path, lf: str | Path | None
) -> tuple[list[Atoms], pd.DataFrame]:
    """Every trajectory (runs x temperatures) of one cell: snapshots and the trajectories table.

    Parameters
    ----------
    cfg : Config
        Sections ``active`` (exploration settings, seed, dtype), ``sample`` (geometry), ``md.partition`` and
        ``regions`` (the mixture's HF/LF assignment and the fixed bottom layers).
    cell : str
        A name of :data:`pipeline.active.cells.CELLS`.
    iteration : int
        The loop iteration (provenance and random streams).
    hf, lf : path
        The HF checkpoint (both runs) and the LF checkpoint (mixture run).

    Returns
    -------
    snapshots : list of ase.Atoms
        Unlabelled candidates with the provenance of :mod:`pipeline.active.provenance`.
    table : pandas.DataFrame
        One row per trajectory (:data:`TRAJECTORY_COLUMNS`).
    """
    ex = cfg.active.explore
    start = build_cell(cell, lattice_constant_a=cfg.sample.lattice_constant_a,
                       sites=SiteHeights.from_sample(cfg.sample.slab_co), vacuum_a=ex.vacuum_a)
    expert = partition_atoms(start, cfg.md.partition, cfg.regions)
    fixed = bottom_layers(start, ex.fixed_bottom_layers, cfg.regions)
    snapshots: list[Atoms] = []
    rows = []
    for run in ex.runs:
        run_expert = expert if run == "mixture" else np.full(len(start), HF, dtype=np.int64)
        calc = _calculator(run, run_expert, hf=Path(hf), lf=Path(lf) if lf else None, cfg=cfg)
        for temperature in ex.temperatures_k:
            info = trajectory_info(start, iteration=iteration, run=run, temperature_k=temperature,
                                   timestep_fs=ex.timestep_fs)
            name = info["al_trajectory"]
            rng = np.random.default_rng([cfg.active.seed, int(iteration), zlib.crc32(name.encode())])
            t0 = time.perf_counter()
            frames, summary = run_trajectory(start, calc, ex, temperature_k=temperature, rng=rng, info=info,
                                             fixed=fixed)
            record = TrajectoryRecord(
                trajectory=name, iteration=int(iteration), run=run, cell=cell, temperature_k=float(temperature),
                n_atoms=len(start), n_hf_atoms=int(np.sum(run_expert == HF)), steps_requested=ex.steps,
                snapshots=len(frames), wall_s=round(time.perf_counter() - t0, 2), **summary)
            log.info("%s: %d steps, %d snapshots%s", name, record.steps_done, len(frames),
                     f", stopped ({record.reason})" if record.stopped else "")
            snapshots.extend(frames)
            rows.append(asdict(record))
    return snapshots, pd.DataFrame(rows, columns=list(TRAJECTORY_COLUMNS))


def write_exploration(snapshots: Sequence[Atoms], table: pd.DataFrame, *, frames: str | Path,
                      trajectories: str | Path) -> None:
    """Write the snapshots (extxyz; an empty file when there are none) and the trajectories table (CSV)."""
    write_atomic(frames, lambda tmp: write(tmp, list(snapshots), format="extxyz"))
    write_atomic(trajectories, lambda tmp: table.to_csv(tmp, index=False))
