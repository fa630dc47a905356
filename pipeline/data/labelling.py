"""Labelling of sampled structures with energies, forces and (bulk) stress: GPAW DFT, or EMT or the SevenNet-0
teacher (:mod:`pipeline.data.teacher`), neither of them DFT.

One structure at a time, each result cached as soon as it is computed (one small extxyz file per
structure, written atomically), so a killed run loses at most the structure in flight and a rerun
skips what is cached. A GPAW SCF that does not converge is retried once with a damped density mixer
(``Mixer(0.05, 5, 50)``); if that fails too, the structure is recorded as failed, with its reason, in
the failures table (and cached as failed, so a rerun does not repeat it; delete its
``*.failed.json`` cache file to retry). A label that is not finite stops the run with an error naming the
structure (:class:`NonFiniteLabel`); nothing is cached for it.

Labels are attached through :class:`ase.calculators.singlepoint.SinglePointCalculator`, so
``ase.io.write(..., format="extxyz")`` stores them the standard way (``energy`` and ``stress`` in the
comment line, ``forces`` per atom) and ``ase.io.read`` reads them back unchanged.

The energy label of GPAW frames is the force-consistent (Fermi-Dirac free) energy, whose gradient the
forces are; the zero-smearing extrapolated energy is kept in ``info['dft_energy_zero_width_ev']``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.calculators.calculator import (
    PropertyNotImplementedError,
    kptdensity2monkhorstpack,
)
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from tqdm import tqdm

from pipeline.atomic import write_atomic
from pipeline.config import Config, LabelConfig

log = logging.getLogger(__name__)

FAILURE_COLUMNS = (
    "structure_id", "sample_index", "family", "config_type", "n_atoms", "calculator", "attempts", "reason", "wall_s",
)
# GPAW modes whose stress tensor is implemented (LCAO stress is not implemented in GPAW).
STRESS_MODES = frozenset({"pw"})
DAMPED_MIXER = (0.05, 5, 50)


class SCFNotConverged(RuntimeError):
    """A self-consistent field calculation did not converge."""


class NonFiniteLabel(ValueError):
    """A calculator returned a NaN or infinite energy, force or stress."""


@dataclass
class LabelResult:
    """Labelled frames (input order) and failed structures (one dict per failure, FAILURE_COLUMNS)."""

    frames: list[Atoms] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# settings and metadata
# ----------------------------------------------------------------------------------------------


def kpoints_for(atoms: Atoms, cfg: LabelConfig) -> tuple[int, int, int]:
    """Monkhorst-Pack grid: ``cfg.kpts`` when set (fixed, whatever the cell), else from ``cfg.kpt_density``
    (points per A^-1); 1 along non-periodic axes."""
    if not atoms.pbc.any():
        return (1, 1, 1)
    if cfg.kpts is not None:
        k = cfg.kpts
    else:
        k = kptdensity2monkhorstpack(atoms, kptdensity=cfg.kpt_density, even=cfg.kpt_even)
    return tuple(int(x) if p else 1 for x, p in zip(k, atoms.pbc))


def wants_stress(atoms: Atoms, cfg: LabelConfig) -> bool:
    """Whether a stress label is computed: 3D-periodic cells, stress enabled, and a mode that has it."""
    if not (cfg.stress and atoms.pbc.all()):
        return False
    return cfg.calculator in ("emt", "sevenn") or cfg.mode in STRESS_MODES


def _gpaw_version() -> str:
    import gpaw

    return str(gpaw.__version__)


def _setups_text(atoms: Atoms, cfg: LabelConfig) -> str:
    """The PAW setups :func:`make_gpaw` uses: ``label.pt_setup`` for Pt, GPAW's standard ones for the rest."""
    pt = "Pt:" + cfg.pt_setup + (" valence electrons" if cfg.pt_setup.isdigit() else "")
    if set(atoms.get_chemical_symbols()) <= {"Pt", "C", "O"}:
        return pt + ", C/O:paw"  # the Pt+CO sets' text (part of their cache keys)
    return pt + ", others:paw"


