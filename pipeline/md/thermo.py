"""Thermo tables of MD runs and the energy-conservation figures computed from them.

The thermo CSV of a run has one row per thermo step with the columns of :data:`COLUMNS` (units in the
names; LAMMPS metal units: ps, K, eV, bar). :func:`energy_drift` fits a straight line to the conserved
energy against time and reports the drift (slope) in meV/atom/ps and the fluctuation (RMS of the
residuals) in meV/atom, the figures of ``results/tables/conservation.csv``.

>>> import pandas as pd
>>> t = [0.0, 0.5, 1.0, 1.5, 2.0]
>>> table = pd.DataFrame({"time_ps": t, "econserve_ev": [-100.0 + 0.01 * x for x in t], "atoms": 10})
>>> fig = energy_drift(table)
>>> round(fig["drift_mev_atom_ps"], 6), round(fig["fluctuation_mev_atom"], 6), fig["length_ps"]
(1.0, 0.0, 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

# LAMMPS thermo keyword (as in lammps.last_thermo()) -> CSV column
COLUMNS = {
    "Step": "step",
    "Time": "time_ps",
    "Atoms": "atoms",
    "Temp": "temp_k",
    "PotEng": "pe_ev",
    "KinEng": "ke_ev",
    "TotEng": "etotal_ev",
    "Ecouple": "ecouple_ev",
    "Econserve": "econserve_ev",
    "c_pesum": "pe_atom_sum_ev",
    "Press": "press_bar",
}
# the thermo_style keywords that produce COLUMNS (press only when the virial is computed)
THERMO_KEYWORDS = ("step", "time", "atoms", "temp", "pe", "ke", "etotal", "ecouple", "econserve", "c_pesum")


def thermo_row(last_thermo: Mapping[str, float], **extra: float) -> dict[str, float]:
    """One CSV row from ``lammps.last_thermo()`` (known keywords renamed to :data:`COLUMNS`) plus ``extra``."""
    row: dict[str, float] = {}
    for key, value in last_thermo.items():
        if key in COLUMNS:
            name = COLUMNS[key]
            row[name] = int(value) if name in ("step", "atoms") else float(value)
    row.update(extra)
    return row


def read_thermo(path: str | Path) -> pd.DataFrame:
    """The thermo table of a run (CSV written by the MD stage)."""
    table = pd.read_csv(path)
    missing = [c for c in ("step", "time_ps", "etotal_ev", "econserve_ev", "atoms") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the thermo columns {missing}")
    return table


def energy_drift(thermo: pd.DataFrame, *, column: str = "econserve_ev") -> dict[str, float]:
    """Drift and fluctuation of the conserved energy of one run.

    Parameters
    ----------
    thermo : pandas.DataFrame
        Columns ``time_ps``, ``atoms`` and ``column`` (eV); one row per thermo step.
    column : str
        Energy to analyse: ``econserve_ev`` (total energy plus the thermostat's exchange; equal to
        ``etotal_ev`` in NVE) or ``etotal_ev``.

    Returns
    -------
    dict
        ``length_ps``; ``drift_mev_atom_ps``: slope of a least-squares line, meV/atom/ps;
        ``drift_stderr_mev_atom_ps``: its standard error (residuals taken as independent, so a lower
        bound for correlated fluctuations): a drift within a few standard errors is integrator noise;
        ``fluctuation_mev_atom``: RMS of the residuals about that line, meV/atom;
        ``max_deviation_mev_atom``: largest |E(t) - E(0)|, meV/atom; ``n_atoms``; ``n_rows``.
    """
    if len(thermo) < 2:
        raise ValueError(f"need at least two thermo rows to fit a drift, got {len(thermo)}")
    t = thermo["time_ps"].to_numpy(dtype=np.float64)
    e = thermo[column].to_numpy(dtype=np.float64)
    n_atoms = int(thermo["atoms"].iloc[0])
    x = t - t[0]
    slope, intercept = np.polyfit(x, e, 1)
    residual = e - (slope * x + intercept)
    spread = np.sum((x - x.mean()) ** 2)
    stderr = np.sqrt(np.sum(residual**2) / max(len(x) - 2, 1) / spread) if len(x) > 2 and spread > 0 else float("nan")
    scale = 1000.0 / n_atoms  # eV -> meV/atom
    return {
        "length_ps": float(t[-1] - t[0]),
        "drift_mev_atom_ps": float(slope * scale),
        "drift_stderr_mev_atom_ps": float(stderr * scale),
        "fluctuation_mev_atom": float(np.sqrt(np.mean(residual**2)) * scale),
        "max_deviation_mev_atom": float(np.max(np.abs(e - e[0])) * scale),
        "n_atoms": float(n_atoms),
        "n_rows": float(len(thermo)),
    }


def conservation_row(thermo_csv: str | Path, *, run: str, precision: str, timestep_fs: float) -> dict[str, object]:
    """A row of the conservation table (columns of the analysis stage) for one run's thermo CSV."""
    figures = energy_drift(read_thermo(thermo_csv))
    return {
        "run": run,
        "precision": precision,
        "timestep_fs": float(timestep_fs),
        "length_ps": figures["length_ps"],
        "drift_mev_atom_ps": figures["drift_mev_atom_ps"],
        "fluctuation_mev_atom": figures["fluctuation_mev_atom"],
    }
