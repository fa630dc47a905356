"""The DFT check of the teacher: subset selection, the GPAW settings, the per-element energy alignment (a known
constant per element is removed exactly), the error table, and a tiny GPAW run through the label machinery."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from pipeline.config import MoEStudyPeriodicConfig, MoEStudyTeacherCheckConfig, config_from_dict
from pipeline.data.periodic_set import MAGNETIC, sample_periodic
from pipeline.data.teacher_check import (
    align_energies,
    check_label_config,
    check_tables,
    force_slope,
    leave_one_out_residual,
    same_composition_pairs,
    select_check_frames,
    unlabelled,
    write_check_subset,
)

SMALL = MoEStudyPeriodicConfig(n_bulk=20, n_alloys=20, n_compounds=20, n_surfaces=10,
                               teacher_check=MoEStudyTeacherCheckConfig(n_frames=12, max_atoms=8))


@pytest.fixture(scope="module")
def frames():
    return sample_periodic(SMALL)


def _labelled(atoms, energy, forces, **info):
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info.update(info)
    return atoms


def test_subset_is_seeded_small_proportional_and_spin_paired(frames):
    picked = select_check_frames(frames, SMALL)
    assert len(picked) == 12 and all(len(f) <= 8 for f in picked)
    assert not any(set(f.get_chemical_symbols()) & MAGNETIC for f in picked)
    assert len({f.info["family"] for f in picked}) >= 3
    again = select_check_frames(frames, SMALL)
    assert [f.info["structure_id"] for f in picked] == [f.info["structure_id"] for f in again]
    with pytest.raises(ValueError, match="n_frames"):
        select_check_frames(frames, MoEStudyPeriodicConfig(teacher_check=MoEStudyTeacherCheckConfig(n_frames=10_000)))


def test_label_chunks_spread_every_family_so_a_stopped_check_covers_all(frames, tmp_path):
    write(tmp_path / "labelled.extxyz", frames)
    chunks = [tmp_path / "chunk_0.extxyz", tmp_path / "chunk_1.extxyz"]
    picked = write_check_subset(tmp_path / "labelled.extxyz", SMALL, tmp_path / "subset.extxyz", chunks)
    parts = [read(path, index=":") for path in chunks]
    ids = sorted(f.info["structure_id"] for part in parts for f in part)
    assert ids == sorted(f.info["structure_id"] for f in picked)
    families = {f.info["family"] for f in picked}
    first_half = {f.info["family"] for part in parts for f in part[: (len(part) + 1) // 2]}
    assert len(families) >= 3 and first_half == families


def test_gpaw_settings_come_from_the_teacher_check_section():
    cfg = config_from_dict({"moe_study": {"periodic": {"teacher_check": {"ecut_ev": 250.0, "kpt_density": 2.0}}}})
    label = check_label_config(cfg)
    assert (label.calculator, label.mode, label.ecut_ev, label.kpt_density, label.smearing_ev, label.stress) == (
        "gpaw", "pw", 250.0, 2.0, 0.1, False)
    default = check_label_config(config_from_dict({}))
    assert (default.ecut_ev, default.kpt_density, default.smearing_ev) == (600.0, 3.0, 0.1)


def test_a_constant_per_element_is_removed_exactly(frames):
    """GPAW energies = teacher energies - sum_el n_el mu_el (known mu), forces off by 10 meV/A: the energy errors are
    zero and the force errors exactly 10 meV/A, and the fitted constants are mu."""
    picked = select_check_frames(frames, SMALL)
    rng = np.random.default_rng(0)
    elements = sorted({s for f in picked for s in f.get_chemical_symbols()})
    mu = dict(zip(elements, rng.uniform(-3, 3, len(elements))))
    teacher, dft = [], []
    for f in picked:
        e = float(rng.uniform(-5, -1)) * len(f)
        forces = rng.normal(size=(len(f), 3))
        teacher.append(_labelled(f, e, forces))
        offset = sum(mu[s] for s in f.get_chemical_symbols())
        dft.append(_labelled(f, e - offset, forces - 0.01))
    table, constants, rank = check_tables(teacher, dft)
    fitted = dict(zip(constants["element"], constants["mu_ev"]))
    for f in picked:  # the fitted constants give every frame's offset (mu itself where the compositions fix it)
        symbols = f.get_chemical_symbols()
        assert sum(fitted[s] for s in symbols) == pytest.approx(sum(mu[s] for s in symbols), abs=1e-8)
    assert 1 <= rank <= len(elements)
    assert np.allclose(table["force_mae_mev_a"], 10.0) and np.allclose(table["force_rms_mev_a"], 10.0)
    energy = table["energy_mae_mev_atom"].dropna()
    assert len(energy) >= 2 and np.allclose(energy, 0.0, atol=1e-6)
    for column in ("energy_loo_mae_mev_atom", "pair_energy_mae_mev_atom"):  # no error to find, wherever defined
        assert np.allclose(table[column].dropna(), 0.0, atol=1e-6)
    assert set(table["grouping"]) == {"element family", "structure family", "all"}
    assert int(table.loc[table["grouping"] == "all", "frames"].iloc[0]) == len(picked)
    moved = dft[0].copy()
    moved.positions[0] += 0.01
    moved.calc = SinglePointCalculator(moved, energy=dft[0].get_potential_energy(), forces=dft[0].get_forces())
    with pytest.raises(ValueError, match="not the teacher's structure"):
        check_tables(teacher, [moved, *dft[1:]])


def test_alignment_leaves_a_residual_that_is_not_a_per_element_constant():
    counts = np.array([[4.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 3.0]])
    noise = np.array([0.0, 0.0, 0.4, -0.4])  # not in the span of the compositions
    mu, residual = align_energies(counts, counts @ np.array([1.0, -2.0]) + noise)
    assert np.abs(residual).max() > 0.01
    mu_exact, residual_exact = align_energies(counts, counts @ np.array([1.0, -2.0]))
    assert np.allclose(mu_exact, [1.0, -2.0]) and np.allclose(residual_exact, 0.0)


def test_errors_the_fit_absorbs_show_in_leave_one_out_and_same_composition_pairs():
    """Frame 3 (the only one with element 2) has a 0.3 eV/atom error that its own constant absorbs in the fit; frames
    0 and 1 (one composition) differ by 0.1 eV/atom of error. The in-sample residual hides the first, the pair
    error finds the second, and leave-one-out cannot predict frame 3 at all (NaN) instead of calling it exact."""
    counts = np.array([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 2.0, 2.0], [0.0, 4.0, 0.0]])
    error = np.array([0.05, -0.05, 0.0, 0.3, 0.0]) * counts.sum(axis=1)  # eV per frame
    delta = counts @ np.array([1.0, -2.0, 0.5]) + error
    _, residual = align_energies(counts, delta)
    assert abs(residual[3]) < 1e-9
    loo = leave_one_out_residual(counts, delta)
    assert np.isnan(loo[3]) and np.isfinite(loo[[0, 1, 2, 4]]).all()
    assert abs(loo[0]) > abs(residual[0]) == pytest.approx(0.05) and np.allclose(loo[[2, 4]], 0.0, atol=1e-9)
    assert [(i, j) for i, j, _ in same_composition_pairs(counts, delta)] == [(0, 1)]
    assert same_composition_pairs(counts, delta)[0][2] == pytest.approx(0.1)


def test_force_slope_measures_a_softer_teacher_and_ignores_symmetric_frames():
    dft = np.random.default_rng(1).normal(size=(16, 3))
    assert force_slope(0.7 * dft, dft) == pytest.approx(0.7)
    assert force_slope(0.7 * dft + 0.01 * np.random.default_rng(2).normal(size=dft.shape), dft) == pytest.approx(
        0.7, abs=0.01)
    assert np.isnan(force_slope(np.zeros((4, 3)), np.full((4, 3), 1e-4)))


def test_unlabelled_drops_teacher_provenance(frames):
    f = _labelled(frames[0], -1.0, np.zeros((len(frames[0]), 3)), label_source="teacher:x", label_level="teacher",
                  is_dft=False, dft_code="none")
    out = unlabelled(f)
    assert out.calc is None and out.info["structure_id"] == f.info["structure_id"]
    assert not {"label_source", "label_level", "is_dft", "dft_code"} & set(out.info)


@pytest.mark.gpaw
def test_tiny_gpaw_check_end_to_end(tmp_path):
    """Two tiny cells labelled by EMT standing in for the teacher go through the check's commands as the rules call
    them (one thread each): the subset, GPAW PW 200 eV through ``label`` (cached), the table."""
    pytest.importorskip("gpaw")
    from ase.calculators.emt import EMT

    teacher = []
    for i, (symbol, a) in enumerate((("Al", 4.05), ("Cu", 3.61))):
        atoms = bulk(symbol, "fcc", a=a) * (2, 1, 1)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        teacher.append(_labelled(atoms, atoms.get_potential_energy(), atoms.get_forces(), family="bulk",
                                 structure_id=f"tiny_{symbol}", sample_index=i, label_level="teacher", is_dft=False))
    write(tmp_path / "teacher.extxyz", teacher)
    cfg = config_from_dict({"moe_study": {"periodic": {"teacher_check": {
        "n_frames": 2, "ecut_ev": 200.0, "kpt_density": 1.0, "max_atoms": 2, "n_chunks": 1}}}})
    config = json.dumps(cfg.to_dict())
    label_config = json.dumps({**cfg.to_dict(), "label": dataclasses.asdict(check_label_config(cfg))})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def pipeline(*args):
        done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    pipeline("moe-periodic-check-sample", "--config-json", config, "--labelled", "teacher.extxyz",
             "--subset", "subset.extxyz", "--chunks", "chunk_0.extxyz")
    assert not any("label_level" in f.info for f in read(tmp_path / "chunk_0.extxyz", index=":"))
    pipeline("label", "--config-json", label_config, "--structures", "chunk_0.extxyz", "--output", "gpaw.extxyz",
             "--failures", "failures.csv", "--cache-dir", "cache", "--log-dir", "logs", "--no-progress")
    gpaw = read(tmp_path / "gpaw.extxyz", index=":")
    assert len(gpaw) == 2 and all(f.info["is_dft"] and f.info["dft_ecut_ev"] == 200.0 for f in gpaw)
    assert len(list((tmp_path / "cache").glob("*.extxyz"))) == 2
    pipeline("moe-periodic-check-table", "--config-json", label_config, "--teacher", "subset.extxyz", "--dft",
             "gpaw.extxyz", "--failures", "failures.csv", "--csv", "check.csv", "--md", "check.md")
    table = pd.read_csv(tmp_path / "check.csv")
    assert np.isfinite(table["force_mae_mev_a"]).all() and set(table["grouping"]) >= {"element family", "all"}
    md = (tmp_path / "check.md").read_text()
    assert "removes a per-element constant" in md and "pw 200 eV" in md

    # ship what the cache holds, then a fresh checkout labels nothing: the label job takes the shipped frames
    (tmp_path / "resources").mkdir()
    pipeline("moe-periodic-check-ship", "--config-json", label_config, "--chunks", "chunk_0.extxyz", "--cache-dir",
             "cache", "--receipt", "shipped.csv", "--command", "the command")
    shipped = read(tmp_path / cfg.moe_study.periodic.teacher_check.path, index=":")
    assert [f.info["structure_id"] for f in shipped] == [f.info["structure_id"] for f in gpaw]
    receipt = pd.read_csv(tmp_path / "shipped.csv")
    assert receipt[["drawn", "labelled"]].sum().tolist() == [2, 2]
    readme = (tmp_path / cfg.moe_study.periodic.teacher_check.path).with_name("periodic_check_gpaw_README.md")
    assert "2 of the 2 frames" in readme.read_text() and "the command" in readme.read_text()
    pipeline("label", "--config-json", label_config, "--structures", "chunk_0.extxyz", "--output", "again.extxyz",
             "--failures", "failures2.csv", "--cache-dir", "cache2", "--log-dir", "logs2", "--no-progress",
             "--reuse", cfg.moe_study.periodic.teacher_check.path)
    assert not list((tmp_path / "logs2").glob("*.txt"))  # no GPAW run
    again = read(tmp_path / "again.extxyz", index=":")
    assert [f.get_potential_energy() for f in again] == [f.get_potential_energy() for f in gpaw]
    assert all(np.array_equal(a.get_forces(), b.get_forces()) for a, b in zip(again, gpaw))
