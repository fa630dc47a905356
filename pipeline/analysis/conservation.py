"""Energy conservation of the MD runs: drift and fluctuation of the conserved energy, and its traces.

One row per run (:data:`COLUMNS`) from the run's thermo CSV (:func:`pipeline.md.thermo.read_thermo`)
and, when given, its summary JSON (precision, ensemble, experts, HF atoms, fixed atoms, target
temperature, ms per step). Only the production phase counts (the rows after the Langevin equilibration,
``phase == "production"``). The drift is the slope of a least-squares line through the conserved energy
(``econserve``, = total energy plus a constant in NVE) against time, in meV/atom/ps and per mobile atom
(the fixed bottom layers carry no kinetic energy), with two standard errors: ``drift_stderr_mev_atom_ps``
from automated blocking of the residuals (Flyvbjerg-Petersen with Jonsson's M-test,
:func:`pipeline.md.thermo.blocking_variance_of_mean`: the naive error times the square root of the
statistical inefficiency, so that correlated residuals count as fewer independent samples) and
``drift_stderr_naive_mev_atom_ps`` with the residuals taken as independent; the fluctuation is the RMS of
the residuals about that line, in meV/atom (:func:`pipeline.md.thermo.energy_drift`);
``mean_temperature_k`` is the mean mobile-atom temperature of the production rows, beside
``target_temperature_k`` (``md.run.temperature_k``). The timestep is read from the thermo table
(time / step).

>>> import pandas as pd
>>> thermo = pd.DataFrame({"step": [0, 10, 20], "time_ps": [0.0, 0.01, 0.02], "atoms": 4,
...                        "etotal_ev": [-1.0, -0.98, -0.96], "econserve_ev": [-1.0, -0.98, -0.96]})
>>> row = conservation_row("hf", thermo)
>>> round(row["drift_mev_atom_ps"], 6), round(row["timestep_fs"], 6)
(500.0, 1.0)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.analysis._common import pyplot, save_figure, write_table
from pipeline.md.thermo import energy_drift, production_rows, read_thermo

COLUMNS = ("run", "precision", "timestep_fs", "length_ps", "drift_mev_atom_ps", "drift_stderr_mev_atom_ps",
           "drift_stderr_naive_mev_atom_ps", "drift_mev_mobile_atom_ps", "fluctuation_mev_atom",
           "max_deviation_mev_atom", "mean_temperature_k", "target_temperature_k", "equilibration_ps", "n_atoms",
           "n_mobile", "n_hf", "ensemble", "experts", "step_time_ms", "note")


def timestep_fs(thermo: pd.DataFrame) -> float:
    """MD timestep (fs) from the thermo table: median of d(time) / d(step) between rows."""
    steps = np.diff(thermo["step"].to_numpy(dtype=float))
    times = np.diff(thermo["time_ps"].to_numpy(dtype=float))
    good = steps > 0
    if not good.any():
        return float("nan")
    return float(np.median(times[good] / steps[good]) * 1000.0)


def conservation_row(run: str, thermo: pd.DataFrame, summary: Mapping | None = None, *,
                     lf_bulk_only: bool = False) -> dict:
    """One row of the table from a run's thermo table and (optional) summary dict."""
    summary = dict(summary or {})
    n_fixed = summary.get("n_fixed")
    n_mobile = int(thermo["atoms"].iloc[0]) - int(n_fixed) if n_fixed is not None else None
    figures = energy_drift(thermo, n_mobile=n_mobile)
    experts = summary.get("experts", [])
    note = ""
    removed = int(summary.get("n_adsorbate_atoms_removed", 0) or 0)
    if removed:
        note = f"run without the {removed} adsorbate atoms of the cell (md.full_lf_without_adsorbates)"
    elif lf_bulk_only and "lf" in experts and "hf" not in experts:
        note = "LF alone on C/O and surface atoms: outside its data (train.lf_data: bulk_atoms)"
    counts = (summary.get("adsorbates") or {}).get("counts") or {}
    lost = {state: n for state, n in counts.items() if state != "adsorbed" and n}
    if lost:
        states = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in lost.items())
        note = "; ".join(filter(None, [note, f"CO at the end: {states} of {sum(counts.values())} (not physical)"]))
    return {
        "run": run,
        "precision": summary.get("precision", "unknown"),
        "timestep_fs": timestep_fs(thermo),
        "length_ps": figures["length_ps"],
        "drift_mev_atom_ps": figures["drift_mev_atom_ps"],
        "drift_stderr_mev_atom_ps": figures["drift_stderr_mev_atom_ps"],
        "drift_stderr_naive_mev_atom_ps": figures["drift_stderr_naive_mev_atom_ps"],
        "drift_mev_mobile_atom_ps": figures["drift_mev_mobile_atom_ps"],
        "fluctuation_mev_atom": figures["fluctuation_mev_atom"],
        "max_deviation_mev_atom": figures["max_deviation_mev_atom"],
        "mean_temperature_k": figures["mean_temperature_k"],
        "target_temperature_k": float(summary.get("target_temperature_k", np.nan)),
        "equilibration_ps": figures["equilibration_ps"],
        "n_atoms": int(figures["n_atoms"]),
        "n_mobile": n_mobile if n_mobile is not None else np.nan,
        "n_hf": summary.get("n_hf", np.nan),
        "ensemble": summary.get("ensemble", "unknown"),
        "experts": "+".join(experts) if experts else "unknown",
        "step_time_ms": 1000.0 * float(summary["step_time_s"]) if "step_time_s" in summary else np.nan,
        "note": note,
    }


