"""The MoE routing study: EMT set sampling (not DFT), variant configs and the equal-active-parameter width
solver, tiny training runs (seeds, resume), the report (table columns, mean/std rows, claims), the routing
permutation test, the study's dry run, and routing statistics in the co-training loop."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from ase.io import write

from pipeline.config import MoEConfig, MoEStudyEMTConfig, MoEStudyRoutingConfig, config_from_dict
from pipeline.data.alloys import emt_dataset, sample_alloys
from pipeline.data.labelling import label_structures
from pipeline.models import build_model
from pipeline.models.moe import parameter_counts
from pipeline.models.testing import small_config
from pipeline.train.moe_report import (
    COLUMNS,
    better,
    claims,
    group_separation,
    knn_agreement,
    mean_std,
    periodic_position,
    permutation_test,
    read_summaries,
    study_table,
    write_report,
)
from pipeline.train.moe_study import (
    VARIANTS,
    equal_active_width,
    expert_split,
    train_variant,
    variant_config,
)

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


def test_variants_have_the_dense_active_parameters_and_their_split():
    cfg = _cfg(top_k=2, num_shared=2, num_experts=8)
    species = ("Pt", "C", "O")
    built = {v: variant_config(cfg, v, species) for v in VARIANTS}
    counts = {v: parameter_counts(build_model(expert, species)) for v, (expert, _) in built.items()}
    dense = counts["dense"][0]
    for variant, (active, total) in counts.items():
        assert abs(active - dense) <= 0.1 * dense, (variant, active, dense)
        assert (total > active) == (variant != "dense")
        solution = built[variant][1]
        assert solution is None if variant == "dense" else (solution.active, solution.total) == (active, total)
    splits = {v: (e.moe.num_shared, e.moe.top_k) for v, (e, _) in built.items() if e.moe.enabled}
    assert splits["moe_element_shared"] == (2, 2) and splits["moe_element"] == (0, 4)
    assert splits["moe_element_shared25"] == (1, 3) and splits["moe_element_shared75"] == (3, 1)
    assert {built[v][0].moe.router for v in ("moe_global_shared", "moe_configuration_shared")} == {"global",
                                                                                                  "configuration"}
    assert built["mole_element_shared"][0].moe.expert_type == "linear"
    with pytest.raises(ValueError, match="no shared or"):
        expert_split(cfg.moe_study.__class__(top_k=1, num_shared=1), 0.25)


def test_the_width_solver_finds_the_closest_active_count():
    """Brute force over every expert width: none gets the active count closer to the dense model's."""
    base = small_config(latent_mlp_hidden=(16,), readout_mlp_hidden=(16,))
    species = ("Pt", "C", "O")
    moe = MoEConfig(enabled=True, num_experts=6, top_k=2, num_shared=1)
    solution = equal_active_width(base, moe, species)
    dense = parameter_counts(build_model(base, species))[0]
    assert solution.dense == dense and solution.widths == ((round(16 * solution.factor),),) * 3

    def gap(width: int) -> int:
        model = build_model(dataclasses.replace(base, moe=dataclasses.replace(moe, expert_width_factor=width / 16)),
                            species)
        return abs(parameter_counts(model)[0] - dense)

    best = gap(solution.widths[0][0])
    assert best == abs(solution.active - dense)
    assert all(gap(w) >= best for w in range(1, 17))
    assert 16 / 3 - 2 <= solution.widths[0][0] <= 16 / 3 + 2  # about the dense width over 3 active experts


