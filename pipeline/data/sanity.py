"""Sanity checks of a labelled DFT set: bulk Pt equation of state and CO adsorption energies.

- EOS: Birch-Murnaghan fit (``ase.eos``) of the energy per atom against the volume per atom of the
  bulk ``eos`` frames; V0 (A^3/atom), B0 (GPa), B0' beside the WIEN2k PBE reference and experiment of
  ASE's ``dcdft`` collection.
- CO adsorption energy E_ads = E(slab+CO) - E(clean slab) - E(CO gas) (eV) on top and fcc sites, from
  the ideal (unrelaxed) geometries at matching cells; on the 2x2 cell also with the C height optimised
  along the approach series (parabola through the three lowest points) and the gas bond optimised
  along the gas series (same parabola), the slab itself kept unrelaxed.

:func:`write_sanity` writes the table (CSV + Markdown) and, optionally, the README of the shipped set.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.collections import dcdft
from ase.eos import EquationOfState
from ase.io import read
from ase.units import GPa

from pipeline.atomic import write_atomic
from pipeline.config import LabelConfig

log = logging.getLogger(__name__)

SANITY_COLUMNS = ("quantity", "site_or_cell", "value", "unit", "reference", "reference_source", "note")


def _energy(frame: Atoms) -> float:
    return float(frame.get_potential_energy())


def _label_kind(frames: Sequence[Atoms]) -> str:
    """'DFT (code, xc)' or 'NOT DFT (emt)': stated in every row of the table."""
    calcs = sorted({str(f.info.get("label_calculator", "?")) for f in frames})
    if all(bool(f.info.get("is_dft", False)) for f in frames):
        xcs = sorted({str(f.info.get("dft_xc", "?")) for f in frames})
        return f"DFT ({'/'.join(calcs)}, {'/'.join(xcs)})"
    return f"NOT DFT ({'/'.join(calcs)})"


def bulk_eos(frames: Sequence[Atoms]) -> dict[str, float]:
    """Birch-Murnaghan fit to the bulk ``eos`` frames.

    Returns
    -------
    dict with ``v0`` (A^3/atom), ``e0`` (eV/atom), ``b0_gpa``, ``bp`` and ``n_points``.

    Raises
    ------
    ValueError
        With fewer than 5 EOS frames.
    """
    eos_frames = [f for f in frames if f.info.get("family") == "bulk" and f.info.get("config_type") == "eos"]
    if len(eos_frames) < 5:
        raise ValueError(f"EOS fit needs >= 5 bulk eos frames, found {len(eos_frames)}")
    v = np.array([f.get_volume() / len(f) for f in eos_frames])
    e = np.array([_energy(f) / len(f) for f in eos_frames])
    eos = EquationOfState(v, e, eos="birchmurnaghan")
    eos.fit(warn=False)
    e0, b0, bp, v0 = eos.eos_parameters
    return {"v0": float(v0), "e0": float(e0), "b0_gpa": float(b0 / GPa), "bp": float(bp), "n_points": len(v)}


def _find(frames: Sequence[Atoms], **match) -> Atoms | None:
    for f in frames:
        if all(f.info.get(k) == v for k, v in match.items()):
            return f
    return None


def _parabola_min(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Minimum (x*, y*) of the parabola through the lowest point and its two neighbours (sorted x).

    None when the lowest point is at an end of the series or the parabola opens downwards.
    """
    order = np.argsort(x)
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    i = int(np.argmin(y))
    if i == 0 or i == len(x) - 1:
        return None
    c = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    if c[0] <= 0:
        return None
    xm = -c[1] / (2 * c[0])
    return float(xm), float(np.polyval(c, xm))


