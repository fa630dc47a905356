"""The DFT strain set of the elastic constants: 1-atom fcc Pt cells labelled with GPAW on fixed k meshes.

For each Monkhorst-Pack mesh n x n x n of ``meshes`` (the last one is shipped; the others are the
k-point convergence check), with the project's labelling settings (``label:``, through
:func:`pipeline.data.labelling.label_one`, so every structure is cached as soon as it is done and a
killed run resumes) except for the mesh, which is fixed (``label.kpts``) so that it does not change
with the strain, and the grid spacing when ``h_a`` is given (below):

1. :data:`VOLUME_FACTORS` volumes around ``lattice_constant_a`` -> Birch-Murnaghan V0 on that mesh;
2. the unstrained cell at that V0 and the strain patterns of :mod:`pipeline.analysis.elastic`.

The real-space grid must not change with the strain either: every cell is checked to get the same
number of grid points from the grid spacing (GPAW's ``h2gpts``), else the run stops. The spacing can
be set apart from ``label.h_a`` (``h_a``): GPAW turns h into grid points per *plane spacing* and
rounds to a multiple of 4, so the project's h = 0.25 A gives the 1-atom fcc cell only 8 x 8 x 8
points, on which the energy changes by meV/atom with the point-group symmetry GPAW uses (cubic for
the unstrained cell, lower for strained ones): :func:`grid_symmetry_check` measures that
difference for each spacing, and the README shows it.

:func:`ship_elastic_set` writes ``pt_elastic_gpaw.extxyz`` (the last mesh),
``pt_elastic_gpaw_kconv.extxyz`` (the other meshes), ``kpoint_convergence.csv`` and ``README.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.build import bulk
from ase.io import write

from pipeline.analysis.elastic import PATTERNS, REFERENCE, dft_strain_set, elastic_row, strain_grid, strained
from pipeline.analysis.eos import fit_birch_murnaghan
from pipeline.atomic import write_atomic
from pipeline.config import LabelConfig
from pipeline.data.labelling import label_one, make_gpaw

log = logging.getLogger(__name__)

VOLUME_FACTORS = tuple(np.linspace(0.97, 1.03, 7))  # volumes / volume at lattice_constant_a
GRID_CHECK_KPTS = 7  # odd: a Gamma-centred mesh with the full cubic symmetry
CONVERGENCE_COLUMNS = ("kpts", "a0_a", "b0_eos_gpa", "c11_gpa", "c12_gpa", "c44_gpa", "b_gpa", "se_c44_gpa",
                       "residual_pressure_gpa", "fit_rms_uev_atom", "n_frames", "cpu_s")


def grid_points(atoms: Atoms, h: float) -> tuple[int, int, int]:
    """Real-space grid GPAW makes of spacing ``h`` (A): ``gpaw.utilities.h2gpts`` (plane spacing / h,
    rounded to a multiple of 4), without importing GPAW."""
    plane = (np.linalg.inv(atoms.cell.array) ** 2).sum(0) ** -0.5
    return tuple(int(x) for x in np.maximum(4, (plane / h / 4 + 0.5).astype(int) * 4))


def _label(frames: Sequence[Atoms], cfg: LabelConfig, cache_dir: Path, log_dir: Path) -> list[Atoms]:
    out = []
    for atoms in frames:
        frame, failure = label_one(atoms, cfg, cache_dir=cache_dir, log_dir=log_dir)
        if frame is None:
            raise RuntimeError(f"GPAW failed on {atoms.info['structure_id']}: {failure['reason']}")
        log.info("%s: %.6f eV (%.0f s)", atoms.info["structure_id"], frame.get_potential_energy(),
                 frame.info["label_wall_s"])
        out.append(frame)
    return out


def _tag(atoms: Atoms, sid: str, kind: str, pattern: str, strain: float) -> Atoms:
    atoms.info.update(structure_id=sid, family="bulk", config_type=f"elastic_{kind}", elastic_kind=kind,
                      elastic_pattern=pattern, elastic_strain=float(strain))
    return atoms


def grid_symmetry_check(label_cfg: LabelConfig, spacings: Sequence[float], *, lattice_constant_a: float,
                        cache_dir: str | Path, log_dir: str | Path) -> pd.DataFrame:
    """Energy of the unstrained 1-atom cell with minus without point-group symmetry, per grid spacing.

    GPAW on the :data:`GRID_CHECK_KPTS` Gamma-centred mesh, ``label:`` settings otherwise; exact
    arithmetic would give zero. The table is cached in ``cache_dir/grid_symmetry_check.csv``.
    """
    cached = Path(cache_dir) / "grid_symmetry_check.csv"
    done = pd.read_csv(cached) if cached.exists() else pd.DataFrame({"h_a": []})
    rows = [r for r in done.to_dict("records") if r["h_a"] in spacings]
    atoms, n = bulk("Pt", "fcc", a=lattice_constant_a), GRID_CHECK_KPTS
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    for h in sorted(set(spacings) - {r["h_a"] for r in rows}, reverse=True):
        cfg = dataclasses.replace(label_cfg, kpts=(n, n, n), h_a=float(h))
        e = {}
        for sym in ("cubic", "none"):
            work, txt = atoms.copy(), Path(log_dir) / f"grid-check-h{h:g}-{sym}.txt"
            work.calc = make_gpaw(work, cfg, txt)
            if sym == "none":
                work.calc = work.calc.new(symmetry={"point_group": False}, txt=str(txt))
            e[sym] = work.get_potential_energy(force_consistent=True)
        rows.append({"h_a": float(h), "gpts": "x".join(map(str, grid_points(atoms, h))), "kpts": f"{n}x{n}x{n}",
                     "e_cubic_symmetry_ev": e["cubic"], "e_no_point_group_ev": e["none"],
                     "difference_mev_atom": 1000.0 * (e["cubic"] - e["none"])})
    table = pd.DataFrame(rows).sort_values("h_a", ascending=False, ignore_index=True)
    write_atomic(cached, lambda p: table.to_csv(p, index=False))
    return table


def label_mesh(label_cfg: LabelConfig, n: int, *, lattice_constant_a: float, strains: Sequence[float],
               cache_dir: str | Path, log_dir: str | Path) -> list[Atoms]:
    """Volume series, then the strain set at the fitted V0, on the fixed n x n x n mesh (resumable).

    ``label_cfg`` is used as is (``h_a`` included), with ``kpts`` set to (n, n, n); odd n gives a
    Gamma-centred mesh. Returns the labelled frames (volumes first) with ``info['elastic_kind']``
    (volume / strain), ``elastic_pattern`` and ``elastic_strain``.
    """
    cfg = dataclasses.replace(label_cfg, kpts=(n, n, n))
    cache_dir, log_dir = Path(cache_dir), Path(log_dir)
    volumes = []
    for i, f in enumerate(VOLUME_FACTORS):
        atoms = bulk("Pt", "fcc", a=lattice_constant_a * float(f) ** (1.0 / 3.0))
        volumes.append(_tag(atoms, f"elastic-k{n}-volume-{i}", "volume", "volume", f - 1.0))
    labelled = _label(volumes, cfg, cache_dir, log_dir)
    eos = fit_birch_murnaghan([f.get_volume() for f in labelled], [f.get_potential_energy() for f in labelled])
    a0 = round(eos["a0_a"], 6)
    voigt, pattern, amplitude = strain_grid(strains)
    cells = [_tag(strained(bulk("Pt", "fcc", a=a0), v), f"elastic-k{n}-{p}-{s:+.4f}", "strain", p, s)
             for v, p, s in zip(voigt, pattern, amplitude)]
    grids = {grid_points(c, cfg.h_a) for c in volumes + cells}
    if len(grids) != 1:
        raise RuntimeError(f"the real-space grid changes across the set ({sorted(grids)}): strain energies would jump")
    frames = labelled + _label(cells, cfg, cache_dir, log_dir)
    for f in frames:
        f.info["dft_gpts"] = "x".join(map(str, next(iter(grids))))
    return frames


def convergence_row(n: int, frames: Sequence[Atoms]) -> dict:
    """One row of :data:`CONVERGENCE_COLUMNS` from the frames of mesh n."""
    strains, eos = dft_strain_set(frames)
    row, _ = elastic_row(strains)
    return {"kpts": f"{n}x{n}x{n}", "a0_a": eos["a0_a"], "b0_eos_gpa": eos["b0_gpa"],
            **{k: row[k] for k in CONVERGENCE_COLUMNS[3:10]}, "n_frames": len(frames),
            "cpu_s": float(sum(f.info["label_wall_s"] for f in frames))}


def readme_text(frames: Sequence[Atoms], conv: pd.DataFrame, *, command: str, strains: Sequence[float],
                grid_check: pd.DataFrame | None = None) -> str:
    """README of the shipped strain set: command, settings, mesh convergence, counts, CPU time."""
    settings = {k: v for k, v in frames[0].info.items()
                if k in ("label_calculator", "is_dft") or (k.startswith("dft_") and k != "dft_energy_zero_width_ev")}
    settings["dft_gpts"] = f"{settings['dft_gpts']} (real-space grid points, the same for every cell)"
    last, total = conv.iloc[-1], float(conv["cpu_s"].sum())
    diff = (conv[["c11_gpa", "c12_gpa", "c44_gpa"]].diff().abs().iloc[-1].max() if len(conv) > 1 else float("nan"))
    counts = pd.Series([str(f.info["elastic_pattern"]) for f in frames]).value_counts().rename("frames")
    kind = (f"DFT ({frames[0].info['dft_code']}, {frames[0].info['dft_xc']})" if frames[0].info.get("is_dft")
            else f"NOT DFT ({frames[0].info.get('label_calculator')})")
    return "\n".join([
        f"# Strain set for the elastic constants of fcc Pt: {kind}", "",
        f"`pt_elastic_gpaw.extxyz`: {len(frames)} labelled 1-atom fcc Pt cells on one fixed {last['kpts']} "
        "Monkhorst-Pack mesh (odd: Gamma-centred; the mesh and the real-space grid do not change with the strain): "
        f"{len(VOLUME_FACTORS)} volumes (V/V(a) = {VOLUME_FACTORS[0]:.2f} .. {VOLUME_FACTORS[-1]:.2f}, a = the "
        "sampling lattice constant) for the Birch-Murnaghan V0 on this mesh, then the unstrained cell at that V0 "
        f"and the Lagrangian strain patterns {', '.join(f'{p} {PATTERNS[p]}' for p in PATTERNS)} (Voigt, engineering "
        f"shears) with amplitudes {', '.join(f'{s:g}' for s in strains)}. The energy label is the labeller's "
        "(GPAW: the force-consistent free energy); the force on the single atom is zero by symmetry (not computed). "
        "`info['elastic_kind']` (volume / strain), `elastic_pattern` "
        f"({REFERENCE} = unstrained) and `elastic_strain` (amplitude) describe each frame; "
        "`python -m pipeline elastic` fits C11, C12, C44 to them (pipeline.analysis.elastic).", "",
        "## Command", "", "```bash", command, "```", "",
        "## Settings", "", pd.DataFrame({"setting": list(settings), "value": list(map(str, settings.values()))})
        .to_markdown(index=False), "",
        *(["## Real-space grid", "",
            "Energy of the unstrained cell with GPAW's cubic point-group symmetry minus without it (zero in exact "
            "arithmetic), per grid spacing h_a (A) and the grid points GPAW makes of it; strained cells have lower "
            "symmetry, so this difference enters strain energies of ~1 meV/atom directly. The set uses the h_a of "
            "the settings table (the project's label.h_a may differ).", "",
            grid_check.to_markdown(index=False, floatfmt=".6g"), ""] if grid_check is not None else []),
        "## k-point convergence", "",
        "Each mesh with its own volume series and V0; C in GPa, fit residual in micro-eV/atom; "
        "`pt_elastic_gpaw_kconv.extxyz` holds the frames of the coarser meshes.", "",
        conv.to_markdown(index=False, floatfmt=".3f"), "",
        f"Largest change of C11, C12, C44 between the last two meshes: {diff:.1f} GPa.", "",
        "## Counts", "", counts.to_frame().to_markdown(), "",
        f"Total CPU time (sum of per-structure wall times, 1 core each, all meshes; the grid check not "
        f"included): {total:.0f} s ({total / 3600:.2f} core-hours).", "",
    ])


def ship_elastic_set(label_cfg: LabelConfig, meshes: Sequence[int], *, lattice_constant_a: float,
                     strains: Sequence[float], cache_dir: str | Path, log_dir: str | Path, dest: str | Path,
                     command: str, h_a: float | None = None, grid_check_h: Sequence[float] = ()) -> pd.DataFrame:
    """Label every mesh (resumable), write the shipped files into ``dest``; returns the convergence table.

    ``h_a`` (A) replaces ``label_cfg.h_a``; for GPAW, :func:`grid_symmetry_check` first compares
    ``label_cfg.h_a``, ``h_a`` and the spacings ``grid_check_h``.
    """
    dest = Path(dest)
    grid_check = None
    if label_cfg.calculator == "gpaw":
        spacings = sorted({label_cfg.h_a, h_a or label_cfg.h_a, *map(float, grid_check_h)}, reverse=True)
        grid_check = grid_symmetry_check(label_cfg, spacings, lattice_constant_a=lattice_constant_a,
                                         cache_dir=cache_dir, log_dir=log_dir)
        log.info("grid symmetry check:\n%s", grid_check.to_string(index=False))
    label_cfg = dataclasses.replace(label_cfg, h_a=h_a or label_cfg.h_a)
    per_mesh = {n: label_mesh(label_cfg, n, lattice_constant_a=lattice_constant_a, strains=strains,
                              cache_dir=cache_dir, log_dir=log_dir) for n in meshes}
    conv = pd.DataFrame([convergence_row(n, fr) for n, fr in per_mesh.items()], columns=list(CONVERGENCE_COLUMNS))
    shipped = per_mesh[meshes[-1]]
    others = [f for n in meshes[:-1] for f in per_mesh[n]]
    write_atomic(dest / "pt_elastic_gpaw.extxyz", lambda p: write(p, shipped, format="extxyz"))
    if others:
        write_atomic(dest / "pt_elastic_gpaw_kconv.extxyz", lambda p: write(p, others, format="extxyz"))
    write_atomic(dest / "kpoint_convergence.csv", lambda p: conv.to_csv(p, index=False))
    text = readme_text(shipped, conv, command=command, strains=strains, grid_check=grid_check)
    write_atomic(dest / "README.md", lambda p: p.write_text(text))
    return conv