def test_two_variants_and_two_seeds_train_and_the_report_is_written(emt_set, tmp_path):
    """1-epoch smoke runs: the table has the issue's columns, integer seeds then mean and std rows per variant;
    the claims, the routing table and every figure are written."""
    cfg = _cfg(stability={"path_frames": 2, "path_steps": 8})
    summaries = []
    for variant in ("dense", "moe_element_shared"):
        for seed in (0, 1):
            d = tmp_path / variant / f"seed{seed}"
            summary = train_variant(cfg, dataset=emt_set, dataset_name="emt_alloys", variant=variant, seed=seed,
                                    checkpoint=d / "model.pt", metrics=d / "metrics.csv", summary=d / "summary.json")
            assert summary["status"] == "ok" and not summary["is_dft"] and summary["seed"] == seed
            assert np.isfinite(summary["test_force_mae_mev_a"]) and summary["n_paths"] == 2
            assert summary["path_jump_mev"] < 1.0 and not summary["unstable"]
            summaries.append(d / "summary.json")
    metrics = pd.read_csv(tmp_path / "moe_element_shared" / "seed0" / "metrics.csv")
    assert "train_moe_balance" in metrics and any(c.startswith("routing_model_readout_") for c in metrics)
    assert {"nonfinite_grads", "val_force_mae_mev_a"} <= set(metrics.columns)
    loaded = read_summaries(summaries)
    assert loaded[0]["test_force_mae_mev_a"] != loaded[1]["test_force_mae_mev_a"], "seeds differ"
    load = np.asarray(loaded[2]["load"])
    assert load.shape[1:] == (7, 4) and np.allclose(load.sum(-1)[load.sum(-1) > 0], 1.0)
    assert np.asarray(loaded[2]["router_probs"]).shape == load.shape
    out = {k: tmp_path / f"report.{k}" for k in ("csv", "md", "routing.csv", "routing.md")}
    figures = {k: tmp_path / f"{k}.png" for k in ("heatmap", "pca", "curves")}
    write_report(loaded, csv=out["csv"], md=out["md"], routing_csv=out["routing.csv"], routing_md=out["routing.md"],
                 routing_cfg=MoEStudyRoutingConfig(permutations=50), **figures)
    table = pd.read_csv(out["csv"])
    assert list(table.columns[1:12]) == list(COLUMNS) and table.columns[0] == "dataset"
    assert list(table["seed"].astype(str)) == ["0", "1", "mean", "std"] * 2
    assert list(table["routing"]) == ["none"] * 4 + ["element"] * 4
    moe = table[table["variant"] == "moe_element_shared"]
    assert (moe["shared_experts"] == 2).all() and (moe["top_k"] == 2).all() and (moe["routed_experts"] == 4).all()
    mean = moe[moe["seed"] == "mean"]["force_mae_mev_a"].item()
    assert mean == pytest.approx(moe[moe["seed"].isin(["0", "1"])]["force_mae_mev_a"].mean(), rel=1e-5)
    text = out["md"].read_text()
    assert "not DFT" in text and "## Claims" in text and "test frames" in text and "unstable` = 1" in text
    assert all(s["split_unit"] == "group" for s in loaded) and "split by group" in text  # the EMT set's splits
    routing = pd.read_csv(out["routing.csv"])
    assert set(routing["label"]) == {"family", "group", "period"} and list(routing["seed"].unique()) == [0, 1]
    assert all(p.stat().st_size > 0 for p in figures.values())


def test_a_study_run_resumes_from_its_state(emt_set, tmp_path):
    """A run with a state file that finished is not trained again: the second call gives the same model."""
    cfg = _cfg(max_epochs=2, stability={"path_frames": 1, "path_steps": 4})
    kwargs = {"dataset": emt_set, "dataset_name": "emt_alloys", "variant": "moe_element_shared", "seed": 3,
              "state": tmp_path / "state" / "training_state.pt"}
    first = train_variant(cfg, checkpoint=tmp_path / "a.pt", metrics=tmp_path / "a.csv", summary=tmp_path / "a.json",
                          **kwargs)
    assert (tmp_path / "state" / "training_state.pt").exists() and first["epochs"] == 2
    again = train_variant(cfg, checkpoint=tmp_path / "b.pt", metrics=tmp_path / "b.csv", summary=tmp_path / "b.json",
                          **kwargs)
    assert again["test_force_mae_mev_a"] == first["test_force_mae_mev_a"] and again["epochs"] == 2
    assert pd.read_csv(tmp_path / "a.csv").equals(pd.read_csv(tmp_path / "b.csv"))


def _summary_rows(dataset: str, variant: str, forces: list[float], unstable: list[bool], **extra) -> list[dict]:
    moe = variant != "dense"
    return [{"dataset": dataset, "variant": variant, "routing": "element" if moe else "none", "expert_type": "mlp",
             "shared_experts": 2 * moe, "routed_experts": 8 * moe, "top_k": 2 * moe, "active_params": 100,
             "total_params": 300 if moe else 100, "seed": seed, "test_energy_mae_mev_atom": f / 10,
             "test_force_mae_mev_a": f, "unstable": u, "loss_spikes": 0, "nonfinite_grads": 0,
             "path_jump_mev": 50.0 * u, "epochs": 5, "best_epoch": 5, "train_wall_s": 1.0, "status": "ok",
             "labels": "x", "curve": {"train_loss": [2.0, 1.0, 1.0 + 50.0 * u]}, **extra}
            for seed, (f, u) in enumerate(zip(forces, unstable))]