def conservation_table(
    runs: Sequence[str], thermo_csvs: Sequence[str | Path], summaries: Sequence[str | Path] | None = None,
    *, lf_bulk_only: bool = False,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The conservation table (:data:`COLUMNS`) and the thermo table of every run.

    Parameters
    ----------
    runs : names of the runs (``hf``, ``lf``, ``moe_independent``, ``moe_cotrained``)
    thermo_csvs : the thermo CSV of each run, same order
    summaries : the summary JSON of each run, same order (optional)
    lf_bulk_only : the LF expert was trained on bulk atoms only (adds a note to the full-LF run)
    """
    if len(runs) != len(thermo_csvs) or (summaries is not None and len(summaries) != len(runs)):
        raise ValueError(f"need one thermo CSV (and summary) per run: {len(runs)} runs, {len(thermo_csvs)} thermo, "
                         f"{len(summaries) if summaries is not None else 0} summaries")
    rows, traces = [], {}
    for i, run in enumerate(runs):
        thermo = read_thermo(thermo_csvs[i])
        summary = json.loads(Path(summaries[i]).read_text()) if summaries is not None else None
        rows.append(conservation_row(run, thermo, summary, lf_bulk_only=lf_bulk_only))
        traces[run] = thermo
    return pd.DataFrame(rows, columns=list(COLUMNS)), traces


def plot_traces(traces: Mapping[str, pd.DataFrame], png: str | Path, *,
                targets: Mapping[str, float] | None = None) -> None:
    """Conserved-energy deviation E(t) - E(t_0) (meV/atom) and temperature (K) against time t - t_0, every
    run; t_0 is the start of the production, the equilibration (t < 0) is shaded. ``targets``: the target
    temperature (K) of each run, drawn as a dashed line."""
    plt = pyplot()
    fig, (ax_e, ax_t) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    start = 0.0
    for run, thermo in traces.items():
        production = production_rows(thermo)
        t0 = float(production["time_ps"].iloc[0])
        start = min(start, float(thermo["time_ps"].iloc[0]) - t0)
        t = thermo["time_ps"].to_numpy() - t0
        e = thermo["econserve_ev"].to_numpy()
        n = float(thermo["atoms"].iloc[0])
        (line,) = ax_e.plot(t, 1000.0 * (e - float(production["econserve_ev"].iloc[0])) / n, lw=1.0, label=run)
        if "temp_k" in thermo:
            ax_t.plot(t, thermo["temp_k"], lw=0.8, label=run, color=line.get_color())
    for target in sorted(set((targets or {}).values())):
        if np.isfinite(target):
            ax_t.axhline(target, color="k", ls="--", lw=0.8)
    if start < 0:
        for ax in (ax_e, ax_t):
            ax.axvspan(start, 0.0, color="0.9", lw=0, label="_nolegend_")
    ax_e.set_ylabel("E_conserved(t) - E(t_0) (meV/atom)")
    ax_e.set_title("Energy conservation of the MD runs (shaded: Langevin equilibration, not fitted)")
    ax_e.legend(fontsize=8)
    ax_t.set_xlabel("time from the start of the production (ps)")
    ax_t.set_ylabel("temperature (K; dashed: target)")
    fig.tight_layout()
    save_figure(fig, png)


def write_conservation(table: pd.DataFrame, traces: Mapping[str, pd.DataFrame], *, csv: str | Path,
                       md: str | Path, png: str | Path) -> None:
    """Write the conservation table (CSV + Markdown) and the energy-trace plot."""
    notes = [
        ("Each run: equilibration_ps of Langevin NVT at target_temperature_k (md.run.equilibration_steps; "
         "not fitted), then the production in the run's ensemble (length_ps; NVE by default). All figures are "
         "of the production. Drift: slope of a least-squares line through the conserved energy (total energy "
         "in NVE, plus the equilibration's thermostat exchange as a constant) against time, meV/atom/ps; "
         "drift_mev_mobile_atom_ps: the same per mobile atom (n_mobile: the fixed bottom layers carry no "
         "kinetic energy). drift_stderr_mev_atom_ps: standard error of the slope allowing for correlated "
         "residuals: the naive error times sqrt(g), g the statistical inefficiency of the residuals from "
         "automated blocking (Flyvbjerg-Petersen block averages, block length chosen by Jonsson's M-test, one "
         "level further; g >= 1); drift_stderr_naive_mev_atom_ps: residuals taken as independent (a lower "
         "bound). Fluctuation: RMS of the residuals, meV/atom; max_deviation: largest |E(t) - E(t_0)| from the "
         "production start, meV/atom. mean_temperature_k: mean mobile-atom temperature of the production. "
         "step_time_ms: wall time per MD step of the run (LAMMPS + force callback). Precision = the experts' "
         "dtype in the MD run."),
    ]
    write_table(table, csv=csv, md=md, title="Energy conservation of the production runs", notes=notes,
                floatfmt=".4g")
    plot_traces(traces, png, targets=dict(zip(table["run"], table["target_temperature_k"])))
