"""One iteration of the loop in-process through the CLI (the commands the rules run), on a tiny committee and
EMT labels: explore, score, select, label, merge, report, table, ship."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from ase.io import read

from active_support import tiny_active_config, train_committee
from pipeline.active.report import MARKDOWN_COLUMNS
from pipeline.cli import main


def test_one_iteration_through_the_cli(tmp_path):
    cfg = tiny_active_config()
    models = train_committee(tmp_path / "models", cfg)
    config = json.dumps(cfg.to_dict())
    hf = [str(p) for p in models["hf"]]
    frames, trajectories = [], []
    for cell in cfg.active.explore.cells:
        frames.append(str(tmp_path / f"explore/{cell}.extxyz"))
        trajectories.append(str(tmp_path / f"explore/{cell}.csv"))
        assert main(["al-explore", "--config-json", config, "--cell", cell, "--iteration", "0", "--hf", hf[0],
                     "--lf", str(models["lf"]), "--frames", frames[-1], "--trajectories", trajectories[-1]]) == 0
    score = {k: str(tmp_path / f"score/{k}") for k in ("scored.extxyz", "scores.csv", "descriptors.npz")}
    assert main(["al-score", "--config-json", config, "--frames", *frames, "--committee", *hf,
                 "--scored", score["scored.extxyz"], "--scores", score["scores.csv"],
                 "--descriptors", score["descriptors.npz"]]) == 0
    scores = pd.read_csv(score["scores.csv"])
    n_snapshots = sum(len(read(f, ":")) for f in frames)
    assert len(scores) == n_snapshots and (scores["score_ev_a"] > 0).all()
    selected = tmp_path / "selected"
    assert main(["al-select", "--config-json", config, "--scored", score["scored.extxyz"], "--scores",
                 score["scores.csv"], "--descriptors", score["descriptors.npz"], "--directory", str(selected)]) == 0
    chosen = pd.read_csv(selected / "selected.csv")
    assert len(chosen) == cfg.active.select.max_frames
    assert chosen["score_ev_a"].min() >= np.quantile(scores["score_ev_a"], 1 - cfg.active.select.top_fraction) - 1e-12
    chunks = sorted(selected.glob("chunk_*.extxyz"))
    assert len(chunks) == 2
    for k, chunk in enumerate(chunks):
        assert main(["label", "--config-json", config, "--structures", str(chunk), "--output",
                     str(tmp_path / f"label/l{k}.extxyz"), "--failures", str(tmp_path / f"label/f{k}.csv"),
                     "--cache-dir", str(tmp_path / "cache"), "--log-dir", str(tmp_path / "logs"), "--no-progress"]) == 0
    labelled, failures = tmp_path / "labelled.extxyz", tmp_path / "failures.csv"
    assert main(["merge-labels", "--labelled", *(str(tmp_path / f"label/l{k}.extxyz") for k in range(2)),
                 "--failures-in", *(str(tmp_path / f"label/f{k}.csv") for k in range(2)),
                 "--output", str(labelled), "--failures", str(failures)]) == 0
    out = {k: tmp_path / f"report/{k}" for k in ("row.json", "calibration.csv", "calibration.png")}
    assert main(["al-report", "--config-json", config, "--iteration", "0", "--dataset", str(models["dataset"]),
                 "--committee", *hf, "--trajectories", *trajectories, "--scores", score["scores.csv"],
                 "--selected", str(selected / "selected.csv"), "--labelled", str(labelled), "--failures", str(failures),
                 "--row", str(out["row.json"]), "--calibration-csv", str(out["calibration.csv"]),
                 "--calibration-png", str(out["calibration.png"])]) == 0
    row = json.loads(out["row.json"].read_text())
    assert row["candidates"] == n_snapshots and row["selected"] == row["labelled"] == 4 and row["failures"] == 0
    assert row["trajectories"] == 8 and row["label_calculator"] == "emt"
    assert row["hf_test_force_mae_mev_a"] > 0 and row["new_frames_force_mae_mev_a"] > 0
    assert -1 <= row["calibration_spearman"] <= 1 and row["label_cpu_s"] > 0
    calibration = pd.read_csv(out["calibration.csv"])
    assert set(calibration.query("kind == 'frame'")["source"]) == {"test", "selected"}
    table_csv, table_md = tmp_path / "active.csv", tmp_path / "active.md"
    assert main(["al-table", "--rows", str(out["row.json"]), "--csv", str(table_csv), "--md", str(table_md)]) == 0
    assert pd.read_csv(table_csv)["iteration"].tolist() == [0]
    text = table_md.read_text()
    assert "NOT DFT" in text and all(c in text for c in MARKDOWN_COLUMNS)
