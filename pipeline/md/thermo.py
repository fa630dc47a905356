"""Thermo tables of MD runs and the energy-conservation figures computed from them.

The thermo CSV of a run has one row per thermo step with the columns of :data:`COLUMNS` (units in the
names; LAMMPS metal units: ps, K, eV, bar), ``phase``: ``equilibration`` for the steps of the Langevin
NVT equilibration (``md.run.equilibration_steps``), ``production`` from the first production step on (the
row at the boundary is the production's start), and :data:`CENTRE_COLUMNS` ``hf_centres`` / ``lf_centres``:
the atoms the HF and the LF expert evaluated at that step (a static partition: its fixed counts; one
expert: all atoms on it; the adaptive partition: the current centres, shell atoms counted by both).
Tables written before these columns existed stay readable (:func:`centre_figures` gives NaN for them).
:func:`energy_drift` fits a straight line to the conserved energy of the production rows against time and
reports the drift (slope) in meV/atom/ps with an autocorrelation-aware standard error
(:func:`blocking_variance_of_mean`), the fluctuation (RMS of the residuals) in meV/atom and the mean
temperature, the figures of ``results/tables/conservation.csv``.

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
# per-step centre counts of the experts, added by the MD driver (absent from older tables)
CENTRE_COLUMNS = ("hf_centres", "lf_centres")
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
    """The thermo table of a run (CSV written by the MD stage); a table without ``phase`` is all production."""
    table = pd.read_csv(path)
    missing = [c for c in ("step", "time_ps", "etotal_ev", "econserve_ev", "atoms") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the thermo columns {missing}")
    return table


def production_rows(thermo: pd.DataFrame) -> pd.DataFrame:
    """The rows of the production phase (``phase == "production"``; all rows when there is no ``phase``).

    >>> import pandas as pd
    >>> table = pd.DataFrame({"step": [0, 10, 20, 30], "phase": ["equilibration"] * 2 + ["production"] * 2})
    >>> production_rows(table)["step"].tolist()
    [20, 30]
    """
    if "phase" not in thermo.columns:
        return thermo
    return thermo[thermo["phase"] == "production"]


def centre_figures(thermo: pd.DataFrame) -> dict[str, float]:
    """Mean, min and max of the HF centres (``hf_centres_mean``, ``_min``, ``_max``) and the mean LF centres
    (``lf_centres_mean``) over the production rows (:func:`production_rows`); NaN where the table has no
    such column or no value (a table from before :data:`CENTRE_COLUMNS`).

    >>> import pandas as pd
    >>> table = pd.DataFrame({"phase": ["equilibration", "production", "production"], "hf_centres": [9, 4, 6]})
    >>> centre_figures(table)["hf_centres_mean"], centre_figures(table)["hf_centres_max"]
    (5.0, 6.0)
    """
    production = production_rows(thermo)
    figures = {}
    for column, stats in (("hf_centres", ("mean", "min", "max")), ("lf_centres", ("mean",))):
        values = production[column].dropna() if column in production.columns else pd.Series(dtype=np.float64)
        for stat in stats:
            figures[f"{column}_{stat}"] = float(getattr(values, stat)()) if len(values) else float("nan")
    return figures


def blocking_variance_of_mean(x: np.ndarray, *, confidence: float = 0.99) -> tuple[float, int]:
    """Variance of the mean of a correlated series by automated blocking.

    Flyvbjerg-Petersen blocking (J. Chem. Phys. 91, 461 (1989)): the series is halved repeatedly by
    averaging neighbouring pairs (an odd element is dropped at the start); at level k, with n_k blocks of
    variance s_k (divided by n_k), s_k / n_k estimates the variance of the mean, and it grows until the
    blocks are longer than the correlation time. The level is chosen by Jonsson's M-test (Phys. Rev. E 98,
    043304 (2018), its theorem): the first level j at which
    M_j = sum_{k >= j} n_k ((n_k - 1) s_k / n_k^2 + gamma_k)^2 / s_k^2, gamma_k the lag-one autocovariance
    of the blocks, is below the ``confidence`` quantile of chi^2 with as many degrees of freedom as terms
    (no correlation left between blocks). The test stops as soon as it can no longer detect correlation,
    which leaves a bias of order (correlation time / block length); the estimate is taken one level further
    (blocks twice as long, when 16 or more blocks remain), which halves that bias for sqrt(2) more noise.
    On AR(1) series the standard error then comes out within ~5-10 % of the truth on average when the
    series holds more than ~200 independent samples (n / g, g = 1 + 2 sum of the autocorrelation), and
    ~20 % low with ~40.

    Parameters
    ----------
    x : (n,) array
        The series (e.g. residuals about a fit), any units.
    confidence : float
        Quantile of the M-test.

    Returns
    -------
    (variance of the mean in units of x squared, block length in samples). A series shorter than 4 or
    without spread gives the naive ``var / n`` and block length 1.

    >>> import numpy as np
    >>> var, block = blocking_variance_of_mean(np.random.default_rng(0).normal(size=4096))
    >>> block, round(4096 * var, 2)
    (2, 0.96)
    """
    from scipy.stats import chi2

    x = np.asarray(x, dtype=np.float64).ravel()
    naive = float(np.var(x) / len(x)) if len(x) else float("nan")
    if len(x) < 4 or np.var(x) == 0:
        return naive, 1
    counts, variances, gammas = [], [], []
    while len(x) >= 2:
        n = len(x)
        centred = x - x.mean()
        s = float(np.mean(centred**2))
        if s == 0.0:
            break
        counts.append(n)
        variances.append(s)
        gammas.append(float(np.sum(centred[:-1] * centred[1:]) / n))
        x = x[n % 2:]
        x = 0.5 * (x[0::2] + x[1::2])
    n_k, s_k = np.asarray(counts, dtype=np.float64), np.asarray(variances)
    terms = n_k * ((n_k - 1.0) * s_k / n_k**2 + np.asarray(gammas)) ** 2 / s_k**2
    m = np.cumsum(terms[::-1])[::-1]  # M_j for every level j
    levels = len(terms)
    level = levels - 1
    for j in range(levels):
        if m[j] < chi2.ppf(confidence, df=levels - j):
            level = j
            break
    if level + 1 < levels and counts[level + 1] >= 16:
        level += 1
    block = 2**level
    return variances[level] / counts[level], block


def energy_drift(thermo: pd.DataFrame, *, column: str = "econserve_ev", n_mobile: int | None = None) -> dict[str, float]:
    """Drift, fluctuation and mean temperature of the production phase of one run.

    Parameters
    ----------
    thermo : pandas.DataFrame
        Columns ``time_ps``, ``atoms`` and ``column`` (eV), optionally ``temp_k`` (K, mobile atoms) and
        ``phase``; one row per thermo step. Only the production rows (:func:`production_rows`) are used.
    column : str
        Energy to analyse: ``econserve_ev`` (total energy plus the thermostats' exchange; equal to
        ``etotal_ev`` plus a constant in NVE after the equilibration) or ``etotal_ev``.
    n_mobile : int, optional
        Atoms that move (all but the fixed bottom layers), for the drift per mobile atom.

    Returns
    -------
    dict
        ``length_ps`` (production); ``drift_mev_atom_ps``: slope of a least-squares line, meV/atom/ps;
        ``drift_stderr_mev_atom_ps``: its standard error with the residuals' autocorrelation, the naive
        one times sqrt(g), g = ``statistical_inefficiency`` = (blocked variance of the residuals' mean) /
        (naive variance of the mean), from :func:`blocking_variance_of_mean`, never below 1 (for a
        correlation time short against the run, Var(slope) = g sigma^2 / sum (t - mean t)^2);
        ``drift_stderr_naive_mev_atom_ps``: the standard error with the residuals taken as independent
        (a lower bound for correlated fluctuations); ``drift_mev_mobile_atom_ps``: the drift per mobile
        atom (NaN without ``n_mobile``); ``fluctuation_mev_atom``: RMS of the residuals about the line,
        meV/atom; ``max_deviation_mev_atom``: largest |E(t) - E(t_0)| from the production start, meV/atom;
        ``mean_temperature_k``: mean ``temp_k`` of the production rows (NaN without it);
        ``equilibration_ps``: time from the first row to the production start; ``n_atoms``; ``n_rows``
        (production rows).
    """
    production = production_rows(thermo)
    if len(production) < 2:
        raise ValueError(f"need at least two thermo rows of the production phase to fit a drift, got {len(production)}")
    t = production["time_ps"].to_numpy(dtype=np.float64)
    e = production[column].to_numpy(dtype=np.float64)
    n_atoms = int(production["atoms"].iloc[0])
    x = t - t[0]
    slope, intercept = np.polyfit(x, e, 1)
    residual = e - (slope * x + intercept)
    spread = np.sum((x - x.mean()) ** 2)
    stderr = np.sqrt(np.sum(residual**2) / max(len(x) - 2, 1) / spread) if len(x) > 2 and spread > 0 else float("nan")
    blocked, _ = blocking_variance_of_mean(residual)
    naive = np.var(residual) / len(residual)
    inefficiency = max(blocked / naive, 1.0) if naive > 0 else 1.0
    scale = 1000.0 / n_atoms  # eV -> meV/atom
    temperature = production["temp_k"].to_numpy(dtype=np.float64).mean() if "temp_k" in production else float("nan")
    return {
        "length_ps": float(t[-1] - t[0]),
        "drift_mev_atom_ps": float(slope * scale),
        "drift_stderr_mev_atom_ps": float(stderr * np.sqrt(inefficiency) * scale),
        "drift_stderr_naive_mev_atom_ps": float(stderr * scale),
        "statistical_inefficiency": float(inefficiency),
        "drift_mev_mobile_atom_ps": float(slope * 1000.0 / n_mobile) if n_mobile else float("nan"),
        "fluctuation_mev_atom": float(np.sqrt(np.mean(residual**2)) * scale),
        "max_deviation_mev_atom": float(np.max(np.abs(e - e[0])) * scale),
        "mean_temperature_k": float(temperature),
        "equilibration_ps": float(t[0] - float(thermo["time_ps"].iloc[0])),
        "n_atoms": float(n_atoms),
        "n_rows": float(len(production)),
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
