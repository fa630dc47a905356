"""Committee uncertainty: the spread formula, frame scores of a tiny trained committee (a perturbed frame ranks
above equilibrium ones), and the calibration table, summary and plot."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from active_support import tiny_active_config, train_committee
from pipeline.active.uncertainty import (
    calibration_summary,
    calibration_table,
    committee_predictions,
    force_spread,
    load_committee,
    plot_calibration,
    score_frames,
    spearman,
)
from pipeline.models.testing import random_rotation


@pytest.fixture(scope="module")
def committee(tmp_path_factory):
    cfg = tiny_active_config()
    paths = train_committee(tmp_path_factory.mktemp("committee"), cfg)
    return load_committee(paths["hf"], species=cfg.species)


def _slab_co(seed: int, rattle: float) -> Atoms:
    """A 2x2x3 Pt(111) slab with CO on top, as in the tiny training set (periodic cell, 5 A vacuum)."""
    atoms = fcc111("Pt", (2, 2, 3), a=3.92, vacuum=5.0, periodic=True)
    add_adsorbate(atoms, molecule("CO")[::-1], 1.85, "ontop")
    atoms.info.pop("adsorbate_info", None)
    atoms.positions += np.random.default_rng(seed).normal(0, rattle, atoms.positions.shape)
    return atoms


def test_force_spread_is_the_rotation_invariant_committee_std():
    rng = np.random.default_rng(0)
    forces = rng.normal(size=(4, 5, 3))
    expected = np.sqrt(((forces - forces.mean(0)) ** 2).sum(axis=(0, 2)) / 3)
    np.testing.assert_allclose(force_spread(forces), expected)
    rotation = random_rotation(rng)
    np.testing.assert_allclose(force_spread(forces @ rotation.T), expected)
    with pytest.raises(ValueError, match="K >= 2"):
        force_spread(forces[:1])


def test_the_frame_score_is_the_worst_atom_not_the_mean():
    # one atom with a large disagreement among 40 quiet ones: the max keeps it, a mean would dilute it 40x
    forces = np.zeros((3, 41, 3))
    forces[:, 7, 0] = [1.0, 0.0, -1.0]
    sigma = force_spread(forces)
    assert sigma.argmax() == 7 and sigma.max() == pytest.approx(1.0) and sigma.mean() < 0.03


def test_a_perturbed_frame_ranks_above_equilibrium_frames(committee):
    equilibrium = [_slab_co(seed, 0.04) for seed in range(4)]  # like the training frames
    perturbed = _slab_co(10, 0.04)
    c = [i for i, s in enumerate(perturbed.get_chemical_symbols()) if s == "C"][0]
    perturbed.positions[c, 2] -= 0.7  # C pushed towards the Pt below (C-Pt 1.15 A)
    perturbed.positions[c + 1, 2] -= 0.3
    table, descriptors = score_frames(committee, [*equilibrium, perturbed])
    scores = table["score_ev_a"].to_numpy()
    assert scores[-1] > scores[:-1].max(), scores
    assert table["worst_atom"].iloc[-1] in (c, c + 1)  # the spread sits on the displaced molecule
    assert perturbed.info["al_score"] == pytest.approx(scores[-1])
    assert descriptors[0].shape[0] == len(equilibrium[0]) and descriptors[0].shape[1] > 0


def test_calibration_table_summary_and_plot(committee, tmp_path):
    frames = []
    for k, rattle in enumerate((0.02, 0.05, 0.1, 0.15, 0.2, 0.3)):
        atoms = _slab_co(20 + k, rattle)
        calc = EMT()
        atoms.calc = calc
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        atoms.info.update(structure_id=f"f{k}", family="slab_co")
        frames.append(atoms)
    output = committee_predictions(committee, frames, batch_size=4)
    assert output.energies.shape == (3, 6) and output.forces[0].shape == (3, len(frames[0]), 3)
    table = calibration_table(output, frames, sources=["test"] * 3 + ["selected"] * 3)
    mean = output.forces[2].mean(axis=0)
    assert table.loc[2, "error_max_ev_a"] == pytest.approx(np.linalg.norm(mean - frames[2].get_forces(), axis=1).max())
    summary, binned = calibration_summary(table, bins=3)
    assert summary["n_frames"] == 6 and summary["n_test"] == 3 and -1 <= summary["spearman"] <= 1
    assert binned["frames"].sum() == 6 and (np.diff(binned["score_mean"]) > 0).all()
    plot_calibration(table, binned, tmp_path / "calibration.png", title="test")
    assert (tmp_path / "calibration.png").stat().st_size > 1000


def test_spearman():
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))
