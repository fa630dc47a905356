"""Structure sampling: deterministic for a seed, every family present, metadata and geometry sane."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.data.sampling import (
    FAMILIES,
    sample_structures,
    split_chunks,
    write_sample_chunks,
)

# A small sampling configuration: every family and config type, few frames, fast EMT MD.
SMALL = {
    "sample": {
        "bulk": {"eos_n_volumes": 9, "strain_n": 3, "rattle_n": 2, "rattle_supercell_atoms": [8, 4],
                 "thermal_n_frames": 2, "thermal_supercell_atoms": 8},
        "clean_slab": {"rattle_n_2x2": 2, "rattle_n_3x3": 1, "thermal_temperatures_k": [500.0],
                       "thermal_frames_per_temperature": 2, "thermal_equilibration_steps": 5,
                       "thermal_interval_steps": 3},
        "slab_co": {"perturbed_per_site_2x2": 2, "half_ml_n_2x2": 3, "perturbed_n_3x3": 2,
                    "approach_offsets_a": [-0.2, 0.3, 1.5]},
        "gas": {"n_bond_lengths": 4},
    },
    "label": {"calculator": "emt", "n_chunks": 2},
}
INFO_KEYS = ("family", "group", "config_type", "structure_id", "sample_index", "ideal")


@pytest.fixture(scope="module")
def frames():
    return sample_structures(config_from_dict(SMALL))


def _same(a, b) -> bool:
    return (
        len(a) == len(b)
        and np.array_equal(a.numbers, b.numbers)
        and np.allclose(a.positions, b.positions, atol=0, rtol=0)
        and np.allclose(a.cell.array, b.cell.array, atol=0, rtol=0)
        and (a.pbc == b.pbc).all()
        and a.info == b.info
    )


def test_sampling_is_deterministic_for_a_seed(frames):
    again = sample_structures(config_from_dict(SMALL))
    assert len(again) == len(frames)
    assert all(_same(a, b) for a, b in zip(frames, again))


def test_other_seed_changes_random_structures(frames):
    other = sample_structures(config_from_dict({**SMALL, "seed": 1}))
    rattled = [(a, b) for a, b in zip(frames, other) if a.info["config_type"] == "rattle"]
    assert rattled and not any(np.allclose(a.positions, b.positions) for a, b in rattled)


def test_changing_one_count_leaves_other_structures_unchanged(frames):
    raw = {**SMALL, "sample": {**SMALL["sample"], "bulk": {**SMALL["sample"]["bulk"], "strain_n": 5}}}
    more = {f.info["structure_id"]: f for f in sample_structures(config_from_dict(raw))}
    for f in frames:
        g = more[f.info["structure_id"]]
        assert np.array_equal(f.positions, g.positions), f.info["structure_id"]


def test_every_family_and_config_type_present(frames):
    assert {f.info["family"] for f in frames} == set(FAMILIES)
    types = {f.info["config_type"] for f in frames}
    for t in ("eos", "strain", "rattle", "thermal", "ideal", "top", "bridge", "fcc", "hcp", "half_ml",
              "approach", "close", "flipped", "lying", "hot", "co_gas"):
        assert t in types, t
    coverages = {round(f.info["coverage_ml"], 3) for f in frames if f.info["family"] == "slab_co"}
    assert {0.25, 0.5, 0.111} <= coverages


def test_metadata_complete_and_ids_unique(frames):
    for f in frames:
        for key in INFO_KEYS:
            assert key in f.info, (key, f.info)
        assert f.info["family"] in FAMILIES
        assert isinstance(f.info["group"], str) and f.info["group"]
    ids = [f.info["structure_id"] for f in frames]
    assert len(set(ids)) == len(ids)
    assert [f.info["sample_index"] for f in frames] == list(range(len(frames)))


def test_reference_structures_for_the_sanity_table_exist(frames):
    def has(**kv):
        return any(all(f.info.get(k) == v for k, v in kv.items()) for f in frames)

    for size in (2, 3):
        assert has(family="clean_slab", config_type="ideal", slab_size=size)
    for site in ("top", "fcc"):
        assert has(family="slab_co", config_type=site, slab_size=2, ideal=True)
        assert has(family="slab_co", config_type=site, slab_size=3, ideal=True)
    gas = [f for f in frames if f.info["family"] == "gas" and f.info["ideal"]]
    assert len(gas) == 1 and abs(gas[0].get_distance(0, 1) - 1.14) < 1e-9


def test_geometry(frames):
    eos = [f for f in frames if f.info["config_type"] == "eos"]
    vols = np.array([f.get_volume() / len(f) for f in eos])
    assert len(eos) >= 9 and vols.max() / vols.min() == pytest.approx(1.08 / 0.92)
    for f in frames:
        fam = f.info["family"]
        if fam == "bulk":
            assert f.pbc.all() and 1 <= len(f) <= 32
        elif fam in ("clean_slab", "slab_co"):
            assert tuple(f.pbc) == (True, True, False)
            z = f.positions[:, 2]
            assert f.cell[2, 2] - (z.max() - z.min()) >= 10.0  # vacuum gap
        else:
            assert not f.pbc.any() and len(f) == 2
        d = f.get_all_distances(mic=True) + np.eye(len(f)) * 10
        assert d.min() > 0.9, f.info["structure_id"]
    top = next(f for f in frames if f.info.get("config_type") == "top" and f.info.get("ideal"))
    c = top.positions[top.numbers == 6][0]
    pt = top.positions[top.numbers == 78]
    assert np.linalg.norm(pt - c, axis=1).min() == pytest.approx(1.85, abs=1e-6)


def test_close_contact_geometry(frames):
    """Pressed, O-down and flat CO are where the config says (up to the 0.04 A rattle)."""
    by_id = {f.info["structure_id"]: f for f in frames}

    def parts(at):
        symbols = np.array(at.get_chemical_symbols())
        top = at.positions[symbols == "Pt", 2].max()
        return at.positions[symbols == "C"][0], at.positions[symbols == "O"][0], top, at.positions[symbols == "Pt"]

    c, o, top, pt = parts(by_id["slab_co-2x2-close-top-+1.25"])
    assert np.linalg.norm(pt - c, axis=1).min() == pytest.approx(1.25, abs=0.2) and o[2] > c[2]
    c, o, top, _ = parts(by_id["slab_co-2x2-close-fcc-+0.00"])
    assert c[2] - top == pytest.approx(0.0, abs=0.2)  # C in the plane of the top layer
    c, o, top, _ = parts(by_id["slab_co-2x2-flipped-top-+1.70"])
    assert o[2] < c[2] and o[2] - top == pytest.approx(1.7, abs=0.2)
    c, o, top, _ = parts(by_id["slab_co-2x2-lying-fcc-+1.40"])
    assert abs(c[2] - o[2]) < 0.2 and np.linalg.norm(c - o) == pytest.approx(1.16, abs=0.2)
    hot = [f for f in frames if f.info["config_type"] == "hot"]
    assert len(hot) == 10 and len({f.info["group"] for f in hot}) == 10


def test_split_chunks_covers_everything_once(frames):
    cfg = config_from_dict(SMALL)
    chunks = split_chunks(frames, 3, cfg.label)
    ids = sorted(f.info["structure_id"] for c in chunks for f in c)
    assert ids == sorted(f.info["structure_id"] for f in frames)
    assert all(c for c in chunks)
    for c in chunks:  # sampled order kept inside each chunk
        idx = [f.info["sample_index"] for f in c]
        assert idx == sorted(idx)


def test_chunk_count_must_match_config(tmp_path):
    with pytest.raises(ValueError, match="label.n_chunks is 2"):
        write_sample_chunks(config_from_dict(SMALL), [tmp_path / "only_one.extxyz"])


def test_cli_writes_readable_chunks(tmp_path, frames):
    import json

    out = [tmp_path / "c0.extxyz", tmp_path / "c1.extxyz"]
    assert main(["sample", "--config-json", json.dumps(SMALL), "--chunks", *map(str, out)]) == 0
    back = [a for p in out for a in read(p, index=":")]
    assert sorted(a.info["structure_id"] for a in back) == sorted(f.info["structure_id"] for f in frames)
    assert all(a.calc is None for a in back)  # unlabelled
