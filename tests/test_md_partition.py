"""The production cell and its static HF/LF partition (rules, file, picture)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.geometry import get_distances

from pipeline.config import (
    MDPartitionConfig,
    MDSystemConfig,
    RegionConfig,
    config_from_dict,
)
from pipeline.data.regions import cluster_layers, heights
from pipeline.md.partition import (
    HF,
    LF,
    bottom_layers,
    partition_atoms,
    plot_partition,
    read_partition,
    write_partition,
)
from pipeline.md.system import build_production_cell


@pytest.fixture(scope="module")
def cell():
    return build_production_cell(MDSystemConfig())


def _layers(atoms):
    pt = np.array(atoms.get_chemical_symbols()) == "Pt"
    h, _ = heights(atoms)
    layer = np.full(len(atoms), -1)
    layer[pt] = cluster_layers(h[pt], 0.7)
    return layer


def test_default_production_cell_is_a_six_layer_slab_with_spread_co(cell):
    symbols = np.array(cell.get_chemical_symbols())
    assert (symbols == "Pt").sum() == 216 and (symbols == "C").sum() == 4 and (symbols == "O").sum() == 4
    assert _layers(cell).max() + 1 == 6
    assert cell.pbc.tolist() == [True, True, False]
    carbons = cell.positions[symbols == "C"]
    _, dist = get_distances(carbons, carbons, cell=cell.cell, pbc=cell.pbc)
    assert dist[~np.eye(4, dtype=bool)].min() > 5.0  # no two molecules on neighbouring sites
    top_pt_z = cell.positions[symbols == "Pt", 2].max()
    np.testing.assert_allclose(carbons[:, 2] - top_pt_z, 1.85, atol=1e-9)
    # vacuum on both sides
    z = cell.positions[:, 2]
    assert z.min() >= 9.9 and cell.cell[2, 2] - z.max() >= 9.9


def test_too_many_molecules_are_refused():
    with pytest.raises(ValueError, match="top sites"):
        build_production_cell(MDSystemConfig(surface_size=(2, 2), layers=2, n_co=5))


def test_default_rule_takes_adsorbates_their_neighbourhood_and_the_top_layer(cell):
    cfg = config_from_dict({})
    expert = partition_atoms(cell, cfg.md.partition, cfg.regions)
    layer = _layers(cell)
    symbols = np.array(cell.get_chemical_symbols())
    assert np.all(expert[symbols != "Pt"] == HF)
    assert np.all(expert[layer == 5] == HF)  # top layer
    assert np.all(expert[(layer >= 0) & (layer <= 3)] == LF)  # deep layers
    # second layer: exactly the atoms within radius_a of a C or O
    second = np.flatnonzero(layer == 4)
    _, dist = get_distances(cell.positions[second], cell.positions[symbols != "Pt"], cell=cell.cell, pbc=cell.pbc)
    near = dist.min(axis=1) < cfg.md.partition.radius_a
    assert near.any() and not near.all()
    np.testing.assert_array_equal(expert[second] == HF, near)


def test_alternative_rules(cell):
    regions = RegionConfig()
    h, _ = heights(cell)
    z = partition_atoms(cell, MDPartitionConfig(rule="z_slab", min_height_a=9.0), regions)
    np.testing.assert_array_equal(z == HF, h >= 9.0)
    idx = partition_atoms(cell, MDPartitionConfig(rule="indices", indices=(3, 7, 150)), regions)
    assert np.flatnonzero(idx == HF).tolist() == [3, 7, 150]
    frac = partition_atoms(cell, MDPartitionConfig(rule="closest_fraction", hf_fraction=0.3), regions)
    assert (frac == HF).sum() == round(0.3 * len(cell))
    symbols = np.array(cell.get_chemical_symbols())
    assert np.all(frac[symbols != "Pt"] == HF)
    # every HF substrate atom is at least as close to an adsorbate as every LF one
    _, dist = get_distances(cell.positions, cell.positions[symbols != "Pt"], cell=cell.cell, pbc=cell.pbc)
    nearest = dist.min(axis=1)
    assert nearest[frac == HF].max() <= nearest[frac == LF].min() + 1e-12
    with pytest.raises(ValueError, match="indices"):
        partition_atoms(cell, MDPartitionConfig(rule="indices", indices=(len(cell),)), regions)


def test_bottom_layers(cell):
    fixed = bottom_layers(cell, 2, RegionConfig())
    layer = _layers(cell)
    np.testing.assert_array_equal(fixed, (layer >= 0) & (layer <= 1))
    assert not bottom_layers(cell, 0, RegionConfig()).any()


def test_partition_file_round_trips_and_is_drawn(cell, tmp_path):
    cfg = config_from_dict({})
    expert = partition_atoms(cell, cfg.md.partition, cfg.regions)
    write_partition(tmp_path / "cell.extxyz", cell, expert, rule="adsorbate_radius")
    atoms, back = read_partition(tmp_path / "cell.extxyz")
    np.testing.assert_array_equal(back, expert)
    np.testing.assert_allclose(atoms.positions, cell.positions, atol=1e-8)
    np.testing.assert_allclose(atoms.cell.array, cell.cell.array, atol=1e-8)
    assert atoms.info["n_hf"] == int((expert == HF).sum())
    plot_partition(cell, expert, tmp_path / "cell.png")
    data = (tmp_path / "cell.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