def label_metadata(atoms: Atoms, cfg: LabelConfig) -> dict:
    """The ``info`` keys that describe how ``atoms`` is labelled (calculator and DFT settings)."""
    if cfg.calculator == "emt":
        return {"label_calculator": "emt", "is_dft": False, "dft_code": "none (EMT, not DFT)"}
    if cfg.calculator == "sevenn":
        from pipeline.data.teacher import teacher_metadata

        return teacher_metadata()
    kpts = kpoints_for(atoms, cfg)
    meta = {
        "label_calculator": "gpaw",
        "is_dft": True,
        "dft_code": "gpaw",
        "dft_version": _gpaw_version(),
        "dft_xc": cfg.xc,
        "dft_mode": cfg.mode,
        "dft_basis": cfg.basis if cfg.mode == "lcao" else "pw",
        "dft_kpts": "x".join(str(k) for k in kpts),
        "dft_smearing": f"fermi-dirac {cfg.smearing_ev:g} eV",
        "dft_setups": _setups_text(atoms, cfg),
        "dft_spin": "spin-paired",
    }
    if cfg.mode == "lcao":
        meta["dft_h_a"] = float(cfg.h_a)
    else:
        meta["dft_ecut_ev"] = float(cfg.ecut_ev)
    if wants_stress(atoms, cfg):
        meta["dft_stress"] = "computed"
    elif not atoms.pbc.all():
        meta["dft_stress"] = "not computed (not 3D periodic)"
    elif not cfg.stress:
        meta["dft_stress"] = "not computed (label.stress is false)"
    else:
        meta["dft_stress"] = f"not computed (not implemented in GPAW {cfg.mode} mode)"
    return meta


def cache_key(atoms: Atoms, cfg: LabelConfig) -> str:
    """Hash of the geometry and every label setting: a cached result is reused only if it matches."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(np.ascontiguousarray(atoms.positions, dtype=float), 8).tobytes())
    h.update(np.round(np.ascontiguousarray(atoms.cell.array, dtype=float), 8).tobytes())
    h.update(np.ascontiguousarray(atoms.pbc, dtype=bool).tobytes())
    settings = {k: v for k, v in label_metadata(atoms, cfg).items()}
    settings.update(maxiter=cfg.maxiter, stress=wants_stress(atoms, cfg))
    if cfg.calculator in ("emt", "sevenn"):
        settings = {"calculator": cfg.calculator, "stress": wants_stress(atoms, cfg)}
        if cfg.calculator == "sevenn":
            settings["source"] = label_metadata(atoms, cfg)["label_source"]
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _safe_name(structure_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", structure_id)


def cache_paths(atoms: Atoms, cfg: LabelConfig, cache_dir: str | Path) -> tuple[Path, Path]:
    """The cache files of ``atoms`` labelled with ``cfg``: (labelled frame, failure record).

    Named by ``info['structure_id']`` and :func:`cache_key`, so they change with the geometry and every
    label setting; :func:`label_one` reads and writes exactly these files.
    """
    name = f"{_safe_name(str(atoms.info['structure_id']))}-{cache_key(atoms, cfg)}"
    return Path(cache_dir) / f"{name}.extxyz", Path(cache_dir) / f"{name}.failed.json"


# ----------------------------------------------------------------------------------------------
# calculators
# ----------------------------------------------------------------------------------------------


def make_gpaw(atoms: Atoms, cfg: LabelConfig, txt: str | Path, *, damped: bool = False):
    """A serial GPAW calculator with the configured settings, text output to ``txt``."""
    from gpaw import GPAW, PW, FermiDirac, Mixer

    kwargs = dict(
        xc=cfg.xc,
        kpts=kpoints_for(atoms, cfg),
        occupations=FermiDirac(cfg.smearing_ev),
        setups={"Pt": cfg.pt_setup},
        spinpol=False,
        maxiter=cfg.maxiter,
        txt=str(txt),
    )
    if cfg.mode == "lcao":
        kwargs.update(mode="lcao", basis=cfg.basis, h=cfg.h_a)
    else:
        kwargs.update(mode=PW(cfg.ecut_ev))
    if damped:
        kwargs["mixer"] = Mixer(*DAMPED_MIXER)
    return GPAW(**kwargs)


def _compute_gpaw(atoms: Atoms, cfg: LabelConfig, txt: Path, *, damped: bool) -> dict:
    """Energy (eV), forces (eV/A, shape (n, 3)) and stress (eV/A^3, Voigt 6) of one structure with GPAW.

    Raises
    ------
    SCFNotConverged
        When GPAW's SCF does not converge within ``cfg.maxiter`` iterations.
    """
    from gpaw import KohnShamConvergenceError

    work = atoms.copy()
    work.calc = make_gpaw(work, cfg, txt, damped=damped)
    try:
        free = work.get_potential_energy(force_consistent=True)
        # one atom: the force is zero (forces sum to zero); GPAW's LCAO force pass would cost as much as the SCF
        forces = work.get_forces() if len(work) > 1 else np.zeros((1, 3))
        stress = work.get_stress(voigt=True) if wants_stress(work, cfg) else None
    except KohnShamConvergenceError as exc:
        raise SCFNotConverged(f"GPAW SCF not converged within {cfg.maxiter} iterations ({exc})") from exc
    extrapolated = work.get_potential_energy()
    return {"energy": float(free), "forces": np.array(forces), "stress": stress,
            "extra": {"dft_energy_zero_width_ev": float(extrapolated)}}


def _compute_emt(atoms: Atoms, cfg: LabelConfig, txt: Path, *, damped: bool) -> dict:
    """Energy, forces and (3D-periodic cells) stress with ASE's EMT: fast, NOT DFT."""
    from ase.calculators.emt import EMT

    work = atoms.copy()
    work.calc = EMT()
    energy = work.get_potential_energy()
    forces = work.get_forces()
    stress = None
    if wants_stress(work, cfg):
        try:
            stress = work.get_stress(voigt=True)
        except PropertyNotImplementedError:
            stress = None
    return {"energy": float(energy), "forces": np.array(forces), "stress": stress, "extra": {}}


