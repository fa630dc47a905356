"""MoE layers in the HF expert (moe_study.hf_expert): the table's ratios, mean/std rows and verdicts from known
numbers, a tiny end-to-end run (train the HF preset dense and element-routed, time both in the MD evaluator,
write the table and figure), the refusals, and the DAG's dry run."""

import pandas as pd
import pytest
import torch

from pipeline.analysis.moe_hf import COLUMNS, MAX_COST_RATIO, moe_hf_table, verdict, write_moe_hf
from pipeline.config import ConfigError, config_from_dict
from pipeline.train.moe_report import read_summaries
from pipeline.train.moe_study import train_variant
from train_support import TINY_EXPERT, write_tiny_dataset

torch.set_num_threads(1)


def _summaries(variant: str, forces: list[float]) -> list[dict]:
    moe = variant != "dense"
    return [{"dataset": "pt_co", "base_model": "hf", "variant": variant, "routing": "element" if moe else "none",
             "expert_type": "mlp" if moe else "-", "shared_experts": 2 * moe, "routed_experts": 8 * moe,
             "top_k": 2 * moe, "active_params": 100, "total_params": 300 if moe else 100, "seed": seed,
             "test_energy_mae_mev_atom": f / 10, "test_force_mae_mev_a": f, "unstable": False, "loss_spikes": 0,
             "nonfinite_grads": 0, "path_jump_mev": 0.0, "epochs": 5, "best_epoch": 4, "train_wall_s": 10.0,
             "status": "ok", "labels": "DFT", "curve": {"train_loss": [4.0, 2.0, 3.0 + seed, 1.0]}}
            for seed, f in enumerate(forces)]


def test_ratios_mean_rows_and_verdicts_from_known_numbers():
    cfg = config_from_dict({})
    summaries = (_summaries("dense", [100.0, 110.0, 90.0]) + _summaries("moe_element_shared", [80.0, 77.0, 72.0])
                 + _summaries("moe_element", [95.0, 115.0, 85.0]))
    seconds = {("dense", 0): 1.0, ("dense", 1): 1.2, ("dense", 2): 0.8,
               **{("moe_element_shared", s): 1.1 for s in range(3)}, **{("moe_element", s): 3.0 for s in range(3)}}
    table = moe_hf_table(cfg, summaries, seconds, n_atoms=1000, device="cpu")
    assert list(table.columns) == list(COLUMNS) and set(table["split"]) == {"test"}
    assert list(table["seed"].astype(str)) == ["0", "1", "2", "mean", "std"] * 3
    moe = table[table["variant"] == "moe_element_shared"]
    moe = moe.set_index(moe["seed"].astype(str))
    assert moe.loc["1", "force_mae_vs_dense"] == pytest.approx(77.0 / 110.0)  # against dense of the same seed
    assert moe.loc["mean", "force_mae_vs_dense"] == pytest.approx((0.8 + 0.7 + 0.8) / 3)
    assert moe.loc["0", "cost_vs_dense"] == pytest.approx(1.1)  # against the median dense step (1.0 s)
    assert moe.loc["0", "us_per_atom"] == pytest.approx(1100.0)
    assert moe.loc["mean", "force_mae_mev_a"] == pytest.approx(76.333333)
    assert moe.loc["2", "max_loss_jump"] == pytest.approx(2.5) and moe.loc["mean", "max_loss_jump"] == pytest.approx(2.0)
    verdicts = verdict(table).set_index("variant")
    assert verdicts.loc["moe_element_shared", "force_mae_lower"] == "supported"
    assert verdicts.loc["moe_element_shared", "seeds_force_lower"] == "3/3"
    assert verdicts.loc["moe_element_shared", "pays"] == ("yes" if 1.1 <= MAX_COST_RATIO else "no")
    assert verdicts.loc["moe_element", "force_mae_lower"].startswith("inconclusive")
    assert verdicts.loc["moe_element", "pays"] == "no"


def test_a_more_accurate_but_costly_variant_does_not_pay():
    cfg = config_from_dict({})
    summaries = _summaries("dense", [100.0, 101.0, 99.0]) + _summaries("moe_element_shared", [50.0, 51.0, 49.0])
    seconds = {**{("dense", s): 1.0 for s in range(3)}, **{("moe_element_shared", s): 2.0 for s in range(3)}}
    table = moe_hf_table(cfg, summaries, seconds, n_atoms=10, device="cpu")
    row = verdict(table).iloc[0]
    assert row["force_mae_lower"] == "supported" and row["cost_vs_dense"] == pytest.approx(2.0) and row["pays"] == "no"