def adsorption_energies(frames: Sequence[Atoms]) -> list[dict]:
    """CO adsorption energies (eV) on top and fcc sites; see the module docstring."""
    rows: list[dict] = []
    gas = _find(frames, family="gas", ideal=True)
    gas_series = [f for f in frames if f.info.get("family") == "gas"]
    for size, cov in ((2, 0.25), (3, 1 / 9)):
        slab = _find(frames, family="clean_slab", config_type="ideal", slab_size=size)
        for site in ("top", "fcc"):
            ads = _find(frames, family="slab_co", config_type=site, slab_size=size, ideal=True)
            label = f"{site}, {size}x{size} ({cov:.3g} ML)"
            if ads is None or slab is None or gas is None:
                missing = [n for n, x in (("slab+CO", ads), ("clean slab", slab), ("gas CO", gas)) if x is None]
                log.warning("adsorption energy %s: missing %s", label, ", ".join(missing))
                continue
            rows.append({
                "quantity": "E_ads(CO), ideal geometry",
                "site_or_cell": label,
                "value": _energy(ads) - _energy(slab) - _energy(gas),
                "unit": "eV",
                "note": (f"unrelaxed: C height {ads.info.get('site')} site as sampled, "
                         f"gas C-O {gas.info.get('bond_a', float('nan')):.3f} A"),
            })
    # height-optimised on 2x2 (approach series + ideal), bond-optimised gas
    slab = _find(frames, family="clean_slab", config_type="ideal", slab_size=2)
    gmin = None
    if len(gas_series) >= 3:
        gmin = _parabola_min(np.array([f.info["bond_a"] for f in gas_series]),
                             np.array([_energy(f) for f in gas_series]))
    for site in ("top", "fcc"):
        series = [f for f in frames if f.info.get("family") == "slab_co" and f.info.get("slab_size") == 2
                  and f.info.get("site") == site
                  and (f.info.get("config_type") == "approach" or (f.info.get("ideal") and f.info.get("config_type") == site))]
        if slab is None or gmin is None or len(series) < 3:
            continue
        dz = np.array([float(f.info.get("height_offset_a", 0.0)) for f in series])
        hmin = _parabola_min(dz, np.array([_energy(f) for f in series]))
        if hmin is None:
            continue
        rows.append({
            "quantity": "E_ads(CO), C height and gas bond optimised",
            "site_or_cell": f"{site}, 2x2 (0.25 ML)",
            "value": hmin[1] - _energy(slab) - gmin[1],
            "unit": "eV",
            "note": (f"parabola minima: C height offset {hmin[0]:+.2f} A from the sampled site height, "
                     f"gas C-O {gmin[0]:.3f} A; slab and C-O of the adsorbate unrelaxed"),
        })
    if gmin is not None:
        rows.append({"quantity": "gas CO bond length (parabola minimum)", "site_or_cell": "gas",
                     "value": gmin[0], "unit": "A", "reference": 1.136,
                     "reference_source": "PBE literature value (~1.136 A); experiment 1.128 A",
                     "note": "from the gas-phase bond-length series"})
    return rows


def sanity_table(frames: Sequence[Atoms]) -> pd.DataFrame:
    """The sanity table: one row per quantity, :data:`SANITY_COLUMNS` plus ``labels``."""
    ref = dcdft.data["Pt"]
    rows: list[dict] = []
    try:
        fit = bulk_eos(frames)
    except ValueError as exc:
        log.warning("no EOS row: %s", exc)
    else:
        src = "ASE dcdft collection, WIEN2k PBE (experiment: "
        rows += [
            {"quantity": "bulk Pt V0 (Birch-Murnaghan)", "site_or_cell": f"fcc, {fit['n_points']} volumes",
             "value": fit["v0"], "unit": "A^3/atom", "reference": ref["wien2k_volume"],
             "reference_source": src + f"{ref['exp_volume']:.3f})"},
            {"quantity": "bulk Pt a0 (from V0)", "site_or_cell": "fcc", "value": (4 * fit["v0"]) ** (1 / 3),
             "unit": "A", "reference": (4 * ref["wien2k_volume"]) ** (1 / 3),
             "reference_source": src + f"{(4 * ref['exp_volume']) ** (1 / 3):.3f})"},
            {"quantity": "bulk Pt B0 (Birch-Murnaghan)", "site_or_cell": "fcc", "value": fit["b0_gpa"],
             "unit": "GPa", "reference": ref["wien2k_B"], "reference_source": src + f"{ref['exp_B']:.1f})"},
            {"quantity": "bulk Pt B0' (Birch-Murnaghan)", "site_or_cell": "fcc", "value": fit["bp"], "unit": "-",
             "reference": ref["wien2k_Bp"], "reference_source": src + f"{ref['exp_Bp']:.2f})"},
        ]
    for row in adsorption_energies(frames):
        row.setdefault("reference", "-1.4 to -1.8 (top/fcc)")
        row.setdefault("reference_source", "typical PBE slab values; PBE overbinds, prefers fcc (CO/Pt(111) puzzle)")
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(SANITY_COLUMNS))
    table["labels"] = _label_kind(frames)
    return table


