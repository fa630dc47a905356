"""Summary page: verdicts computed from synthetic tables; missing tables are reported, not invented."""

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis.summary import summary_page, write_summary


def _tables(tmp_path, *, speedup):
    pd.DataFrame({"run": ["hf", "moe_cotrained"], "precision": "float64", "length_ps": 2.0,
                  "drift_mev_atom_ps": [0.01, 0.012], "drift_stderr_mev_atom_ps": [0.005, 0.005],
                  "mean_temperature_k": [296.0, 305.0], "target_temperature_k": 300.0}
                 ).to_csv(tmp_path / "conservation.csv", index=False)
    pd.DataFrame({"model": ["dft", "pbe_reference", "hf", "lf_independent", "lf_cotrained"],
                  "v0_a3_atom": [15.7, 15.64, 15.6, 15.9, 15.62], "b0_gpa": [250, 248.7, 245, 200, 240],
                  "dv0_vs_hf_percent": [0.6, 0.3, 0.0, 1.9, 0.1], "db0_vs_hf_percent": [2.0, 1.5, 0.0, -18.0, -2.0]}
                 ).to_csv(tmp_path / "eos.csv", index=False)
    pd.DataFrame({"model": ["hf", "moe_cotrained"], "region": "all", "family": "all",
                  "energy_mae_mev_atom": [2.0, 2.5], "force_mae_mev_a": [50.0, 52.0], "outside_training_data": False}
                 ).to_csv(tmp_path / "accuracy.csv", index=False)
    pd.DataFrame({"pair": ["independent", "cotrained"], "lattice": "perfect", "max_force_mev_a": [80.0, 8.0],
                  "rms_force_mev_a": [40.0, 4.0]}).to_csv(tmp_path / "interface.csv", index=False)
    pd.DataFrame({"device": "cpu", "threads": 1, "precision": "float64", "n_atoms": 2000,
                  "hf_fraction": [1.0, 0.0, 0.2], "mode": ["hf", "lf", "moe"], "speedup_vs_hf": [1.0, 6.0, speedup],
                  "ideal_speedup": [1.0, 6.0, 3.0]}).to_csv(tmp_path / "speed.csv", index=False)
    return {name: tmp_path / f"{name}.csv" for name in ("conservation", "eos", "accuracy", "interface", "speed")}