def test_refusals():
    cfg = config_from_dict({})
    with pytest.raises(ValueError, match="needs the dense runs"):
        moe_hf_table(cfg, _summaries("moe_element_shared", [1.0, 2.0]), {}, n_atoms=1, device="cpu")
    lf_runs = [dict(s, base_model="lf") for s in _summaries("dense", [1.0])]
    with pytest.raises(ValueError, match="hf preset on pt_co"):
        moe_hf_table(cfg, lf_runs, {}, n_atoms=1, device="cpu")
    with pytest.raises(ConfigError, match="dense must be one of them"):
        config_from_dict({"moe_study": {"hf_expert": {"variants": ["moe_element_shared", "moe_element"]}}})


def test_tiny_hf_runs_are_trained_timed_and_tabulated(tmp_path):
    """The HF preset (tiny) dense and element-routed with shared experts, two seeds of one epoch on a tiny Pt+CO
    set: every checkpoint runs in the MD evaluator on a small slab, the table and figure are written."""
    cfg = config_from_dict({
        "models": {"hf": dict(TINY_EXPERT), "lf": {**TINY_EXPERT, "num_scalar_features": 4}},
        "ingest": {"validation_fraction": 0.2, "test_fraction": 0.2},
        "analysis": {"speed": {"repeats": 1, "warmup": 1}},
        "moe_study": {"base_model": "hf", "num_experts": 4, "max_epochs": 1, "batch_size": 4,
                      "stability": {"path_frames": 1, "path_steps": 4}, "hf_expert": {"timing_atoms": 60}},
    })
    dataset = write_tiny_dataset(tmp_path / "data", cfg)
    summaries, checkpoints = [], []
    for variant in ("dense", "moe_element_shared"):
        for seed in (0, 1):
            d = tmp_path / variant / f"seed{seed}"
            summary = train_variant(cfg, dataset=dataset, dataset_name="pt_co", variant=variant, seed=seed,
                                    checkpoint=d / "model.pt", metrics=d / "metrics.csv", summary=d / "summary.json")
            assert summary["base_model"] == "hf" and summary["is_dft"]
            summaries.append(d / "summary.json")
            checkpoints.append(d / "model.pt")
    out = {"csv": tmp_path / "t.csv", "md": tmp_path / "t.md", "png": tmp_path / "t.png"}
    write_moe_hf(cfg, read_summaries(summaries), checkpoints, **out)
    table = pd.read_csv(out["csv"])
    assert list(table["variant"]) == ["dense"] * 4 + ["moe_element_shared"] * 4
    per_seed = table[~table["seed"].astype(str).isin(["mean", "std"])]
    assert (per_seed["step_ms"] > 0).all() and (per_seed["n_atoms"] >= 50).all()
    assert per_seed["active_params"].nunique() <= 2 and (per_seed["total_params"] >= per_seed["active_params"]).all()
    dense = table[(table["variant"] == "dense") & (table["seed"] == "mean")]
    assert dense["force_mae_vs_dense"].item() == pytest.approx(1.0)
    text = out["md"].read_text()
    assert "test split" in text and "Verdicts" in text and "pays" in text
    assert out["png"].stat().st_size > 0
    with pytest.raises(ValueError, match="one per run"):
        write_moe_hf(cfg, read_summaries(summaries), checkpoints[:1], **out)


def test_the_hf_moe_dag_dry_runs_with_two_seeds(tmp_path):
    """``snakemake -n moe_hf`` plans one resumable HF-preset training per (variant, seed) and one report."""
    from workflow_support import emt_workdir, run_snakemake

    def configure(config):
        config["moe_study"].update(seeds=[0, 1])

    workdir = emt_workdir(tmp_path, configure)
    result = run_snakemake("-n", "-p", "--cores", "1", "moe_hf", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for variant in ("dense", "moe_element_shared"):
        for seed in (0, 1):
            assert f"results/moe_study/hf_expert/{variant}/seed{seed}/summary.json" in out
    assert "--dataset-name pt_co --base-model hf" in out and "seed2" not in out
    jobs = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
            if line.startswith(("moe_hf_train ", "moe_hf_report "))}
    assert jobs == {"moe_hf_train": 4, "moe_hf_report": 1}
