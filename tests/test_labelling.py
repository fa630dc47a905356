"""Labelling: EMT labels readable by ase.io, resumable cache, SCF failures recorded, merge, real GPAW."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from ase.io import read, write

import pipeline.data.labelling as labelling
from pipeline.cli import main
from pipeline.config import LabelConfig, config_from_dict
from pipeline.data.labelling import (
    FAILURE_COLUMNS,
    SCFNotConverged,
    label_file,
    label_one,
    label_structures,
    merge_labels,
)
from pipeline.data.sampling import make_gas_co, sample_structures

RAW = {
    "sample": {
        "bulk": {"eos_n_volumes": 5, "strain_n": 2, "rattle_n": 1, "rattle_supercell_atoms": [4],
                 "thermal_n_frames": 0},
        "clean_slab": {"rattle_n_2x2": 1, "thermal_frames_per_temperature": 0},
        "slab_co": {"perturbed_per_site_2x2": 1, "half_ml_n_2x2": 1, "ideal_sites_3x3": ["top"],
                    "approach_offsets_a": [0.5]},
        "gas": {"n_bond_lengths": 2},
    },
    "label": {"calculator": "emt", "n_chunks": 1},
}


@pytest.fixture(scope="module")
def cfg():
    return config_from_dict(RAW)


@pytest.fixture(scope="module")
def structures(cfg):
    return sample_structures(cfg)


def _strip(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "label_wall_s"}


def _count_computations(monkeypatch) -> list[str]:
    """Record the structure id of every label that is computed (not taken from the cache) from now on."""
    calls: list[str] = []
    real = labelling.compute_labels

    def counting(atoms, *args, **kwargs):
        calls.append(atoms.info["structure_id"])
        return real(atoms, *args, **kwargs)

    monkeypatch.setattr(labelling, "compute_labels", counting)
    return calls


def _assert_same_frames(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert _strip(x.info) == _strip(y.info)
        assert np.array_equal(x.positions, y.positions)
        assert x.get_potential_energy() == y.get_potential_energy()
        assert np.array_equal(x.get_forces(), y.get_forces())


def test_emt_output_is_readable_by_ase_and_marked_not_dft(tmp_path, cfg, structures):
    write(tmp_path / "in.extxyz", structures)
    label_file(cfg, tmp_path / "in.extxyz", tmp_path / "out.extxyz", tmp_path / "fail.csv",
               cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs", progress=False)
    back = read(tmp_path / "out.extxyz", index=":")
    assert len(back) == len(structures)
    for a, s in zip(back, structures):
        assert a.info["structure_id"] == s.info["structure_id"]
        assert a.info["label_calculator"] == "emt" and a.info["is_dft"] is False
        assert "not DFT" in a.info["dft_code"]
        assert np.isfinite(a.get_potential_energy())
        assert a.get_forces().shape == (len(a), 3)
        if a.pbc.all():
            assert a.get_stress().shape == (6,)
    assert list(pd.read_csv(tmp_path / "fail.csv").columns) == list(FAILURE_COLUMNS)
    assert len(pd.read_csv(tmp_path / "fail.csv")) == 0


def test_resumed_run_equals_uninterrupted_run(tmp_path, cfg, structures, monkeypatch):
    full = label_structures(structures, cfg, cache_dir=tmp_path / "a", log_dir=tmp_path / "la", progress=False)
    # "killed" run: only the first half got labelled into the cache
    half = len(structures) // 2
    label_structures(structures[:half], cfg, cache_dir=tmp_path / "b", log_dir=tmp_path / "lb", progress=False)
    calls = _count_computations(monkeypatch)
    resumed = label_structures(structures, cfg, cache_dir=tmp_path / "b", log_dir=tmp_path / "lb", progress=False)
    assert calls == [s.info["structure_id"] for s in structures[half:]]  # cached ones skipped
    _assert_same_frames(full.frames, resumed.frames)


def test_cache_is_invalidated_by_changed_settings(tmp_path, structures):
    gpaw_cfg = LabelConfig(calculator="gpaw")
    emt_cfg = LabelConfig(calculator="emt")
    s = structures[0]
    assert labelling.cache_key(s, gpaw_cfg) != labelling.cache_key(s, emt_cfg)
    assert labelling.cache_key(s, gpaw_cfg) != labelling.cache_key(s, dataclasses.replace(gpaw_cfg, h_a=0.2))
    moved = s.copy()
    moved.positions[0, 0] += 1e-3
    assert labelling.cache_key(s, emt_cfg) != labelling.cache_key(moved, emt_cfg)


def test_unconverged_scf_is_retried_damped_then_recorded(tmp_path, cfg, structures, monkeypatch):
    bad = structures[2].info["structure_id"]
    flaky = structures[3].info["structure_id"]
    seen = []
    real = labelling._compute_emt

    def fake(atoms, label_cfg, txt, *, damped):
        sid = atoms.info["structure_id"]
        seen.append((sid, damped))
        if sid == bad or (sid == flaky and not damped):
            raise SCFNotConverged("SCF not converged within 1 iterations (simulated)")
        return real(atoms, label_cfg, txt, damped=damped)

    monkeypatch.setattr(labelling, "_compute_emt", fake)
    write(tmp_path / "in.extxyz", structures)
    result = label_file(cfg, tmp_path / "in.extxyz", tmp_path / "out.extxyz", tmp_path / "fail.csv",
                        cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs", progress=False)
    assert (bad, False) in seen and (bad, True) in seen
    fail = pd.read_csv(tmp_path / "fail.csv")
    assert list(fail["structure_id"]) == [bad]
    assert fail.loc[0, "attempts"] == 2 and "simulated" in fail.loc[0, "reason"]
    assert "damped mixer" in fail.loc[0, "reason"]
    ids = [f.info["structure_id"] for f in read(tmp_path / "out.extxyz", index=":")]
    assert bad not in ids and len(ids) == len(structures) - 1
    retried = next(f for f in result.frames if f.info["structure_id"] == flaky)
    assert retried.info["label_attempts"] == 2 and "damped" in retried.info["label_mixer"]
    # a rerun takes the failure from the cache instead of recomputing it
    seen.clear()
    again = label_structures(structures, cfg, cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs", progress=False)
    assert seen == [] and [f["structure_id"] for f in again.failures] == [bad]


def test_merge_keeps_sampling_order(tmp_path, cfg, structures):
    write(tmp_path / "a.extxyz", structures[1::2])
    write(tmp_path / "b.extxyz", structures[0::2])
    for name in ("a", "b"):
        label_file(cfg, tmp_path / f"{name}.extxyz", tmp_path / f"{name}_l.extxyz", tmp_path / f"{name}_f.csv",
                   cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs", progress=False)
    merged = merge_labels([tmp_path / "a_l.extxyz", tmp_path / "b_l.extxyz"],
                          [tmp_path / "a_f.csv", tmp_path / "b_f.csv"], tmp_path / "m.extxyz", tmp_path / "m.csv")
    assert [f.info["sample_index"] for f in merged.frames] == list(range(len(structures)))
    assert len(read(tmp_path / "m.extxyz", index=":")) == len(structures)


def test_cli_label_and_merge(tmp_path, structures):
    write(tmp_path / "in.extxyz", structures[:4])
    cj = json.dumps(RAW)
    assert main(["label", "--config-json", cj, "--structures", str(tmp_path / "in.extxyz"),
                 "--output", str(tmp_path / "l.extxyz"), "--failures", str(tmp_path / "f.csv"),
                 "--cache-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "g"), "--no-progress"]) == 0
    assert main(["merge-labels", "--labelled", str(tmp_path / "l.extxyz"), "--failures-in", str(tmp_path / "f.csv"),
                 "--output", str(tmp_path / "m.extxyz"), "--failures", str(tmp_path / "mf.csv")]) == 0
    assert len(read(tmp_path / "m.extxyz", index=":")) == 4


# ------------------------------------------------------------------------------------------------
# real DFT
# ------------------------------------------------------------------------------------------------

GPAW_TINY = LabelConfig(calculator="gpaw", mode="lcao", basis="dzp", h_a=0.25, smearing_ev=0.1)


@pytest.mark.gpaw
def test_gpaw_single_point_on_co_matches_finite_difference(tmp_path):
    pytest.importorskip("gpaw")
    co = make_gas_co(1.14, vacuum_a=3.0)
    co.info.update(structure_id="test-co", family="gas", group="test", config_type="co_gas", sample_index=0)
    frame, failure = label_one(co, GPAW_TINY, cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs")
    assert failure is None
    e, f = frame.get_potential_energy(), frame.get_forces()
    assert np.isfinite(e) and np.isfinite(f).all() and f.shape == (2, 3)
    info = frame.info
    assert info["is_dft"] is True and info["label_calculator"] == "gpaw" and info["dft_code"] == "gpaw"
    assert info["dft_xc"] == "PBE" and info["dft_mode"] == "lcao" and info["dft_basis"] == "dzp"
    assert info["dft_kpts"] == "1x1x1" and info["dft_h_a"] == 0.25
    assert "fermi-dirac" in info["dft_smearing"] and info["dft_setups"].startswith("Pt:10")
    assert info["dft_version"] and (tmp_path / "logs" / "test-co.txt").exists()
    # central finite difference of the (force-consistent) energy along z of O
    step = 0.01
    energies = []
    for sign in (1, -1):
        moved = co.copy()
        moved.info["structure_id"] = f"test-co-{sign:+d}"
        moved.positions[1, 2] += sign * step
        fr, _ = label_one(moved, GPAW_TINY, cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs")
        energies.append(fr.get_potential_energy())
    fd = -(energies[0] - energies[1]) / (2 * step)
    assert fd == pytest.approx(f[1, 2], abs=0.05)
    # written and read back through extxyz unchanged
    write(tmp_path / "co.extxyz", frame)
    back = read(tmp_path / "co.extxyz")
    assert back.get_potential_energy() == pytest.approx(e, abs=1e-9)
    assert np.allclose(back.get_forces(), f)


@pytest.mark.gpaw
def test_gpaw_unconverged_scf_is_recorded(tmp_path):
    pytest.importorskip("gpaw")
    co = make_gas_co(1.14, vacuum_a=3.0)
    co.info.update(structure_id="test-co-maxiter", family="gas", config_type="co_gas", sample_index=7)
    frame, failure = label_one(co, dataclasses.replace(GPAW_TINY, maxiter=2),
                               cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs")
    assert frame is None
    assert failure["structure_id"] == "test-co-maxiter" and failure["attempts"] == 2
    assert "not converged" in failure["reason"] and "damped mixer" in failure["reason"]
    assert (tmp_path / "logs" / "test-co-maxiter.retry.txt").exists()


def test_earlier_labels_are_taken_only_for_the_same_geometry_and_settings(tmp_path, cfg, structures, monkeypatch):
    """A shipped file of earlier labels (``label --reuse``): matching structures are not computed again and come out
    as they were; one moved atom or one changed setting is refused with its reason, and that structure is computed."""
    first = label_structures(structures, cfg, cache_dir=tmp_path / "a", log_dir=tmp_path / "la", progress=False)
    write(tmp_path / "shipped.extxyz", first.frames)
    earlier = read(tmp_path / "shipped.extxyz", index=":")
    moved = [s.copy() for s in structures]
    moved[1].positions[0, 2] += 1e-3
    assert labelling.reuse_mismatch(moved[1], earlier[1], cfg.label) == "other cell or positions"
    other = dataclasses.replace(cfg.label, calculator="gpaw")
    assert labelling.reuse_mismatch(structures[0], earlier[0], other).startswith("label_calculator is 'emt'")
    no_forces = earlier[0].copy()
    assert labelling.reuse_mismatch(structures[0], no_forces, cfg.label) == "no energy or forces"

    calls = _count_computations(monkeypatch)
    assert labelling.seed_cache(moved, cfg.label, earlier, tmp_path / "b") == len(structures) - 1
    again = label_structures(moved, cfg, cache_dir=tmp_path / "b", log_dir=tmp_path / "lb", progress=False)
    assert calls == [moved[1].info["structure_id"]]
    keep = [k for k in range(len(structures)) if k != 1]
    _assert_same_frames([first.frames[k] for k in keep], [again.frames[k] for k in keep])
    # what the cache holds is never overwritten, and cached_labels returns it in the frames' order
    assert labelling.seed_cache(moved, cfg.label, earlier, tmp_path / "b") == 0
    assert [f.info["structure_id"] for f in labelling.cached_labels(moved, cfg.label, tmp_path / "b")] == [
        s.info["structure_id"] for s in moved]
