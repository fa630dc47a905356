"""Interface analysis: identical experts give zero interface force; locality; the table and profile."""

import numpy as np
import pytest
import torch
from analysis_support import tiny_analysis_config, write_pair

from pipeline.analysis._common import load_pairs
from pipeline.analysis.eos import fcc_supercell, half_split
from pipeline.analysis.interface import (
    crystals,
    interface_forces,
    interface_table,
    signed_interface_distance,
    write_interface,
)
from pipeline.md.partition import HF


def test_signed_distance_is_negative_on_the_hf_side():
    atoms = fcc_supercell(3.97, (2, 2, 6))
    expert = half_split(atoms)
    d = signed_interface_distance(atoms, expert)
    assert np.all(d[expert == HF] < 0) and np.all(d[expert != HF] > 0)
    assert np.abs(d).min() == pytest.approx(3.97 / 4)  # half a (001) layer spacing
    assert np.abs(d).max() == pytest.approx(3.97 / 4 * 5)


def test_identical_experts_give_zero_interface_force(tmp_path):
    cfg = tiny_analysis_config()
    pairs = {"same": write_pair(tmp_path / "same", cfg, identical=True)}
    experts = load_pairs(pairs, species=cfg.species, dtype=torch.float64, device=torch.device("cpu"))["same"]
    _, expert, lattices = crystals(cfg)
    for frames in lattices.values():
        assert np.abs(interface_forces(experts, frames, expert)).max() < 1e-10


def test_different_experts_act_only_within_a_cutoff(tmp_path):
    cfg = tiny_analysis_config()
    pairs = {"independent": write_pair(tmp_path / "ind", cfg, seeds=(0, 1)),
             "cotrained": write_pair(tmp_path / "same", cfg, identical=True)}
    table, profile = interface_table(cfg, pairs=pairs)
    t = table.set_index(["pair", "lattice"])
    assert t.loc[("independent", "perfect"), "max_force_mev_a"] > 1.0
    assert t.loc[("cotrained", "perfect"), "max_force_mev_a"] < 1e-7
    assert (table["far_max_force_mev_a"] < 1e-7).all()  # strict locality: nothing beyond one cutoff
    assert set(table["lattice"]) == {"perfect", "thermal"}
    assert (t.loc[("independent", "thermal"), "snapshots"]) == 2
    assert set(profile["pair"]) == {"independent", "cotrained"}
    out = tmp_path / "out"
    write_interface(table, profile, csv=out / "i.csv", md=out / "i.md", png=out / "i.png")
    assert (out / "i.png").stat().st_size > 0
    assert "max_force_mev_a" in (out / "i.csv").read_text()