def test_claims_are_judged_from_mean_and_std_over_seeds():
    rows = (_summary_rows("periodic", "dense", [100, 102, 98], [False] * 3)
            + _summary_rows("periodic", "moe_element_shared", [80, 81, 79], [False] * 3)
            + _summary_rows("periodic", "moe_element", [79, 90, 100], [False] * 3)
            + _summary_rows("periodic", "mole_element_shared", [60, 61, 62], [False] * 3)
            + _summary_rows("periodic", "moe_global_shared", [90, 91, 92], [True, True, False]))
    verdicts = claims(study_table(rows))
    force = verdicts[verdicts["metric"].str.startswith("test force")].set_index("claim")["verdict"]
    assert force[force.index.str.startswith("sparse activation")].item() == "supported"
    assert force[force.index.str.startswith("shared experts help")].item().startswith("inconclusive")
    assert force[force.index.str.startswith("non-linear MoE")].item() == "contradicted"
    assert force[force.index.str.startswith("element-wise routing")].item().startswith("not tested")
    instability = verdicts[verdicts["claim"].str.startswith("global")]["verdict"].item()
    assert instability == "supported"
    table = study_table(rows)
    global_ = table[(table["variant"] == "moe_global_shared") & (table["seed"] == "mean")]
    assert global_["max_loss_jump"].item() == pytest.approx((51.0 + 51.0 + 1.0) / 3)  # 51x on the unstable seeds
    assert "80.0 +- 1.0 (n=3)" in verdicts[verdicts["claim"].str.startswith("sparse")]["better"].iloc[0]


def test_the_table_says_how_much_the_last_quarter_of_the_epochs_gained():
    """late_change_*_pct: change of the best-so-far validation error over the last quarter of the epochs."""
    curves = [{"train_loss": [1.0] * 8, "val_force_mae_mev_a": [5.0, 4.0, 3.0, 3.5, 3.0, 3.1, 3.2, 2.7],
               "val_energy_mae_mev_atom": [5.0, 4.0, 3.0, 2.0, 2.0, 2.0, 2.5, 2.1]},
              {"train_loss": [1.0] * 3, "val_force_mae_mev_a": [3.0, 2.0, 1.0], "val_energy_mae_mev_atom": [1.0] * 3}]
    rows = _summary_rows("periodic", "dense", [100, 102], [False] * 2)
    for row, curve in zip(rows, curves):
        row["curve"] = curve
    table = study_table(rows).set_index("seed")
    assert table.loc[0, "late_change_force_pct"] == pytest.approx(-10.0)  # best 3.0 -> 2.7 in the last 2 of 8
    assert table.loc[0, "late_change_energy_pct"] == 0.0  # the best, 2.0, came before the last quarter
    assert np.isnan(table.loc[1, "late_change_force_pct"])  # 3 epochs are too few to say


def test_a_claim_the_bands_support_is_inconclusive_when_one_seed_reverses_it():
    # bands separate (68.2 + 14.5 < 97.0 - 7.8) but seed 3 of the MoE is worse than seed 3 of dense
    rows = (_summary_rows("periodic", "dense", [100, 101, 102, 85], [False] * 4)
            + _summary_rows("periodic", "moe_element_shared", [60, 61, 62, 90], [False] * 4))
    table = study_table(rows)
    assert better(mean_std(table, "periodic", "moe_element_shared", "force_mae_mev_a"),
                  mean_std(table, "periodic", "dense", "force_mae_mev_a")) == "supported"
    verdicts = claims(table)
    sparse = verdicts[verdicts["claim"].str.startswith("sparse") & verdicts["metric"].str.startswith("test force")]
    assert sparse["verdict"].item() == "inconclusive (supported by mean +- std, not in seed 3)"
    # with seed 3 of the MoE below dense the same bands stand
    rows[-1]["test_force_mae_mev_a"] = 84.0
    # two seeds are too few, however far apart
    rows += _summary_rows("periodic", "moe_element", [300, 301], [False] * 2)
    verdicts = claims(study_table(rows))
    force = verdicts[verdicts["metric"].str.startswith("test force")].set_index("claim")["verdict"]
    assert force[force.index.str.startswith("sparse")].item() == "supported"
    assert force[force.index.str.startswith("shared experts help")].item() == "inconclusive (2 of 3 seeds)"
    rows += (_summary_rows("periodic", "moe_element_shared25", [300, 301], [False] * 2)
             + _summary_rows("periodic", "moe_element_shared75", [300, 301, 302], [False] * 3))
    split = claims(study_table(rows)).set_index("claim")["verdict"]
    assert split[split.index.str.startswith("about half")].item() == "inconclusive (2 of 3 seeds)"


