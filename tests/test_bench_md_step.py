"""The derived columns of benchmarks/bench_md_step.py (per-atom cost, linearity, ideal bounds)."""

import importlib.util
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_md_step.py"
_spec = importlib.util.spec_from_file_location("bench_md_step", _path)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _row(n, mode, ms, n_hf=0, variant="chunked"):
    # 40 edges per atom, except the mixture's HF atoms (at the surface): 30
    edges_hf = {"hf": 40 * n, "lf": 0}.get(mode, 30 * n_hf)
    edges_lf = {"hf": 0, "lf": 40 * n}.get(mode, 40 * (n - n_hf))
    return {"n_atoms": n, "mode": mode, "variant": variant, "centres_per_chunk": 0, "n_hf": n_hf, "step_ms": ms,
            "best_ms": ms, "neighbor_build_ms": 2.0, "peak_mib": n / 1024.0, "n_edges": 40 * n,
            "edges_hf": edges_hf, "edges_lf": edges_lf}


def test_derived_columns():
    # HF 1 ms/atom at 500 and 1.2 ms/atom at 1000 (20 % superlinear); LF 0.1 ms/atom; mixture at f = 0.2
    rows = [_row(500, "hf", 500.0, 500), _row(1000, "hf", 1200.0, 1000), _row(500, "lf", 50.0),
            _row(1000, "lf", 100.0), _row(500, "moe", 140.0, 100), _row(1000, "moe", 280.0, 200)]
    table = bench.build_table(rows, hf_fraction=0.2, rebuild_rate=0.05).set_index(["mode", "n_atoms"])
    assert table.loc[("hf", 1000), "linearity"] == pytest.approx(1.2)
    assert table.loc[("lf", 1000), "linearity"] == pytest.approx(1.0)
    assert table.loc[("moe", 500), "speedup_vs_hf"] == pytest.approx(500 / 140)
    # per-edge costs 1/40 and 0.1/40 ms; the mixture's HF atoms carry 30 edges: e_H = 0.15, e_L = 0.8
    ideal = 1.0 / (0.15 + 0.8 * 0.1)
    assert table.loc[("moe", 500), "hf_edge_fraction"] == pytest.approx(0.15)
    assert table.loc[("moe", 500), "ideal_speedup"] == pytest.approx(ideal)
    assert table.loc[("moe", 500), "fraction_of_ideal"] == pytest.approx(500 / 140 / ideal)
    assert table.loc[("moe", 500), "ideal_speedup_atoms"] == pytest.approx(1.0 / (0.2 + 0.8 * 0.1))
    assert table.loc[("hf", 500), "ideal_speedup"] == pytest.approx(1.0)
    assert table.loc[("lf", 500), "ideal_speedup"] == pytest.approx(10.0)
    assert table.loc[("lf", 500), "fraction_of_ideal"] == pytest.approx(1.0)
    assert table.loc[("hf", 500), "kib_per_atom"] == pytest.approx(1.0)
    assert table.loc[("hf", 500), "neighbor_share_md"] == pytest.approx(0.05 * 2.0 / 500)
    assert table.loc[("moe", 1000), "hf_fraction"] == pytest.approx(0.2)


def test_adaptive_rows_count_the_shell_for_both_experts():
    # the adaptive partition at 500 atoms: 120 HF centres and 420 LF centres (40 in the switching shell)
    adaptive = dict(_row(500, "adaptive", 150.0, 120), n_lf=420, edges_hf=30 * 120, edges_lf=40 * 420)
    rows = [_row(500, "hf", 500.0, 500), _row(500, "lf", 50.0), _row(500, "moe", 140.0, 100), adaptive]
    table = bench.build_table(rows, hf_fraction=0.2, rebuild_rate=0.05).set_index(["mode", "n_atoms"])
    assert table.loc[("adaptive", 500), "hf_fraction"] == pytest.approx(120 / 500)
    assert table.loc[("adaptive", 500), "ideal_speedup_atoms"] == pytest.approx(1.0 / (0.24 + 0.84 * 0.1))
    assert table.loc[("adaptive", 500), "ideal_speedup"] == pytest.approx(1.0 / (30 * 120 / 20000 + 0.84 * 0.1))
    assert table.loc[("moe", 500), "ideal_speedup_atoms"] == pytest.approx(1.0 / (0.2 + 0.8 * 0.1))


def test_the_hf_expert_can_be_timed_with_moe_layers():
    """--hf-variant moe_element_shared: the HF expert of the timed case has element-routed MoE layers at the dense
    preset's active parameter count (tiny presets of config/active_smoke.yaml, 4 layers of Pt with CO)."""
    from pipeline.config import load_config
    from pipeline.models.moe import parameter_counts
    from pipeline.train.moe_study import variant_config

    case = {"config": str(_path.parents[1] / "config" / "active_smoke.yaml"), "size": 60, "mode": "hf",
            "variant": "chunked", "dtype": "float64", "threads": 1, "repeats": 1, "warmup": 1, "hf_fraction": 0.2,
            "device": "cpu"}
    dense = bench._setup(case)[2].potential.experts[0]
    moe = bench._setup(dict(case, hf_variant="moe_element_shared"))[2].potential.experts[0]
    assert not dense.moe_layers and moe.moe_layers and moe.moe_layers[0].router.mode == "element"
    active, total = parameter_counts(moe)
    cfg = load_config(case["config"], check_files=False)
    solution = variant_config(cfg, "moe_element_shared", cfg.species, base_model="hf")[1]
    # the closest active count the widths allow (tiny preset: 660 against 600 dense), total reported beside
    assert (active, total) == (solution.active, solution.total) and solution.dense == parameter_counts(dense)[0]
    assert total > active
    row = bench.worker(dict(case, hf_variant="moe_element_shared"))
    assert row["hf_variant"] == "moe_element_shared" and row["step_ms"] > 0 and row["n_hf"] == row["n_atoms"]
