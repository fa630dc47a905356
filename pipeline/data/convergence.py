"""Convergence study of the DFT labelling protocol: a ladder of GPAW settings on representative frames.

Representative frames of each family (bulk, clean slab, slab+CO, gas; structure ids from
``label_convergence.frames``) are taken from a labelled extxyz file (only their geometry is used) and
evaluated with a ladder of settings that varies ONE parameter at a time from a base setting
(``label_convergence.base``): the k-point density (points per A^-1, ASE's ``kptdensity2monkhorstpack``
convention including 2 pi; each frame gets one mesh per density, computed from its own cell), the
real-space grid spacing h (A), the Fermi-Dirac smearing width (eV) and the LCAO basis (a basis that
gpaw-data does not ship, e.g. ``tzdp``, is generated reproducibly with GPAW's basis generator from the
installed PAW setup, see :func:`ensure_basis`). Two combined settings are added: ``current`` (the
project's ``label:`` settings, what the shipped set used) and ``proposed`` (chosen from the ladder,
see :func:`propose`).

Every (frame, setting) is one unit of work, labelled through :func:`pipeline.data.labelling.label_one`,
so every result is cached on disk as soon as it is computed and a killed run resumes where it stopped;
an SCF that does not converge (twice) is recorded as failed, and so is any other error of one unit
(not cached: a rerun tries it again); neither stops the study. The CPU time of each computed unit
(``time.process_time`` of the labelling call, seconds) is kept beside its cache file.

Metrics of a setting s against a reference r, per family (:func:`compare`):

- forces: per-atom |F_s - F_r| (meV/A) over all atoms of the family's frames with more than one atom
  (a single atom in a periodic cell has zero force by symmetry): RMS and maximum;
- energies: the shift per atom of each frame, d_i = (E_i(s) - E_i(r)) / N_i (meV/atom); the error of the
  energy difference per atom between two frames i, j of the family is d_i - d_j, and its maximum over
  all pairs is max(d) - min(d) (``ediff_err_max_mev_atom``): energy differences within a family are
  what a potential is trained on, while the mean shift (``shift_mean_mev_atom``) drops out of them;
- cost: the sum of CPU seconds of the family's frames at s.

Along each axis, the frames of a family on which the axis is studied are those whose base unit and
at least one other value of the axis were not skipped (``label_convergence.skip`` trims expensive
units to a CPU budget); the reference is the tightest value computed for all of them (normally the
base value); values tighter than that reference are compared with it too (they check the reference
itself). :func:`propose` picks, per axis, the cheapest value whose errors are within
``force_rms_tol_mev_a`` and ``energy_diff_tol_mev_atom`` in every family; the combination is then
evaluated as the ``proposed`` setting against the base (``reference``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import io
import json
import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms
from ase.io import read, write
from tqdm import tqdm

from pipeline.atomic import write_atomic
from pipeline.config import LabelConfig, LabelConvergenceConfig
from pipeline.data.labelling import cache_paths, kpoints_for, label_one
from pipeline.data.labelling import label_metadata as _label_metadata
from pipeline.errors import PipelineInputError

log = logging.getLogger(__name__)

AXES = ("kpt_density", "h_a", "smearing_ev", "basis")
AXIS_UNITS = {"kpt_density": "points per A^-1", "h_a": "A", "smearing_ev": "eV", "basis": "LCAO basis or pwECUT (plane waves, cutoff in eV)"}
FAMILY_ORDER = ("bulk", "clean_slab", "slab_co", "gas")
REFERENCE, CURRENT, PROPOSED = "reference", "current", "proposed"
UNIT_COLUMNS = ("structure_id", "family", "n_atoms", "setting", "kpts", "status", "energy_ev", "energy_per_atom_ev",
                "cpu_s", "wall_s", "cached", "reason")
TABLE_COLUMNS = ("family", "axis", "value", "setting", "reference_setting", "n_frames", "n_frames_family",
                 "force_rms_mev_a", "force_max_mev_a", "ediff_err_max_mev_atom", "shift_mean_mev_atom",
                 "cpu_s", "cpu_s_per_frame", "passes", "note")
_KEEP_INFO = ("dft_", "label_", "is_dft")
_ZETA = {"s": 1, "d": 2, "t": 3, "q": 4}


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One rung of the ladder: a value for every axis of :data:`AXES`.

    ``axis`` is the axis varied from the base (None for the base itself and for combined settings);
    ``kind`` is ``ladder``, ``current`` or ``proposed``.
    """

    name: str
    kpt_density: float
    h_a: float
    smearing_ev: float
    basis: str
    axis: str | None = None
    kind: str = "ladder"

    def values(self) -> dict[str, Any]:
        """The four axis values, keyed by :data:`AXES`."""
        return {a: getattr(self, a) for a in AXES}

    @property
    def dirname(self) -> str:
        """The setting's name made safe for a directory name."""
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", self.name)


def format_value(axis: str, value: Any) -> str:
    """An axis value as it appears in setting names and tables (``6``, ``0.16``, ``tzdp``)."""
    return str(value) if axis == "basis" else f"{float(value):g}"


def pw_cutoff(name: str) -> float | None:
    """The plane-wave cutoff (eV) of a basis-axis value ``pwECUT`` (``pw600`` -> 600.0); None for an LCAO basis."""
    m = re.fullmatch(r"pw(\d+(?:\.\d+)?)", str(name))
    return float(m.group(1)) if m else None


def basis_rank(name: str) -> float:
    """Size order of a basis-axis value: an LCAO basis name (``sz`` < ``szp`` < ``dzp`` < ``tzp`` < ``tzdp``
    ...: 10 x zeta + polarisation) or a plane-wave cutoff ``pwECUT`` (above every LCAO basis, by cutoff)."""
    ecut = pw_cutoff(name)
    if ecut is not None:
        return 1000.0 + ecut
    m = re.fullmatch(r"([sdtq])z(?:([sdtq]?)p)?", name)
    if m is None:
        raise ValueError(f"not an LCAO basis name of the form [s|d|t|q]z[[s|d|t|q]p] nor pwECUT: {name!r}")
    pol = 0 if name.endswith("z") else _ZETA.get(m.group(2), 1) if m.group(2) else 1
    return 10 * _ZETA[m.group(1)] + pol


