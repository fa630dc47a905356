"""Speed analysis: the ideal bound, the timing slab and the table (no assertion on wall time)."""

import pytest
from analysis_support import tiny_analysis_config, write_pair

from pipeline.analysis.speed import (
    COLUMNS,
    ideal_speedup,
    speed_table,
    timing_slab,
    write_speed,
)


def test_ideal_speedup_limits():
    assert ideal_speedup(1.0, c_hf=2.0, c_lf=0.5) == pytest.approx(1.0)
    assert ideal_speedup(0.0, c_hf=2.0, c_lf=0.5) == pytest.approx(4.0)
    assert ideal_speedup(0.5, c_hf=1.0, c_lf=1.0) == pytest.approx(1.0)
    assert ideal_speedup(0.1, c_hf=1.0, c_lf=0.0) == pytest.approx(10.0)


def test_timing_slab_has_about_the_requested_size():
    atoms = timing_slab(500, layers=6, co_coverage=0.16, lattice_constant_a=3.97)
    assert 450 <= len(atoms) <= 550
    assert "C" in atoms.get_chemical_symbols()


def test_speed_table_rows(tmp_path):
    cfg = tiny_analysis_config()
    paths = write_pair(tmp_path, cfg)
    table = speed_table(cfg, hf=paths["hf"], lf=paths["lf"])
    assert tuple(table.columns) == COLUMNS
    assert list(table["mode"]) == ["hf", "lf", "moe", "moe"]
    by_mode = table.set_index("mode")
    assert by_mode.loc["hf", "speedup_vs_hf"] == pytest.approx(1.0)
    assert by_mode.loc["hf", "ideal_speedup"] == pytest.approx(1.0)
    # full LF: the ideal bound is the measured per-atom cost ratio, i.e. its measured speedup
    assert by_mode.loc["lf", "ideal_speedup"] == pytest.approx(by_mode.loc["lf", "speedup_vs_hf"])
    moe = table[table["mode"] == "moe"]
    assert moe["hf_fraction"].tolist() == pytest.approx([0.25, 0.5], abs=0.05)
    assert table["atom_steps_per_s"].tolist() == pytest.approx((table["n_atoms"] * table["steps_per_s"]).tolist())
    assert (table["threads"] == 1).all() and (table["precision"] == "float64").all()
    write_speed(table, csv=tmp_path / "s.csv", md=tmp_path / "s.md", png=tmp_path / "s.png")
    assert "Device" in (tmp_path / "s.md").read_text()
