"""Training data: batching equals collate, batch order is a pure function of (seed, epoch), extra
bulk cells, and clear errors for empty splits and unknown species."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.train.data import (
    TrainingDataError,
    batch_order,
    extra_order,
    make_batch,
    make_extra_cells,
    prepare_samples,
    rattle_training_frames,
    read_splits,
    reference_lattice_constant,
    shard,
)
from pipeline.train.testing import tiny_frames, write_tiny_dataset

SPECIES = ("Pt", "C", "O")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_batch_equals_collate_of_the_same_frames(dataset):
    frames = read_splits(str(dataset))["train"][:5]
    samples = prepare_samples(frames, species=SPECIES, r_maxes=[4.0, 3.0], dtype=torch.float64)
    batch = make_batch(samples)
    for r_max in (4.0, 3.0):
        reference = collate(frames, species=SPECIES, r_max=r_max, dtype=torch.float64)
        got = batch.graph(r_max)
        assert set(reference) <= set(got)
        for key, value in reference.items():
            assert torch.equal(got[key], value), key
    bulk_mask = np.concatenate([a.arrays["region"] == "bulk" for a in frames])
    assert batch.bulk.tolist() == bulk_mask.tolist()
    assert batch.lf_energy.tolist() == [bool(np.all(a.arrays["region"] == "bulk")) for a in frames]


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    first = batch_order(23, 4, seed=7, epoch=3)
    again = batch_order(23, 4, seed=7, epoch=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert sorted(np.concatenate(first).tolist()) == list(range(23))
    assert len(first) == 6 and min(len(b) for b in first) >= 3
    other_epoch = np.concatenate(batch_order(23, 4, seed=7, epoch=4))
    other_seed = np.concatenate(batch_order(23, 4, seed=8, epoch=3))
    assert not np.array_equal(np.concatenate(first), other_epoch)
    assert not np.array_equal(np.concatenate(first), other_seed)
    assert shard(np.arange(5), 1, 2).tolist() == [1, 3]
    extras = extra_order(3, 2, 4, seed=1, epoch=0)
    assert [len(e) for e in extras] == [2, 2, 2, 2] and set(np.concatenate(extras).tolist()) == {0, 1, 2}


def test_extra_cells_are_deterministic_strained_rattled_bulk():
    kwargs = dict(symbol="Pt", lattice_a=3.97, repeat=2, rattle_a=0.05, strain=0.02, seed=3)
    cells = make_extra_cells(3, **kwargs)
    again = make_extra_cells(3, **kwargs)
    assert all(np.array_equal(a.positions, b.positions) and np.array_equal(a.cell, b.cell) for a, b in zip(cells, again))
    assert len(cells[0]) == 32 and all((c.arrays["region"] == "bulk").all() for c in cells)
    ideal = bulk("Pt", "fcc", a=3.97, cubic=True).repeat(2).cell.array
    strain = np.linalg.solve(ideal, cells[0].cell.array) - np.eye(3)
    assert np.allclose(strain, strain.T) and 0 < np.abs(strain).max() <= 0.02
    assert not np.array_equal(cells[0].positions, cells[1].positions)
    samples = prepare_samples(cells, species=SPECIES, r_maxes=[4.0], dtype=torch.float32, labelled=False)
    assert K.ENERGY not in samples[0].graphs[4.0] and not samples[0].lf_energy
    frames = tiny_frames()
    a = reference_lattice_constant(frames, "Pt")
    assert 3.85 < a < 4.03


def test_empty_split_is_a_clear_error(tmp_path):
    frames = tiny_frames()
    for atoms in frames:
        atoms.info["split"] = "train"
        atoms.arrays["region"] = np.array(["bulk"] * len(atoms))
    path = tmp_path / "no_validation.extxyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(TrainingDataError, match=r"'validation' split .* is empty"):
        read_splits(str(path))


def test_frames_without_regions_or_labels_are_rejected(tmp_path):
    frames = tiny_frames()[:3]
    for atoms in frames:
        atoms.info["split"] = "train"
    path = tmp_path / "raw.extxyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(TrainingDataError, match="region"):
        read_splits(str(path), splits=("train",))


def test_species_missing_from_the_model_is_a_clear_error(dataset):
    frames = read_splits(str(dataset))["train"]
    with pytest.raises(TrainingDataError, match=r"elements \['C', 'O'\].*species \['Pt'\]"):
        prepare_samples(frames, species=("Pt",), r_maxes=[4.0], dtype=torch.float32)


def test_rattled_training_frames_keep_regions_and_are_deterministic(dataset):
    frames = read_splits(str(dataset))["train"]
    extra = rattle_training_frames(frames, 7, rattle_a=0.05, strain=0.02, seed=2)
    again = rattle_training_frames(frames, 7, rattle_a=0.05, strain=0.02, seed=2)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(extra, again))
    by_index = {a.info["dataset_index"]: a for a in frames}
    for atoms in extra:
        source = by_index[atoms.info["source_dataset_index"]]
        assert len(source) > 1 and (source.arrays["region"] == "bulk").any()
        assert np.array_equal(atoms.arrays["region"], source.arrays["region"])
        shift = np.linalg.norm(atoms.positions - source.positions, axis=1) if not atoms.pbc.all() else None
        if shift is not None:
            assert 0 < shift.max() < 0.5
    with pytest.raises(TrainingDataError, match="bulk atoms"):
        rattle_training_frames([a for a in frames if not (a.arrays["region"] == "bulk").any()], 2,
                               rattle_a=0.05, strain=0.02, seed=0)