def tightness(axis: str, value: Any) -> float:
    """Larger = tighter (more accurate, more expensive) along ``axis``."""
    if axis == "kpt_density":
        return float(value)
    if axis in ("h_a", "smearing_ev"):
        return -float(value)
    if axis == "basis":
        return float(basis_rank(str(value)))
    raise ValueError(f"unknown axis {axis!r} (expected one of {AXES})")


def axis_values(cfg: LabelConvergenceConfig, axis: str) -> list[Any]:
    """The values of ``axis`` in the study (its ladder values and the base value), cheapest first."""
    base = getattr(cfg.base, axis)
    values = {format_value(axis, v): v for v in (*getattr(cfg.axes, axis), base)}
    return sorted(values.values(), key=lambda v: tightness(axis, v))


def ladder(cfg: LabelConvergenceConfig) -> list[Setting]:
    """The base setting (``reference``) and one setting per other value of each axis, the rest at base."""
    base = {a: getattr(cfg.base, a) for a in AXES}
    settings = [Setting(REFERENCE, **base)]
    for axis in AXES:
        for value in axis_values(cfg, axis):
            if format_value(axis, value) == format_value(axis, base[axis]):
                continue
            settings.append(Setting(f"{axis}={format_value(axis, value)}", **{**base, axis: value}, axis=axis))
    return settings


def current_setting(label_cfg: LabelConfig) -> Setting:
    """The project's ``label:`` settings as a combined setting (what the shipped set was labelled with)."""
    return Setting(CURRENT, kpt_density=float(label_cfg.kpt_density), h_a=float(label_cfg.h_a),
                   smearing_ev=float(label_cfg.smearing_ev), kind=CURRENT,
                   basis=str(label_cfg.basis) if label_cfg.mode == "lcao" else f"pw{float(label_cfg.ecut_ev):g}")


def setting_for(cfg: LabelConvergenceConfig, axis: str, value: Any) -> str:
    """Name of the ladder setting with ``axis`` at ``value`` (the base when it is the base value)."""
    if format_value(axis, value) == format_value(axis, getattr(cfg.base, axis)):
        return REFERENCE
    return f"{axis}={format_value(axis, value)}"


def label_config_for(label_cfg: LabelConfig, setting: Setting) -> LabelConfig:
    """``label_cfg`` with the setting's values and k mesh from the density (no fixed mesh).

    LCAO mode with the setting's basis and grid spacing, or, for a basis value ``pwECUT``, plane-wave mode
    with that cutoff (eV); GPAW then sets the grid from the cutoff and ``h_a`` plays no part.
    """
    ecut = pw_cutoff(setting.basis)
    common = dict(kpts=None, kpt_density=float(setting.kpt_density), h_a=float(setting.h_a),
                  smearing_ev=float(setting.smearing_ev))
    if ecut is not None:
        return dataclasses.replace(label_cfg, mode="pw", ecut_ev=ecut, **common)
    return dataclasses.replace(label_cfg, mode="lcao", basis=str(setting.basis), **common)


# ----------------------------------------------------------------------------------------------
# basis sets
# ----------------------------------------------------------------------------------------------


def _shipped_basis(symbol: str, setup: str, name: str) -> bool:
    from gpaw.setup_data import search_for_file

    prefix = f"{symbol}.{setup}." if setup != "paw" else f"{symbol}."
    try:
        search_for_file(f"{prefix}{name}.basis")
    except (FileNotFoundError, RuntimeError):  # the error raised differs between GPAW versions
        return False
    return True


def ensure_basis(name: str, symbols: Sequence[str], pt_setup: str, directory: str | Path, xc: str = "PBE") -> Path | None:
    """Make LCAO basis ``name`` available to GPAW for ``symbols``; returns the directory of generated files.

    A basis that gpaw-data ships (``dzp``) is used as is (returns None). Otherwise the basis is generated
    with GPAW's basis generator (``gpaw.atom.basisfromfile``, the code behind ``gpaw basis``) from the
    installed PAW setup of each element (``Pt.<pt_setup>`` for Pt), with GPAW's default generator
    parameters (zeta and polarisation counts from the name, e.g. ``tzdp`` = 3 zeta + 2 polarisation),
    written once into ``directory`` under the file name GPAW searches for (``Pt.10.tzdp.basis``,
    ``C.tzdp.basis``) and ``directory`` is put first on GPAW's setup search path.
    """
    from operator import methodcaller

    import gpaw
    from gpaw.atom.basisfromfile import read_setup_and_generate_basis
    from gpaw.basis_data import parse_basis_name
    from gpaw.setup_data import search_for_file

    directory = Path(directory).resolve()
    todo = []
    for symbol in sorted(set(symbols)):
        setup = pt_setup if symbol == "Pt" else "paw"
        if not _shipped_basis(symbol, setup, name) or (directory / _basis_file(symbol, setup, name)).exists():
            todo.append((symbol, setup))
    if not todo:
        return None
    zeta, pol = parse_basis_name(name)
    for symbol, setup in todo:
        target = directory / _basis_file(symbol, setup, name)
        if target.exists():
            continue
        setup_file, _ = search_for_file(f"{symbol}.{setup}.{xc}" if setup != "paw" else f"{symbol}.{xc}")
        log.info("generating LCAO basis %s for %s from %s", name, symbol, setup_file)
        with contextlib.redirect_stdout(io.StringIO()):  # the generator's progress text
            _, basis = read_setup_and_generate_basis(setup_file, methodcaller("generate", zeta, pol), gtxt=None)

        def _write(tmp: Path, basis=basis) -> None:
            with open(tmp, "w") as fh:
                basis.write_to(fh)

        write_atomic(target, _write)
    if str(directory) not in map(str, gpaw.setup_paths):
        gpaw.setup_paths.insert(0, directory)
    return directory


def _basis_file(symbol: str, setup: str, name: str) -> str:
    return f"{symbol}.{setup}.{name}.basis" if setup != "paw" else f"{symbol}.{name}.basis"


# ----------------------------------------------------------------------------------------------
# frames and units of work
# ----------------------------------------------------------------------------------------------


