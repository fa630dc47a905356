"""Frame validation: each rejection reason fires on a crafted frame and names its file and index."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ingest_structures import co_gas, emt_label, family_frames, pt_bulk

from pipeline.config import config_from_dict
from pipeline.data.canonical import canonical_frame
from pipeline.data.ingest import ingest
from pipeline.data.validation import (
    TooManyRejectedError,
    check_rejected_fraction,
    validate_frames,
)

CRAFTED = "crafted.extxyz"


def _canonical(frames, source=CRAFTED):
    return [canonical_frame(a, source_file=source, source_index=k, source_format="extxyz")
            for k, a in enumerate(frames)]


def _with_results(atoms: Atoms, **results) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _good(atoms: Atoms) -> dict:
    return {k: v for k, v in atoms.calc.results.items()}


def _craft(reason: str) -> Atoms:
    base = emt_label(pt_bulk(rattle_seed=99))
    r = _good(base)
    if reason == "invalid_geometry":
        atoms = base.copy()
        atoms.positions[1, 0] = np.nan
        return _with_results(atoms, **r)
    if reason == "unknown_species":
        atoms = base.copy()
        atoms.symbols[2] = "Au"
        return _with_results(atoms, **r)
    if reason == "missing_energy":
        return _with_results(base, forces=r["forces"])
    if reason == "nonfinite_energy":
        return _with_results(base, energy=np.inf, forces=r["forces"])
    if reason == "missing_forces":
        return _with_results(base, energy=r["energy"])
    if reason == "forces_shape":
        return _with_results(base, energy=r["energy"], forces=r["forces"][:-1])
    if reason == "nonfinite_forces":
        forces = r["forces"].copy()
        forces[3, 2] = np.nan
        return _with_results(base, energy=r["energy"], forces=forces)
    if reason == "large_force":
        forces = r["forces"].copy()
        forces[2] = [0.0, 60.0, 0.0]
        return _with_results(base, energy=r["energy"], forces=forces)
    if reason == "invalid_stress":
        return _with_results(base, energy=r["energy"], forces=r["forces"], stress=[0, 0, np.nan, 0, 0, 0])
    if reason == "close_atoms":
        # atom 0 near the origin and atom 1 near the opposite corner: 0.5 A apart only through the boundary
        atoms = Atoms("Pt2", positions=[[0.1, 0.1, 0.1], [3.8, 3.8, 3.92 - 0.2 * np.sqrt(3) / 2 + 0.1]],
                      cell=[3.92, 3.92, 3.92], pbc=True)
        assert atoms.get_distance(0, 1) > 3.0
        return _with_results(atoms, energy=-10.0, forces=np.zeros((2, 3)))
    if reason == "energy_outlier":
        return _with_results(base, energy=r["energy"] + 5.0 * len(base), forces=r["forces"])
    raise AssertionError(reason)


@pytest.mark.parametrize(
    "reason, fragment",
    [
        ("invalid_geometry", "non-finite positions"),
        ("unknown_species", "['Au'] not in the configured species"),
        ("missing_energy", "no total energy"),
        ("nonfinite_energy", "energy = inf"),
        ("missing_forces", "no forces"),
        ("forces_shape", "shape (3, 3), expected (4, 3)"),
        ("nonfinite_forces", "non-finite forces on atoms [3]"),
        ("large_force", "|F| = 60.0 eV/A on atom 2 (Pt) > ingest.max_force_ev_a = 50.0 eV/A"),
        ("invalid_stress", "not 6 finite numbers"),
        ("close_atoms", "A apart (< ingest.min_distance_a = 0.6 A)"),
        ("energy_outlier", "robust z ="),
    ],
)
def test_each_rejection_reason_fires_on_a_crafted_frame(cfg, reason, fragment):
    good = family_frames()
    frames = _canonical([*good[:12], _craft(reason), *good[12:]])

    accepted, rejected, _ = validate_frames(frames, species=cfg.species, cfg=cfg.ingest)

    assert len(accepted) == len(good)
    (rejection,) = rejected
    assert (rejection.reason, rejection.source_file, rejection.source_index) == (reason, CRAFTED, 12)
    assert fragment in rejection.detail
    assert str(rejection).startswith(f"{CRAFTED} frame 12: {reason}: ")


def test_close_atoms_reports_the_pair_and_distance(cfg):
    frame = _canonical([_craft("close_atoms")])[0]
    _, (rejection,), _ = validate_frames([frame], species=cfg.species, cfg=cfg.ingest)
    distance = float(np.linalg.norm(frame.get_distance(0, 1, mic=True)))
    assert rejection.detail.startswith(f"atoms 0 and 1 are {distance:.3f} A apart")


def test_exact_duplicate_names_the_first_occurrence(cfg):
    good = family_frames()
    frames = _canonical([*good, good[3]])
    accepted, (rejection,), _ = validate_frames(frames, species=cfg.species, cfg=cfg.ingest)
    assert len(accepted) == len(good)
    assert rejection.reason == "duplicate" and rejection.source_index == len(good)
    assert rejection.detail.endswith(f"as {CRAFTED} frame 3")


def test_duplicate_needs_identical_geometry(cfg):
    good = family_frames()
    moved = good[3].copy()
    moved.positions[0, 0] += 1e-6
    moved.calc = SinglePointCalculator(moved, **_good(good[3]))
    accepted, rejected, _ = validate_frames(_canonical([*good, moved]), species=cfg.species, cfg=cfg.ingest)
    assert rejected == [] and len(accepted) == len(good) + 1


@pytest.mark.parametrize("offset_ev_per_atom, rejected", [(0.5, False), (0.7, True)])
def test_outlier_z_uses_the_mad_floor(offset_ev_per_atom, rejected):
    # ten 4-atom Pt frames on an exact per-element line; one shifted. The residuals are 0 except the
    # shifted one, so MAD = 0 and the floor (0.02 eV/atom) sets the scale:
    # z = 0.6745 * offset / 0.02 = 16.9 (0.5 eV/atom, kept) or 23.6 (0.7 eV/atom, rejected) vs 20.
    cfg = config_from_dict({"ingest": {"energy_outlier_z": 20.0, "energy_outlier_mad_floor_ev": 0.02}})
    frames = []
    for k in range(10):
        atoms = pt_bulk(rattle_seed=k)
        energy = -5.0 * len(atoms) + (offset_ev_per_atom * len(atoms) if k == 7 else 0.0)
        frames.append(_with_results(atoms, energy=energy, forces=np.zeros((len(atoms), 3))))
    _, out, fit = validate_frames(_canonical(frames), species=cfg.species, cfg=cfg.ingest)
    assert fit.mad_ev == pytest.approx(0.0, abs=1e-12) and fit.scale_ev == 0.02
    assert [r.source_index for r in out] == ([7] if rejected else [])


def test_reference_fit_recovers_per_element_energies(cfg):
    frames = []
    for atoms in (pt_bulk(rattle_seed=1), co_gas(), pt_bulk(rattle_seed=2), co_gas(1.2)):
        n = atoms.symbols
        energy = -6.0 * (n == "Pt").sum() - 7.0 * (n == "C").sum() - 4.0 * (n == "O").sum()
        frames.append(_with_results(atoms, energy=float(energy), forces=np.zeros((len(atoms), 3))))
    *_, fit = validate_frames(_canonical(frames), species=cfg.species, cfg=cfg.ingest)
    assert fit.references_ev["Pt"] == pytest.approx(-6.0)
    assert fit.references_ev["C"] + fit.references_ev["O"] == pytest.approx(-11.0)  # only CO together


def test_rejected_fraction_limit():
    frames = _canonical([_craft("missing_forces")] * 2)
    check_rejected_fraction(20, [], 0.1)
    with pytest.raises(TooManyRejectedError, match="no frames were read"):
        check_rejected_fraction(0, [], 0.1)
    _, rejected, _ = validate_frames(frames, species=["Pt"], cfg=config_from_dict({}).ingest)
    check_rejected_fraction(20, rejected, 0.1)  # 2/20 = 10% is allowed
    with pytest.raises(TooManyRejectedError) as err:
        check_rejected_fraction(19, rejected, 0.1)
    assert "2 of 19 frames rejected" in str(err.value)
    assert f"{CRAFTED} frame 0: missing_forces" in str(err.value)


def test_too_many_rejections_fail_the_ingest_run(tmp_path, cfg):
    good = family_frames()[:10]
    bad = [_craft("missing_energy"), _craft("unknown_species")]
    ase.io.write(tmp_path / "mixed.extxyz", [*good, *bad], format="extxyz")
    with pytest.raises(TooManyRejectedError) as err:
        ingest(cfg, paths=[tmp_path])
    assert "2 of 12 frames rejected" in str(err.value)
    assert len(err.value.rejected) == 2

    lenient = config_from_dict({"ingest": {"max_rejected_fraction": 0.2}})
    result = ingest(lenient, paths=[tmp_path])
    reasons = [(r.source_index, r.reason) for r in result.rejected]
    assert reasons == [(10, "missing_energy"), (11, "unknown_species")]
    assert result.manifest["rejected"]["by_reason"] == {"missing_energy": 1, "unknown_species": 1}
