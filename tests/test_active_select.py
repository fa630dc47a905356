"""Selection: candidates by score, farthest-point sampling in descriptor space, deterministic for a seed,
diverse picks, chunk files with provenance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ase.io import read

from pipeline.active.cells import SiteHeights, build_cell
from pipeline.active.select import (
    candidate_mask,
    farthest_point_sampling,
    frame_descriptor,
    select_frames,
    write_selection,
)
from pipeline.config import ActiveSelectConfig


def _clusters(seed: int = 0):
    """60 frames in 3 well separated descriptor clusters; cluster 0 holds every high score."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]])
    label = np.repeat([0, 1, 2], 20)
    x = centres[label] + rng.normal(0, 0.3, (60, 4))
    scores = np.where(label == 0, 2.0, 1.0) + rng.uniform(0, 0.5, 60)
    return x, scores, label


def test_candidates_are_the_top_fraction_above_the_threshold():
    scores = np.arange(10, dtype=float)
    assert np.flatnonzero(candidate_mask(scores, ActiveSelectConfig(top_fraction=0.3))).tolist() == [7, 8, 9]
    mask = candidate_mask(scores, ActiveSelectConfig(top_fraction=0.5, min_score_ev_a=8.0))
    assert np.flatnonzero(mask).tolist() == [8, 9]
    assert not candidate_mask(np.zeros(0), ActiveSelectConfig()).any()


def test_farthest_point_sampling_covers_the_clusters():
    x, _, label = _clusters()
    picks = farthest_point_sampling(x, 3, first=0)
    assert sorted(label[picks].tolist()) == [0, 1, 2]
    assert len(set(farthest_point_sampling(x, 60, first=5))) == 60


def test_selection_is_diverse_not_just_the_top_scores():
    x, scores, label = _clusters()
    cfg = ActiveSelectConfig(top_fraction=1.0, max_frames=3)
    chosen = select_frames(scores, x, cfg, seed=0)
    assert chosen[0] == int(np.argmax(scores))  # starts from the most uncertain frame
    assert sorted(label[chosen].tolist()) == [0, 1, 2]  # one per cluster, although cluster 0 has the top scores
    top3 = np.argsort(scores)[::-1][:3]
    assert set(label[top3]) == {0}


def test_selection_is_deterministic_for_a_seed_and_ties_follow_the_seed():
    x, scores, _ = _clusters()
    cfg = ActiveSelectConfig(top_fraction=0.5, max_frames=8)
    assert select_frames(scores, x, cfg, seed=3) == select_frames(scores.copy(), x.copy(), cfg, seed=3)
    # all frames identical in score and descriptor: only the seed decides
    flat = ActiveSelectConfig(top_fraction=1.0, max_frames=5)
    a = select_frames(np.ones(30), np.ones((30, 4)), flat, seed=1)
    assert a == select_frames(np.ones(30), np.ones((30, 4)), flat, seed=1)
    assert len(a) == 5 and len(set(a)) == 5
    assert any(select_frames(np.ones(30), np.ones((30, 4)), flat, seed=s) != a for s in range(2, 6))


def test_frame_descriptor_is_a_per_element_mean():
    d = np.arange(12.0).reshape(4, 3)
    out = frame_descriptor(d, np.array([78, 78, 6, 8]), [78, 6, 8])
    np.testing.assert_allclose(out, [1.5, 2.5, 3.5, 6, 7, 8, 9, 10, 11])
    # permuting like atoms does not change it; an absent element gives zeros
    np.testing.assert_allclose(frame_descriptor(d[[1, 0, 2, 3]], np.array([78, 78, 6, 8]), [78, 6, 8]), out)
    assert frame_descriptor(d[:2], np.array([78, 78]), [78, 6, 8])[3:].tolist() == [0.0] * 6


def test_write_selection_writes_chunks_in_pick_order(tmp_path):
    frames = []
    for k in range(5):
        atoms = build_cell("2x2x4-co-top", lattice_constant_a=3.97, sites=SiteHeights(), vacuum_a=7.0)
        atoms.info.update(structure_id=f"al-x-s{k:06d}", al_score=float(k))
        atoms.new_array("spread", np.zeros(len(atoms)))
        frames.append(atoms)
    scores = pd.DataFrame({"structure_id": [f.info["structure_id"] for f in frames], "score_ev_a": range(5)})
    table = write_selection(frames, [4, 1, 2], scores, directory=tmp_path / "sel", chunk_size=2)
    assert table["structure_id"].tolist() == ["al-x-s000004", "al-x-s000001", "al-x-s000002"]
    assert table["chunk"].tolist() == [0, 0, 1]
    chunks = sorted((tmp_path / "sel").glob("chunk_*.extxyz"))
    assert [len(read(c, ":")) for c in chunks] == [2, 1]
    first = read(chunks[0], ":")
    assert [f.info["sample_index"] for f in first] == [0, 1] and first[0].info["al_score"] == pytest.approx(4.0)
    assert "spread" not in first[0].arrays
    write_selection(frames, [], scores, directory=tmp_path / "none", chunk_size=2)
    assert (tmp_path / "none" / "chunk_000.extxyz").stat().st_size == 0