def test_periodic_positions():
    assert periodic_position("Li") == (1, 2) and periodic_position("Ga") == (13, 4)
    assert periodic_position("Sb") == (15, 5)
    assert periodic_position("W") == (6, 6) and periodic_position("Au") == (11, 6) and periodic_position("La") == (3, 6)


def test_permutation_test_finds_a_planted_grouping_and_not_shuffled_labels():
    """12 elements in 4 tight clusters: the cluster labels score 1 with p < 0.05; labels shuffled once (fixed
    seed) score about chance with a large p."""
    rng = np.random.default_rng(0)
    labels = [f"g{i // 3}" for i in range(12)]
    vectors = np.repeat(rng.normal(0, 10, (4, 5)), 3, axis=0) + rng.normal(0, 0.1, (12, 5))
    assert knn_agreement(vectors, labels, k=2) == 1.0
    score, p, chance = permutation_test(vectors, labels, k=2, permutations=500, seed=0)
    assert score == 1.0 and p < 0.05 and chance < 0.5
    shuffled = list(np.random.default_rng(1).permutation(labels))
    score_s, p_s, _ = permutation_test(vectors, shuffled, k=2, permutations=500, seed=0)
    assert score_s < 0.5 and p_s > 0.2
    assert permutation_test(vectors, labels, k=2, permutations=50, seed=4) == \
        permutation_test(vectors, labels, k=2, permutations=50, seed=4)


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
    model = build_model(variant_config(cfg, "moe_element_shared", species)[0], species, dtype=torch.float64, seed=1)
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


def test_the_study_dag_dry_runs_with_two_seeds(tmp_path):
    """``snakemake -n moe_study`` plans one resumable training per (dataset, variant, seed) and one report."""
    from workflow_support import emt_workdir, run_snakemake

    def configure(config):
        config["moe_study"].update(enabled=True, datasets=["pt_co"], variants=["dense", "moe_global_shared"],
                                   seeds=[0, 1])

    workdir = emt_workdir(tmp_path, configure)
    result = run_snakemake("-n", "-p", "--cores", "1", "moe_study", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for variant in ("dense", "moe_global_shared"):
        for seed in (0, 1):
            assert f"results/moe_study/pt_co/{variant}/seed{seed}/summary.json" in out
    assert "seed2" not in out
    assert "--seed 1 --state results/moe_study/pt_co/dense/seed1/state/training_state.pt" in out
    jobs = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
            if line.startswith(("moe_study_train ", "moe_study_report "))}
    assert jobs == {"moe_study_train": 4, "moe_study_report": 1}


def test_choosing_runs_or_changing_the_teacher_check_leaves_the_periodic_dataset_command_alone(tmp_path):
    """The periodic dataset's command (its params) must not depend on which variants, datasets or seeds run, or on
    the teacher check: snakemake would rebuild the dataset and rerun every finished study run."""
    from workflow_support import REPO, emt_workdir, run_snakemake

    commands = []
    for k, (variants, kpt_density) in enumerate(((["dense"], 3.0), (["dense", "moe_element"], 4.5))):
        def configure(config, variants=variants, kpt_density=kpt_density):
            config["moe_study"].update(enabled=True, datasets=["periodic"], variants=variants, seeds=[0, 1])
            config["moe_study"]["periodic"]["path"] = str(REPO / "resources/moe_study/periodic_teacher.extxyz")
            config["moe_study"]["periodic"]["teacher_check"]["kpt_density"] = kpt_density

        (tmp_path / str(k)).mkdir()
        workdir = emt_workdir(tmp_path / str(k), configure)
        result = run_snakemake("-n", "-p", "--cores", "1", "results/moe_study/periodic/dataset.extxyz", cwd=workdir)
        assert result.returncode == 0, result.stderr[-3000:]
        commands.append([line for line in (result.stdout + result.stderr).splitlines()
                         if "moe-periodic-dataset" in line])
    assert len(commands[0]) == 1 and commands[0] == commands[1]
    assert "kpt_density" not in commands[0][0] and "variants" not in commands[0][0]
