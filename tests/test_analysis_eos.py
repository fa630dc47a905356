"""EOS analysis: Birch-Murnaghan fits with known answers, the HF/LF split, identical experts, the table."""

import numpy as np
import pytest
from analysis_support import tiny_analysis_config, write_pair
from ase.units import GPa

from pipeline.analysis.eos import (
    birch_murnaghan,
    dft_eos_frames,
    eos_table,
    fcc_supercell,
    fit_birch_murnaghan,
    half_split,
    write_eos,
)
from pipeline.md.partition import HF, LF


def test_fit_recovers_a_known_birch_murnaghan_curve():
    v = np.linspace(14.2, 17.2, 11)
    e = birch_murnaghan(v, e0=-6.1, v0=15.64, b0=248.7 * GPa, b0_prime=5.46)
    fit = fit_birch_murnaghan(v, e)
    assert fit["v0_a3_atom"] == pytest.approx(15.64, rel=1e-6)
    assert fit["b0_gpa"] == pytest.approx(248.7, rel=1e-5)
    assert fit["b0_prime"] == pytest.approx(5.46, rel=1e-4)
    assert fit["e0_ev_atom"] == pytest.approx(-6.1, abs=1e-9)
    assert fit["a0_a"] == pytest.approx((4 * 15.64) ** (1 / 3), rel=1e-6)


def test_fit_needs_five_points():
    with pytest.raises(ValueError, match=">= 5"):
        fit_birch_murnaghan([1.0, 2.0, 3.0], [0.0, -1.0, 0.0])


def test_half_split_puts_the_lower_half_on_hf():
    atoms = fcc_supercell(3.97, (2, 2, 4))
    expert = half_split(atoms)
    assert (expert == HF).sum() == (expert == LF).sum() == len(atoms) // 2
    z = atoms.positions[:, 2]
    assert z[expert == HF].max() < z[expert == LF].min()


def test_dft_eos_frames_selects_the_bulk_eos_series():
    frames = [fcc_supercell(3.9, (1, 1, 1)) for _ in range(3)]
    frames[0].info.update(family="bulk", config_type="eos")
    frames[1].info.update(family="bulk", structure_id="bulk-eos-004")
    frames[2].info.update(family="bulk", config_type="rattle", structure_id="bulk-rattle-4at-000")
    assert dft_eos_frames(frames) == frames[:2]


def test_identical_experts_give_the_single_model_eos(tmp_path):
    cfg = tiny_analysis_config()
    pairs = {"independent": write_pair(tmp_path / "same", cfg, identical=True),
             "cotrained": write_pair(tmp_path / "other", cfg, seeds=(2, 3))}
    table, points = eos_table(cfg, dataset=None, pairs=pairs, reference_pair="independent")
    np.testing.assert_allclose(points["moe_independent"][1], points["hf"][1], atol=1e-10)
    np.testing.assert_allclose(points["lf_independent"][1], points["hf"][1], atol=1e-10)
    assert not np.allclose(points["moe_cotrained"][1], points["hf_cotrained"][1])
    assert list(table["model"]) == ["pbe_reference", "hf", "hf_cotrained", "lf_independent", "lf_cotrained",
                                    "moe_independent", "moe_cotrained"]
    ref = table.set_index("model").loc["pbe_reference"]
    assert (ref["v0_a3_atom"], ref["b0_gpa"], ref["b0_prime"]) == pytest.approx((15.642, 248.711, 5.46))
    out = tmp_path / "out"
    write_eos(table, points, csv=out / "eos.csv", md=out / "eos.md", png=out / "eos.png", precision="float64",
              lf_data="bulk_atoms")
    assert (out / "eos.png").stat().st_size > 0
    assert "v0_a3_atom" in (out / "eos.md").read_text()
