"""The co-training table on a tiny trained pair, through the CLI; and the train CLI's error handling."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline.analysis.cotraining import COLUMNS
from pipeline.cli import main
from train_support import tiny_config, write_tiny_dataset

REQUIRED = (
    "pair",
    "hf_energy_mae_mev_atom",
    "hf_force_mae_mev_a",
    "lf_energy_mae_bulk_frames_mev_atom",
    "lf_force_mae_bulk_mev_a",
    "lf_energy_mae_all_mev_atom",
    "lf_force_mae_all_mev_a",
    "bulk_energy_disagreement_mev_atom",
    "bulk_force_disagreement_mev_a",
)


def _train_args(cfg, dataset, out, stage, pair=None):
    common = ["train", "--config-json", json.dumps(cfg.to_dict()), "--stage", stage, "--dataset", str(dataset),
              "--no-progress"]
    if stage == "hf":
        return common + ["--hf", str(out / "hf.pt"), "--metrics", str(out / "hf.csv"), "--state-dir", str(out / "hf_state")]
    return common + ["--pair", pair, "--anchor", str(out / "hf.pt"), "--lf", str(out / pair / "lf.pt"),
                     "--metrics", str(out / pair / "metrics.csv"), "--state-dir", str(out / pair / "state")]


def test_cotraining_table_of_a_tiny_pair(tmp_path):
    cfg = tiny_config(max_epochs=2, lambda_energy=20.0, lambda_force=20.0)
    dataset = write_tiny_dataset(tmp_path / "data")
    pairs = ["cotrained", "independent"]
    assert main(_train_args(cfg, dataset, tmp_path / "models", "hf")) == 0
    for pair in pairs:
        assert main(_train_args(cfg, dataset, tmp_path / "models", "lf", pair)) == 0
    csv, md = tmp_path / "tables" / "cotraining.csv", tmp_path / "tables" / "cotraining.md"
    args = ["cotraining-table", "--config-json", json.dumps(cfg.to_dict()), "--dataset", str(dataset),
            "--pairs", *pairs, "--hf", *[str(tmp_path / "models" / "hf.pt") for p in pairs],
            "--lf", *[str(tmp_path / "models" / p / "lf.pt") for p in pairs], "--csv", str(csv), "--md", str(md)]
    assert main(args) == 0
    table = pd.read_csv(csv)
    assert tuple(table.columns) == COLUMNS and set(REQUIRED) <= set(table.columns)
    assert table["pair"].tolist() == pairs
    numeric = table[list(REQUIRED[1:])].to_numpy(dtype=float)
    assert np.isfinite(numeric).all() and (numeric > 0).all()
    assert (table["test_frames"] > 0).all() and (table["bulk_test_atoms"] > 0).all()
    assert set(table["dtype"]) == {"float32"} and table["epochs"].tolist() == [2, 2]
    # the LF columns on its own (bulk) data and on all atoms are different quantities
    assert (table["lf_force_mae_bulk_mev_a"] != table["lf_force_mae_all_mev_a"]).all()
    text = md.read_text()
    assert "bulk_force_disagreement_mev_a" in text and "Co-training cuts the bulk disagreement by" in text
    # strong agreement weights: the co-trained pair disagrees less on the bulk test atoms
    by_pair = table.set_index("pair")
    assert by_pair.loc["cotrained", "bulk_force_disagreement_mev_a"] < by_pair.loc["independent", "bulk_force_disagreement_mev_a"]


def test_train_cli_reports_bad_data_without_a_traceback(tmp_path, capsys):
    cfg = tiny_config(max_epochs=1)
    dataset = write_tiny_dataset(tmp_path / "data")
    text = dataset.read_text().replace("split=validation", "split=test")
    dataset.write_text(text)
    assert main(_train_args(cfg, dataset, tmp_path / "models", "hf")) == 1
    err = capsys.readouterr().err
    assert "TrainingDataError" in err and "'validation' split" in err and "is empty" in err
    assert "Traceback" not in err