def select_frames(frames: Sequence[Atoms], structure_ids: Sequence[str]) -> list[Atoms]:
    """The frames with the given ``info['structure_id']`` in that order, stripped to geometry and tags.

    Labels and label metadata (``dft_*``, ``label_*``, ``is_dft``) are dropped: only the geometry and
    the sampling tags (family, config_type, slab_size, site, ideal, ...) are kept.

    Raises
    ------
    PipelineInputError
        When an id is missing or occurs twice.
    """
    by_id: dict[str, list[Atoms]] = {}
    for f in frames:
        by_id.setdefault(str(f.info.get("structure_id")), []).append(f)
    out = []
    for sid in structure_ids:
        found = by_id.get(sid, [])
        if len(found) != 1:
            raise PipelineInputError(f"label_convergence.frames: structure_id {sid!r} occurs {len(found)} times "
                                     "in the labelled file (expected once)")
        f = found[0]
        clean = Atoms(f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc)
        clean.info.update({k: v for k, v in f.info.items() if not k.startswith(_KEEP_INFO)})
        out.append(clean)
    return out


@dataclass
class UnitResult:
    """The outcome of one (frame, setting): energy (eV), forces (eV/A), CPU and wall seconds.

    ``status`` is ``ok``, ``failed`` (with ``reason``) or ``skipped`` (by ``label_convergence.skip``).
    """

    structure_id: str
    family: str
    n_atoms: int
    setting: str
    kpts: str
    status: str
    energy_ev: float = float("nan")
    forces: np.ndarray | None = field(default=None, repr=False)
    cpu_s: float = float("nan")
    wall_s: float = float("nan")
    cached: bool = False
    reason: str = ""
    frame: Atoms | None = field(default=None, repr=False)

    def row(self) -> dict:
        """One row of :data:`UNIT_COLUMNS`."""
        return {"structure_id": self.structure_id, "family": self.family, "n_atoms": self.n_atoms,
                "setting": self.setting, "kpts": self.kpts, "status": self.status, "energy_ev": self.energy_ev,
                "energy_per_atom_ev": self.energy_ev / self.n_atoms, "cpu_s": self.cpu_s, "wall_s": self.wall_s,
                "cached": self.cached, "reason": self.reason}


def is_skipped(structure_id: str, setting: str, patterns: Sequence[str]) -> bool:
    """Whether ``STRUCTURE_GLOB:SETTING_GLOB`` of ``patterns`` matches (fnmatch on both parts)."""
    for pattern in patterns:
        sid_glob, _, setting_glob = pattern.partition(":")
        if fnmatch.fnmatchcase(structure_id, sid_glob) and fnmatch.fnmatchcase(setting, setting_glob or "*"):
            return True
    return False


def cost_proxy(atoms: Atoms, setting: Setting, label_cfg: LabelConfig) -> float:
    """Rough relative cost of one unit, used only to order the work (cheap first): k points x grid points.

    Grid points ~ cell volume / h^3; basis size and SCF iterations are ignored.
    """
    cfg = label_config_for(label_cfg, setting)
    nk = float(np.prod(kpoints_for(atoms, cfg)))
    return nk * abs(atoms.get_volume()) / float(setting.h_a) ** 3 * (1 + 0.1 * len(atoms))


def _kpts_text(atoms: Atoms, cfg: LabelConfig) -> str:
    return "x".join(map(str, kpoints_for(atoms, cfg)))


def run_unit(atoms: Atoms, setting: Setting, label_cfg: LabelConfig, *, cache_dir: str | Path, log_dir: str | Path,
             basis_dir: str | Path) -> UnitResult:
    """Label one frame with one setting (or read it from the cache); never raises for a failed unit.

    The cache is :func:`~pipeline.data.labelling.label_one`'s (keyed by geometry and every setting, so
    two settings that give a frame the same mesh share one result); the CPU seconds of a computed unit
    are written beside its cache file (``*.cpu.json``).
    """
    cfg = label_config_for(label_cfg, setting)
    sid, family = str(atoms.info["structure_id"]), str(atoms.info.get("family", ""))
    result = UnitResult(sid, family, len(atoms), setting.name, _kpts_text(atoms, cfg), "failed")
    try:
        if cfg.calculator == "gpaw" and cfg.mode == "lcao":
            ensure_basis(cfg.basis, atoms.get_chemical_symbols(), cfg.pt_setup, basis_dir, xc=cfg.xc)
        done, failed = cache_paths(atoms, cfg, cache_dir)
        cpu_file = done.with_name(done.name[: -len(".extxyz")] + ".cpu.json")
        result.cached = done.exists() or failed.exists()
        c0, w0 = time.process_time(), time.perf_counter()
        frame, failure = label_one(atoms, cfg, cache_dir=cache_dir, log_dir=Path(log_dir) / setting.dirname)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        if not result.cached:
            write_atomic(cpu_file, lambda p: p.write_text(json.dumps({"cpu_s": cpu, "wall_s": wall})))
        timing = json.loads(cpu_file.read_text()) if cpu_file.exists() else {}
    except Exception as exc:  # one failed unit must not stop the study
        log.exception("unit %s @ %s failed", sid, setting.name)
        result.reason = f"{type(exc).__name__}: {exc}"
        return result
    if frame is None:
        result.reason = str(failure.get("reason", ""))
        result.wall_s = float(timing.get("wall_s", failure.get("wall_s", float("nan"))))
        result.cpu_s = float(timing.get("cpu_s", result.wall_s))
        return result
    result.status = "ok"
    result.energy_ev = float(frame.get_potential_energy())
    result.forces = np.array(frame.get_forces())
    result.wall_s = float(timing.get("wall_s", frame.info.get("label_wall_s", float("nan"))))
    result.cpu_s = float(timing.get("cpu_s", result.wall_s))
    frame.info["convergence_setting"] = setting.name
    result.frame = frame
    return result


