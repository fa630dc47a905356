"""Label convergence study: the ladder, resume from the cache, the metrics, the proposal, failures.

GPAW is never run: a fake labeller stands in for ``labelling._compute_gpaw`` (its errors are chosen per
setting, so the expected proposal is known), and one end-to-end CLI run uses EMT (not DFT).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml
from ase.io import write

import pipeline.data.convergence as conv
import pipeline.data.labelling as labelling
from pipeline.cli import main
from pipeline.config import LabelConfig, LabelConvergenceConfig, config_from_dict
from pipeline.data.labelling import SCFNotConverged
from pipeline.data.sampling import sample_structures

SAMPLE = {
    "bulk": {"eos_n_volumes": 5, "strain_n": 0, "rattle_n": 1, "rattle_supercell_atoms": [4], "thermal_n_frames": 0},
    "clean_slab": {"rattle_n_2x2": 1, "thermal_frames_per_temperature": 0},
    "slab_co": {"perturbed_per_site_2x2": 1, "half_ml_n_2x2": 0, "ideal_sites_3x3": ["top"], "approach_sites": [],
                "hot_n_2x2": 0, "close_heights_top_a": [], "close_heights_bridge_a": [],
                "close_heights_hollow_a": [], "flipped_heights_top_a": [], "flipped_heights_hollow_a": [],
                "lying_heights_a": []},
    "gas": {"n_bond_lengths": 3},
}
FRAMES = ["bulk-eos-002", "bulk-rattle-4at-000", "clean_slab-2x2-ideal", "clean_slab-2x2-rattle-000",
          "clean_slab-3x3-ideal", "slab_co-2x2-q0.25-top-ideal", "slab_co-2x2-q0.25-top-rattle-000",
          "slab_co-3x3-q0.111-top-ideal", "gas-co-1.140", "gas-co-0.960"]
# force error (meV/A, along x on every atom) of each axis value: k 3 and h 0.25 fail the 30 meV/A tolerance
FORCE_ERR = {"kpt_density": {1.5: 200.0, 3.0: 50.0, 4.5: 10.0, 6.0: 0.0}, "h_a": {0.25: 40.0, 0.2: 5.0, 0.16: 0.0},
             "smearing_ev": {0.1: 10.0, 0.05: 0.0}, "basis": {"dzp": 5.0, "tzdp": 0.0}}
CONV = {"frames": FRAMES, "skip": [], "base": {"kpt_density": 6.0, "h_a": 0.2, "smearing_ev": 0.05, "basis": "dzp"},
        "axes": {"kpt_density": [1.5, 3.0, 4.5], "h_a": [0.25, 0.16], "smearing_ev": [0.1], "basis": ["tzdp"]}}


@pytest.fixture(scope="module")
def structures_file(tmp_path_factory):
    cfg = config_from_dict({"sample": SAMPLE})
    frames = [f for f in sample_structures(cfg) if f.info["structure_id"] in FRAMES]
    path = tmp_path_factory.mktemp("conv") / "structures.extxyz"
    write(path, frames, format="extxyz")
    return path


@pytest.fixture
def conv_cfg():
    return config_from_dict({"label_convergence": CONV}).label_convergence


class FakeGPAW:
    """Stands in for labelling._compute_gpaw: EMT plus a known error per setting; counts calls."""

    def __init__(self, fail=None, raise_after=None):
        self.calls = []
        self.fail = fail or (lambda atoms, cfg: None)
        self.raise_after = raise_after

    def __call__(self, atoms, cfg, txt, *, damped):
        from ase.calculators.emt import EMT

        if self.raise_after is not None and len(self.calls) >= self.raise_after:
            raise KeyboardInterrupt("killed")
        self.calls.append((atoms.info["structure_id"], cfg.kpt_density, cfg.h_a, cfg.smearing_ev, cfg.basis, damped))
        exc = self.fail(atoms, cfg)
        if exc is not None:
            raise exc
        work = atoms.copy()
        work.calc = EMT()
        # the k error follows the frame's mesh (as real labels do): that of the densest density giving it
        mesh = labelling.kpoints_for(atoms, cfg)
        k = max(d for d in FORCE_ERR["kpt_density"]
                if labelling.kpoints_for(atoms, dataclasses.replace(cfg, kpt_density=d)) == mesh)
        err = FORCE_ERR["kpt_density"][k] + sum(
            FORCE_ERR[a][getattr(cfg, a) if a == "basis" else float(getattr(cfg, a))] for a in FORCE_ERR
            if a != "kpt_density")
        forces = work.get_forces() + np.array([1e-3 * err, 0.0, 0.0])
        return {"energy": float(work.get_potential_energy()), "forces": forces, "stress": None, "extra": {}}


@pytest.fixture
def fake(monkeypatch):
    f = FakeGPAW()
    monkeypatch.setattr(labelling, "_compute_gpaw", f)
    monkeypatch.setattr(labelling, "_gpaw_version", lambda: "fake")
    monkeypatch.setattr(conv, "ensure_basis", lambda *a, **k: None)
    return f


def _run(structures_file, cfg, tmp_path, **kw):
    return conv.run_study(structures_file, LabelConfig(), cfg, cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs",
                          progress=False, **kw)


def test_ladder_varies_one_parameter_at_a_time(conv_cfg):
    settings = conv.ladder(conv_cfg)
    base = settings[0]
    assert base.name == conv.REFERENCE and base.values() == {"kpt_density": 6.0, "h_a": 0.2, "smearing_ev": 0.05,
                                                             "basis": "dzp"}
    assert len({s.name for s in settings}) == len(settings)
    for s in settings[1:]:
        changed = [a for a in conv.AXES if s.values()[a] != base.values()[a]]
        assert changed == [s.axis]
    got = {(s.axis, s.values()[s.axis]) for s in settings[1:]}
    assert got == {("kpt_density", 1.5), ("kpt_density", 3.0), ("kpt_density", 4.5), ("h_a", 0.25), ("h_a", 0.16),
                   ("smearing_ev", 0.1), ("basis", "tzdp")}
    assert conv.axis_values(conv_cfg, "h_a") == [0.25, 0.2, 0.16]  # cheapest first
    assert conv.basis_rank("dzp") < conv.basis_rank("tzp") < conv.basis_rank("tzdp")


def test_label_config_keeps_the_rest_and_uses_one_mesh_per_frame(conv_cfg, structures_file):
    from ase.io import read

    label = LabelConfig(kpts=(2, 2, 2), maxiter=77)
    s = next(s for s in conv.ladder(conv_cfg) if s.name == "kpt_density=3")
    cfg = conv.label_config_for(label, s)
    assert cfg.kpts is None and cfg.kpt_density == 3.0 and cfg.maxiter == 77 and cfg.h_a == 0.2
    frames = conv.select_frames(read(structures_file, ":"), FRAMES)
    meshes = {f.info["structure_id"]: labelling.kpoints_for(f, cfg) for f in frames}
    assert meshes["clean_slab-2x2-ideal"][2] == 1 and meshes["gas-co-1.140"] == (1, 1, 1)
    assert not any(k.startswith(("dft_", "label_")) for f in frames for k in f.info)


def test_energy_difference_metric():
    def unit(sid, n, e, forces):
        return conv.UnitResult(sid, "slab", n, "s", "1x1x1", "ok", energy_ev=e, forces=np.asarray(forces, float))

    ref = {"a": unit("a", 2, -10.0, [[0, 0, 0], [0, 0, 0]]), "b": unit("b", 4, -20.0, np.zeros((4, 3))),
           "c": unit("c", 1, -5.0, [[0, 0, 0]])}
    # per-atom shifts: a +3 meV, b +1 meV, c -2 meV; forces differ by 0.03 eV/A on one atom of a
    got = {"a": unit("a", 2, -10.0 + 0.006, [[0.03, 0, 0], [0, 0, 0]]), "b": unit("b", 4, -20.0 + 0.004,
                                                                                np.zeros((4, 3))),
           "c": unit("c", 1, -5.0 - 0.002, [[0.5, 0, 0]])}
    m = conv.compare(got, ref)
    assert m["n_frames"] == 3
    assert m["ediff_err_max_mev_atom"] == pytest.approx(5.0)  # (a - c) shift: 3 - (-2)
    assert m["shift_mean_mev_atom"] == pytest.approx((3 + 1 - 2) / 3)
    # the single-atom frame is left out of the force metrics; 6 atoms, one with |dF| = 30 meV/A
    assert m["force_max_mev_a"] == pytest.approx(30.0)
    assert m["force_rms_mev_a"] == pytest.approx(np.sqrt(30.0**2 / 6))
    # a failed unit drops out; one frame left: no energy difference to measure
    got["b"].status = "failed"
    got["a"].status = "failed"
    assert np.isnan(conv.compare(got, ref)["ediff_err_max_mev_atom"])


def test_study_proposes_the_cheapest_passing_setting(structures_file, conv_cfg, fake, tmp_path):
    result = _run(structures_file, conv_cfg, tmp_path)
    p = result.proposal
    assert p.values == {"kpt_density": 4.5, "h_a": 0.2, "smearing_ev": 0.1, "basis": "dzp"}
    assert all(p.certified.values())
    t = result.table
    slab = t[(t["family"] == "slab_co") & (t["axis"] == "kpt_density")].set_index("value")
    # 2x2 frames (18 + 18 atoms) at 4x4: 50 meV/A; the 3x3 frame (38 atoms) gets 4x4 at density 4.5 too: 10
    assert slab.loc["3", "force_rms_mev_a"] == pytest.approx(np.sqrt((36 * 50.0**2 + 38 * 10.0**2) / 74))
    assert not slab.loc["3", "passes"] and slab.loc["4.5", "passes"]
    # h: the reference is the tightest value computed for every frame (0.16), so 0.2 is judged against it
    h = t[(t["family"] == "bulk") & (t["axis"] == "h_a")].set_index("value")
    assert h.loc["0.2", "reference_setting"] == "h_a=0.16" and h.loc["0.2", "force_rms_mev_a"] == pytest.approx(5.0)
    # the combination is evaluated against the base: 10 + 10 meV/A (k 4.5 and smearing 0.1)
    prop = t[(t["family"] == "clean_slab") & (t["value"] == "proposed")].iloc[0]
    assert prop["force_rms_mev_a"] == pytest.approx(20.0) and prop["passes"]
    ads = result.adsorption.set_index("setting")
    assert {"e_ads_top_2x2_ev", "e_ads_top_3x3_ev"} <= set(ads.columns) and "proposed" in ads.index


def test_propose_on_a_table():
    cfg = LabelConvergenceConfig()
    rows = []
    for fam, errs in (("bulk", {1.5: 90, 3.0: 20, 4.5: 5, 6.0: 0}), ("slab_co", {1.5: 90, 3.0: 40, 4.5: 10, 6.0: 0})):
        for k, e in errs.items():
            rows.append({"family": fam, "axis": "kpt_density", "value": f"{k:g}",
                         "setting": conv.setting_for(cfg, "kpt_density", k), "reference_setting": "reference",
                         "force_rms_mev_a": float(e), "ediff_err_max_mev_atom": 0.1, "n_frames": 2,
                         "passes": e <= 30})
    import pandas as pd

    p = conv.propose(pd.DataFrame(rows), cfg)
    assert p.values["kpt_density"] == 4.5 and p.certified["kpt_density"]  # 3 passes for bulk, not for slab_co
    assert p.values["h_a"] == cfg.base.h_a and not p.certified["h_a"]  # no rows: base kept, not certified


def test_resume_does_not_recompute(structures_file, conv_cfg, fake, tmp_path, monkeypatch):
    first = _run(structures_file, conv_cfg, tmp_path)
    n = len(fake.calls)
    assert n > 0 and all(not u.cached or u.status == "ok" for u in first.units)
    again = FakeGPAW(raise_after=0)  # any computation now raises
    monkeypatch.setattr(labelling, "_compute_gpaw", again)
    second = _run(structures_file, conv_cfg, tmp_path)
    assert again.calls == [] and all(u.cached for u in second.units)
    assert [u.energy_ev for u in second.units] == [u.energy_ev for u in first.units]
    assert [u.cpu_s for u in second.units] == [u.cpu_s for u in first.units]  # CPU time kept beside the cache


def test_cached_only_computes_nothing_and_lists_pending_units(structures_file, conv_cfg, fake, tmp_path):
    partial = _run(structures_file, conv_cfg, tmp_path, cached_only=True)
    assert fake.calls == [] and {u.status for u in partial.units} == {"pending"}
    conv.ship_study(partial, conv_cfg, LabelConfig(), dest=tmp_path / "dest", command="cmd", labelled=structures_file)
    assert "Not computed yet" in (tmp_path / "dest" / "README.md").read_text()
    _run(structures_file, conv_cfg, tmp_path)  # resumes: now computes
    assert fake.calls


def test_killed_run_resumes_where_it_stopped(structures_file, conv_cfg, fake, tmp_path, monkeypatch):
    killed = FakeGPAW(raise_after=7)
    monkeypatch.setattr(labelling, "_compute_gpaw", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(structures_file, conv_cfg, tmp_path)
    resumed = FakeGPAW()
    monkeypatch.setattr(labelling, "_compute_gpaw", resumed)
    _run(structures_file, conv_cfg, tmp_path)
    done = set(killed.calls)
    assert len(done) == 7 and not done & set(resumed.calls)


def test_failed_scf_is_recorded_not_fatal(structures_file, conv_cfg, tmp_path, monkeypatch):
    def fail(atoms, cfg):
        if atoms.info["structure_id"] == "clean_slab-2x2-rattle-000" and cfg.kpt_density == 1.5:
            return SCFNotConverged("no convergence in 333 iterations")
        if atoms.info["structure_id"] == "gas-co-0.960" and cfg.h_a == 0.25:
            return RuntimeError("grid trouble")
        return None

    fake = FakeGPAW(fail=fail)
    monkeypatch.setattr(labelling, "_compute_gpaw", fake)
    monkeypatch.setattr(labelling, "_gpaw_version", lambda: "fake")
    monkeypatch.setattr(conv, "ensure_basis", lambda *a, **k: None)
    result = _run(structures_file, conv_cfg, tmp_path)
    units = {(u.structure_id, u.setting): u for u in result.units}
    scf = units[("clean_slab-2x2-rattle-000", "kpt_density=1.5")]
    assert scf.status == "failed" and "no convergence in 333 iterations" in scf.reason
    other = units[("gas-co-0.960", "h_a=0.25")]
    assert other.status == "failed" and "RuntimeError" in other.reason
    row = result.table[(result.table["family"] == "clean_slab") & (result.table["setting"] == "kpt_density=1.5")]
    assert row["n_frames"].iloc[0] == 2 and "failed or missing: clean_slab-2x2-rattle-000" in row["note"].iloc[0]
    # SCF failures are cached (not retried), other errors are retried on the next run
    retried = FakeGPAW()
    monkeypatch.setattr(labelling, "_compute_gpaw", retried)
    _run(structures_file, conv_cfg, tmp_path)
    assert {c[0] for c in retried.calls} == {"gas-co-0.960"}


def test_skip_leaves_units_out_and_moves_the_axis_reference(structures_file, fake, tmp_path):
    cfg = config_from_dict({"label_convergence": {**CONV, "skip": ["slab_co-3x3-*:h_a=0.16"]}}).label_convergence
    result = _run(structures_file, cfg, tmp_path)
    assert not any(c[0].startswith("slab_co-3x3") and c[2] == 0.16 for c in fake.calls)
    h = result.table[(result.table["family"] == "slab_co") & (result.table["axis"] == "h_a")].set_index("value")
    assert h.loc["0.25", "reference_setting"] == conv.REFERENCE  # h 0.2: the tightest value of every frame
    assert h.loc["0.16", "n_frames"] == 2 and "tighter" in h.loc["0.16", "note"]


def test_cli_end_to_end_with_emt(structures_file, tmp_path):
    raw = {"label": {"calculator": "emt"}, "label_convergence": CONV}
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    dest = tmp_path / "dest"
    args = ["label-convergence", "--config", str(cfg_path), "--labelled", str(structures_file), "--cache-dir",
            str(tmp_path / "cache"), "--log-dir", str(tmp_path / "logs"), "--dest", str(dest), "--no-progress"]
    assert main(args) == 0
    for name in ("convergence.csv", "convergence.md", "units.csv", "adsorption.csv", "proposal.json", "README.md",
                 "frames.extxyz"):
        assert (dest / name).exists(), name
    readme = (dest / "README.md").read_text()
    assert "NOT DFT (emt)" in readme and "label-convergence" in readme
    # EMT ignores every setting: nothing changes along any axis, so the cheapest values are proposed
    import json

    prop = json.loads((dest / "proposal.json").read_text())["values"]
    assert prop == {"kpt_density": 1.5, "h_a": 0.25, "smearing_ev": 0.1, "basis": "dzp"}
    assert main([*args[:-1], "--plan"]) == 0


def test_schema_rejects_a_bad_basis_name():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="label_convergence.base.basis"):
        config_from_dict({"label_convergence": {"base": {"basis": "big"}}})
    assert dataclasses.asdict(config_from_dict({}).label_convergence)["base"]["basis"] == "dzp"


def test_plane_wave_cutoffs_are_basis_axis_values_tighter_than_any_lcao_basis(conv_cfg):
    assert conv.pw_cutoff("pw600") == 600.0 and conv.pw_cutoff("dzp") is None
    assert conv.basis_rank("tzdp") < conv.basis_rank("pw400") < conv.basis_rank("pw600")
    cfg = config_from_dict({"label_convergence": {**CONV, "axes": {**CONV["axes"], "basis": ["tzdp", "pw500"]}}})
    s = next(s for s in conv.ladder(cfg.label_convergence) if s.name == "basis=pw500")
    pw = conv.label_config_for(LabelConfig(), s)
    assert pw.mode == "pw" and pw.ecut_ev == 500.0 and pw.kpts is None and pw.kpt_density == 6.0
    lcao = conv.label_config_for(LabelConfig(mode="pw", ecut_ev=500.0), conv.ladder(cfg.label_convergence)[0])
    assert lcao.mode == "lcao" and lcao.basis == "dzp"
    assert conv.current_setting(LabelConfig(mode="pw", ecut_ev=450.0)).basis == "pw450"
    assert conv.axis_values(cfg.label_convergence, "basis") == ["dzp", "tzdp", "pw500"]


def test_resume_from_a_shipped_study_computes_only_the_missing_units(structures_file, conv_cfg, fake, tmp_path,
                                                                     monkeypatch):
    first = _run(structures_file, conv_cfg, tmp_path / "first")
    dest = tmp_path / "shipped"
    conv.ship_study(first, conv_cfg, LabelConfig(), dest=dest, command="test", labelled=structures_file)
    wider = config_from_dict({"label_convergence": {**CONV, "axes": {**CONV["axes"], "h_a": [0.25, 0.16, 0.3]}}})
    again = FakeGPAW()
    monkeypatch.setattr(labelling, "_compute_gpaw", again)
    second = _run(structures_file, wider.label_convergence, tmp_path / "second", resume_from=dest)
    # only the new rung is computed; every shipped unit is reused with its energy and CPU time
    assert again.calls and {c[2] for c in again.calls} == {0.3}
    old = {(u.structure_id, u.setting): u for u in first.units if u.status == "ok"}
    for u in second.units:
        if (u.structure_id, u.setting) in old:
            assert u.energy_ev == pytest.approx(old[u.structure_id, u.setting].energy_ev, rel=1e-12)
            assert u.cpu_s == pytest.approx(old[u.structure_id, u.setting].cpu_s, rel=1e-9)
            np.testing.assert_allclose(u.forces, old[u.structure_id, u.setting].forces, atol=1e-8)


def test_resume_from_refuses_units_labelled_with_other_settings(structures_file, conv_cfg, fake, tmp_path,
                                                                monkeypatch):
    first = _run(structures_file, conv_cfg, tmp_path / "first")
    dest = tmp_path / "shipped"
    conv.ship_study(first, conv_cfg, LabelConfig(), dest=dest, command="test", labelled=structures_file)
    monkeypatch.setattr(labelling, "_gpaw_version", lambda: "another")  # e.g. a newer GPAW
    frames = conv.select_frames(__import__("ase.io").io.read(structures_file, ":"), FRAMES)
    assert conv.seed_cache(frames, dest, LabelConfig(), tmp_path / "cache") == 0
    with pytest.raises(conv.PipelineInputError, match="frames.extxyz"):
        conv.seed_cache(frames, tmp_path / "nowhere", LabelConfig(), tmp_path / "cache")
