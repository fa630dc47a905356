"""The MoE routing study: EMT set sampling (not DFT), variant configs, one tiny training run, the report,
and routing statistics in the co-training loop."""


import numpy as np
import pandas as pd
import pytest
import torch
from ase.io import write

from pipeline.config import MoEStudyEMTConfig, config_from_dict
from pipeline.data.alloys import emt_dataset, sample_alloys
from pipeline.data.labelling import label_structures
from pipeline.models import build_model
from pipeline.models.moe import parameter_counts
from pipeline.train.moe_report import group_separation, read_summaries, write_report
from pipeline.train.moe_study import VARIANTS, train_variant, variant_config

torch.set_num_threads(1)
TINY_EMT = {"n_bulk_alloys": 10, "n_surfaces": 2, "n_rattled": 4, "validation_fraction": 0.2, "test_fraction": 0.2}


def _cfg(**study):
    return config_from_dict({
        "label": {"calculator": "emt"},
        "models": {"lf": {"num_scalar_features": 8, "num_tensor_features": 4, "latent_mlp_hidden": [8],
                          "readout_mlp_hidden": [8], "two_body_mlp_hidden": [8], "r_max": 4.0}},
        "moe_study": {"num_experts": 4, "max_epochs": 1, "batch_size": 4, "emt": TINY_EMT, **study},
    })


@pytest.fixture(scope="module")
def emt_set(tmp_path_factory):
    cfg = _cfg()
    tmp = tmp_path_factory.mktemp("emt")
    frames = sample_alloys(cfg.moe_study.emt, cfg.seed)
    result = label_structures(frames, cfg, cache_dir=tmp / "cache", log_dir=tmp / "logs", progress=False)
    write(tmp / "labelled.extxyz", result.frames)
    emt_dataset(cfg.moe_study.emt, cfg.seed, tmp / "labelled.extxyz", tmp / "dataset.extxyz")
    return tmp / "dataset.extxyz"


def test_emt_sampling_is_deterministic_and_multi_element():
    cfg = MoEStudyEMTConfig(**TINY_EMT)
    a, b = sample_alloys(cfg, 0), sample_alloys(cfg, 0)
    assert [f.get_chemical_formula() for f in a] == [f.get_chemical_formula() for f in b]
    assert np.allclose(a[3].positions, b[3].positions)
    assert sum(len(set(f.get_chemical_symbols())) > 1 for f in a) >= cfg.n_bulk_alloys
    assert set().union(*(f.get_chemical_symbols() for f in a)) <= set(cfg.elements)


def test_emt_dataset_refuses_dft_frames(tmp_path):
    frames = sample_alloys(MoEStudyEMTConfig(n_bulk_alloys=2, n_surfaces=0, n_rattled=0), 0)
    for f in frames:
        f.info["is_dft"] = True
    write(tmp_path / "x.extxyz", frames)
    with pytest.raises(ValueError, match="is_dft"):
        emt_dataset(MoEStudyEMTConfig(), 0, tmp_path / "x.extxyz", tmp_path / "out.extxyz")


def test_variants_have_similar_active_parameters():
    cfg = _cfg(top_k=2, num_shared=1, num_experts=8)
    species = ("Pt", "C", "O")
    counts = {v: parameter_counts(build_model(variant_config(cfg, v), species)) for v in VARIANTS}
    dense = counts["dense"][0]
    for variant, (active, total) in counts.items():
        assert 0.7 * dense <= active <= 1.5 * dense, (variant, active, dense)
        assert (total > active) == (variant != "dense")


def test_one_variant_trains_and_the_report_is_written(emt_set, tmp_path):
    cfg = _cfg()
    summaries = []
    for variant in ("dense", "moe_element_shared"):
        d = tmp_path / variant
        summary = train_variant(cfg, dataset=emt_set, dataset_name="emt_alloys", variant=variant,
                                checkpoint=d / "model.pt", metrics=d / "metrics.csv", summary=d / "summary.json")
        assert summary["status"] == "ok" and not summary["is_dft"]
        assert np.isfinite(summary["test_force_mae_mev_a"])
        summaries.append(d / "summary.json")
    metrics = pd.read_csv(tmp_path / "moe_element_shared" / "metrics.csv")
    assert "train_moe_balance" in metrics and any(c.startswith("routing_model_readout_") for c in metrics)
    loaded = read_summaries(summaries)
    load = np.asarray(loaded[1]["load"])
    assert load.shape[1:] == (7, 4) and np.allclose(load.sum(-1)[load.sum(-1) > 0], 1.0)
    out = {k: tmp_path / f"report.{k}" for k in ("csv", "md")}
    write_report(loaded, csv=out["csv"], md=out["md"], heatmap=tmp_path / "h.png", pca=tmp_path / "p.png")
    assert "not DFT" in out["md"].read_text() and (tmp_path / "p.png").stat().st_size > 0
    assert len(pd.read_csv(out["csv"])) == 2