def dataset_counts(frames: Sequence[Atoms]) -> pd.DataFrame:
    """Frames and atoms per family and config_type, with the summed labelling wall time (s)."""
    df = pd.DataFrame({
        "family": [f.info.get("family", "?") for f in frames],
        "config_type": [f.info.get("config_type", "?") for f in frames],
        "n_atoms": [len(f) for f in frames],
        "label_wall_s": [float(f.info.get("label_wall_s", np.nan)) for f in frames],
    })
    out = df.groupby(["family", "config_type"], sort=True).agg(
        frames=("n_atoms", "size"), atoms_per_frame=("n_atoms", lambda s: "/".join(map(str, sorted(set(s))))),
        cpu_s=("label_wall_s", "sum"),
    ).reset_index()
    return out


def _settings(frames: Sequence[Atoms]) -> dict[str, str]:
    keys = ("label_calculator", "is_dft", "dft_code", "dft_version", "dft_xc", "dft_mode", "dft_basis",
            "dft_h_a", "dft_ecut_ev", "dft_smearing", "dft_setups", "dft_spin")
    out = {}
    for k in keys:
        vals = sorted({str(f.info[k]) for f in frames if k in f.info})
        if vals:
            out[k] = ", ".join(vals)
    kp = sorted({(f.info.get("family"), str(f.info.get("dft_kpts"))) for f in frames if "dft_kpts" in f.info})
    if kp:
        out["dft_kpts (per family)"] = "; ".join(f"{fam}: {k}" for fam, k in kp)
    stress = sorted({str(f.info["dft_stress"]) for f in frames if "dft_stress" in f.info})
    if stress:
        out["dft_stress"] = "; ".join(stress)
    return out