def run_units(frames: Sequence[Atoms], settings: Sequence[Setting], label_cfg: LabelConfig, *,
              cache_dir: str | Path, log_dir: str | Path, skip: Sequence[str] = (), progress: bool = True,
              cached_only: bool = False) -> list[UnitResult]:
    """Every (frame, setting) in ``settings`` order, cheap frames first within a setting; resumable.

    ``cached_only``: compute nothing; a unit not in the cache gets status ``pending`` (tables from a
    partial run; the same command without it resumes).
    """
    cache_dir, log_dir = Path(cache_dir), Path(log_dir)
    units = [(s, f) for s in settings for f in sorted(frames, key=lambda f: cost_proxy(f, s, label_cfg))]
    out = []
    bar = tqdm(units, desc="label-convergence", unit="unit", disable=not progress, file=sys.stderr, mininterval=1.0)
    for setting, atoms in bar:
        sid = str(atoms.info["structure_id"])
        bar.set_postfix_str(f"{sid} @ {setting.name}", refresh=False)
        if is_skipped(sid, setting.name, skip):
            cfg = label_config_for(label_cfg, setting)
            out.append(UnitResult(sid, str(atoms.info.get("family", "")), len(atoms), setting.name,
                                  _kpts_text(atoms, cfg), "skipped", reason="label_convergence.skip"))
            continue
        if cached_only:
            cfg = label_config_for(label_cfg, setting)
            if cfg.calculator == "gpaw" and cfg.mode == "lcao" and (cache_dir / "basis").is_dir():
                ensure_basis(cfg.basis, atoms.get_chemical_symbols(), cfg.pt_setup, cache_dir / "basis", xc=cfg.xc)
            if not any(p.exists() for p in cache_paths(atoms, cfg, cache_dir)):
                out.append(UnitResult(sid, str(atoms.info.get("family", "")), len(atoms), setting.name,
                                      _kpts_text(atoms, cfg), "pending", reason="not computed yet"))
                continue
        res = run_unit(atoms, setting, label_cfg, cache_dir=cache_dir, log_dir=log_dir,
                       basis_dir=cache_dir / "basis")
        if not res.cached:
            log.info("%s @ %s: %s, %.0f CPU s", sid, setting.name, res.status, res.cpu_s)
        out.append(res)
    return out


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def compare(results: Mapping[str, UnitResult], reference: Mapping[str, UnitResult]) -> dict[str, float]:
    """Errors of ``results`` against ``reference`` (both keyed by structure id), over ids ok in both.

    Returns
    -------
    dict with ``n_frames``, ``force_rms_mev_a`` and ``force_max_mev_a`` (per-atom |dF| over frames with
    more than one atom; NaN if none), ``ediff_err_max_mev_atom`` (max - min of the per-atom energy
    shifts, i.e. the largest error of a within-family energy difference per atom; NaN below 2 frames)
    and ``shift_mean_mev_atom`` (mean per-atom shift).
    """
    ids = [s for s, r in results.items() if r.status == "ok" and s in reference and reference[s].status == "ok"]
    shifts = np.array([1000.0 * (results[s].energy_ev - reference[s].energy_ev) / results[s].n_atoms for s in ids])
    dfs = [np.linalg.norm(results[s].forces - reference[s].forces, axis=1) for s in ids if results[s].n_atoms > 1]
    df = 1000.0 * np.concatenate(dfs) if dfs else np.array([])
    nan = float("nan")
    return {
        "n_frames": len(ids),
        "force_rms_mev_a": float(np.sqrt(np.mean(df**2))) if df.size else nan,
        "force_max_mev_a": float(df.max()) if df.size else nan,
        "ediff_err_max_mev_atom": float(shifts.max() - shifts.min()) if len(ids) >= 2 else nan,
        "shift_mean_mev_atom": float(shifts.mean()) if len(ids) else nan,
    }


def passes(metrics: Mapping[str, float], cfg: LabelConvergenceConfig) -> bool:
    """Within both tolerances (a metric that cannot be measured, NaN, does not fail)."""
    f, e = metrics["force_rms_mev_a"], metrics["ediff_err_max_mev_atom"]
    return bool(metrics["n_frames"] > 0 and not f > cfg.force_rms_tol_mev_a and not e > cfg.energy_diff_tol_mev_atom)


def _by_setting(units: Sequence[UnitResult]) -> dict[str, dict[str, UnitResult]]:
    out: dict[str, dict[str, UnitResult]] = {}
    for u in units:
        out.setdefault(u.setting, {})[u.structure_id] = u
    return out


def _families(frames: Sequence[Atoms]) -> dict[str, list[str]]:
    fam: dict[str, list[str]] = {}
    for f in frames:
        fam.setdefault(str(f.info.get("family", "")), []).append(str(f.info["structure_id"]))
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return dict(sorted(fam.items(), key=lambda kv: order.get(kv[0], len(order))))


def _row(family: str, axis: str, value: str, setting: str, ref: str, ids: Sequence[str], units: Mapping,
         cfg: LabelConvergenceConfig, note: str = "") -> dict:
    got = {s: units.get(setting, {}).get(s) for s in ids}
    got = {s: u for s, u in got.items() if u is not None}
    m = compare(got, {s: u for s, u in units.get(ref, {}).items() if s in ids})
    ok = [u for u in got.values() if u.status == "ok"]
    cpu = float(sum(u.cpu_s for u in ok))
    skipped = [s for s in ids if s in got and got[s].status == "skipped"]
    pending = [s for s in ids if s in got and got[s].status == "pending"]
    missing = [s for s in ids if s not in skipped + pending and (s not in got or got[s].status != "ok")]
    for label, which in (("skipped", skipped), ("not computed yet", pending), ("failed or missing", missing)):
        if which:
            note = "; ".join(x for x in (note, f"{label}: {', '.join(which)}") if x)
    return {"family": family, "axis": axis, "value": value, "setting": setting, "reference_setting": ref, **m,
            "n_frames_family": len(ids), "cpu_s": cpu, "cpu_s_per_frame": cpu / len(ok) if ok else float("nan"),
            "passes": passes(m, cfg), "note": note}


def axis_frames(cfg: LabelConvergenceConfig, axis: str, ids: Sequence[str], units: Mapping) -> list[str]:
    """The frames of ``ids`` on which ``axis`` was studied: the base (``reference``) not skipped and at
    least one other value of the axis not skipped (the base alone when the axis has no other value)."""
    def run(name: str, sid: str) -> bool:
        return sid in units.get(name, {}) and units[name][sid].status != "skipped"

    others = [n for n in (setting_for(cfg, axis, v) for v in axis_values(cfg, axis)) if n != REFERENCE]
    return [s for s in ids if run(REFERENCE, s) and (not others or any(run(n, s) for n in others))]


def axis_reference(cfg: LabelConvergenceConfig, axis: str, ids: Sequence[str], units: Mapping) -> Any | None:
    """The tightest value of ``axis`` computed (status ok) for every frame of ``ids``; None if none is."""
    for value in reversed(axis_values(cfg, axis)):
        got = units.get(setting_for(cfg, axis, value), {})
        if all(s in got and got[s].status == "ok" for s in ids):
            return value
    return None


