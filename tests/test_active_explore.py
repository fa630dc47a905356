"""Exploration: the small cells, the unphysical-state checks, Langevin trajectories with EMT (stopped cleanly
when unphysical) and a cell's trajectories with the tiny mixture and full HF, with provenance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from ase.calculators.emt import EMT
from ase.io import read

from active_support import tiny_active_config, train_committee
from pipeline.active.cells import CELLS, SiteHeights, build_cell
from pipeline.active.explore import TRAJECTORY_COLUMNS, run_trajectory, stop_reason
from pipeline.active.provenance import AL_KEYS, INGEST_KEYS
from pipeline.active.stages import explore_stage
from pipeline.config import ActiveExploreConfig, RegionConfig
from pipeline.data.regions import family_of


def _cell(name: str):
    return build_cell(name, lattice_constant_a=3.97, sites=SiteHeights(), vacuum_a=7.0)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cells_are_small_sound_slabs(name):
    atoms = _cell(name)
    spec = CELLS[name]
    assert len(atoms) <= 50 and atoms.pbc.tolist() == [True, True, False]
    d = atoms.get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    symbols = np.array(atoms.get_chemical_symbols())
    pt = symbols == "Pt"
    assert d[np.ix_(pt, pt)].min() > 2.5  # no overlapping Pt (adatom, vacancy)
    assert (symbols == "C").sum() == (symbols == "O").sum() == len(spec.co)
    if spec.co:
        c = np.flatnonzero(symbols == "C")
        assert np.allclose(d[np.ix_(c, np.flatnonzero(pt))].min(axis=1), 1.85, atol=0.3)  # C bonded to Pt
    expected_pt = spec.size**2 * spec.layers + spec.adatom - spec.vacancy
    assert pt.sum() == expected_pt
    family, _ = family_of(atoms, RegionConfig())
    assert family == atoms.info["family"] == ("slab_co" if spec.co else "clean_slab")


def test_unknown_cell_names_the_known_ones():
    with pytest.raises(ValueError, match="3x3x4-3co"):
        _cell("4x4x9")


def test_stop_reasons():
    cfg = ActiveExploreConfig()
    atoms = _cell("2x2x4-co-top")
    assert stop_reason(atoms, cfg) is None
    close = atoms.copy()
    close.positions[-2] = close.positions[0] + [0.3, 0.2, 0.2]
    assert "apart" in stop_reason(close, cfg)
    broken = atoms.copy()
    broken.positions[-1, 2] += 1.0
    assert "CO dissociated" in stop_reason(broken, cfg)
    assert "non-finite" in stop_reason(atoms, cfg, forces=np.full((len(atoms), 3), np.nan))


def test_emt_trajectory_snapshots_and_clean_stop():
    atoms = _cell("2x2x4-co-top")
    info = {"al_trajectory": "t", "group": "t", "family": "slab_co"}
    cfg = ActiveExploreConfig(steps=30, snapshot_interval=10)
    frames, summary = run_trajectory(atoms, EMT(), cfg, temperature_k=300.0, rng=np.random.default_rng(0), info=info,
                                     fixed=np.arange(len(atoms)) < 4)
    assert [f.info["al_step"] for f in frames] == [10, 20, 30] and not summary["stopped"]
    assert frames[0].info["structure_id"] == "t-s000010" and frames[0].calc is None
    np.testing.assert_allclose(frames[-1].positions[:4], atoms.positions[:4])  # fixed bottom atoms stayed
    # EMT's CO stretches at once: with a tight bond limit the run stops, keeps only physical states
    tight = dataclasses.replace(cfg, steps=200, max_co_bond_a=1.25, snapshot_interval=7)
    frames, summary = run_trajectory(atoms, EMT(), tight, temperature_k=900.0, rng=np.random.default_rng(1), info=info)
    assert summary["stopped"] and "CO dissociated" in summary["reason"]
    stop = int(summary["reason"].split(":")[0].split()[1])
    assert summary["steps_done"] == stop - 1
    assert all(f.info["al_step"] < stop for f in frames)
    assert all(stop_reason(f, tight) is None for f in frames)
    if stop - 1 > 0 and (stop - 1) % 7:
        assert frames[-1].info["al_last_good"] and frames[-1].info["al_step"] == stop - 1


def test_explore_stage_with_the_tiny_mixture_and_hf(tmp_path):
    cfg = tiny_active_config()
    cfg = dataclasses.replace(cfg, active=dataclasses.replace(
        cfg.active, explore=dataclasses.replace(cfg.active.explore, temperatures_k=(600.0,), steps=20)))
    models = train_committee(tmp_path / "models", cfg)
    table = explore_stage(cfg, "2x2x4-co-top", iteration=3, hf=models["hf"][0], lf=models["lf"],
                          frames=tmp_path / "x.extxyz", trajectories=tmp_path / "x.csv")
    assert list(pd.read_csv(tmp_path / "x.csv").columns) == list(TRAJECTORY_COLUMNS)
    assert table["run"].tolist() == ["mixture", "hf"]
    mixture, hf = table.iloc[0], table.iloc[1]
    assert 0 < mixture["n_hf_atoms"] < mixture["n_atoms"] and hf["n_hf_atoms"] == hf["n_atoms"]
    frames = read(tmp_path / "x.extxyz", ":")
    assert len(frames) == table["snapshots"].sum() > 0
    first = frames[0]
    for key in (*AL_KEYS[:-1], *INGEST_KEYS):
        assert key in first.info, key
    assert first.info["al_iteration"] == 3 and first.info["al_source_run"] == "mixture"
    assert first.info["group"] == first.info["al_trajectory"] == "al-it03-mixture-2x2x4-co-top-600K"
    assert first.info["config_type"] == "al_md" and first.info["family"] == "slab_co"
    assert len({f.info["structure_id"] for f in frames}) == len(frames)


def test_the_schema_lists_exactly_the_known_cells():
    from pipeline.config import load_schema

    explore = load_schema()["properties"]["active"]["properties"]["explore"]["properties"]
    assert sorted(explore["cells"]["items"]["enum"]) == sorted(CELLS)
    assert set(explore["cells"]["default"]) <= set(CELLS)
