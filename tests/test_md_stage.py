"""The MD stage through its CLI, the thermo analysis and the safety checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from ase.io import read
from md_support import experts

from pipeline.cli import main
from pipeline.config import MDSafetyConfig, config_from_dict
from pipeline.md.evaluator import Evaluation
from pipeline.md.safety import check_evaluation, check_thermo
from pipeline.md.thermo import (
    blocking_variance_of_mean,
    centre_figures,
    conservation_row,
    energy_drift,
    read_thermo,
)
from pipeline.models import save_checkpoint


def test_energy_drift_recovers_a_known_slope_and_noise():
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 2.0, 401)  # ps
    n_atoms = 50
    noise = rng.normal(scale=1e-3, size=t.size)  # eV
    energy = -250.0 + 0.02 * t + noise  # 0.02 eV/ps = 0.4 meV/atom/ps
    table = pd.DataFrame({"time_ps": t, "econserve_ev": energy, "etotal_ev": energy, "atoms": n_atoms, "step": np.arange(t.size)})
    figures = energy_drift(table)
    assert figures["length_ps"] == pytest.approx(2.0)
    assert figures["drift_mev_atom_ps"] == pytest.approx(0.4, abs=0.01)
    assert figures["fluctuation_mev_atom"] == pytest.approx(1e-3 / n_atoms * 1000, rel=0.1)
    # standard error of a least-squares slope with independent noise: sigma / sqrt(sum (t - mean t)^2)
    expected = 1e-3 / np.sqrt(np.sum((t - t.mean()) ** 2)) / n_atoms * 1000
    assert figures["drift_stderr_naive_mev_atom_ps"] == pytest.approx(expected, rel=0.15)
    assert figures["drift_stderr_mev_atom_ps"] == pytest.approx(expected, rel=0.15)  # nothing to correct
    assert np.isnan(figures["mean_temperature_k"]) and np.isnan(figures["drift_mev_mobile_atom_ps"])
    with pytest.raises(ValueError, match="two thermo rows"):
        energy_drift(table.iloc[:1])


def _ar1(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """AR(1) series x_i = phi x_(i-1) + e_i, e ~ N(0, 1), started in its stationary state (variance 1 / (1 - phi^2))."""
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0] / np.sqrt(1.0 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    return x


def test_blocking_gives_the_variance_of_the_mean_of_a_correlated_series():
    n, phi = 16384, 0.8
    x = _ar1(n, phi, np.random.default_rng(1))
    variance, block = blocking_variance_of_mean(x)
    # exact: Var(mean) = s^2 / n [(1 + phi) / (1 - phi) - 2 phi (1 - phi^n) / (n (1 - phi)^2)], s^2 = 1 / (1 - phi^2)
    truth = 1.0 / (1.0 - phi**2) / n * ((1 + phi) / (1 - phi) - 2 * phi * (1 - phi**n) / (n * (1 - phi) ** 2))
    assert np.sqrt(variance / truth) == pytest.approx(1.0, abs=0.15)
    assert variance > 5 * np.var(x) / n and block >= 16  # the naive estimate is 9x too small here
    white = np.random.default_rng(2).normal(size=n)
    assert blocking_variance_of_mean(white)[0] == pytest.approx(1.0 / n, rel=0.1)
    assert blocking_variance_of_mean(np.ones(10)) == (0.0, 1)


def test_drift_stderr_accounts_for_correlated_noise():
    # a line plus AR(1) noise of correlation time ~ 9 rows: the naive slope error is 3x too small
    n, phi, sigma, n_atoms = 16384, 0.8, 1e-3, 10
    t = np.arange(n) * 0.01  # ps
    energy = -100.0 + 0.002 * t + sigma * _ar1(n, phi, np.random.default_rng(0))
    figures = energy_drift(pd.DataFrame({"time_ps": t, "econserve_ev": energy, "atoms": n_atoms}), n_mobile=8)
    # exact: Var(slope) = sum_ij w_i w_j Cov(x_i, x_j), w = (t - mean t) / sum (t - mean t)^2, Cov = s^2 phi^|i-j|
    w = (t - t.mean()) / np.sum((t - t.mean()) ** 2)
    covariance = sum((1 if k == 0 else 2) * phi**k * np.dot(w[: n - k], w[k:]) for k in range(300))
    truth = sigma * np.sqrt(covariance / (1.0 - phi**2)) * 1000.0 / n_atoms  # meV/atom/ps
    assert figures["drift_stderr_mev_atom_ps"] == pytest.approx(truth, rel=0.2)
    assert figures["drift_stderr_naive_mev_atom_ps"] < 0.5 * truth
    assert figures["drift_stderr_mev_atom_ps"] > 2 * figures["drift_stderr_naive_mev_atom_ps"]
    assert figures["statistical_inefficiency"] == pytest.approx((1 + phi) / (1 - phi), rel=0.4)
    assert figures["drift_mev_atom_ps"] == pytest.approx(0.2, abs=3 * truth)
    assert figures["drift_mev_mobile_atom_ps"] == pytest.approx(figures["drift_mev_atom_ps"] * n_atoms / 8)


def test_thermo_tables_without_centre_columns_stay_readable(tmp_path):
    old = pd.DataFrame({"step": [0, 10, 20], "time_ps": [0.0, 0.01, 0.02], "atoms": 5, "econserve_ev": -1.0,
                        "etotal_ev": -1.0, "phase": ["equilibration", "production", "production"]})
    old.to_csv(tmp_path / "thermo.csv", index=False)
    table = read_thermo(tmp_path / "thermo.csv")
    assert energy_drift(table)["n_rows"] == 2
    assert all(np.isnan(value) for value in centre_figures(table).values())
    # a resumed run whose partial table predates the columns: the rows that have them count
    new = table.assign(hf_centres=[np.nan, np.nan, 7.0], lf_centres=[np.nan, np.nan, 3.0])
    assert centre_figures(new) == {"hf_centres_mean": 7.0, "hf_centres_min": 7.0, "hf_centres_max": 7.0,
                                   "lf_centres_mean": 3.0}


def test_energy_drift_fits_the_production_rows_only():
    step = np.arange(0, 201, 10)
    t = step * 1e-3
    phase = np.where(step < 100, "equilibration", "production")
    # a hot, drifting equilibration, then a flat production at 300 K
    energy = np.where(step < 100, -50.0 + 5.0 * t, -49.0)
    temp = np.where(step < 100, 900.0, 300.0)
    table = pd.DataFrame({"step": step, "time_ps": t, "atoms": 5, "econserve_ev": energy, "etotal_ev": energy,
                          "temp_k": temp, "phase": phase})
    figures = energy_drift(table)
    assert figures["drift_mev_atom_ps"] == pytest.approx(0.0, abs=1e-9)
    assert figures["max_deviation_mev_atom"] == pytest.approx(0.0, abs=1e-9)
    assert figures["mean_temperature_k"] == pytest.approx(300.0)
    assert figures["length_ps"] == pytest.approx(0.1) and figures["equilibration_ps"] == pytest.approx(0.1)
    assert figures["n_rows"] == 11
    assert energy_drift(table.drop(columns="phase"))["drift_mev_atom_ps"] != pytest.approx(0.0, abs=1e-3)


def test_safety_checks():
    limits = MDSafetyConfig(min_distance_a=0.7, max_temperature_k=1000.0, max_energy_change_ev_atom=0.1)
    good = Evaluation(energy=-1.0, energies=np.zeros(2), forces=np.zeros((2, 3)), virial=None, min_distance=1.1,
                      closest_pair=(0, 1))
    assert check_evaluation(good, step=3, limits=limits) is None
    close = Evaluation(energy=-1.0, energies=np.zeros(2), forces=np.zeros((2, 3)), virial=None, min_distance=0.5,
                       closest_pair=(0, 1))
    assert "atoms 0 and 1 are 0.500 A apart at step 3" in check_evaluation(close, step=3, limits=limits)
    nan = Evaluation(energy=-1.0, energies=np.zeros(2), forces=np.array([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]]),
                     virial=None, min_distance=1.1)
    assert "non-finite" in check_evaluation(nan, step=3, limits=limits) and "[0]" in check_evaluation(nan, step=3, limits=limits)
    row = {"step": 10, "temp_k": 300.0, "econserve_ev": -10.0, "atoms": 10}
    assert check_thermo(row, reference_energy=-10.5, limits=limits) is None
    assert "changed by 0.200 eV/atom" in check_thermo(row, reference_energy=-12.0, limits=limits)
    assert "is nan" in check_thermo({**row, "pe_ev": float("nan")}, reference_energy=-10.0, limits=limits)


def test_md_stage_through_the_cli(tmp_path):
    hf, lf = experts()
    save_checkpoint(tmp_path / "hf.pt", hf)
    save_checkpoint(tmp_path / "lf.pt", lf)
    raw = config_from_dict({}).to_dict()
    raw["md"]["system"].update(surface_size=[2, 2], layers=3, n_co=1, vacuum_a=5.0)
    raw["md"]["partition"]["radius_a"] = 3.0
    raw["md"]["run"].update(equilibration_steps=10, steps=20, timestep_fs=0.5, thermo_interval=5, dump_interval=10,
                            restart_interval=10, fixed_bottom_layers=1)
    config = ["--config-json", json.dumps(raw)]
    cell, png = tmp_path / "cell.extxyz", tmp_path / "cell.png"
    assert main(["md-system", *config, "--cell", str(cell), "--png", str(png)]) == 0
    assert png.stat().st_size > 0 and len(read(cell)) == 14
    summaries = {}
    for run, args in (("moe", ["--hf", str(tmp_path / "hf.pt"), "--lf", str(tmp_path / "lf.pt")]),
                      ("lf", ["--lf", str(tmp_path / "lf.pt")])):
        out = tmp_path / run
        code = main(["md", *config, "--run", run, *args, "--cell", str(cell), "--thermo", str(out / "thermo.csv"),
                     "--final", str(out / "final.extxyz"), "--dump", str(out / "dump.lammpstrj"),
                     "--summary", str(out / "summary.json"), "--state-dir", str(out / "state")])
        assert code == 0
        summaries[run] = json.loads((out / "summary.json").read_text())
        thermo = pd.read_csv(out / "thermo.csv")
        assert thermo["step"].tolist() == [0, 5, 10, 15, 20, 25, 30]
        assert thermo["phase"].tolist() == ["equilibration"] * 2 + ["production"] * 5
        assert len(read(out / "dump.lammpstrj", index=":", format="lammps-dump-text")) == 4
        row = conservation_row(out / "thermo.csv", run=run, precision="float64", timestep_fs=0.5)
        assert row["length_ps"] == pytest.approx(0.01) and abs(row["drift_mev_atom_ps"]) < 50
    moe, single = summaries["moe"], summaries["lf"]
    assert moe["experts"] == ["hf", "lf"] and moe["n_hf"] == 6 and moe["n_fixed"] == 4 and moe["n_atoms"] == 14
    assert single["experts"] == ["lf"] and single["n_hf"] == 0
    # the centres per thermo row: the static partition's fixed counts; one expert: every atom on it
    assert moe["partition_mode"] == single["partition_mode"] == "static" and "adaptive_r_in_a" not in moe
    assert (moe["hf_centres_min"], moe["hf_centres_max"], moe["lf_centres_mean"]) == (6, 6, 8)
    assert (single["hf_centres_mean"], single["lf_centres_mean"]) == (0, 12)
    for run, counts in (("moe", [(6, 8)]), ("lf", [(0, 12)])):
        thermo = pd.read_csv(tmp_path / run / "thermo.csv")
        assert sorted(set(zip(thermo["hf_centres"], thermo["lf_centres"]))) == counts
    # the full-LF run leaves out the CO the LF expert never learned (md.full_lf_without_adsorbates)
    assert moe["n_adsorbate_atoms_removed"] == 0
    assert single["n_adsorbate_atoms_removed"] == 2 and single["n_atoms"] == 12
    # 30 steps of 0.5 fs: the CO of the mixture run is still adsorbed; the LF run has none to report
    assert moe["adsorbates"]["counts"] == {"adsorbed": 1, "below_surface": 0, "desorbed": 0, "dissociated": 0}
    assert single["adsorbates"]["molecules"] == []
    assert set(read(tmp_path / "lf" / "final.extxyz").get_chemical_symbols()) == {"Pt"}
    assert moe["forward_hf_s"] > 0 and moe["forward_lf_s"] > 0 and moe["step_time_s"] > 0
    assert moe["precision"] == "float64" and moe["device"] == "cpu"
    assert moe["equilibration_steps"] == 10 and moe["steps"] == 20 and moe["steps_run"] == 30
    assert moe["target_temperature_k"] == 300.0 and moe["equilibration_ps"] == pytest.approx(0.005)
    assert moe["n_mobile"] == 10 and moe["thermo_rows"] == 7 and moe["production_thermo_rows"] == 5
    assert moe["mean_temperature_k"] == pytest.approx(thermo_mean(tmp_path / "moe" / "thermo.csv"))
    assert moe["drift_mev_mobile_atom_ps"] == pytest.approx(moe["drift_mev_atom_ps"] * 14 / 10)
    # a run started from the final structure continues with its positions and velocities
    again = tmp_path / "again"
    code = main(["md", *config, "--run", "moe", "--hf", str(tmp_path / "hf.pt"), "--lf", str(tmp_path / "lf.pt"),
                 "--cell", str(tmp_path / "moe" / "final.extxyz"), "--thermo", str(again / "thermo.csv"),
                 "--final", str(again / "final.extxyz"), "--dump", str(again / "dump.lammpstrj"),
                 "--summary", str(again / "summary.json"), "--state-dir", str(again / "state")])
    assert code == 0
    before = pd.read_csv(tmp_path / "moe" / "thermo.csv").iloc[-1]
    after = pd.read_csv(again / "thermo.csv").iloc[0]
    for column in ("temp_k", "pe_ev", "ke_ev"):
        assert after[column] == pytest.approx(before[column], rel=1e-7), column
    # the two runs differ: the mixture is not the LF expert alone
    a = pd.read_csv(tmp_path / "moe" / "thermo.csv")["pe_ev"].iloc[0]
    b = pd.read_csv(tmp_path / "lf" / "thermo.csv")["pe_ev"].iloc[0]
    assert abs(a - b) > 1e-3


def thermo_mean(path) -> float:
    thermo = pd.read_csv(path)
    return float(thermo.loc[thermo["phase"] == "production", "temp_k"].mean())


def test_md_cli_needs_an_expert(tmp_path, capsys):
    code = main(["md", "--run", "x", "--cell", "c", "--thermo", "t", "--final", "f", "--dump", "d", "--summary", "s",
                 "--state-dir", str(tmp_path)])
    assert code == 2 and "--hf, --lf or both" in capsys.readouterr().err


def test_adsorbate_report_flags_sunk_desorbed_and_broken_co():
    from ase import Atoms
    from ase.build import add_adsorbate, fcc111

    from pipeline.analysis.conservation import conservation_row as table_row
    from pipeline.md.adsorbates import adsorbate_report

    slab = fcc111("Pt", (3, 3, 4), a=3.97, vacuum=8.0)
    for site in ((0.0, 0.0), (5.6, 0.0), (2.8, 4.9)):
        add_adsorbate(slab, Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.15]]), 1.85, site)
    c = [i for i, s in enumerate(slab.get_chemical_symbols()) if s == "C"]
    assert adsorbate_report(slab, slab)["counts"] == {"adsorbed": 3, "below_surface": 0, "desorbed": 0,
                                                      "dissociated": 0}
    final = slab.copy()
    final.positions[[c[0], c[0] + 1], 2] -= 3.0  # into the slab
    final.positions[[c[1], c[1] + 1], 2] += 6.0  # away
    final.positions[c[2] + 1, 2] += 1.0  # C-O 2.15 A
    final.positions[:, 2] += 7.0  # a rigid shift changes nothing
    report = adsorbate_report(slab, final)
    assert report["counts"] == {"adsorbed": 0, "below_surface": 1, "desorbed": 1, "dissociated": 1}
    heights = [m["height_a"] for m in report["molecules"]]
    assert heights[0] == pytest.approx(1.85 - 3.0) and heights[1] == pytest.approx(1.85 + 6.0)
    assert report["molecules"][2]["bond_a"] == pytest.approx(2.15)
    assert len(report["warnings"]) == 3 and "below surface" in report["warnings"][0]
    # lifted by 1 A: C-Pt 2.85 A, no longer bonded although only 2.85 A up
    lifted = slab.copy()
    lifted.positions[[c[0], c[0] + 1], 2] += 1.0
    lifted_report = adsorbate_report(slab, lifted)
    assert lifted_report["counts"]["desorbed"] == 1
    assert lifted_report["molecules"][0]["substrate_a"] == pytest.approx(2.85, abs=1e-3)
    assert lifted_report["molecules"][1]["substrate_a"] == pytest.approx(1.85, abs=1e-3)
    thermo = pd.DataFrame({"time_ps": [0.0, 1.0], "econserve_ev": [0.0, 0.0], "etotal_ev": [0.0, 0.0],
                           "atoms": len(slab), "step": [0, 1000]})
    row = table_row("moe_cotrained", thermo, {"adsorbates": report})
    assert "CO at the end: 1 below surface, 1 desorbed, 1 dissociated of 3 (not physical)" in row["note"]