def convergence_table(frames: Sequence[Atoms], units: Sequence[UnitResult], cfg: LabelConvergenceConfig,
                      ) -> pd.DataFrame:
    """One row per family and axis value (errors against the axis reference), then the combined settings
    ``current`` and ``proposed`` (when computed) against the base, and ``current`` against ``proposed``
    (the error of labels made with the project's settings); columns :data:`TABLE_COLUMNS`."""
    by = _by_setting(units)
    rows = []
    for family, ids in _families(frames).items():
        for axis in AXES:
            axis_ids = axis_frames(cfg, axis, ids, by)
            ref_value = axis_reference(cfg, axis, axis_ids, by) if axis_ids else None
            if ref_value is None:
                log.warning("family %s, axis %s: no value computed for every frame; no rows", family, axis)
                continue
            ref = setting_for(cfg, axis, ref_value)
            left_out = [s for s in ids if s not in axis_ids]
            for value in axis_values(cfg, axis):
                name = setting_for(cfg, axis, value)
                if name not in by:
                    continue
                tighter = tightness(axis, value) > tightness(axis, ref_value)
                note = "tighter than the reference: checks the reference" if tighter else ""
                if name == ref:
                    note = "axis reference" + ("" if name == REFERENCE else " (tightest value computed for every frame)")
                if all(by[name].get(s) is None or by[name][s].status == "skipped" for s in axis_ids):
                    continue  # not run on this family at all
                if left_out:
                    note = "; ".join(x for x in (note, f"axis not studied for {', '.join(left_out)}") if x)
                rows.append(_row(family, axis, format_value(axis, value), name, ref, axis_ids, by, cfg, note))
        for combined in (CURRENT, PROPOSED):
            if combined in by:
                rows.append(_row(family, "combined", combined, combined, REFERENCE, ids, by, cfg,
                                 "several values differ from the base"))
        if CURRENT in by and PROPOSED in by:
            rows.append(_row(family, "combined", CURRENT, CURRENT, PROPOSED, ids, by, cfg,
                             "the shipped labels' error against the proposed setting"))
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


@dataclass
class Proposal:
    """The proposed value per axis, why, and whether each axis is certified by the study."""

    values: dict[str, Any]
    reasons: dict[str, str]
    certified: dict[str, bool]

    def setting(self) -> Setting:
        """The proposal as the combined setting ``proposed``."""
        return Setting(PROPOSED, **self.values, kind=PROPOSED)


def propose(table: pd.DataFrame, cfg: LabelConvergenceConfig) -> Proposal:
    """Per axis, the cheapest value that passes (:func:`passes`) in every family with rows on that axis.

    A value looser than (or at) a family's axis reference passes there when its own row passes and every
    row tighter than the reference passes too (the reference is then converged as far as checked). A
    value without a row in some family is not certified for it. When no value passes everywhere, the
    tightest value is proposed and the axis is marked not certified; an axis without rows keeps the base.
    """
    values, reasons, certified = {}, {}, {}
    for axis in AXES:
        rows = table[table["axis"] == axis]
        candidates = axis_values(cfg, axis)
        if rows.empty:
            values[axis], certified[axis] = getattr(cfg.base, axis), False
            reasons[axis] = "not measured: base value kept"
            continue
        families = list(dict.fromkeys(rows["family"]))

        def ok_in(family: str, value: Any) -> bool:
            fam = rows[rows["family"] == family]
            ref = fam["reference_setting"].iloc[0]
            ref_value = fam.loc[fam["setting"] == ref, "value"].iloc[0]
            ref_t = tightness(axis, ref_value if axis == "basis" else float(ref_value))
            tighter = fam[[tightness(axis, v if axis == "basis" else float(v)) > ref_t for v in fam["value"]]]
            own = fam[fam["value"] == format_value(axis, value)]
            if own.empty:
                return False
            if tightness(axis, value) > ref_t:
                return bool(own["passes"].iloc[0])
            return bool(own["passes"].iloc[0]) and bool(tighter["passes"].all())

        chosen = next((v for v in candidates if all(ok_in(f, v) for f in families)), None)
        if chosen is None:
            values[axis], certified[axis] = candidates[-1], False
            reasons[axis] = (f"no value within tolerance in every family ({', '.join(families)}): the tightest "
                             f"value computed, {format_value(axis, candidates[-1])}, is proposed, NOT certified")
            continue
        values[axis], certified[axis] = chosen, True
        looser = [format_value(axis, v) for v in candidates if tightness(axis, v) < tightness(axis, chosen)]
        fails = []
        for v in looser:
            bad = [f for f in families if not ok_in(f, v)]
            fails.append(f"{v} fails in {', '.join(bad)}")
        reasons[axis] = (f"cheapest value within tolerance in every family ({', '.join(families)})"
                         + (f"; {'; '.join(fails)}" if fails else ""))
    return Proposal(values, reasons, certified)


def adsorption_table(frames: Sequence[Atoms], units: Sequence[UnitResult]) -> pd.DataFrame:
    """CO adsorption energy E(slab+CO) - E(clean slab) - E(CO gas) (eV) per setting and cell.

    Uses the ideal (unrelaxed) frames: slab+CO with ``slab_size`` n and ``ideal``, the clean slab
    ``config_type`` ideal with the same ``slab_size``, and the ideal gas molecule; one column per site
    and cell found, one row per setting where all three are ok.
    """
    by = _by_setting(units)
    gas = next((f for f in frames if f.info.get("family") == "gas" and f.info.get("ideal")), None)
    combos = []
    for f in frames:
        if f.info.get("family") == "slab_co" and f.info.get("ideal"):
            n = f.info.get("slab_size")
            slab = next((c for c in frames if c.info.get("family") == "clean_slab"
                         and c.info.get("config_type") == "ideal" and c.info.get("slab_size") == n), None)
            if slab is not None and gas is not None:
                combos.append((f"e_ads_{f.info.get('site')}_{n}x{n}_ev", f, slab))
    rows = []
    for setting, got in by.items():
        row = {"setting": setting}
        for col, ads, slab in combos:
            trio = [got.get(str(x.info["structure_id"])) for x in (ads, slab, gas)]
            if all(u is not None and u.status == "ok" for u in trio):
                row[col] = trio[0].energy_ev - trio[1].energy_ev - trio[2].energy_ev
        if len(row) > 1:
            rows.append(row)
    return pd.DataFrame(rows, columns=["setting", *dict.fromkeys(c for c, _, _ in combos)])


