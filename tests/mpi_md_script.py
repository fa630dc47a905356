"""MD runs of tests/test_md_mpi.py, on as many MPI ranks as this process was started with.

``mpirun -np 2 python tests/mpi_md_script.py JOB.json`` runs the tasks of the job one after the other
on every rank (each rank builds the same driver; LAMMPS decomposes the box); the test process runs the
same tasks on one rank in-process with :func:`run_task`. A task (JSON object):

- ``dir``: output directory (``thermo.csv``, ``final.extxyz``, ``dump.lammpstrj``, ``state/``,
  ``stats.json``);
- ``cell``: extxyz with the per-atom ``expert`` array (:func:`pipeline.md.partition.write_partition`);
- ``checkpoints``: ``{"hf": path, "lf": path}`` (the mixture) or one of them (that expert on every atom);
- ``run``: :class:`~pipeline.config.MDRunConfig` fields; ``fixed_layers``, ``skin``;
- ``kill_at`` (optional): the run raises ``KeyboardInterrupt`` once a snapshot reaches that step (a killed
  job; the state directory keeps the last restart), and the next task goes on;
- ``record`` (optional): rank 0 writes ``record.npz``: the step, positions and velocities (atom-ID order,
  LAMMPS frame, full precision) of every snapshot (every thermo step) and the last evaluation's energy,
  per-atom energies and forces;
- ``copy_state_to`` (optional): after the task, rank 0 copies its state directory into these directories
  (with the partial thermo and dump: resumable there), and all ranks wait for it.

- ``nan_after``, ``nan_rank`` (optional): from its ``nan_after``-th call on, the evaluator of rank
  ``nan_rank`` returns NaN forces; a blow-up (:class:`~pipeline.md.safety.MDBlowUpError`) is expected and
  every rank writes ``error_<rank>.json`` (step, reason, last good step).

A task ``{"cli": [...]}`` instead runs ``moe-mlip`` with these arguments (e.g. the ``md`` stage) on every
rank.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.config import MDRunConfig, MDSafetyConfig, RegionConfig
from pipeline.md.evaluator import MixtureEvaluator
from pipeline.md.lammps_driver import LammpsMD, MDFiles, MDSystem
from pipeline.md.lammps_io import RankComm, import_lammps
from pipeline.md.partition import bottom_layers, read_partition
from pipeline.md.safety import MDBlowUpError
from pipeline.md.stage import load_mixture

SPECIES = ("Pt", "C", "O")


def files_in(directory: Path) -> MDFiles:
    return MDFiles(thermo_csv=directory / "thermo.csv", final=directory / "final.extxyz",
                   dump=directory / "dump.lammpstrj", state_dir=directory / "state")


def build_driver(task: dict) -> LammpsMD:
    """The driver of one task (the same on every rank and in the one-rank test process)."""
    atoms, expert = read_partition(task["cell"])
    potential = load_mixture(task["checkpoints"], species=SPECIES, dtype=torch.float64, device=torch.device("cpu"))
    if len(potential.names) == 1:
        expert = np.zeros(len(atoms), dtype=np.int64)
    evaluator = MixtureEvaluator(potential, numbers=atoms.numbers, expert=expert, skin=float(task.get("skin", 1.0)))
    fixed = bottom_layers(atoms, int(task.get("fixed_layers", 1)), RegionConfig())
    run = MDRunConfig(**task["run"])
    return LammpsMD(evaluator, MDSystem(atoms, expert, fixed), run, MDSafetyConfig(), files_in(Path(task["dir"])),
                    seed=1, fingerprint=task.get("fingerprint", "mpi-test"))


def run_task(task: dict) -> dict | None:
    """Run one task; its statistics (also written to ``dir/stats.json`` by rank 0), or None if killed."""
    if "cli" in task:
        from pipeline.cli import main as cli

        code = cli(task["cli"])
        if code:
            raise SystemExit(code)
        return None
    md = build_driver(task)
    kill_at = task.get("kill_at")
    original = md._snapshot
    snapshots: list[dict] = []

    def snapshot() -> dict:
        taken = original()
        if kill_at is not None and taken["step"] >= kill_at:
            raise KeyboardInterrupt("killed")
        snapshots.append(taken)
        return taken

    md._snapshot = snapshot
    directory = Path(task["dir"])
    if "nan_after" in task:
        original_domain = md.evaluator.evaluate_domain

        def evaluate_domain(*args, **kwargs):  # noqa: ANN002, ANN003
            result = original_domain(*args, **kwargs)
            if md.rank == task["nan_rank"] and md.evaluator.n_calls >= task["nan_after"]:
                result = dataclasses.replace(result, forces=np.full_like(result.forces, np.nan))
            return result

        md.evaluator.evaluate_domain = evaluate_domain
    try:
        stats = md.run()
    except KeyboardInterrupt:
        stats = None
    except MDBlowUpError as error:
        if "nan_after" not in task:
            raise
        (directory / f"error_{md.rank}.json").write_text(json.dumps(
            {"step": error.step, "reason": error.reason, "last_good_step": error.last_good_step}))
        return None
    if md.root and stats is not None:
        (directory / "stats.json").write_text(json.dumps(stats, indent=1))
    if md.root and task.get("record") and stats is not None:
        result = md.last_result
        np.savez(directory / "record.npz", step=np.array([s["step"] for s in snapshots]),
                 x=np.array([s["x"] for s in snapshots]), v=np.array([s["v"] for s in snapshots]),
                 energy=result.energy, energies=result.energies, forces=result.forces)
    if task.get("copy_state_to"):
        if md.root:
            for target in task["copy_state_to"]:
                shutil.copytree(directory / "state", Path(target) / "state")
        barrier()
    return stats


def barrier() -> None:
    """Wait for every rank (through a throw-away LAMMPS instance's communicator)."""
    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        if lmp.extract_setting("world_size") > 1:
            RankComm(lmp).barrier()
    finally:
        lmp.close()


def main(job: str) -> None:
    torch.set_num_threads(1)
    import_lammps()
    for task in json.loads(Path(job).read_text())["tasks"]:
        run_task(task)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
