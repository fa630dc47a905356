"""Deterministic, group-wise, family-stratified train/validation/test splits."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from ase import Atoms

from pipeline.data.splits import assign_splits, group_of, split_counts, structure_of

GROUPS_PER_FAMILY = {"bulk": 20, "clean_slab": 6, "slab_co": 12, "gas": 2}


def _frames() -> list[Atoms]:
    frames = []
    for family, n_groups in GROUPS_PER_FAMILY.items():
        for g in range(n_groups):
            for k in range(1 + g % 3):
                atoms = Atoms("Pt")
                atoms.info.update(family=family, group=f"{family}/{g:02d}", source_file=f"{family}.extxyz",
                                  source_index=k)
                frames.append(atoms)
    return frames


def _split(frames, seed, validation=0.1, test=0.15):
    return assign_splits(frames, seed=seed, validation_fraction=validation, test_fraction=test)


def test_same_seed_same_split_and_independent_of_frame_order():
    first = _split(_frames(), seed=7)
    shuffled = _frames()
    random.Random(0).shuffle(shuffled)
    assert _split(shuffled, seed=7) == first
    assert _split(_frames(), seed=7) == first


def test_different_seed_different_split():
    assert _split(_frames(), seed=0) != _split(_frames(), seed=1)


def test_no_group_spans_two_splits_and_frames_carry_their_split():
    frames = _frames()
    assignment = _split(frames, seed=3)
    seen = defaultdict(set)
    for atoms in frames:
        seen[atoms.info["group"]].add(atoms.info["split"])
        assert atoms.info["split"] == assignment[atoms.info["group"]]
    assert all(len(splits) == 1 for splits in seen.values())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stratified_by_family(seed):
    frames = _frames()
    assignment = _split(frames, seed=seed)
    per_family = defaultdict(lambda: defaultdict(int))
    for group, split in assignment.items():
        per_family[group.split("/")[0]][split] += 1
    for family, n_groups in GROUPS_PER_FAMILY.items():
        n_val, n_test = split_counts(n_groups, 0.1, 0.15)
        assert per_family[family]["validation"] == n_val
        assert per_family[family]["test"] == n_test
        assert per_family[family]["train"] == n_groups - n_val - n_test
    assert per_family["bulk"]["validation"] == 2 and per_family["bulk"]["test"] == 3
    assert per_family["clean_slab"]["validation"] == 1 and per_family["clean_slab"]["test"] == 1
    assert per_family["gas"]["train"] == 2  # fewer than 3 groups: all training


def test_split_counts_edge_cases():
    assert split_counts(3, 0.1, 0.15) == (1, 1)
    assert split_counts(3, 0.0, 0.15) == (0, 1)
    assert split_counts(2, 0.1, 0.15) == (0, 0)
    assert split_counts(1, 0.5, 0.4) == (0, 0)
    assert split_counts(10, 0.45, 0.45) == (5, 4)  # at least one training group remains
    assert split_counts(100, 0.1, 0.15) == (10, 15)


def test_group_falls_back_to_the_source_file():
    atoms = Atoms("Pt")
    atoms.info.update(source_file="runs/relax/OUTCAR", source_index=4)
    assert group_of(atoms) == "runs/relax/OUTCAR"
    atoms.info["group"] = 17
    assert group_of(atoms) == "17"


def test_structure_unit_splits_the_frames_of_a_group_by_frame_fractions():
    """``unit=structure_of``: every frame is its own unit (stratified by family, fractions of frames), the groups of
    the frames are kept in info, and a frame without a structure id is refused."""
    frames = _frames()
    for k, atoms in enumerate(frames):
        atoms.info["structure_id"] = f"s{k:03d}"
    assignment = assign_splits(frames, seed=0, validation_fraction=0.2, test_fraction=0.2, unit=structure_of)
    assert set(assignment) == {a.info["structure_id"] for a in frames}
    bulk = [a for a in frames if a.info["family"] == "bulk"]
    n_val, n_test = split_counts(len(bulk), 0.2, 0.2)
    assert [sum(a.info["split"] == s for a in bulk) for s in ("validation", "test")] == [n_val, n_test]
    spans = defaultdict(set)
    for atoms in frames:
        spans[atoms.info["group"]].add(atoms.info["split"])
    assert any(len(s) > 1 for s in spans.values())  # some group has frames in two splits
    assert assign_splits(frames, seed=0, validation_fraction=0.2, test_fraction=0.2, unit=structure_of) == assignment
    del frames[0].info["structure_id"]
    with pytest.raises(ValueError, match="structure_id"):
        assign_splits(frames, seed=0, validation_fraction=0.2, test_fraction=0.2, unit=structure_of)