# ----------------------------------------------------------------------------------------------
# the study and its shipped files
# ----------------------------------------------------------------------------------------------


@dataclass
class StudyResult:
    """Everything the study produced: units, tables, the proposal."""

    frames: list[Atoms]
    settings: list[Setting]
    units: list[UnitResult]
    table: pd.DataFrame
    proposal: Proposal
    adsorption: pd.DataFrame


def _recorded_label_config(frame: Atoms, label_cfg: LabelConfig) -> LabelConfig | None:
    """The labelling settings recorded in a labelled frame's ``dft_*`` info, as a LabelConfig with a
    fixed k mesh (the cache key depends on the mesh, not on the density that chose it); None if the
    frame does not record a GPAW LCAO or PW label."""
    info = frame.info
    smear = re.fullmatch(r"fermi-dirac ([0-9.eE+-]+) eV", str(info.get("dft_smearing", "")))
    mode = info.get("dft_mode")
    if info.get("dft_code") != "gpaw" or smear is None or mode not in ("lcao", "pw") or "dft_kpts" not in info:
        return None
    kpts = tuple(int(k) for k in str(info["dft_kpts"]).split("x"))
    common = dict(kpts=kpts, smearing_ev=float(smear.group(1)), xc=str(info.get("dft_xc", label_cfg.xc)))
    if mode == "lcao":
        return dataclasses.replace(label_cfg, mode="lcao", basis=str(info["dft_basis"]), h_a=float(info["dft_h_a"]),
                                   **common)
    return dataclasses.replace(label_cfg, mode="pw", ecut_ev=float(info["dft_ecut_ev"]), **common)


def seed_cache(frames: Sequence[Atoms], shipped: str | Path, label_cfg: LabelConfig, cache_dir: str | Path) -> int:
    """Fill the unit cache from a shipped study (``frames.extxyz`` and ``units.csv`` of a ``--dest`` folder),
    so that a study resumed in a fresh checkout computes only the units the shipped one lacks.

    A shipped unit is taken only when its geometry equals the study frame with its structure id (to
    1e-6 A) and every label setting it records (``dft_*`` info, GPAW version included) equals what this
    installation would record for it; its CPU seconds come from ``units.csv``. Existing cache files are
    never overwritten. Returns the number of cache files written.
    """
    shipped, cache_dir = Path(shipped), Path(cache_dir)
    path = shipped / "frames.extxyz"
    if not path.exists():
        raise PipelineInputError(f"{path}: no shipped convergence units to resume from (expected frames.extxyz)")
    try:
        units = read(path, index=":", format="extxyz")
    except Exception as exc:
        raise PipelineInputError(f"cannot read shipped convergence units from {path}: {exc}") from exc
    timing: dict[tuple[str, str], dict] = {}
    if (shipped / "units.csv").exists():
        for r in pd.read_csv(shipped / "units.csv").itertuples():
            if r.status == "ok":
                timing[(str(r.structure_id), str(r.setting))] = {"cpu_s": float(r.cpu_s), "wall_s": float(r.wall_s)}
    by_id = {str(f.info["structure_id"]): f for f in frames}
    cache_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for u in units:
        sid = str(u.info.get("structure_id"))
        geom, cfg = by_id.get(sid), _recorded_label_config(u, label_cfg)
        if geom is None or cfg is None or len(geom) != len(u) or (geom.numbers != u.numbers).any():
            continue
        if not (np.allclose(geom.positions, u.positions, atol=1e-6) and np.allclose(geom.cell, u.cell, atol=1e-6)
                and (geom.pbc == u.pbc).all()):
            continue
        recorded = {k: v for k, v in u.info.items() if k.startswith("dft_") and k != "dft_energy_zero_width_ev"}
        expected = {k: v for k, v in _label_metadata(geom, cfg).items() if k.startswith("dft_")}
        if any(recorded.get(k) != v and not _same_number(recorded.get(k), v) for k, v in expected.items()):
            log.info("shipped unit %s @ %s: recorded settings differ from this installation; not reused",
                     sid, u.info.get("convergence_setting"))
            continue
        done, failed = cache_paths(geom, cfg, cache_dir)
        if done.exists() or failed.exists():
            continue
        frame = geom.copy()
        frame.info.update({k: v for k, v in u.info.items() if k.startswith(_KEEP_INFO)})
        frame.calc = u.calc
        write_atomic(done, lambda tmp, frame=frame: write(tmp, frame, format="extxyz"))
        t = timing.get((sid, str(u.info.get("convergence_setting"))))
        if t is not None:
            cpu_file = done.with_name(done.name[: -len(".extxyz")] + ".cpu.json")
            write_atomic(cpu_file, lambda p, t=t: p.write_text(json.dumps(t)))
        written += 1
    return written