def _compute_sevenn(atoms: Atoms, cfg: LabelConfig, txt: Path, *, damped: bool) -> dict:
    """Energy, forces and (3D-periodic cells) stress from the SevenNet-0 teacher: NOT DFT."""
    from pipeline.data.teacher import teacher_labels

    return teacher_labels(atoms, stress=wants_stress(atoms, cfg))


def compute_labels(atoms: Atoms, cfg: LabelConfig, txt: Path, *, damped: bool = False) -> dict:
    """Dispatch to the configured labeller; returns ``energy``, ``forces``, ``stress``, ``extra``."""
    labellers = {"gpaw": _compute_gpaw, "emt": _compute_emt, "sevenn": _compute_sevenn}  # looked up per call
    if cfg.calculator not in labellers:
        raise ValueError(f"unknown label.calculator {cfg.calculator!r} (expected one of {sorted(labellers)})")
    return labellers[cfg.calculator](atoms, cfg, txt, damped=damped)


def check_finite(atoms: Atoms, result: dict, calculator: str) -> None:
    """Raise :class:`NonFiniteLabel` naming the structure when any label of ``result`` is NaN or infinite."""
    bad = [key for key in ("energy", "forces", "stress")
           if result.get(key) is not None and not np.all(np.isfinite(result[key]))]
    if bad:
        raise NonFiniteLabel(
            f"structure {atoms.info.get('structure_id')!r} (sample_index {atoms.info.get('sample_index')}, "
            f"{atoms.get_chemical_formula()}, {len(atoms)} atoms): {calculator} returned non-finite {', '.join(bad)}")


# ----------------------------------------------------------------------------------------------
# one structure, cached
# ----------------------------------------------------------------------------------------------


def _labelled_frame(atoms: Atoms, cfg: LabelConfig, result: dict, *, wall_s: float, attempts: int) -> Atoms:
    out = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info.update(atoms.info)
    out.info.update(label_metadata(atoms, cfg))
    out.info.update(result["extra"])
    out.info["label_wall_s"] = round(float(wall_s), 3)
    out.info["label_attempts"] = int(attempts)
    out.info["label_mixer"] = "damped Mixer(0.05, 5, 50)" if attempts > 1 else "default"
    props = {"energy": result["energy"], "forces": result["forces"]}
    if cfg.calculator == "gpaw":
        props["free_energy"] = result["energy"]
    if result["stress"] is not None:
        props["stress"] = np.asarray(result["stress"])
    out.calc = SinglePointCalculator(out, **props)
    return out


