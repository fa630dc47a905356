"""Accuracy analysis: zero errors for a model that made the labels; regions, families, LF flags; the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from analysis_support import tiny_analysis_config, write_pair
from ase.calculators.singlepoint import SinglePointCalculator

from pipeline.analysis.accuracy import COLUMNS, REGIONS, accuracy_table, error_stats
from pipeline.cli import main
from pipeline.md.calculator import MixtureCalculator
from pipeline.md.potential import MixturePotential
from pipeline.models import load_checkpoint
from train_support import tiny_frames, write_tiny_dataset


def test_error_stats():
    mae, rmse = error_stats(np.array([[3.0, -4.0], [0.0, 0.0]]))
    assert mae == pytest.approx(7 / 4)
    assert rmse == pytest.approx(np.sqrt(25 / 4))
    assert np.isnan(error_stats(np.zeros(0))[0])


@pytest.fixture(scope="module")
def labelled_by_hf(tmp_path_factory):
    """A tiny dataset labelled by an HF expert itself (so that expert's errors are zero), and two pairs."""
    tmp = tmp_path_factory.mktemp("acc")
    cfg = tiny_analysis_config()
    same = write_pair(tmp / "same", cfg, identical=True)
    other = write_pair(tmp / "other", cfg, seeds=(4, 5))
    hf = load_checkpoint(same["hf"], dtype=torch.float64)
    frames = []
    for atoms in tiny_frames():
        calc = MixtureCalculator(MixturePotential([hf]), expert=np.zeros(len(atoms), dtype=np.int64))
        results = {"energy": calc.get_potential_energy(atoms), "forces": calc.get_forces(atoms)}
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    dataset = write_tiny_dataset(tmp / "data", cfg, frames=frames)
    return cfg, dataset, {"independent": same, "cotrained": other}, tmp


def test_the_labelling_model_and_its_identical_mixture_have_zero_error(labelled_by_hf):
    cfg, dataset, pairs, _ = labelled_by_hf
    table, _predictions, frames = accuracy_table(cfg, dataset=dataset, pairs=pairs, reference_pair="independent")
    assert tuple(table.columns) == COLUMNS
    zero = table[table["model"].isin(["hf", "lf_independent", "moe_independent"])]
    # zero up to the digits extxyz keeps for positions and labels
    assert np.nanmax(zero[["energy_mae_mev_atom", "force_mae_mev_a", "force_rmse_mev_a"]].to_numpy()) < 1e-3
    assert table[table["model"] == "moe_cotrained"]["force_mae_mev_a"].max() > 1.0
    assert set(table["region"]) <= set(REGIONS)
    assert {"bulk", "slab_co", "all"} <= set(table["family"])
    # energies only for region 'all'; region rows carry forces only
    assert table[table["region"] != "all"]["energy_mae_mev_atom"].isna().all()
    # LF experts trained on bulk atoms only: flagged outside their data on C/O, not on bulk atoms
    lf = table[table["model"] == "lf_cotrained"].set_index(["region", "family"])
    assert lf.loc[("adsorbate", "all"), "outside_training_data"]
    assert not lf.loc[("bulk", "all"), "outside_training_data"]
    assert not table[table["model"] == "hf"]["outside_training_data"].any()
    n_all = table[(table["model"] == "hf") & (table["region"] == "all") & (table["family"] == "all")]
    assert int(n_all["n_frames"].iloc[0]) == len(frames)


def test_accuracy_cli(labelled_by_hf):
    cfg, dataset, pairs, tmp = labelled_by_hf
    out = tmp / "out"
    code = main(["accuracy", "--config-json", json.dumps(cfg.to_dict()), "--dataset", str(dataset), "--pairs", "independent", "cotrained",
                 "--hf", str(pairs["independent"]["hf"]), str(pairs["cotrained"]["hf"]),
                 "--lf", str(pairs["independent"]["lf"]), str(pairs["cotrained"]["lf"]),
                 "--csv", str(out / "a.csv"), "--md", str(out / "a.md"), "--png", str(out / "a.png")])
    assert code == 0
    assert (out / "a.png").stat().st_size > 0
    assert "never seen C or O" in (out / "a.md").read_text()
    table = pd.read_csv(out / "a.csv")
    assert {"hf", "hf_cotrained", "lf_independent", "lf_cotrained", "moe_independent", "moe_cotrained"} == set(table["model"])
