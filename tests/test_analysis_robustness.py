"""Robustness table and learning curves: one row per seed from tiny pairs through the CLI, mean and std rows,
criteria per seed; the learning-curve table and figure from real stage metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis_support import tiny_analysis_config, write_pair
from pipeline.analysis.learning import learning_table
from pipeline.analysis.robustness import COLUMNS, CRITERIA, failed_criteria, meets, robustness_table
from pipeline.cli import main
from pipeline.train import run_training
from pipeline.train.convergence import late_change
from train_support import tiny_config, write_tiny_dataset


def test_criteria_and_mean_std_rows():
    assert meets(5.0, ">=", 5.0) and not meets(4.9, ">=", 5.0) and meets(-4.0, "abs<=", 5.0)
    assert not meets(float("nan"), "<=", 1.0)
    rows = []
    for seed, cut in enumerate((6.0, 4.0, 8.0)):
        row = {c: 0.1 for c in COLUMNS if c not in ("seed", "passes")}
        row.update(seed=seed, bulk_force_disagreement_cut=cut, moe_vs_hf_force_mae_ratio=1.0)
        row["passes"] = "all" if not failed_criteria(row) else "fails: " + ", ".join(failed_criteria(row))
        rows.append(row)
    table = robustness_table(rows[::-1])
    assert table["seed"].tolist() == ["0", "1", "2", "mean", "std"]
    assert table.loc[1, "passes"] == "fails: bulk_force_disagreement_cut"
    stats = table.set_index("seed")
    assert stats.loc["mean", "bulk_force_disagreement_cut"] == pytest.approx(6.0)
    assert stats.loc["std", "bulk_force_disagreement_cut"] == pytest.approx(2.0)  # sample std
    assert set(CRITERIA) <= set(COLUMNS)


def test_robustness_rows_of_tiny_pairs_through_the_cli(tmp_path):
    cfg = tiny_analysis_config()
    dataset = write_tiny_dataset(tmp_path / "data", tiny_config())
    shared = write_pair(tmp_path / "a", cfg, seeds=(0, 1))
    other = write_pair(tmp_path / "b", cfg, seeds=(0, 2))
    config = json.dumps(cfg.to_dict())
    rows = []
    for seed in (0, 1):
        rows.append(tmp_path / f"seed{seed}.csv")
        assert main(["robustness-seed", "--config-json", config, "--seed", str(seed), "--dataset", str(dataset),
                     "--pairs", "cotrained", "independent", "--hf", str(shared["hf"]), str(shared["hf"]),
                     "--lf", str(shared["lf"]), str(other["lf"]), "--csv", str(rows[-1])]) == 0
    csv, md = tmp_path / "robustness.csv", tmp_path / "robustness.md"
    assert main(["robustness", "--config-json", config, "--rows", *map(str, rows), "--csv", str(csv),
                 "--md", str(md)]) == 0
    table = pd.read_csv(csv)
    assert tuple(table.columns) == COLUMNS and table["seed"].astype(str).tolist() == ["0", "1", "mean", "std"]
    seeds = table.iloc[:2]
    not_eos = [c for c in COLUMNS if c not in ("seed", "passes") and "b0" not in c]
    assert np.isfinite(seeds[not_eos].to_numpy(dtype=float)).all()
    # untrained experts: a failed or extrapolated EOS fit gives NaN, and the seed fails that criterion
    for _, row in seeds.iterrows():
        if not np.isfinite(row["b0_lf_cotrained_vs_hf_percent"]):
            assert "b0_lf_cotrained_vs_hf_percent" in row["passes"]
    # identical rows (same checkpoints for both seeds) have zero spread
    assert table.loc[3, "interface_ratio_perfect"] == pytest.approx(0.0, abs=1e-9)
    assert "met by" in md.read_text() and "mean |B0(LF)/B0(HF) - 1|" in md.read_text()


def test_learning_table_of_real_stages(tmp_path):
    cfg = tiny_config(max_epochs=4, selection_window=2)
    dataset = write_tiny_dataset(tmp_path / "data", cfg)
    run_training(cfg, stage="hf", dataset=dataset, hf_path=tmp_path / "hf.pt", metrics_path=tmp_path / "hf.csv",
                 state_dir=tmp_path / "s1", progress=False)
    run_training(cfg, stage="lf", pair="cotrained", dataset=dataset, anchor_path=tmp_path / "hf.pt",
                 lf_path=tmp_path / "lf.pt", metrics_path=tmp_path / "lf.csv", state_dir=tmp_path / "s2", progress=False)
    metrics = {"hf": tmp_path / "hf.csv", "lf_cotrained": tmp_path / "lf.csv"}
    out = {k: tmp_path / f"training.{k}" for k in ("csv", "md", "png")}
    assert main(["learning-curves", "--config-json", json.dumps(cfg.to_dict()), "--stages", *metrics,
                 "--metrics", *map(str, metrics.values()), "--csv", str(out["csv"]), "--md", str(out["md"]),
                 "--png", str(out["png"])]) == 0
    table = learning_table(metrics).set_index("stage")
    lf = pd.read_csv(metrics["lf_cotrained"])
    assert table.loc["lf_cotrained", "selected_epoch"] == int(lf["val_loss_smoothed"].idxmin()) + 1
    assert table.loc["hf", "epochs"] == 4 and np.isnan(table.loc["lf_cotrained", "val_hf_force_mae_mev_a"])
    assert np.isfinite(table.loc["lf_cotrained", "val_bulk_force_disagreement_mev_a"])
    assert out["png"].stat().st_size > 10_000
    assert late_change(np.array([4.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])) == pytest.approx(0.0)
