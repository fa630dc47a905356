"""Families and per-atom region labels on hand-checked structures."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ingest_structures import co_gas, pt_slab

from pipeline.config import config_from_dict
from pipeline.data.regions import (
    cluster_layers,
    family_of,
    heights,
    infer_family,
    label_regions,
)

A_PT = 3.92


def pt111_with_co(layers: int = 4):
    """2x2x4 Pt(111), CO (C down) on top of one top-layer atom, 1.85 A above it."""
    slab = fcc111("Pt", (2, 2, layers), a=A_PT, vacuum=7.0, periodic=True)
    add_adsorbate(slab, molecule("CO")[::-1], 1.85, "ontop")
    slab.info.pop("adsorbate_info", None)
    return slab


def _env(atoms, **regions):
    cfg = config_from_dict({"regions": regions}).regions
    family = infer_family(atoms, cfg)
    region, environment = label_regions(atoms, family, cfg)
    return family, region, environment


def test_hand_checked_slab_with_co_on_top():
    slab = pt111_with_co()
    # ase.build.fcc111 orders layers bottom (0-3) to top (12-15); C is 16, O is 17, and the ontop site
    # is directly above atom 12.
    assert slab.get_chemical_symbols()[16:] == ["C", "O"]
    np.testing.assert_allclose(slab.positions[16, :2], slab.positions[12, :2], atol=1e-9)
    # Distances from C: atom 12 1.85 A; the other top atoms sqrt(2.772^2 + 1.85^2) = 3.33 A; the nearest
    # second-layer atoms sqrt(1.600^2 + (1.85 + 2.263)^2) = 4.41 A. With the default 3.0 A radius only
    # atom 12 is an adsorbate neighbour; the top (12-15) and, when asked for, bottom (0-3) layers are surface.
    family, region, env = _env(slab, surface_layers_bottom=1)

    assert family == "slab_co"
    assert np.nonzero(region == "complex")[0].tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 16, 17]
    assert env[16:].tolist() == ["adsorbate", "adsorbate"]
    assert env[12] == "adsorbate_neighbourhood"
    assert env[[13, 14, 15, 0, 1, 2, 3]].tolist() == ["surface"] * 7
    assert env[4:12].tolist() == ["bulk"] * 8
    # the default leaves the bottom surface to the bulk (LF) region
    _, region, env = _env(slab)
    assert np.nonzero(region == "complex")[0].tolist() == [12, 13, 14, 15, 16, 17]
    assert env[0:12].tolist() == ["bulk"] * 12


def test_adsorbate_radius_reaches_through_periodic_images():
    slab = pt111_with_co()
    # 4.5 A: the four top atoms (1.85 and 3.33 A) and three second-layer atoms (4.41 A); the fourth
    # second-layer atom (9) is 5.21 A away. Atom 15 and second-layer atoms 10 and 11 are that close only
    # through periodic images (directly they are 5.1, 5.9 and 7.1 A away).
    _, _, env = _env(slab, adsorbate_radius_a=4.5, surface_layers_bottom=1)
    near = np.nonzero(env == "adsorbate_neighbourhood")[0]
    assert near.tolist() == [8, 10, 11, 12, 13, 14, 15]
    d_c = slab.get_distances(16, range(16), mic=True)
    assert near.tolist() == np.nonzero(d_c < 4.5)[0].tolist()
    assert np.count_nonzero(env == "bulk") == 1 + 4  # the far second-layer atom and the third layer


def test_slab_wrapped_across_the_cell_boundary_gets_the_same_labels():
    slab = pt111_with_co()
    _, region, env = _env(slab)
    shifted = slab.copy()
    shifted.translate([0, 0, -slab.positions[6, 2]])  # the cell boundary now cuts through the slab
    shifted.wrap()
    assert shifted.positions[:, 2].min() < 1.0 and shifted.positions[:, 2].max() > shifted.cell[2, 2] - 3
    family, region2, env2 = _env(shifted)
    assert family == "slab_co"
    assert env2.tolist() == env.tolist() and region2.tolist() == region.tolist()


def test_top_is_the_adsorbate_side():
    slab = pt111_with_co()
    flipped = slab.copy()
    flipped.positions[:, 2] = slab.cell[2, 2] - slab.positions[:, 2]  # CO now below the slab
    _, _, env = _env(flipped, surface_layers_top=2, surface_layers_bottom=1)
    # two layers on the CO side (layers 12-15 and 8-11), one on the other (0-3); atom 12 is a neighbour
    assert env[[13, 14, 15, 8, 9, 10, 11, 0, 1, 2, 3]].tolist() == ["surface"] * 11
    assert env[12] == "adsorbate_neighbourhood" and env[4:8].tolist() == ["bulk"] * 4


def test_clean_slab_has_both_outer_layers_complex():
    slab = fcc111("Pt", (2, 2, 5), a=A_PT, vacuum=6.0, periodic=True)
    family, region, env = _env(slab, surface_layers_top=2, surface_layers_bottom=1)
    assert family == "clean_slab"
    assert np.nonzero(region == "complex")[0].tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 16, 17, 18, 19]
    assert set(env[4:12]) == {"bulk"}


def test_bulk_crystal_is_all_bulk_and_gas_all_complex():
    crystal = bulk("Pt", "fcc", a=A_PT, cubic=True).repeat((2, 2, 2))
    crystal.rattle(0.05, seed=3)
    family, region, env = _env(crystal)
    assert family == "bulk" and set(region) == {"bulk"} and set(env) == {"bulk"}

    family, region, env = _env(co_gas())
    assert family == "gas" and set(region) == {"complex"} and set(env) == {"adsorbate"}


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: pt_slab(), "clean_slab"),
        (lambda: pt_slab(co=True), "slab_co"),
        (lambda: fcc111("Pt", (2, 2, 3), a=A_PT, periodic=True), "bulk"),  # no vacuum: a periodic stack
        (lambda: fcc111("Pt", (2, 2, 3), a=A_PT, vacuum=2.0, periodic=True), "bulk"),
        (lambda: fcc111("Pt", (2, 2, 3), a=A_PT, vacuum=3.0, periodic=True), "clean_slab"),
        (lambda: fcc111("Pt", (2, 2, 3), a=A_PT, vacuum=2.0), "clean_slab"),  # pbc (T, T, F)
        (lambda: fcc111("Pt", (2, 2, 3), a=A_PT), "clean_slab"),  # pbc (T, T, F), zero third vector
        (lambda: co_gas(), "gas"),
    ],
)
def test_family_inference(build, expected):
    # fcc111 with vacuum v leaves a gap of 2 v between periodic images: 4 A (bulk) or 6 A (slab) vs 5 A;
    # a cell not periodic along the third vector is a slab whatever its gap.
    cfg = config_from_dict({}).regions
    assert infer_family(build(), cfg) == expected


def test_family_from_info_wins_over_geometry():
    cfg = config_from_dict({}).regions
    slab = pt_slab()
    slab.info["family"] = "bulk"
    assert family_of(slab, cfg) == ("bulk", "info")
    slab.info["family"] = "surface"  # not a family: the geometry decides
    assert family_of(slab, cfg) == ("clean_slab", "geometry")


def test_heights_and_layers_of_a_wrapped_slab():
    slab = fcc111("Pt", (1, 1, 4), a=A_PT, vacuum=5.0, periodic=True)
    slab.translate([0, 0, -slab.positions[1, 2] - 0.1])
    slab.wrap()
    h, gap = heights(slab)
    spacing = A_PT / np.sqrt(3)
    np.testing.assert_allclose(np.sort(h), spacing * np.arange(4), atol=1e-9)
    assert gap == pytest.approx(10.0, abs=1e-9)
    assert cluster_layers(h, 0.7).tolist() == [0, 1, 2, 3]
