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
    prepare_samples,
    read_splits,
    reference_lattice_constant,
    shard,
)
from train_support import tiny_frames, write_tiny_dataset

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


def test_reference_lattice_constant_of_the_tiny_set():
    assert 3.85 < reference_lattice_constant(tiny_frames(), "Pt") < 4.03


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
