"""Centre-subset evaluation: only centre edges are built, and partitions add up (float64, 1e-10)."""

import numpy as np
import pytest
import torch

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.models import build_model
from pipeline.models.layout import EdgeLayout
from pipeline.models.testing import (
    SPECIES,
    co_gas,
    pt_bulk,
    pt_co_slab,
    small_moe_config,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["dense", "moe_element", "moe_configuration", "moe_atom"])
def model(request):
    m = build_model(small_moe_config(request.param, num_layers=2), SPECIES, dtype=torch.float64, seed=5).eval()
    m.set_scale_shift(scales=[0.5, 1.5, 2.0], shifts=[-6.0, -4.0, -3.0])
    return m


@pytest.fixture(scope="module")
def batch(model):
    frames = [pt_co_slab(size=(3, 3, 3)), pt_bulk(repeat=(2, 2, 1)), co_gas()]
    return collate(frames, species=SPECIES, r_max=model.r_max)


def _close(a, b):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= 1e-10 * scale


@pytest.mark.parametrize("n_parts", [2, 5])
def test_partition_sums_to_full(model, batch, n_parts):
    full = model(batch, compute_stress=True)
    n_atoms = batch[K.POSITIONS].shape[0]
    labels = torch.as_tensor(np.random.default_rng(n_parts).integers(0, n_parts, n_atoms))
    parts = [model(batch, centers=labels == p, compute_stress=True) for p in range(n_parts)]
    for key in (K.ENERGY, K.FORCES, K.PER_ATOM_ENERGY, K.DESCRIPTORS):
        _close(sum(p[key] for p in parts), full[key])
    periodic = batch[K.PBC].all(dim=1)
    _close(sum(p[K.STRESS] for p in parts)[periodic], full[K.STRESS][periodic])
    for p, part in enumerate(parts):
        off = labels != p
        assert torch.all(part[K.PER_ATOM_ENERGY][off] == 0)
        assert torch.equal(part[K.CENTER_MASK], labels == p)
        _close(part[K.PER_ATOM_ENERGY][~off], full[K.PER_ATOM_ENERGY][~off])


def test_index_and_mask_agree(model, batch):
    n_atoms = batch[K.POSITIONS].shape[0]
    index = torch.tensor([0, 3, 7, n_atoms - 1])
    mask = torch.zeros(n_atoms, dtype=torch.bool)
    mask[index] = True
    a, b = model(batch, centers=index), model(batch, centers=mask)
    assert torch.equal(a[K.ENERGY], b[K.ENERGY]) and torch.equal(a[K.FORCES], b[K.FORCES])


def test_empty_subset_is_zero(model, batch):
    n_atoms = batch[K.POSITIONS].shape[0]
    out = model(batch, centers=torch.zeros(n_atoms, dtype=torch.bool))
    assert torch.all(out[K.ENERGY] == 0) and torch.all(out[K.FORCES] == 0)


def test_subset_builds_only_centre_edges(model, batch, monkeypatch):
    seen = {}
    original = EdgeLayout.__init__

    def spy(self, centre, *, n_centres):
        original(self, centre, n_centres=n_centres)
        seen["n_edges"], seen["n_centres"] = self.n_edges, self.n_centres

    monkeypatch.setattr(EdgeLayout, "__init__", spy)
    centers = torch.tensor([1, 2, 30])
    model(batch, centers=centers)
    expected = int(torch.isin(batch[K.EDGE_INDEX][0], centers).sum())
    assert seen == {"n_edges": expected, "n_centres": 3}


def test_unsorted_edges_give_same_result(model, batch):
    shuffled = dict(batch)
    perm = torch.as_tensor(np.random.default_rng(0).permutation(batch[K.EDGE_INDEX].shape[1]))
    shuffled[K.EDGE_INDEX] = batch[K.EDGE_INDEX][:, perm]
    shuffled[K.EDGE_CELL_SHIFT] = batch[K.EDGE_CELL_SHIFT][perm]
    a, b = model(batch), model(shuffled)
    _close(b[K.ENERGY], a[K.ENERGY])
    _close(b[K.FORCES], a[K.FORCES])


def test_bad_centres_raise(model, batch):
    n_atoms = batch[K.POSITIONS].shape[0]
    with pytest.raises(ValueError, match="must lie in"):
        model(batch, centers=torch.tensor([n_atoms]))
    with pytest.raises(ValueError, match="boolean centre mask"):
        model(batch, centers=torch.ones(n_atoms + 1, dtype=torch.bool))


def test_batch_built_for_other_species_is_refused(model):
    batch = collate([co_gas()], species=("Pt", "O", "C"), r_max=model.r_max)
    with pytest.raises(ValueError, match="do not match its atomic numbers"):
        model(batch)


def test_graph_with_larger_cutoff_gives_same_result(model):
    frames = [pt_co_slab(size=(3, 3, 3)), pt_bulk(repeat=(2, 2, 1)), co_gas()]
    exact = collate(frames, species=SPECIES, r_max=model.r_max)
    wide = collate(frames, species=SPECIES, r_max=model.r_max + 1.5)
    assert wide[K.EDGE_INDEX].shape[1] > exact[K.EDGE_INDEX].shape[1]
    a, b = model(exact, compute_stress=True), model(wide, compute_stress=True)
    for key in (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES, K.STRESS, K.DESCRIPTORS):
        torch.testing.assert_close(b[key], a[key], atol=1e-12, rtol=1e-12, equal_nan=True)
