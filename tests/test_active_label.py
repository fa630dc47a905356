"""Labelling of selected frames (the workflow's al_label = the label subcommand on a selection chunk): a killed
iteration resumes without relabelling finished frames; provenance survives labelling, merging and ingest,
and the added frames are split by trajectory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from ase.calculators.emt import EMT
from ase.io import read, write

from pipeline.active.cells import SiteHeights, build_cell
from pipeline.active.explore import run_trajectory, trajectory_info
from pipeline.active.provenance import AL_KEYS, INGEST_KEYS
from pipeline.active.select import write_selection
from pipeline.active.ship import ship_grown_set
from pipeline.cli import main
from pipeline.config import ActiveExploreConfig, config_from_dict
from pipeline.data import labelling
from pipeline.data.ingest import ingest, write_ingest_outputs
from train_support import tiny_frames


class Killed(BaseException):
    """Stands in for the job being killed (not an Exception: nothing may catch it)."""


@pytest.fixture(scope="module")
def cfg():
    return config_from_dict({"label": {"calculator": "emt"}, "ingest": {"validation_fraction": 0.2,
                                                                         "test_fraction": 0.2}})


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    """Scored snapshots of EMT trajectories (two cells, two temperatures) written as two selection chunks."""
    directory = tmp_path_factory.mktemp("sel")
    frames = []
    for cell in ("2x2x4-co-top", "2x2x4-2co"):
        start = build_cell(cell, lattice_constant_a=3.97, sites=SiteHeights(), vacuum_a=7.0)
        for temperature in (300.0, 600.0):
            info = trajectory_info(start, iteration=0, run="hf", temperature_k=temperature, timestep_fs=1.0)
            snaps, _ = run_trajectory(start, EMT(), ActiveExploreConfig(steps=12, snapshot_interval=4),
                                      temperature_k=temperature, rng=np.random.default_rng(int(temperature)), info=info)
            frames.extend(snaps)
    for k, atoms in enumerate(frames):
        atoms.info["al_score"] = 0.1 * k
    scores = pd.DataFrame({"structure_id": [a.info["structure_id"] for a in frames],
                           "score_ev_a": [a.info["al_score"] for a in frames]})
    chosen = list(range(len(frames)))[::-1][:8]
    write_selection(frames, chosen, scores, directory=directory, chunk_size=4)
    return directory


def _label_args(cfg, selection, out, chunk):
    return ["label", "--config-json", json.dumps(cfg.to_dict()),
            "--structures", str(selection / f"chunk_{chunk:03d}.extxyz"),
            "--output", str(out / f"labelled_{chunk}.extxyz"), "--failures", str(out / f"failures_{chunk}.csv"),
            "--cache-dir", str(out / "cache"), "--log-dir", str(out / "logs"), "--no-progress"]


def test_a_killed_labelling_iteration_resumes_without_relabelling(cfg, selection, tmp_path, monkeypatch):
    chunk0 = [a.info["structure_id"] for a in read(selection / "chunk_000.extxyz", ":")]
    chunk1 = [a.info["structure_id"] for a in read(selection / "chunk_001.extxyz", ":")]
    assert len(chunk0) == len(chunk1) == 4
    calls = []
    real = labelling._compute_emt

    def counting(atoms, *args, kill_after=None, **kwargs):
        if kill_after is not None and len(calls) == kill_after:
            raise Killed
        calls.append(atoms.info["structure_id"])
        return real(atoms, *args, **kwargs)

    monkeypatch.setattr(labelling, "_compute_emt", lambda *a, **k: counting(*a, kill_after=5, **k))
    assert main(_label_args(cfg, selection, tmp_path, 0)) == 0
    with pytest.raises(Killed):  # the job of chunk 1 dies while labelling its second frame
        main(_label_args(cfg, selection, tmp_path, 1))
    assert calls == chunk0 + chunk1[:1]
    assert not (tmp_path / "labelled_1.extxyz").exists()
    calls.clear()
    monkeypatch.setattr(labelling, "_compute_emt", counting)
    assert main(_label_args(cfg, selection, tmp_path, 0)) == 0  # all cached
    assert main(_label_args(cfg, selection, tmp_path, 1)) == 0  # resumes after the finished frame
    assert calls == chunk1[1:]
    merged = tmp_path / "labelled.extxyz"
    assert main(["merge-labels", "--labelled", str(tmp_path / "labelled_0.extxyz"), str(tmp_path / "labelled_1.extxyz"),
                 "--failures-in", str(tmp_path / "failures_0.csv"), str(tmp_path / "failures_1.csv"),
                 "--output", str(merged), "--failures", str(tmp_path / "failures.csv")]) == 0
    frames = read(merged, ":")
    assert [f.info["sample_index"] for f in frames] == list(range(8))


def test_provenance_survives_labelling_and_ingest_and_frames_split_by_trajectory(cfg, selection, tmp_path):
    labelled, failures = [], []
    for chunk in (0, 1):
        assert main(_label_args(cfg, selection, tmp_path, chunk)) == 0
        labelled.append(tmp_path / f"labelled_{chunk}.extxyz")
        failures.append(tmp_path / f"failures_{chunk}.csv")
    base = tmp_path / "base.extxyz"
    base_frames = tiny_frames()
    for atoms in base_frames:
        if atoms.info["family"] == "gas":  # the sanity table of the ship step reads the bond of gas frames
            atoms.info["bond_a"] = float(atoms.get_distance(0, 1))
    write(base, base_frames, format="extxyz")
    result = ingest(cfg, paths=[base, *labelled])
    added = [a for a in result.frames if "al_iteration" in a.info]
    assert len(added) == 8 and not result.rejected
    selected = {a.info["structure_id"]: a for a in read(selection / "chunk_000.extxyz", ":")
                + read(selection / "chunk_001.extxyz", ":")}
    for atoms in added:
        source = selected[atoms.info["structure_id"]]
        for key in (*AL_KEYS, *INGEST_KEYS):
            assert atoms.info[key] == source.info[key], key
        assert atoms.info["label_calculator"] == "emt" and atoms.info["family"] == "slab_co"
    # the dataset file written by ingest keeps them too
    out = {k: tmp_path / f"ds.{k}" for k in ("extxyz", "json", "rej", "csv", "md")}
    write_ingest_outputs(result, dataset=out["extxyz"], manifest=out["json"], rejected=out["rej"],
                         stats_csv=out["csv"], stats_md=out["md"])
    back = [a for a in read(out["extxyz"], ":") if "al_iteration" in a.info]
    assert {a.info["al_score"] for a in back} == {a.info["al_score"] for a in added}
    splits = {}
    for atoms in back:
        splits.setdefault(atoms.info["group"], set()).add(atoms.info["split"])
        assert atoms.info["group"] == atoms.info["al_trajectory"]
    assert all(len(s) == 1 for s in splits.values())  # a trajectory never straddles two splits
    # the ship step writes base + added and a README with the provenance
    frames = ship_grown_set([base], labelled, failures, tmp_path / "ship", command="python -m pipeline al-ship ...")
    assert len(frames) == len(tiny_frames()) + 8
    readme = (tmp_path / "ship" / "README.md").read_text()
    assert "Frames added by active learning" in readme and "al_temperature_k" in readme
    assert len(read(tmp_path / "ship" / "pt_co_gpaw.extxyz", ":")) == len(frames)