def _same_number(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return False


def run_study(labelled: str | Path, label_cfg: LabelConfig, cfg: LabelConvergenceConfig, *, cache_dir: str | Path,
              log_dir: str | Path, progress: bool = True, cached_only: bool = False,
              resume_from: str | Path | None = None) -> StudyResult:
    """Ladder and ``current`` setting on the selected frames, the proposal, then the ``proposed`` setting.

    ``cached_only``: compute nothing, report what the cache holds (see :func:`run_units`).
    ``resume_from``: a shipped study folder whose units seed the cache first (see :func:`seed_cache`).
    """
    try:
        all_frames = read(labelled, index=":", format="extxyz")
    except Exception as exc:
        raise PipelineInputError(f"cannot read labelled frames from {labelled}: {exc}") from exc
    frames = select_frames(all_frames, cfg.frames)
    if resume_from is not None:
        n = seed_cache(frames, resume_from, label_cfg, cache_dir)
        log.info("seeded %d cached units from %s", n, resume_from)
    rungs = ladder(cfg)
    settings = [rungs[0], current_setting(label_cfg), *rungs[1:]]  # the cheap current setting early
    units = run_units(frames, settings, label_cfg, cache_dir=cache_dir, log_dir=log_dir, skip=cfg.skip,
                      progress=progress, cached_only=cached_only)
    proposal = propose(convergence_table(frames, units, cfg), cfg)
    proposed = proposal.setting()
    settings.append(proposed)
    units += run_units(frames, [proposed], label_cfg, cache_dir=cache_dir, log_dir=log_dir, skip=cfg.skip,
                       progress=progress, cached_only=cached_only)
    table = convergence_table(frames, units, cfg)
    return StudyResult(frames, settings, units, table, proposal, adsorption_table(frames, units))


def plan(labelled: str | Path, label_cfg: LabelConfig, cfg: LabelConvergenceConfig, *,
         cache_dir: str | Path) -> pd.DataFrame:
    """The units of the ladder and ``current`` in run order, with k mesh, cost proxy and cache state.

    The ``proposed`` units are not listed: they depend on the results.
    """
    frames = select_frames(read(labelled, index=":", format="extxyz"), cfg.frames)
    rows = []
    rungs = ladder(cfg)
    for s in [rungs[0], current_setting(label_cfg), *rungs[1:]]:
        lcfg = label_config_for(label_cfg, s)
        for f in sorted(frames, key=lambda f: cost_proxy(f, s, label_cfg)):
            sid = str(f.info["structure_id"])
            done, failed = cache_paths(f, lcfg, cache_dir)
            state = ("skipped" if is_skipped(sid, s.name, cfg.skip) else "cached" if done.exists()
                     else "failed" if failed.exists() else "to do")
            rows.append({"setting": s.name, "structure_id": sid, "n_atoms": len(f), "kpts": _kpts_text(f, lcfg),
                         "cost_proxy": cost_proxy(f, s, label_cfg), "state": state})
    return pd.DataFrame(rows)


def _fmt(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".3g") if len(df) else "(none)"


def cost_summary(result: StudyResult) -> pd.DataFrame:
    """CPU seconds per family at ``current`` and ``proposed`` (frames ok in both) and their ratio."""
    by = _by_setting(result.units)
    rows = []
    for family, ids in _families(result.frames).items():
        cur, prop = by.get(CURRENT, {}), by.get(PROPOSED, {})
        both = [s for s in ids if s in cur and s in prop and cur[s].status == prop[s].status == "ok"]
        c, p = sum(cur[s].cpu_s for s in both), sum(prop[s].cpu_s for s in both)
        rows.append({"family": family, "n_frames": len(both), "cpu_s_current": c, "cpu_s_proposed": p,
                     "ratio": p / c if c else float("nan")})
    return pd.DataFrame(rows)


def relabel_estimate(labelled: Sequence[Atoms], costs: pd.DataFrame) -> pd.DataFrame:
    """Per family of the labelled set: today's CPU seconds (sum of the recorded ``label_wall_s``) and the
    estimate at the proposed setting (today's times the family's measured ratio proposed / current; NaN
    where the study has no ratio for the family)."""
    ratio = dict(zip(costs["family"], costs["ratio"]))
    today: dict[str, float] = {}
    for f in labelled:
        fam = str(f.info.get("family"))
        today[fam] = today.get(fam, 0.0) + float(f.info.get("label_wall_s", 0.0))
    return pd.DataFrame([{"family": fam, "n_frames": sum(str(f.info.get("family")) == fam for f in labelled),
                          "cpu_s_today": t, "ratio": ratio.get(fam, float("nan")),
                          "cpu_s_proposed_estimate": t * ratio.get(fam, float("nan"))} for fam, t in today.items()])


def readme_text(result: StudyResult, cfg: LabelConvergenceConfig, label_cfg: LabelConfig, *, command: str,
                labelled: str, relabel: pd.DataFrame | None) -> str:
    """README of the shipped study: command, settings, frames, tables, proposal, CO adsorption, cost."""
    units = pd.DataFrame([u.row() for u in result.units], columns=list(UNIT_COLUMNS))
    total_cpu = float(units.drop_duplicates(["structure_id", "kpts", "energy_ev", "cpu_s"])["cpu_s"].sum())
    settings = pd.DataFrame([{"setting": s.name, "kind": s.kind, "varied": s.axis or "",
                              **{a: format_value(a, getattr(s, a)) for a in AXES}} for s in result.settings])
    frames = []
    for f in result.frames:
        meshes = {format_value("kpt_density", d): _kpts_text(f, dataclasses.replace(label_cfg, kpts=None, kpt_density=d))
                  for d in axis_values(cfg, "kpt_density")}
        frames.append({"structure_id": f.info["structure_id"], "family": f.info.get("family"),
                       "config_type": f.info.get("config_type"), "n_atoms": len(f),
                       **{f"k {d}": m for d, m in meshes.items()}})
    prop = result.proposal
    prop_rows = pd.DataFrame([{"axis": a, "unit": AXIS_UNITS[a], "current": format_value(a, getattr(label_cfg, a)),
                               "proposed": format_value(a, prop.values[a]), "certified": prop.certified[a],
                               "why": prop.reasons[a]} for a in AXES])
    fails = units[units["status"] == "failed"]
    skipped = units[units["status"] == "skipped"]
    kind = "DFT (GPAW, " + label_cfg.xc + ")" if label_cfg.calculator == "gpaw" else f"NOT DFT ({label_cfg.calculator})"
    lines = [
        f"# Convergence of the DFT labelling protocol: {kind}", "",
        "Representative frames of each family of the labelled set, evaluated with a ladder of labelling settings "
        "that varies one parameter at a time from the base setting (`reference`), plus the project's current "
        "`label:` settings (`current`) and the proposed defaults (`proposed`). Written by "
        "`pipeline.data.convergence` (`python -m pipeline label-convergence`). The study is run by hand and "
        "shipped (no Snakemake rule runs it): every (frame, setting) is cached, so the same command resumes a "
        "killed run and then rewrites this folder.", "",
        "## Command", "", "```bash", command, "```", "",
        f"Frames from `{labelled}` (geometry only). GPAW LCAO, PBE, Pt setup `{label_cfg.pt_setup}`, "
        f"spin-paired, maxiter {label_cfg.maxiter}, k meshes from the density with "
        f"{'even' if label_cfg.kpt_even else 'any'} counts (ASE `kptdensity2monkhorstpack`, points per A^-1 "
        "including 2 pi; 1 point along non-periodic axes), energy = force-consistent free energy. "
        "One process, 1 thread; CPU seconds are `time.process_time` of each computation.", "",
        "## Settings", "", _fmt(settings), "",
        "## Frames and their k meshes per density", "", _fmt(pd.DataFrame(frames)), "",
        "## Metrics", "",
        "Per family, against the axis reference (the tightest value of that axis computed for every frame of the "
        "family on which the axis is studied, i.e. whose base unit and some other value of the axis were not "
        "skipped; the base value unless noted) with the other parameters at the base: RMS and max of the per-atom "
        "force difference |dF| (meV/A, frames with more than one atom), the largest error of an energy "
        "difference per atom between two frames of the family (`ediff_err_max_mev_atom` = max - min of the "
        "per-frame shifts, meV/atom), the mean total-energy shift per atom (meV/atom; it drops out of "
        "within-family differences), and the CPU seconds of the family's frames at that setting. Rows marked "
        "tighter than the reference check the reference itself. `passes`: force RMS <= "
        f"{cfg.force_rms_tol_mev_a:g} meV/A and energy-difference error <= {cfg.energy_diff_tol_mev_atom:g} "
        "meV/atom. `current` and `proposed` are compared with the base (`reference`).", "",
    ]
    for family, tab in result.table.groupby("family", sort=False):
        lines += [f"### {family}", "", _fmt(tab.drop(columns=["family"])), ""]
    tighter = [a for a in AXES if tightness(a, prop.values[a]) > tightness(a, getattr(cfg.base, a))]
    lines += ["## Proposed defaults", "", _fmt(prop_rows), "",
              "The proposal takes the cheapest value per axis; its combination is evaluated as `proposed` "
              "(rows `combined` above). `certified`: within tolerance against the tightest value measured on that "
              "axis; the tightest value itself is not checked against anything tighter. Use one k mesh per series "
              "(computed once from the series' reference cell, `label.kpts`), never a mesh that changes with a "
              "small strain.", ""]
    if tighter:
        lines += [f"The proposal is tighter than the base on {', '.join(tighter)}: there the `proposed` rows' "
                  "difference from `reference` is mostly the base's own error on that axis, not the proposal's.", ""]
    costs = cost_summary(result)
    lines += ["## Cost", "", "CPU seconds of the study frames labelled at `current` and at `proposed` (same frames, "
              "same machine):", "", _fmt(costs), ""]
    if relabel is not None:
        known = relabel[relabel["ratio"].notna()]
        lines += ["Relabelling the labelled set at the proposed setting, estimated per family as the recorded "
                  "per-frame CPU times times that family's ratio above (NaN: no ratio measured):", "",
                  _fmt(relabel), "",
                  f"Families with a ratio: {known['cpu_s_proposed_estimate'].sum():.0f} CPU s "
                  f"({known['cpu_s_proposed_estimate'].sum() / 3600:.1f} core-hours) against "
                  f"{known['cpu_s_today'].sum():.0f} CPU s today; the whole set took "
                  f"{relabel['cpu_s_today'].sum() / 3600:.2f} core-hours today.", ""]
    lines += ["## CO adsorption energy", "",
              "E_ads = E(slab+CO) - E(clean slab) - E(CO gas), ideal (unrelaxed) geometries, eV, per setting:", "",
              _fmt(result.adsorption), ""]
    lines += ["## Failed and skipped units", ""]
    if len(fails):
        lines += ["Failed (recorded, not fatal; SCF failures are cached, delete their `*.failed.json` to retry):", "",
                  _fmt(fails[["structure_id", "setting", "kpts", "reason"]]), ""]
    else:
        lines += ["No unit failed.", ""]
    pending = units[units["status"] == "pending"]
    if len(pending):
        lines += ["Not computed yet (the run was stopped; the same command without `--cached-only` resumes and "
                  "computes them, then rewrites this folder):", "",
                  _fmt(pending[["structure_id", "setting", "kpts"]]), ""]
    if len(skipped):
        lines += ["Skipped by `label_convergence.skip` (too expensive for the CPU budget of this run; those rows "
                  "use the remaining frames, see their notes):", "",
                  _fmt(skipped[["structure_id", "setting", "kpts"]]), ""]
    lines += [f"Total CPU time of the study (each distinct computation once): {total_cpu:.0f} s "
              f"({total_cpu / 3600:.2f} core-hours).", ""]
    return "\n".join(lines)


def ship_study(result: StudyResult, cfg: LabelConvergenceConfig, label_cfg: LabelConfig, *, dest: str | Path,
               command: str, labelled: str | Path) -> None:
    """Write ``convergence.csv``, ``convergence.md``, ``units.csv``, ``adsorption.csv``, ``proposal.json``,
    ``frames.extxyz`` (every labelled unit, ``info['convergence_setting']``) and ``README.md`` into ``dest``."""
    dest = Path(dest)
    units = pd.DataFrame([u.row() for u in result.units], columns=list(UNIT_COLUMNS))
    write_atomic(dest / "convergence.csv", lambda p: result.table.to_csv(p, index=False))
    md = "\n".join(f"## {fam}\n\n{_fmt(tab.drop(columns=['family']))}\n"
                   for fam, tab in result.table.groupby("family", sort=False))
    write_atomic(dest / "convergence.md", lambda p: p.write_text(md))
    write_atomic(dest / "units.csv", lambda p: units.to_csv(p, index=False))
    write_atomic(dest / "adsorption.csv", lambda p: result.adsorption.to_csv(p, index=False))
    prop = {"values": result.proposal.values, "certified": result.proposal.certified,
            "reasons": result.proposal.reasons}
    write_atomic(dest / "proposal.json", lambda p: p.write_text(json.dumps(prop, indent=2) + "\n"))
    frames = [u.frame for u in result.units if u.frame is not None]
    if frames:
        write_atomic(dest / "frames.extxyz", lambda p: write(p, frames, format="extxyz"))
    try:
        relabel = relabel_estimate(read(labelled, index=":", format="extxyz"), cost_summary(result))
    except Exception:  # the estimate is a convenience; the tables stand without it
        relabel = None
    text = readme_text(result, cfg, label_cfg, command=command, labelled=str(labelled), relabel=relabel)
    write_atomic(dest / "README.md", lambda p: p.write_text(text))