def _verdicts(page):
    rows = [line.split("|") for line in page.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return {cells[1].strip(): cells[-2].strip() for cells in rows}


def test_verdicts_follow_the_numbers(tmp_path):
    page = summary_page(_tables(tmp_path, speedup=2.6))
    verdicts = _verdicts(page)
    assert verdicts == {"conservation": "yes", "eos": "yes", "elastic": "n/a", "accuracy": "yes", "interface": "yes",
                        "cotraining": "n/a", "speed": "yes", "robustness": "n/a"}
    assert "table not computed" in page  # the co-training table was not given
    assert "10.0x" in page  # interface reduction 80 / 8


def test_conservation_verdict_needs_every_run_at_its_target_temperature(tmp_path):
    tables = _tables(tmp_path, speedup=2.6)
    page = summary_page(tables)
    assert "hf: +0.01 +- 0.005 meV/atom/ps (float64, 2 ps, T 296 K / target 300 K)" in page
    conservation = pd.read_csv(tables["conservation"])
    conservation["mean_temperature_k"] = [296.0, 170.0]  # NVE from velocities at 300 K, no equilibration
    conservation.to_csv(tables["conservation"], index=False)
    page = summary_page(tables)
    assert _verdicts(page)["conservation"] == "no" and "off the target temperature: moe_cotrained 43 %" in page
    # a table without temperatures (runs before the equilibration existed): no verdict
    conservation.drop(columns=["mean_temperature_k", "target_temperature_k"]).to_csv(tables["conservation"], index=False)
    assert _verdicts(summary_page(tables))["conservation"] == "n/a"


def test_no_eos_verdict_from_an_extrapolated_fit(tmp_path):
    tables = _tables(tmp_path, speedup=2.6)
    eos = pd.read_csv(tables["eos"])
    eos["fit_ok"] = [True, True, False, True, True]
    eos.to_csv(tables["eos"], index=False)
    page = summary_page(tables)
    assert _verdicts(page)["eos"] == "n/a"
    assert "no verdict for cotrained" in page and "no verdict for independent" in page


def test_speed_line_quotes_the_fraction_of_the_edge_bound(tmp_path):
    tables = _tables(tmp_path, speedup=2.4)
    speed = pd.read_csv(tables["speed"])
    speed["hf_edge_fraction"] = [1.0, 0.0, 0.15]
    speed.to_csv(tables["speed"], index=False)
    page = summary_page(tables)
    assert "2000 atoms, f = 0.20, 0.15 of the edges: 2.40x (ideal 3.00x, 80% of it, c_HF/c_LF 6.0)" in page


def test_a_slow_mixture_is_reported_as_such(tmp_path):
    path = tmp_path / "summary.md"
    text = write_summary(_tables(tmp_path, speedup=1.4), path, notes=["a note"])
    assert _verdicts(text)["speed"] == "no"
    assert path.read_text() == text
    assert "- a note" in text


def test_eos_verdict_compares_each_lf_with_its_own_pairs_hf(tmp_path):
    tables = _tables(tmp_path, speedup=2.6)
    # the co-trained pair moved together away from the reference HF: consistent within the pair
    eos = pd.DataFrame({"model": ["dft", "hf", "hf_cotrained", "lf_independent", "lf_cotrained"],
                        "v0_a3_atom": [15.6, 15.5, 15.4, 15.4, 15.45], "b0_gpa": [285.0, 340.0, 250.0, 400.0, 252.0]})
    eos.to_csv(tables["eos"], index=False)
    page = summary_page(tables)
    assert _verdicts(page)["eos"] == "yes"
    assert "cotrained pair LF vs its HF: dV0 +0.32 %, |dB0| 0.8 %" in page
    assert "independent pair LF vs its HF: dV0 -0.65 %, |dB0| 17.6 %" in page
    eos["b0_gpa"] = [285.0, 340.0, 250.0, 345.0, 300.0]  # now the co-trained LF is the worse match
    eos.to_csv(tables["eos"], index=False)
    assert _verdicts(summary_page(tables))["eos"] == "no"


def test_accuracy_verdict_needs_both_energy_and_forces_close_to_full_hf(tmp_path):
    tables = _tables(tmp_path, speedup=2.6)
    pd.DataFrame({"model": ["hf", "moe_cotrained"], "region": "all", "family": "all",
                  "energy_mae_mev_atom": [16.0, 58.0], "force_mae_mev_a": [125.0, 123.0], "outside_training_data": False}
                 ).to_csv(tables["accuracy"], index=False)
    page = summary_page(tables)
    assert _verdicts(page)["accuracy"] == "no"
    assert "energy MAE = 3.62, force MAE = 0.98" in page


def _robustness_row(seed: int, cut: float) -> dict:
    from pipeline.analysis.robustness import COLUMNS, failed_criteria

    row = {c: 1.0 for c in COLUMNS if c not in ("seed", "passes")}
    row.update(seed=seed, bulk_force_disagreement_cut=cut, lf_force_mae_change_percent=-2.0,
               b0_lf_cotrained_vs_hf_percent=1.0, b0_lf_independent_vs_hf_percent=8.0, interface_ratio_perfect=0.1,
               moe_vs_hf_force_mae_ratio=1.01)
    failed = failed_criteria(row)
    row["passes"] = "all" if not failed else "fails: " + ", ".join(failed)
    return row


def test_robustness_verdict_needs_every_seed_to_meet_every_criterion(tmp_path):
    from pipeline.analysis.robustness import robustness_table, write_robustness

    for cuts, verdict in (((6.0, 7.0, 5.5), "yes"), ((6.0, 2.0, 5.5), "no")):
        table = robustness_table([_robustness_row(seed, cut) for seed, cut in enumerate(cuts)])
        assert table["seed"].tolist()[-2:] == ["mean", "std"]
        mean = table.set_index("seed").loc["mean", "bulk_force_disagreement_cut"]
        assert mean == pytest.approx(np.mean(cuts))
        write_robustness(table, csv=tmp_path / "r.csv", md=tmp_path / "r.md", precision="float64")
        page = summary_page({"robustness": tmp_path / "r.csv"})
        assert _verdicts(page)["robustness"] == verdict
        assert f"bulk_force_disagreement_cut: {np.mean(cuts):.3g} +- " in page
        met = sum(c >= 5.0 for c in cuts)
        assert f"met by {met} of 3 seeds" in (tmp_path / "r.md").read_text()


def test_elastic_verdict_compares_the_largest_within_pair_difference(tmp_path):
    tables = _tables(tmp_path, speedup=2.6)
    pd.DataFrame({"model": ["dft", "hf", "lf_cotrained", "lf_independent"],
                  "c11_gpa": [320.0, 380.0, 390.0, 400.0], "c12_gpa": [234.0, 300.0, 300.0, 300.0],
                  "c44_gpa": [84.0, 90.0, 90.0, 80.0], "fit_ok": True}).to_csv(tmp_path / "elastic.csv", index=False)
    tables["elastic"] = tmp_path / "elastic.csv"
    page = summary_page(tables)
    # co-trained: worst C11 +2.6 %; independent: worst C44 -11.1 %
    assert "cotrained pair: max |C_ij(LF)/C_ij(HF) - 1| 2.6 %" in page and "independent pair: max" in page
    assert _verdicts(page)["elastic"] == "yes"
    elastic = pd.read_csv(tables["elastic"])
    elastic.loc[elastic["model"] == "lf_cotrained", "c44_gpa"] = 60.0  # -33 %: worse than the independent LF
    elastic.to_csv(tables["elastic"], index=False)
    assert _verdicts(summary_page(tables))["elastic"] == "no"