def label_one(atoms: Atoms, cfg: LabelConfig, *, cache_dir: Path, log_dir: Path) -> tuple[Atoms | None, dict | None]:
    """Label one structure, or take it from the cache.

    Returns
    -------
    (frame, None) on success, (None, failure record) when the SCF did not converge twice.

    Raises
    ------
    NonFiniteLabel
        When the calculator returns a NaN or infinite label (nothing is cached).
    """
    sid = atoms.info.get("structure_id")
    if not sid:
        raise ValueError(f"structure at sample_index {atoms.info.get('sample_index')} has no info['structure_id']")
    cache_dir, log_dir = Path(cache_dir), Path(log_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    done, failed = cache_paths(atoms, cfg, cache_dir)
    if done.exists():
        try:
            return read(done, format="extxyz"), None
        except Exception as exc:  # a corrupt cache file is recomputed, never trusted
            log.warning("cache file %s for %s is unreadable (%s); recomputing", done, sid, exc)
    if failed.exists():
        return None, json.loads(failed.read_text())
    t0 = time.perf_counter()
    reasons = []
    for attempt, damped in enumerate((False, True), start=1):
        txt = log_dir / f"{_safe_name(sid)}{'.retry' if damped else ''}.txt"
        try:
            result = compute_labels(atoms, cfg, txt, damped=damped)
        except SCFNotConverged as exc:
            reasons.append(f"attempt {attempt} ({'damped mixer' if damped else 'default mixer'}): {exc}")
            log.warning("structure %s: %s", sid, reasons[-1])
            continue
        check_finite(atoms, result, cfg.calculator)
        frame = _labelled_frame(atoms, cfg, result, wall_s=time.perf_counter() - t0, attempts=attempt)
        write_atomic(done, lambda tmp: write(tmp, frame, format="extxyz"))
        # return what the cache holds, so fresh and resumed runs give identical frames
        return read(done, format="extxyz"), None
    record = {
        "structure_id": sid,
        "sample_index": int(atoms.info.get("sample_index", -1)),
        "family": str(atoms.info.get("family", "")),
        "config_type": str(atoms.info.get("config_type", "")),
        "n_atoms": len(atoms),
        "calculator": cfg.calculator,
        "attempts": len(reasons),
        "reason": "; ".join(reasons),
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    write_atomic(failed, lambda tmp: tmp.write_text(json.dumps(record)))
    return None, record


# ----------------------------------------------------------------------------------------------
# labels made before (a shipped file): taken into the cache instead of being computed again
# ----------------------------------------------------------------------------------------------

#: largest position or cell difference (A) between a structure and an earlier label of it (extxyz keeps 8 decimals)
REUSE_TOLERANCE_A = 1e-6


def geometry_mismatch(atoms: Atoms, other: Atoms) -> str | None:
    """How ``other`` is not the structure ``atoms`` (other elements or periodicity, or a cell or position off by more
    than :data:`REUSE_TOLERANCE_A`), or ``None`` when it is the same structure."""
    if not (np.array_equal(atoms.numbers, other.numbers) and np.array_equal(atoms.pbc, other.pbc)):
        return "other elements or periodicity"
    if (np.abs(atoms.cell.array - other.cell.array).max() > REUSE_TOLERANCE_A
            or np.abs(atoms.positions - other.positions).max() > REUSE_TOLERANCE_A):
        return "other cell or positions"
    return None


def reuse_mismatch(atoms: Atoms, earlier: Atoms, cfg: LabelConfig) -> str | None:
    """Why ``earlier`` is not a label of ``atoms`` made with ``cfg``'s settings, or ``None`` when it is.

    ``earlier`` must have the same elements, periodicity, cell and positions (within :data:`REUSE_TOLERANCE_A`),
    finite energy and forces, and every setting of :func:`label_metadata` (calculator, code version, functional,
    mode, cutoff or basis, k-point mesh, smearing, setups, spin, stress) recorded in its ``info`` with the value
    ``cfg`` gives ``atoms``.
    """
    reason = geometry_mismatch(atoms, earlier)
    if reason is not None:
        return reason
    results = earlier.calc.results if earlier.calc is not None else {}
    if results.get("energy") is None or results.get("forces") is None:
        return "no energy or forces"
    if not (np.isfinite(results["energy"]) and np.isfinite(results["forces"]).all()):
        return "non-finite energy or forces"
    for key, value in label_metadata(atoms, cfg).items():
        have = earlier.info.get(key)
        same = (have is not None and np.isclose(float(have), float(value))) if isinstance(value, float) else (
            str(have) == str(value))
        if not same:
            return f"{key} is {have!r}, the settings give {value!r}"
    return None


def seed_cache(frames: Sequence[Atoms], cfg: LabelConfig, earlier: Sequence[Atoms], cache_dir: str | Path) -> int:
    """Write the earlier labels of ``frames`` (matched by ``info['structure_id']``) into the cache, so that
    :func:`label_one` takes them instead of computing them; returns how many were taken.

    An earlier label that does not match (:func:`reuse_mismatch`) is left out with a warning naming the structure
    and the reason, and that structure is computed; what the cache already holds is never overwritten.
    """
    by_id = {str(f.info.get("structure_id")): f for f in earlier}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    taken = 0
    for atoms in frames:
        sid = str(atoms.info.get("structure_id"))
        if sid not in by_id:
            continue
        done, _ = cache_paths(atoms, cfg, cache_dir)
        if done.exists():
            continue
        reason = reuse_mismatch(atoms, by_id[sid], cfg)
        if reason is not None:
            log.warning("earlier label of %s not reused (%s): computing it", sid, reason)
            continue
        frame = by_id[sid]
        write_atomic(done, lambda tmp, frame=frame: write(tmp, frame, format="extxyz"))
        taken += 1
    return taken


def cached_labels(frames: Sequence[Atoms], cfg: LabelConfig, cache_dir: str | Path) -> list[Atoms]:
    """The labelled frames the cache holds for ``frames`` (in their order; those not done yet are left out)."""
    out = []
    for atoms in frames:
        done, _ = cache_paths(atoms, cfg, cache_dir)
        if done.exists():
            out.append(read(done, format="extxyz"))
    return out


def label_structures(
    frames: Sequence[Atoms], cfg: Config, *, cache_dir: str | Path, log_dir: str | Path, progress: bool = True
) -> LabelResult:
    """Label every structure of ``frames`` (cached, resumable); see :func:`label_one`."""
    cache_dir, log_dir = Path(cache_dir), Path(log_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    result = LabelResult()
    bar = tqdm(frames, desc=f"label ({cfg.label.calculator})", unit="structure", disable=not progress,
               file=sys.stderr, mininterval=1.0)
    for atoms in bar:
        bar.set_postfix_str(str(atoms.info.get("structure_id", "")), refresh=False)
        frame, failure = label_one(atoms, cfg.label, cache_dir=cache_dir, log_dir=log_dir)
        if frame is not None:
            result.frames.append(frame)
        else:
            result.failures.append(failure)
    return result


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


def failures_frame(failures: Sequence[dict]) -> pd.DataFrame:
    """The failures as a table with :data:`FAILURE_COLUMNS` (empty table with the header if none)."""
    return pd.DataFrame(list(failures), columns=list(FAILURE_COLUMNS))


def _write_outputs(frames: Sequence[Atoms], failures: Sequence[dict], output: Path, failures_csv: Path) -> None:
    write_atomic(output, lambda tmp: write(tmp, list(frames), format="extxyz"))
    write_atomic(failures_csv, lambda tmp: failures_frame(failures).to_csv(tmp, index=False))


def label_file(
    cfg: Config,
    structures: str | Path,
    output: str | Path,
    failures_csv: str | Path,
    *,
    cache_dir: str | Path,
    log_dir: str | Path,
    progress: bool = True,
    reuse: Sequence[str | Path] = (),
) -> LabelResult:
    """Label the unlabelled structures of one extxyz file; write the labelled frames and failures CSV.

    ``reuse``: extxyz files of earlier labels (a shipped file); those that match a structure and the settings are
    taken instead of computed (:func:`seed_cache`).
    """
    structures = Path(structures)
    try:
        frames = read(structures, index=":", format="extxyz")
    except Exception as exc:
        raise ValueError(f"cannot read structures from {structures}: {exc}") from exc
    for path in reuse:
        try:
            earlier = read(path, index=":", format="extxyz")
        except Exception as exc:
            raise ValueError(f"cannot read earlier labels from {path}: {exc}") from exc
        taken = seed_cache(frames, cfg.label, earlier, cache_dir)
        log.info("%s: %d of %d structures taken from %s (labels the cache already held are not counted)",
                 structures, taken, len(frames), path)
    result = label_structures(frames, cfg, cache_dir=cache_dir, log_dir=log_dir, progress=progress)
    _write_outputs(result.frames, result.failures, Path(output), Path(failures_csv))
    log.info("%s: %d labelled, %d failed", structures, len(result.frames), len(result.failures))
    return result


def merge_labels(
    labelled: Sequence[str | Path], failures: Sequence[str | Path], output: str | Path, failures_csv: str | Path
) -> LabelResult:
    """Merge labelled chunk files (sorted by ``sample_index``) and their failures CSVs into one of each."""
    frames: list[Atoms] = []
    for path in labelled:
        frames.extend(read(path, index=":", format="extxyz") if Path(path).stat().st_size else [])
    frames.sort(key=lambda f: int(f.info.get("sample_index", 0)))
    ids = [f.info.get("structure_id") for f in frames]
    if len(set(ids)) != len(ids):
        raise ValueError(f"merge-labels: duplicate structure ids across {list(map(str, labelled))}")
    tables = [pd.read_csv(p) for p in failures]
    fail = pd.concat(tables, ignore_index=True) if tables else failures_frame([])
    fail = fail.sort_values("sample_index", kind="stable") if len(fail) else fail
    records = fail.to_dict("records")
    _write_outputs(frames, records, Path(output), Path(failures_csv))
    return LabelResult(frames=frames, failures=records)
