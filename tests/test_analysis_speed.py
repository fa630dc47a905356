"""Speed analysis: the ideal bound, edge counting, the timing slab and the table (no assertion on wall time)."""

import numpy as np
import pytest
from analysis_support import tiny_analysis_config, write_pair

from pipeline.analysis.speed import (
    COLUMNS,
    expert_edges,
    ideal_speedup,
    speed_table,
    timing_slab,
    write_speed,
)
from pipeline.config import MDSystemConfig
from pipeline.md.system import build_production_cell


def test_ideal_speedup_limits():
    assert ideal_speedup(1.0, c_hf=2.0, c_lf=0.5) == pytest.approx(1.0)
    assert ideal_speedup(0.0, c_hf=2.0, c_lf=0.5) == pytest.approx(4.0)
    assert ideal_speedup(0.5, c_hf=1.0, c_lf=1.0) == pytest.approx(1.0)
    assert ideal_speedup(0.1, c_hf=1.0, c_lf=0.0) == pytest.approx(10.0)


def _slab():
    """3x3 Pt(111), 3 layers (a = 3.97 A: first neighbours 2.81 A, second 3.97 A, next 4.86 A)."""
    return build_production_cell(MDSystemConfig(surface_size=(3, 3), layers=3, n_co=0, vacuum_a=5.0))


def test_edges_are_counted_per_centre_with_each_experts_cutoff():
    atoms = _slab()
    layer = np.round((atoms.positions[:, 2] - atoms.positions[:, 2].min()) / 2.29).astype(int)  # 0, 1, 2
    assert np.bincount(layer).tolist() == [9, 9, 9]
    top = (layer == 2).astype(np.int64)
    hf_on_top = 1 - top  # expert 0 (HF) on the top layer, expert 1 (LF) below
    # first shell (r 3 A): 9 neighbours at a surface, 12 inside; + second shell (r 4.5 A): 3 more at a
    # surface, 6 inside
    assert expert_edges(atoms, hf_on_top, (3.0, 3.0)).tolist() == [9 * 9, 9 * 12 + 9 * 9]
    assert expert_edges(atoms, hf_on_top, (3.0, 4.5)).tolist() == [9 * 9, 9 * 18 + 9 * 12]
    assert expert_edges(atoms, np.zeros(27, dtype=np.int64), (4.5,)).tolist() == [9 * (12 + 18 + 12)]


def test_edge_bound_is_the_speedup_of_a_cost_proportional_to_edges():
    atoms = _slab()
    layer = np.round((atoms.positions[:, 2] - atoms.positions[:, 2].min()) / 2.29).astype(int)
    expert = np.where(layer == 2, 0, 1)  # HF on the surface: f = 1/3 of the atoms, fewer edges
    a, b = 3e-6, 0.4e-6  # s per edge of HF and LF
    for r_max in ((3.0, 3.0), (4.5, 3.0)):
        n_h = expert_edges(atoms, np.zeros(27, dtype=np.int64), r_max[:1])[0]
        n_l = expert_edges(atoms, np.zeros(27, dtype=np.int64), r_max[1:])[0]
        e_h, e_l = expert_edges(atoms, expert, r_max)
        t_hf, t_lf, t_moe = a * n_h, b * n_l, a * e_h + b * e_l  # the synthetic cost model
        bound = ideal_speedup(e_h / n_h, e_lf=e_l / n_h, c_hf=t_hf / n_h, c_lf=t_lf / n_l)
        assert bound == pytest.approx(t_hf / t_moe)
        naive = ideal_speedup(9 / 27, c_hf=t_hf / 27, c_lf=t_lf / 27)
        assert naive != pytest.approx(bound, rel=0.02)  # atoms are not the unit of cost here


def test_timing_slab_has_about_the_requested_size():
    atoms = timing_slab(500, layers=6, co_coverage=0.16, lattice_constant_a=3.97)
    assert 450 <= len(atoms) <= 550
    assert "C" in atoms.get_chemical_symbols()


def test_speed_table_rows(tmp_path):
    cfg = tiny_analysis_config()
    paths = write_pair(tmp_path, cfg)
    table = speed_table(cfg, hf=paths["hf"], lf=paths["lf"])
    assert tuple(table.columns) == COLUMNS
    assert list(table["mode"]) == ["hf", "lf", "moe", "moe", "adaptive"]
    by_mode = table.set_index("mode")
    assert by_mode.loc["hf", "speedup_vs_hf"] == pytest.approx(1.0)
    assert by_mode.loc["hf", "ideal_speedup"] == pytest.approx(1.0)
    assert by_mode.loc["hf", "hf_edge_fraction"] == 1.0 and by_mode.loc["lf", "hf_edge_fraction"] == 0.0
    # full LF: the ideal bound is the measured cost ratio, i.e. its measured speedup (per edge and per atom)
    for column in ("ideal_speedup", "ideal_speedup_atoms"):
        assert by_mode.loc["lf", column] == pytest.approx(by_mode.loc["lf", "speedup_vs_hf"])
    assert by_mode.loc["lf", "fraction_of_ideal"] == pytest.approx(1.0)
    assert by_mode.loc["lf", "fraction_of_ideal_one_pass"] == pytest.approx(1.0)
    moe = table[table["mode"] == "moe"]
    assert moe["hf_fraction"].tolist() == pytest.approx([0.25, 0.5], abs=0.05)
    # the HF atoms are those nearest the CO, at the surface: fewer edges than atoms
    assert (moe["hf_edge_fraction"] < moe["hf_fraction"]).all() and (moe["hf_edge_fraction"] > 0).all()
    assert moe["fraction_of_ideal"].tolist() == pytest.approx((moe["speedup_vs_hf"] / moe["ideal_speedup"]).tolist())
    assert (table["n_edges"] > 0).all() and by_mode.loc["hf", "n_edges"] == by_mode.loc["lf", "n_edges"]
    assert table["atom_steps_per_s"].tolist() == pytest.approx((table["n_atoms"] * table["steps_per_s"]).tolist())
    assert (table["threads"] == 1).all() and (table["precision"] == "float64").all()
    # the adaptive partition on the same slab: radii of md.partition.adaptive (inner = LF r_max 4 A, outer 5.5 A)
    adaptive = by_mode.loc["adaptive"]
    n = adaptive["n_atoms"]
    assert (adaptive["r_in_a"], adaptive["r_out_a"], adaptive["margin_a"]) == (4.0, 5.5, 0.5)
    assert 0 < adaptive["n_hf"] < n and 0 < adaptive["n_lf"] < n and adaptive["n_hf"] + adaptive["n_lf"] > n
    assert adaptive["hf_fraction"] == pytest.approx(adaptive["n_hf"] / n) and np.isnan(adaptive["target_hf_fraction"])
    assert 0 < adaptive["hf_edge_fraction"] < 1
    assert adaptive["centres_per_chunk"] == by_mode.loc["moe", "centres_per_chunk"].iloc[0]
    assert adaptive["steps_per_s"] > 0 and adaptive["step_time_ms_one_pass"] > 0 and adaptive["ideal_speedup"] > 0
    assert table.loc[table["mode"] != "adaptive", "r_in_a"].isna().all()
    assert (table.loc[table["mode"] == "moe", "n_hf"] + table.loc[table["mode"] == "moe", "n_lf"] == n).all()
    write_speed(table, csv=tmp_path / "s.csv", md=tmp_path / "s.md", png=tmp_path / "s.png")
    assert "Device" in (tmp_path / "s.md").read_text() and "mode adaptive" in (tmp_path / "s.md").read_text()