def readme_text(frames: Sequence[Atoms], table: pd.DataFrame, failures: pd.DataFrame | None,
                command: str | None, *, name: str = "pt_co_gpaw.extxyz", label_cfg: LabelConfig | None = None) -> str:
    """README (Markdown) of a labelled set: command, settings, counts, failures, CPU time, sanity table."""
    counts = dataset_counts(frames)
    total_cpu = float(counts["cpu_s"].sum())
    fam = counts.groupby("family")[["frames"]].sum().reset_index()
    lines = [
        f"# Labelled set: Pt(111) + CO, {_label_kind(frames)}",
        "",
        f"`{name}`: {len(frames)} labelled frames ({_label_kind(frames)}), "
        f"{sum(len(f) for f in frames)} atoms in total. Energies in eV, forces in eV/A; extended XYZ "
        "readable by `ase.io.read` (energy in the comment line, forces per atom). Every frame carries "
        "`family`, `group`, `config_type`, `structure_id` and the DFT settings in its info.",
        "",
        "The energy label is GPAW's force-consistent free energy (Fermi-Dirac smearing), whose gradient "
        "the forces are; the zero-width extrapolated energy is in `dft_energy_zero_width_ev`.",
        "",
        "## Command",
        "",
        "```bash",
        command or "(not recorded)",
        "```",
        "",
        "## Settings",
        "",
        pd.DataFrame(sorted(_settings(frames).items()), columns=["setting", "value"]).to_markdown(index=False),
        "",
    ]
    if label_cfg is not None:
        lines += [
            "The `label:` configuration that produced it (k-point meshes follow from `kpt_density`, "
            "points per A^-1 including 2 pi, with 1 point along non-periodic axes and for molecules):",
            "",
            pd.DataFrame(sorted(dataclasses.asdict(label_cfg).items()), columns=["label.key", "value"])
            .astype(str).to_markdown(index=False),
            "",
        ]
    lines += [
        "## Counts",
        "",
        fam.to_markdown(index=False),
        "",
        counts.to_markdown(index=False, floatfmt=".1f"),
        "",
        f"Total CPU time (sum of per-structure wall times, 1 core each): {total_cpu:.0f} s "
        f"({total_cpu / 3600:.2f} core-hours).",
        "",
        "## Failures",
        "",
    ]
    if failures is None or not len(failures):
        lines.append("None: every sampled structure converged.")
    else:
        lines.append(failures.to_markdown(index=False))
    lines += ["", "## Sanity table", "", _table_markdown(table), ""]
    return "\n".join(lines)


def _table_markdown(table: pd.DataFrame) -> str:
    return table.fillna("").to_markdown(index=False, floatfmt=".3f")


def write_sanity(
    labelled: str | Path,
    *,
    csv: str | Path,
    md: str | Path,
    readme: str | Path | None = None,
    failures: str | Path | None = None,
    command: str | None = None,
    label_cfg: LabelConfig | None = None,
) -> pd.DataFrame:
    """Compute the sanity table of ``labelled`` (extxyz) and write CSV, Markdown and optionally a README."""
    try:
        frames = read(labelled, index=":", format="extxyz")
    except Exception as exc:
        raise ValueError(f"dft-sanity: cannot read labelled frames from {labelled}: {exc}") from exc
    table = sanity_table(frames)
    for path in (csv, md, readme):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv, index=False)
    Path(md).write_text(f"# DFT sanity table ({_label_kind(frames)})\n\n" + _table_markdown(table) + "\n")
    if readme is not None:
        fail = pd.read_csv(failures) if failures is not None and Path(failures).exists() else None
        Path(readme).write_text(
            readme_text(frames, table, fail, command, name=Path(labelled).name, label_cfg=label_cfg)
        )
    return table


SHIP_COMMAND = (
    "snakemake --cores 2 results/label/labelled.extxyz --configfile config/dft_label.yaml\n"
    "python -m pipeline ship-dft --labelled results/label/labelled.extxyz "
    "--failures results/label/failures.csv --dest resources/dft"
)


def ship_labelled_set(
    labelled: str | Path,
    failures: str | Path,
    dest: str | Path,
    *,
    name: str = "pt_co_gpaw.extxyz",
    command: str = SHIP_COMMAND,
    label_cfg: LabelConfig | None = None,
) -> pd.DataFrame:
    """Copy a labelled set into ``dest`` and write its sanity table and README there.

    Writes ``dest/name``, ``dest/failures.csv`` (only when some structure failed; a stale one is
    removed otherwise), ``dest/sanity.csv``, ``dest/sanity.md`` and ``dest/README.md``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    write_atomic(target, lambda tmp: shutil.copyfile(labelled, tmp))
    fail = pd.read_csv(failures) if Path(failures).exists() else pd.DataFrame()
    fail_target = dest / "failures.csv"
    if len(fail):
        fail.to_csv(fail_target, index=False)
    elif fail_target.exists():
        fail_target.unlink()
    return write_sanity(target, csv=dest / "sanity.csv", md=dest / "sanity.md", readme=dest / "README.md",
                        failures=fail_target if len(fail) else None, command=command, label_cfg=label_cfg)