def test_group_separation_scores():
    species = ["Ni", "Pd", "Cu", "Ag", "Al"]
    grouped = np.array([[0, 0], [0, 0.1], [5, 5], [5, 5.1], [10, 0]], dtype=float)
    stats = group_separation(species, grouped)
    assert stats["nn_purity"] == 1.0 and stats["within_between_ratio"] < 0.1
    mixed = np.array([[0, 0], [5, 5], [0, 0.1], [5, 5.1], [10, 0]], dtype=float)
    assert group_separation(species, mixed)["nn_purity"] == 0.0


def test_cotraining_loop_adds_balance_loss_and_logs_routing_with_moe_experts(tmp_path):
    """An HF expert with MoE layers: the pair trains, metrics get the balance loss and the expert load per
    element; the dense LF expert adds no routing columns; the dense default adds none at all."""
    import dataclasses

    from pipeline.config import MoEConfig
    from pipeline.train import run_training
    from train_support import tiny_config, write_tiny_dataset

    dataset = write_tiny_dataset(tmp_path / "data")
    base = tiny_config(max_epochs=2)
    hf = dataclasses.replace(base.models.hf, moe=MoEConfig(enabled=True, num_experts=3, top_k=2))
    cfg = dataclasses.replace(base, models=dataclasses.replace(base.models, hf=hf))
    for name, c in (("moe", cfg), ("dense", base)):
        d = tmp_path / name
        run_training(c, stage="pair", pair="independent", dataset=dataset, hf_path=d / "hf.pt", lf_path=d / "lf.pt",
                     metrics_path=d / "metrics.csv", state_dir=d / "state", progress=False)
    moe = pd.read_csv(tmp_path / "moe" / "metrics.csv")
    dense = pd.read_csv(tmp_path / "dense" / "metrics.csv")
    routing = [c for c in moe.columns if c.startswith("routing_hf_")]
    assert routing and not any(c.startswith("routing_lf_") for c in moe.columns)
    assert np.isfinite(moe["train_moe_balance"]).all() and (moe["train_moe_balance"] >= 1.0 - 1e-6).all()
    pt = moe[[c for c in routing if c.startswith("routing_hf_readout_Pt_")]].to_numpy()
    assert np.allclose(pt.sum(1), 1.0)
    assert not any(c.startswith("routing_") or c == "train_moe_balance" for c in dense.columns)


def test_study_settings_are_the_train_section_with_the_study_overrides():
    from pipeline.train.moe_study import study_train_config

    cfg = config_from_dict({"train": {"optimizer": "adamw", "weight_decay": 0.1, "scheduler": "plateau",
                                      "selection_window": 7, "ema_decay": 0.9, "energy_weight": 3.0},
                            "moe_study": {"max_epochs": 5, "batch_size": 2, "learning_rate": 0.02,
                                          "balance_weight": 0.5}})
    s = study_train_config(cfg)
    assert (s.max_epochs, s.batch_size, s.learning_rate, s.moe_balance_weight) == (5, 2, 0.02, 0.5)
    assert (s.optimizer, s.weight_decay, s.scheduler, s.selection_window) == ("adam", 0.0, "cosine", 1)
    assert s.early_stopping_patience >= s.max_epochs  # no early stopping
    assert (s.ema_decay, s.energy_weight, s.min_learning_rate) == (0.9, 3.0, cfg.train.min_learning_rate)


def test_single_training_stops_on_a_non_finite_loss_with_a_status(emt_set, monkeypatch):
    import pipeline.train.single as single
    from pipeline.train.data import prepare_samples, read_splits
    from pipeline.train.moe_study import dataset_species, study_train_config

    cfg = _cfg(max_epochs=3)
    species = dataset_species(cfg, "emt_alloys")
    model = build_model(variant_config(cfg, "moe_element_shared"), species, dtype=torch.float64, seed=1)
    splits = read_splits(str(emt_set))
    train, validation = (prepare_samples(splits[k], species=species, r_maxes=[model.r_max], dtype=torch.float64,
                                         lf_data="all") for k in ("train", "validation"))
    settings = study_train_config(cfg)
    n_batches = -(-len(train) // settings.batch_size)
    real, calls = single.data_terms, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] == n_batches + 2:  # epoch 2, batch 2
            terms["forces"] = (terms["forces"][0] * float("nan"), terms["forces"][1])
        return terms

    monkeypatch.setattr(single, "data_terms", poisoned)
    result = single.train_single(model, train, validation, settings, seed=0)
    assert result.status == "non-finite loss at epoch 2"
    assert len(result.metrics) == 1 and result.best_epoch == 1
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())
