"""Conservation analysis: a linear drift with a known slope, the timestep from the thermo table, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis.conservation import COLUMNS, conservation_table, timestep_fs
from pipeline.cli import main


def _thermo(path, *, slope_ev_ps, n_atoms=50, dt_fs=2.0, steps=200, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    step = np.arange(0, steps + 1, 10)
    t = step * dt_fs / 1000.0
    e = -300.0 + slope_ev_ps * t + rng.normal(0.0, noise, size=t.shape)
    pd.DataFrame({"step": step, "time_ps": t, "atoms": n_atoms, "temp_k": 300.0, "etotal_ev": e,
                  "econserve_ev": e}).to_csv(path, index=False)
    return path


def test_linear_drift_is_recovered(tmp_path):
    # 0.05 eV/ps over 50 atoms = 1 meV/atom/ps
    csv = _thermo(tmp_path / "a.csv", slope_ev_ps=0.05, noise=1e-4)
    table, traces = conservation_table(["moe_cotrained"], [csv])
    row = table.iloc[0]
    assert row["drift_mev_atom_ps"] == pytest.approx(1.0, abs=5 * row["drift_stderr_mev_atom_ps"])
    assert row["drift_stderr_mev_atom_ps"] < 0.05
    assert row["fluctuation_mev_atom"] == pytest.approx(1e-4 / 50 * 1000, rel=0.5)
    assert row["timestep_fs"] == pytest.approx(2.0)
    assert row["length_ps"] == pytest.approx(0.4)
    assert set(traces) == {"moe_cotrained"}


def test_production_figures_and_the_temperature_against_its_target(tmp_path):
    # 100 rows of a hot, drifting equilibration, then 201 rows of production at ~290 K with correlated noise
    rng = np.random.default_rng(3)
    step = np.arange(0, 3001, 10)
    t = step * 1e-3
    noise = np.convolve(rng.normal(0.0, 1e-3, size=t.size + 19), np.ones(20) / np.sqrt(20), mode="valid")
    production = step >= 1000
    e = np.where(production, -300.0 + 0.05 * (t - 1.0) + noise, -290.0 - 3.0 * t)
    temp = np.where(production, 290.0 + 5.0 * np.sin(t * 40.0), 600.0)
    pd.DataFrame({"step": step, "time_ps": t, "atoms": 50, "temp_k": temp, "etotal_ev": e, "econserve_ev": e,
                  "phase": np.where(production, "production", "equilibration")}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "s.json").write_text(json.dumps({"n_fixed": 10, "target_temperature_k": 300.0, "ensemble": "nve"}))
    table, traces = conservation_table(["moe_cotrained"], [tmp_path / "t.csv"], [tmp_path / "s.json"])
    assert tuple(table.columns) == COLUMNS
    row = table.iloc[0]
    assert row["length_ps"] == pytest.approx(2.0) and row["equilibration_ps"] == pytest.approx(1.0)
    assert row["drift_mev_atom_ps"] == pytest.approx(1.0, abs=5 * row["drift_stderr_mev_atom_ps"])
    assert row["drift_mev_mobile_atom_ps"] == pytest.approx(row["drift_mev_atom_ps"] * 50 / 40)
    assert row["n_mobile"] == 40
    # a moving average over 20 rows: the blocked error is well above the naive one (~sqrt(20) for the slope)
    assert row["drift_stderr_mev_atom_ps"] > 2.5 * row["drift_stderr_naive_mev_atom_ps"]
    assert row["mean_temperature_k"] == pytest.approx(290.0, abs=1.0)
    assert row["target_temperature_k"] == 300.0
    assert len(traces["moe_cotrained"]) == len(step)  # the trace keeps the equilibration (shaded in the plot)


def test_timestep_from_thermo():
    thermo = pd.DataFrame({"step": [0, 5, 10], "time_ps": [0.0, 0.0025, 0.005]})
    assert timestep_fs(thermo) == pytest.approx(0.5)


def test_cli_writes_table_and_traces(tmp_path):
    runs = ["hf", "lf", "moe_cotrained"]
    thermo, summaries = [], []
    for i, run in enumerate(runs):
        thermo.append(str(_thermo(tmp_path / f"{run}.csv", slope_ev_ps=0.01 * i, noise=1e-5, seed=i)))
        summary = {"run": run, "precision": "float64", "ensemble": "nve", "n_hf": 10 * i, "step_time_s": 0.01,
                   "experts": {"hf": ["hf"], "lf": ["lf"]}.get(run, ["hf", "lf"])}
        (tmp_path / f"{run}.json").write_text(json.dumps(summary))
        summaries.append(str(tmp_path / f"{run}.json"))
    out = tmp_path / "out"
    code = main(["conservation", "--config-json", "{}", "--runs", *runs, "--thermo", *thermo, "--summaries", *summaries,
                 "--csv", str(out / "c.csv"), "--md", str(out / "c.md"), "--png", str(out / "c.png")])
    assert code == 0
    table = pd.read_csv(out / "c.csv")
    assert list(table["run"]) == runs
    assert {"run", "precision", "timestep_fs", "length_ps", "drift_mev_atom_ps", "fluctuation_mev_atom"} <= set(table)
    assert table.set_index("run").loc["moe_cotrained", "drift_mev_atom_ps"] == pytest.approx(0.4, abs=0.01)
    assert "outside its data" in table.set_index("run").loc["lf", "note"]
    assert (out / "c.png").stat().st_size > 0


def test_a_full_lf_run_without_adsorbates_says_so(tmp_path):
    csv = _thermo(tmp_path / "lf.csv", slope_ev_ps=0.0)
    (tmp_path / "lf.json").write_text(json.dumps({"experts": ["lf"], "n_adsorbate_atoms_removed": 8}))
    table, _ = conservation_table(["lf"], [csv], [tmp_path / "lf.json"], lf_bulk_only=True)
    assert "without the 8 adsorbate atoms" in table.iloc[0]["note"]
