"""Teacher labels of the periodic-table set (SevenNet-0 through the label machinery; needs the teacher extra):
finite and marked teacher (not DFT), resumable after a kill, a clear error for a non-finite label, the dataset
and the shipped file with its README."""

import numpy as np
import pandas as pd
import pytest
import torch
from ase.io import read, write

pytest.importorskip("sevenn")

import pipeline.data.teacher as teacher  # noqa: E402
from pipeline.config import MoEStudyPeriodicConfig, config_from_dict  # noqa: E402
from pipeline.data.labelling import NonFiniteLabel, label_file, label_structures  # noqa: E402
from pipeline.data.periodic_set import sample_periodic  # noqa: E402
from pipeline.data.periodic_ship import periodic_dataset, ship_periodic  # noqa: E402

torch.set_num_threads(1)
CFG = config_from_dict({"label": {"calculator": "sevenn"}})
SOURCE = "teacher:SevenNet-0 (sevenn 0.13.0, 11Jul2024 checkpoint)"


@pytest.fixture(scope="module")
def structures():
    """Two structures of every family, those of at most 16 atoms (7 of 8)."""
    frames = sample_periodic(MoEStudyPeriodicConfig(n_bulk=2, n_alloys=2, n_compounds=2, n_surfaces=2))
    return [f for f in frames if len(f) <= 16]


@pytest.fixture(scope="module")
def labelled(structures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    write(tmp / "structures.extxyz", structures)
    label_file(CFG, tmp / "structures.extxyz", tmp / "labelled.extxyz", tmp / "failures.csv",
               cache_dir=tmp / "cache", log_dir=tmp / "logs", progress=False)
    return tmp / "labelled.extxyz"


def test_teacher_labels_are_finite_and_marked_teacher_not_dft(labelled, structures):
    frames = read(labelled, index=":")
    assert [f.info["structure_id"] for f in frames] == [s.info["structure_id"] for s in structures]
    for f in frames:
        assert f.info["label_source"] == SOURCE and f.info["label_level"] == "teacher"
        assert f.info["is_dft"] is False and "not DFT" in f.info["dft_code"]
        e, forces = f.get_potential_energy(), f.get_forces()
        assert np.isfinite(e) and -15 < e / len(f) < 0 and np.isfinite(forces).all()
        assert np.abs(forces.sum(axis=0)).max() < 1e-3  # forces of a periodic cell sum to zero
        assert ("stress" in f.calc.results) == bool(f.pbc.all())
    bulk = next(f for f in frames if f.pbc.all())
    assert np.isfinite(bulk.get_stress()).all()


def test_a_killed_run_resumes_with_only_the_rest_computed(structures, tmp_path, monkeypatch):
    assert len(structures) >= 6
    real, calls = teacher.teacher_labels, []

    def killed_after_four(atoms, *, stress):
        if len(calls) == 4:
            raise KeyboardInterrupt  # the job is killed while labelling the fifth structure
        calls.append(atoms.info["structure_id"])
        return real(atoms, stress=stress)

    monkeypatch.setattr(teacher, "teacher_labels", killed_after_four)
    dirs = {"cache_dir": tmp_path / "cache", "log_dir": tmp_path / "logs", "progress": False}
    with pytest.raises(KeyboardInterrupt):
        label_structures(structures, CFG, **dirs)
    assert len(list((tmp_path / "cache").glob("*.extxyz"))) == 4

    calls.clear()
    monkeypatch.setattr(teacher, "teacher_labels", lambda atoms, *, stress: calls.append(
        atoms.info["structure_id"]) or real(atoms, stress=stress))
    result = label_structures(structures, CFG, **dirs)
    assert calls == [s.info["structure_id"] for s in structures[4:]]
    assert len(result.frames) == len(structures) and not result.failures


def test_a_non_finite_label_stops_with_the_frame_named(structures, tmp_path, monkeypatch):
    def nan_forces(atoms, *, stress):
        return {"energy": -1.0, "forces": np.full((len(atoms), 3), np.nan), "stress": None, "extra": {}}

    monkeypatch.setattr(teacher, "teacher_labels", nan_forces)
    sid = structures[0].info["structure_id"]
    with pytest.raises(NonFiniteLabel, match=f"{sid}.*non-finite forces"):
        label_structures(structures[:1], CFG, cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs", progress=False)
    assert not list((tmp_path / "cache").glob("*"))


def test_dataset_splits_and_shipped_file_with_readme(labelled, tmp_path):
    cfg = MoEStudyPeriodicConfig(path=str(tmp_path / "ship" / "periodic_teacher.extxyz"), validation_fraction=0.2,
                                 test_fraction=0.2)
    frames = periodic_dataset(cfg, labelled, tmp_path / "dataset.extxyz")
    assert {f.info["split"] for f in frames} <= {"train", "validation", "test"}
    assert all((f.arrays["region"] == "bulk").all() for f in frames)
    dest = ship_periodic(labelled, cfg=cfg, command="snakemake --cores 1 moe_periodic_ship")
    assert len(read(dest, index=":")) == len(frames)
    text = (dest.parent / "README.md").read_text()
    for needed in ("Teacher labels, not DFT", SOURCE, "MIT", "snakemake --cores 1 moe_periodic_ship",
                   "Frames per family", "Frames and atoms per element", "| Li "):
        assert needed in text, needed
    bad = read(labelled, index=":")
    bad[0].info["label_level"] = "dft"
    write(tmp_path / "bad.extxyz", bad)
    with pytest.raises(ValueError, match="label_level=teacher"):
        periodic_dataset(cfg, tmp_path / "bad.extxyz", tmp_path / "x.extxyz")
    assert pd.notna(frames[0].info["group"])
