"""The MD stage as functions of typed inputs: build the production cell, run one MD run.

These are what the CLI subcommands ``md-system`` and ``md`` call; they choose no paths themselves. With
``md.partition.mode: adaptive`` a run of both experts uses the adaptive partition
(:class:`~pipeline.md.adaptive.AdaptiveMixturePotential`, radii and margin of ``md.partition.adaptive``, the
inner radius defaulting to the LF checkpoint's ``r_max``) instead of the cell file's static ``expert`` array;
single-expert runs are the same in both modes. Adaptive runs use one MPI rank (:func:`check_md_ranks`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.io import read

from pipeline.config import Config, ConfigError
from pipeline.devices import DTYPES, resolve_device
from pipeline.md.adaptive import (
    SINGLE_RANK_REASON,
    AdaptiveEvaluator,
    AdaptiveMixturePotential,
    adaptive_mixture,
    switching_weights,
)
from pipeline.md.adsorbates import adsorbate_report
from pipeline.md.evaluator import MixtureEvaluator, SystemEvaluator
from pipeline.md.lammps_driver import LammpsMD, MDFiles, MDSystem
from pipeline.md.lammps_io import launched_by_mpi, local_rank
from pipeline.md.partition import (
    EXPERTS,
    HF,
    bottom_layers,
    partition_atoms,
    plot_partition,
    plot_weights,
    read_partition,
    write_partition,
)
from pipeline.md.potential import MixturePotential
from pipeline.md.system import build_production_cell
from pipeline.md.thermo import centre_figures, energy_drift, read_thermo
from pipeline.models import load_checkpoint

log = logging.getLogger(__name__)


def adaptive_run(cfg: Config, checkpoints: Mapping[str, object]) -> bool:
    """Whether a run of ``checkpoints`` uses the adaptive partition: ``md.partition.mode`` adaptive and both
    experts."""
    return cfg.md.partition.mode == "adaptive" and set(checkpoints) == {"hf", "lf"}


def check_md_ranks(cfg: Config, checkpoints: Mapping[str, object]) -> None:
    """Refuse an adaptive run on several MPI ranks (``md.run.mpi_ranks`` > 1), before anything starts.

    Raises
    ------
    ConfigError
        With :data:`~pipeline.md.adaptive.SINGLE_RANK_REASON`.
    """
    if adaptive_run(cfg, checkpoints) and int(cfg.md.run.mpi_ranks) > 1:
        raise ConfigError(f"config key 'md.run.mpi_ranks' is {cfg.md.run.mpi_ranks}, but {SINGLE_RANK_REASON}")


def build_md_system(cfg: Config, *, cell: str | Path, png: str | Path) -> tuple[int, int]:
    """Build the production cell, partition it and write the partition file and its picture.

    Parameters
    ----------
    cfg : Config
        Uses ``md.system``, ``md.partition`` and ``regions``; in mode adaptive also ``models.lf.r_max``
        (the default inner radius, as the LF checkpoint trained from that preset has it).
    cell : path
        Output: extxyz of the cell with the per-atom ``expert`` array (the static rule's partition, in both
        modes: the adaptive runs carry it as bookkeeping only).
    png : path
        Output: side and top views coloured by expert (static), or by lambda at t = 0 with a colour bar
        (adaptive).

    Returns
    -------
    (n_atoms, n_hf)
        ``n_hf``: the static partition's HF atoms, or in mode adaptive the atoms with lambda > 0 at t = 0
        (the HF centres of the first step, without the margin).
    """
    atoms = build_production_cell(cfg.md.system)
    expert = partition_atoms(atoms, cfg.md.partition, cfg.regions)
    write_partition(cell, atoms, expert, rule=cfg.md.partition.rule)
    n_hf = int(np.sum(expert == HF))
    log.info("production cell: %d atoms (%s), %d HF / %d LF by rule %s", len(atoms), atoms.get_chemical_formula(),
             n_hf, len(atoms) - n_hf, cfg.md.partition.rule)
    if cfg.md.partition.mode != "adaptive":
        plot_partition(atoms, expert, png)
        return len(atoms), n_hf
    r_in, r_out = cfg.md.partition.adaptive.radii(cfg.models.lf.r_max)
    weights = switching_weights(atoms, r_in=r_in, r_out=r_out, adsorbate_species=cfg.regions.adsorbate_species)
    plot_weights(atoms, weights, png, r_in=r_in, r_out=r_out)
    n_hf = int(np.sum(weights > 0))
    log.info("adaptive partition (r_in %g A, r_out %g A) at t = 0: %d atoms with lambda > 0, %d of them in the "
             "switching shell", r_in, r_out, n_hf, int(np.sum((weights > 0) & (weights < 1))))
    return len(atoms), n_hf


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rank_device(name: str) -> torch.device:
    """The device of this process; under an MPI launch, ``auto``/``cuda`` pick the rank's local GPU (local
    rank modulo the GPU count: one rank per GPU)."""
    if launched_by_mpi() and name != "cpu" and torch.cuda.is_available():
        return resolve_device(name, local_rank() % torch.cuda.device_count())
    return resolve_device(name)


def load_mixture(checkpoints: Mapping[str, str | Path], *, species: tuple[str, ...], dtype: torch.dtype,
                 device: torch.device) -> MixturePotential:
    """The mixture of the experts saved at ``checkpoints`` (names among :data:`EXPERTS`, in that order)."""
    unknown = sorted(set(checkpoints) - set(EXPERTS))
    if unknown or not checkpoints:
        raise ValueError(f"checkpoints must be named among {list(EXPERTS)}, got {sorted(checkpoints)}")
    names = tuple(name for name in EXPERTS if name in checkpoints)
    experts = [load_checkpoint(checkpoints[name], species=species, dtype=dtype, map_location=device) for name in names]
    return MixturePotential(experts, names=names)


def load_adaptive(cfg: Config, checkpoints: Mapping[str, str | Path], *, dtype: torch.dtype,
                  device: torch.device) -> AdaptiveMixturePotential:
    """The adaptive mixture of the ``hf`` and ``lf`` experts saved at ``checkpoints`` (``md.partition.adaptive``:
    radii from the LF checkpoint's ``r_max`` through :meth:`~pipeline.config.MDAdaptiveConfig.radii`, margin;
    adsorbates ``regions.adsorbate_species``)."""
    hf, lf = (load_checkpoint(checkpoints[name], species=tuple(cfg.species), dtype=dtype, map_location=device)
              for name in EXPERTS)
    return adaptive_mixture(hf, lf, cfg.md.partition.adaptive, adsorbate_species=cfg.regions.adsorbate_species)


def run_md(
    cfg: Config,
    *,
    run: str,
    checkpoints: Mapping[str, str | Path],
    cell: str | Path,
    thermo_csv: str | Path,
    final: str | Path,
    dump: str | Path,
    summary: str | Path,
    state_dir: str | Path,
) -> dict[str, object]:
    """One LAMMPS MD run of the production cell; resumes from ``state_dir`` when a restart is there.

    Parameters
    ----------
    cfg : Config
        Uses ``md``, ``seed``, ``device``, ``torch_threads``, ``regions``.
    run : str
        Label of the run (``hf``, ``lf``, ``moe_independent``, ``moe_cotrained``), stored in the summary.
    checkpoints : mapping
        ``{"hf": path}`` or ``{"lf": path}`` (that expert on every atom) or both: the mixture, with the
        partition of the cell file (``md.partition.mode`` static) or the adaptive partition (mode adaptive;
        the cell file's ``expert`` array is then bookkeeping only: LAMMPS atom types, the ``expert`` array of
        the final structure).
    cell : path
        Partition file of :func:`build_md_system` (or any extxyz with a per-atom ``expert`` array, e.g. the
        final structure of an earlier run; its velocities, if any, are the initial ones).
    thermo_csv, final, dump, summary : paths
        Outputs: thermo table (CSV, a ``phase`` column: equilibration / production; ``hf_centres`` and
        ``lf_centres`` per row), final structure (extxyz with velocities, forces, per-atom energies and, in
        mode adaptive, ``lambda``), LAMMPS dump, run summary (JSON: sizes, timings, the equilibration, drift
        and mean temperature of the production phase, ``partition_mode`` and the HF centres of the
        production rows, ``hf_centres_mean/min/max``; in mode adaptive also the radii and margin,
        ``adaptive_r_in_a``, ``adaptive_r_out_a``, ``adaptive_margin_a``, and ``n_hf`` is the HF centres of
        the first row).
    state_dir : path
        Restart files, progress record, LAMMPS log and, after a blow-up, ``last_good.extxyz``.

    Returns
    -------
    dict
        The summary written to ``summary``.

    Raises
    ------
    ConfigError
        Mode adaptive with ``md.run.mpi_ranks`` > 1 (:func:`check_md_ranks`), before anything is loaded.
    """
    md = cfg.md
    check_md_ranks(cfg, checkpoints)
    adaptive = adaptive_run(cfg, checkpoints)
    torch.set_num_threads(cfg.torch_threads)
    device = _rank_device(cfg.device)
    dtype = DTYPES[md.dtype]
    atoms, expert = read_partition(cell)
    if adaptive:
        potential = load_adaptive(cfg, checkpoints, dtype=dtype, device=device)
    else:
        potential = load_mixture(checkpoints, species=tuple(cfg.species), dtype=dtype, device=device)
    n_removed = 0
    if tuple(potential.names) == ("lf",) and md.full_lf_without_adsorbates:
        keep = ~np.isin(atoms.get_chemical_symbols(), list(cfg.regions.adsorbate_species))
        n_removed = int(np.sum(~keep))
        atoms = atoms[keep]
        log.info("full-LF run: removed the %d adsorbate atoms (md.full_lf_without_adsorbates)", n_removed)
    if len(potential.names) == 1:
        expert = np.zeros(len(atoms), dtype=np.int64)  # one expert on every atom
    fixed = bottom_layers(atoms, md.run.fixed_bottom_layers, cfg.regions)
    chunks = md.centres_per_chunk.for_experts(potential.names)
    evaluator: SystemEvaluator
    if adaptive:
        evaluator = AdaptiveEvaluator(potential, numbers=atoms.numbers, skin=md.neighbor_skin_a, device=device,
                                      centres_per_chunk=chunks)
    else:
        evaluator = MixtureEvaluator(potential, numbers=atoms.numbers, expert=expert, skin=md.neighbor_skin_a,
                                     device=device, centres_per_chunk=chunks)
    md_inputs = dataclasses.asdict(md)
    md_inputs["run"].pop("mpi_ranks", None)  # a run resumes on any number of ranks
    fingerprint_data = {
        "md": md_inputs,
        "seed": cfg.seed,
        "checkpoints": {name: _sha256(path) for name, path in sorted(checkpoints.items())},
        "cell": _sha256(cell),
    }
    fingerprint = hashlib.sha256(json.dumps(fingerprint_data, sort_keys=True).encode()).hexdigest()
    files = MDFiles(thermo_csv=Path(thermo_csv), final=Path(final), dump=Path(dump), state_dir=Path(state_dir))
    # a cell with velocities (e.g. the final structure of an earlier run) continues with them
    velocities = atoms.get_velocities() * units.fs if atoms.has("momenta") else None  # A/fs
    system = MDSystem(atoms, expert, fixed, velocities)
    driver = LammpsMD(evaluator, system, md.run, md.safety, files, seed=cfg.seed, fingerprint=fingerprint)
    n_hf = evaluator.centres["hf"]  # static: fixed; adaptive: replaced by the first row's below
    partition = (f"adaptive partition, r_in {potential.r_in:g} A, r_out {potential.r_out:g} A, margin "
                 f"{potential.margin:g} A" if adaptive else f"{n_hf} HF")
    log.info("MD run %s: %d atoms (%s), experts %s, %s on %s, %d steps of Langevin NVT at %g K then %s for %d "
             "steps of %g fs", run, len(atoms), partition, list(potential.names), md.dtype, device,
             md.run.equilibration_steps, md.run.temperature_k, md.run.ensemble, md.run.steps, md.run.timestep_fs)
    stats = driver.run()
    if not driver.root:  # MPI rank > 0: rank 0 writes the outputs and the summary
        return {"run": run, "rank": driver.rank, **stats}
    thermo = read_thermo(thermo_csv)
    n_mobile = len(atoms) - int(fixed.sum())
    figures = energy_drift(thermo, n_mobile=n_mobile)
    centres = centre_figures(thermo)
    partition_figures: dict[str, object] = {"partition_mode": "adaptive" if adaptive else "static", **centres}
    if adaptive:
        n_hf = int(thermo["hf_centres"].iloc[0])
        partition_figures.update(adaptive_r_in_a=potential.r_in, adaptive_r_out_a=potential.r_out,
                                 adaptive_margin_a=potential.margin)
    equilibration = thermo[thermo["phase"] == "equilibration"]
    late = equilibration.iloc[len(equilibration) // 2:]  # the second half: after the thermostat's transient
    adsorbates = adsorbate_report(atoms, read(final, format="extxyz"),
                                  substrate=tuple(cfg.regions.substrate_species),
                                  layer_tolerance_a=cfg.regions.layer_tolerance_a)
    for line in adsorbates["warnings"]:
        log.warning("MD run %s, final structure: %s: the trajectory is not physical", run, line)
    result: dict[str, object] = {
        "run": run,
        "experts": list(potential.names),
        "n_atoms": len(atoms),
        "n_hf": n_hf,
        "n_fixed": int(fixed.sum()),
        "n_mobile": n_mobile,
        "n_adsorbate_atoms_removed": n_removed,
        **partition_figures,
        "ensemble": md.run.ensemble,
        "precision": md.dtype,
        "timestep_fs": md.run.timestep_fs,
        "steps": md.run.steps,
        "equilibration_steps": md.run.equilibration_steps,
        "equilibration_thermostat": "langevin" if md.run.equilibration_steps else "none",
        "thermostat_damping_fs": md.run.thermostat_damping_fs,
        "target_temperature_k": md.run.temperature_k,
        "equilibration_mean_temperature_k": float(late["temp_k"].mean()) if len(late) else float("nan"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": cfg.torch_threads,
        **stats,
        **{key: value for key, value in figures.items() if key not in ("n_atoms", "n_rows")},
        "thermo_rows": len(thermo),
        "production_thermo_rows": int(figures["n_rows"]),
        "adsorbates": adsorbates,
    }
    Path(summary).parent.mkdir(parents=True, exist_ok=True)
    Path(summary).write_text(json.dumps(result, indent=1))
    log.info("MD run %s done: %.1f ms/step, production %.3f ps at %.0f K (target %g K): drift %.4f +- %.4f "
             "meV/atom/ps, fluctuation %.4f meV/atom; HF centres %.1f (%g to %g)", run, 1000 * stats["step_time_s"],
             figures["length_ps"], figures["mean_temperature_k"], md.run.temperature_k, figures["drift_mev_atom_ps"],
             figures["drift_stderr_mev_atom_ps"], figures["fluctuation_mev_atom"], centres["hf_centres_mean"],
             centres["hf_centres_min"], centres["hf_centres_max"])
    return result
