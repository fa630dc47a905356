"""One-page summary: the headline numbers of the analysis tables beside the paper's claims.

Reads the tables written by the other analyses (CSV; any may be missing, and its line then says so)
and writes a Markdown page with one row per claim of the multi-fidelity MoE paper: energy
conservation, EOS agreement of the experts, accuracy of the mixture against full HF, interface forces
(co-trained against independent), the co-training disagreement, and the speedup over full HF. Each row
states the criterion used for its verdict; the numbers are computed here from the tables, never typed
in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.analysis._common import write_atomic
from pipeline.config import Config

# The paper's claims (qualitative, from the multi-fidelity MoE paper; see DESIGN.md section 1).
CLAIMS = {
    "conservation": "Exact energy conservation in NVE for the mixture (drift at the level of a single model)",
    "eos": "Co-trained experts give matching bulk EOS (V0) and bulk modulus B0",
    "elastic": "Co-trained experts share the bulk mechanical response (elastic constants)",
    "accuracy": "Mixture accuracy close to a full-HF simulation",
    "interface": "Co-training removes the spurious forces at the HF/LF interface",
    "cotraining": "Co-training makes HF and LF agree on bulk Pt environments",
    "speed": "More than 2x speed over full HF",
    "robustness": "The co-training results hold, not only for one training run",
}


def _read(path: str | Path | None) -> pd.DataFrame | None:
    if path is None or not Path(path).exists():
        return None
    return pd.read_csv(path)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def _temperature(r: pd.Series) -> tuple[str, float]:
    """``", T <mean> / <target> K"`` of a conservation row and |mean / target - 1| (NaN when unknown)."""
    mean, target = r.get("mean_temperature_k", np.nan), r.get("target_temperature_k", np.nan)
    if not (np.isfinite(mean) and np.isfinite(target) and target > 0):
        return ("" if not np.isfinite(mean) else f", T {mean:.0f} K"), np.nan
    return f", T {mean:.0f} K / target {target:.0f} K", abs(mean / target - 1.0)


def conservation_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """Drift (blocked standard error) and mean production temperature of each run against its target;
    verdict: every MoE drift within 3 standard errors of zero or no larger in magnitude than the full-HF
    drift plus 3 of its standard errors, and every run's mean temperature within 10 % of its target
    (n/a when a run's temperature or target is not in the table)."""
    t = table.set_index("run")
    parts, deviations = [], {}
    for run, r in t.iterrows():
        text, deviations[run] = _temperature(r)
        parts.append(f"{run}: {r['drift_mev_atom_ps']:+.3g} +- {r['drift_stderr_mev_atom_ps']:.2g} meV/atom/ps "
                     f"({r['precision']}, {r['length_ps']:.3g} ps{text})")
    criterion = (". Criterion: each MoE |drift| <= max(3 stderr, |full-HF drift| + 3 stderr), and every run's "
                 "|mean T / target - 1| <= 10 %.")
    moe = [run for run in t.index if str(run).startswith("moe")]
    if not moe or not all(np.isfinite(d) for d in deviations.values()):
        return "; ".join(parts) + criterion, None
    bound = np.inf
    if "hf" in t.index:
        bound = abs(t.loc["hf", "drift_mev_atom_ps"]) + 3 * t.loc["hf", "drift_stderr_mev_atom_ps"]
    ok = all(abs(t.loc[r, "drift_mev_atom_ps"]) <= max(3 * t.loc[r, "drift_stderr_mev_atom_ps"], bound) for r in moe)
    hot_or_cold = [f"{run} {100 * d:.0f} %" for run, d in deviations.items() if d > 0.10]
    if hot_or_cold:
        parts.append("off the target temperature: " + ", ".join(hot_or_cold))
    return "; ".join(parts) + criterion, bool(ok and not hot_or_cold)


def _pair_hf(index: pd.Index, pair: str) -> str:
    """The EOS row of ``pair``'s HF expert: ``hf_<pair>``, or ``hf`` for the reference pair."""
    return f"hf_{pair}" if f"hf_{pair}" in index else "hf"


def eos_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """V0 and B0 of every model, and the LF-HF mismatch *within* each pair (LF against its own pair's HF);
    verdict: the co-trained pair's |B0(LF) / B0(HF) - 1| is no larger than the independent pair's."""
    t = table.set_index("model")
    parts = []
    for model in ("dft", "pbe_reference"):
        if model in t.index:
            parts.append(f"{model}: V0 {t.loc[model, 'v0_a3_atom']:.3f} A^3/atom, B0 {t.loc[model, 'b0_gpa']:.0f} GPa")
    for model in t.index:
        if str(model).startswith(("hf", "lf_", "moe_")):
            parts.append(f"{model}: V0 {t.loc[model, 'v0_a3_atom']:.3f}, B0 {t.loc[model, 'b0_gpa']:.0f} GPa")
    mismatch: dict[str, float] = {}
    for pair in ("cotrained", "independent"):
        hf, lf = _pair_hf(t.index, pair), f"lf_{pair}"
        if hf not in t.index or lf not in t.index:
            continue
        if "fit_ok" in t.columns and not (bool(t.loc[hf, "fit_ok"]) and bool(t.loc[lf, "fit_ok"])):
            parts.append(f"no verdict for {pair}: a fit failed or has V0 outside the sampled volumes")
            continue
        mismatch[pair] = abs(t.loc[lf, "b0_gpa"] / t.loc[hf, "b0_gpa"] - 1.0) * 100.0
        dv0 = (t.loc[lf, "v0_a3_atom"] / t.loc[hf, "v0_a3_atom"] - 1.0) * 100.0
        parts.append(f"{pair} pair LF vs its HF: dV0 {dv0:+.2f} %, |dB0| {mismatch[pair]:.1f} %")
    ok = None
    if set(mismatch) == {"cotrained", "independent"}:
        ok = bool(mismatch["cotrained"] <= mismatch["independent"])
    return "; ".join(parts) + (". Criterion: within-pair |B0(LF)/B0(HF) - 1| of the co-trained pair <= the "
                               "independent pair's."), ok


def accuracy_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """Energy and force MAE of the mixtures against full HF (all test atoms, per region, and on the
    near-equilibrium test frames); verdict: the co-trained mixture's force MAE on all test atoms within 1.05x of
    full HF's and its energy MAE within 1.5x. A generalisation split (column ``split``) is quoted apart: the
    generalisation / test ratio of the near-equilibrium force MAE of full HF and of the co-trained mixture."""
    generalisation = ""
    if "split" in table:
        gen = table[(table["split"] == "generalisation") & (table["region"] == "all")
                    & (table["family"] == "near_equilibrium")].set_index("model")["force_mae_ratio_to_test"]
        cells = [f"{m} {gen[m]:.2f}" for m in ("hf", "moe_cotrained") if m in gen.index]
        if cells:
            generalisation = ("; generalisation split / test near-equilibrium force MAE: " + ", ".join(cells)
                              + " (issue 16 target <= 1.3)")
        table = table[table["split"] != "generalisation"]
    t = table[table["family"] == "all"].set_index(["model", "region"])
    near = table[table["family"] == "near_equilibrium"].set_index(["model", "region"])
    parts = []
    for model in ("hf", "moe_cotrained", "moe_independent", "lf_cotrained"):
        cells = [f"{region} {t.loc[(model, region), 'force_mae_mev_a']:.1f}" for region in
                 ("all", "bulk", "co_neighbourhood", "adsorbate") if (model, region) in t.index]
        if cells:
            energy = t.loc[(model, "all"), "energy_mae_mev_atom"] if (model, "all") in t.index else np.nan
            text = f"{model}: energy MAE {energy:.1f} meV/atom, force MAE (meV/A) " + ", ".join(cells)
            if (model, "all") in near.index:
                text += (f" (near-equilibrium frames: {near.loc[(model, 'all'), 'energy_mae_mev_atom']:.1f} meV/atom, "
                         f"{near.loc[(model, 'all'), 'force_mae_mev_a']:.1f} meV/A)")
            parts.append(text)
    ok = None
    if ("hf", "all") in t.index and ("moe_cotrained", "all") in t.index:
        ratios = {kind: t.loc[("moe_cotrained", "all"), f"{kind}_mae_{unit}"] / t.loc[("hf", "all"), f"{kind}_mae_{unit}"]
                  for kind, unit in (("energy", "mev_atom"), ("force", "mev_a"))}
        parts.append(f"moe_cotrained / hf energy MAE = {ratios['energy']:.2f}, force MAE = {ratios['force']:.2f}")
        ok = bool(ratios["force"] <= 1.05 and ratios["energy"] <= 1.5)
    note = " (lf_* on C/O and surface atoms is extrapolation: trained on bulk atoms only)" if \
        table["outside_training_data"].any() else ""
    return "; ".join(parts) + note + generalisation + (". Criterion: moe_cotrained force MAE <= 1.05x and energy MAE "
                                                      "<= 1.5x full HF's (test split)."), ok


def interface_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """Interface forces per pair and lattice; verdict: co-trained max force in the perfect crystal below the
    independent pair's."""
    t = table.set_index(["pair", "lattice"])
    parts = [f"{pair} {lattice}: max {r['max_force_mev_a']:.1f}, RMS {r['rms_force_mev_a']:.1f} meV/A"
             for (pair, lattice), r in t.iterrows()]
    ok = None
    if ("cotrained", "perfect") in t.index and ("independent", "perfect") in t.index:
        co, ind = t.loc[("cotrained", "perfect"), "max_force_mev_a"], t.loc[("independent", "perfect"), "max_force_mev_a"]
        parts.append(f"reduction in the perfect crystal: {ind / co:.1f}x" if co > 0 else "co-trained: zero")
        ok = bool(co < ind)
    return "; ".join(parts) + ". Criterion: co-trained < independent (perfect crystal, max).", ok


def cotraining_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """Bulk HF-LF disagreement per pair; verdict: lower for the co-trained pair (energy and force)."""
    t = table.set_index("pair")
    parts = [f"{pair}: {r['bulk_energy_disagreement_mev_atom']:.2f} meV/atom, {r['bulk_force_disagreement_mev_a']:.1f} meV/A"
             for pair, r in t.iterrows()]
    ok = None
    if {"cotrained", "independent"} <= set(t.index):
        co, ind = t.loc["cotrained"], t.loc["independent"]
        ok = bool(co["bulk_energy_disagreement_mev_atom"] < ind["bulk_energy_disagreement_mev_atom"]
                  and co["bulk_force_disagreement_mev_a"] < ind["bulk_force_disagreement_mev_a"])
    return "RMS HF-LF disagreement on bulk test atoms, " + "; ".join(parts) + \
        ". Criterion: co-trained lower in both.", ok


def speed_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """Speedup of the mixture at the HF fraction closest to 0.2 at each size, with the ideal (per-edge cost)
    bound and the fraction of it reached; verdict: > 2x at the largest size."""
    moe = table[table["mode"] == "moe"]
    parts = []
    ok = None
    for n, rows in moe.groupby("n_atoms"):
        row = rows.iloc[int(np.argmin(np.abs(rows["hf_fraction"].to_numpy() - 0.2)))]
        lf = table[(table["n_atoms"] == n) & (table["mode"] == "lf")]
        ratio = f", c_HF/c_LF {lf['speedup_vs_hf'].iloc[0]:.1f}" if len(lf) else ""
        edges = f", {row['hf_edge_fraction']:.2f} of the edges" if "hf_edge_fraction" in row else ""
        parts.append(f"{n} atoms, f = {row['hf_fraction']:.2f}{edges}: {row['speedup_vs_hf']:.2f}x (ideal "
                     f"{row['ideal_speedup']:.2f}x, {row['speedup_vs_hf'] / row['ideal_speedup']:.0%} of it{ratio})")
        ok = bool(row["speedup_vs_hf"] > 2.0)  # the last (largest) size decides
    first = table.iloc[0]
    return (f"{first['device']}, {first['precision']}, {first['threads']} thread(s): " + "; ".join(parts)
            + ". Criterion: > 2x at f ~ 0.2 on the largest system."), ok


def elastic_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """C11, C12, C44 of DFT and of every model, and the largest relative LF-HF difference within each pair;
    verdict: the co-trained LF's largest difference is no larger than the independent LF's."""
    t = table.set_index("model")
    parts = [f"{m}: C11 {t.loc[m, 'c11_gpa']:.0f}, C12 {t.loc[m, 'c12_gpa']:.0f}, C44 {t.loc[m, 'c44_gpa']:.0f} GPa"
             for m in t.index if m == "dft" or str(m).startswith(("hf", "lf_", "moe_"))]
    worst: dict[str, float] = {}
    for pair in ("cotrained", "independent"):
        hf, lf = _pair_hf(t.index, pair), f"lf_{pair}"
        if hf not in t.index or lf not in t.index:
            continue
        if "fit_ok" in t.columns and not (bool(t.loc[hf, "fit_ok"]) and bool(t.loc[lf, "fit_ok"])):
            parts.append(f"no verdict for {pair}: a fit failed")
            continue
        worst[pair] = max(abs(t.loc[lf, c] / t.loc[hf, c] - 1.0) * 100.0 for c in ("c11_gpa", "c12_gpa", "c44_gpa"))
        parts.append(f"{pair} pair: max |C_ij(LF)/C_ij(HF) - 1| {worst[pair]:.1f} %")
    ok = bool(worst["cotrained"] <= worst["independent"]) if set(worst) == {"cotrained", "independent"} else None
    return "; ".join(parts) + (". Criterion: the co-trained pair's largest within-pair difference <= the "
                               "independent pair's."), ok


def robustness_line(table: pd.DataFrame) -> tuple[str, bool | None]:
    """Mean +- std over training seeds of each co-training criterion and how many seeds meet it; verdict:
    every seed meets every criterion (pipeline.analysis.robustness.CRITERIA)."""
    from pipeline.analysis.robustness import verdict_lines

    seeds = table[~table["seed"].astype(str).isin(["mean", "std"])]
    ok = bool((seeds["passes"].astype(str) == "all").all()) if len(seeds) else None
    return (f"{len(seeds)} training seeds: " + "; ".join(verdict_lines(table))
            + ". Criterion: every seed meets every criterion (results/tables/robustness.md)."), ok


LINES = {
    "conservation": conservation_line,
    "eos": eos_line,
    "elastic": elastic_line,
    "accuracy": accuracy_line,
    "interface": interface_line,
    "cotraining": cotraining_line,
    "speed": speed_line,
    "robustness": robustness_line,
}


def run_notes(cfg: Config) -> list[str]:
    """The notes under the summary table that describe the run: where the DFT data came from, the
    precisions, the reference pair, and what the LF experts never saw when trained on bulk atoms only."""
    data = ", ".join(cfg.data.paths) if cfg.data.source == "files" else "labelled by the pipeline"
    notes = [f"DFT data: {data}; MD precision {cfg.md.dtype}, analysis precision {cfg.analysis.dtype}, speed precision "
             f"{cfg.analysis.speed.dtype}; full-HF/full-LF references use the {cfg.md.reference_pair} pair."]
    if cfg.train.lf_data == "bulk_atoms":
        lf_run = ("the full-LF MD run leaves the adsorbates out (md.full_lf_without_adsorbates)"
                  if getattr(cfg.md, "full_lf_without_adsorbates", False)
                  else "the full-LF MD run (with CO) is extrapolation")
        notes.append("The LF experts were trained on bulk Pt atoms only (train.lf_data: bulk_atoms): they have never "
                     f"seen C or O; {lf_run}, and the LF rows of the accuracy table on adsorbate/surface atoms are "
                     "extrapolation.")
    return notes


def summary_page(tables: Mapping[str, str | Path | None], *, notes: list[str] | None = None) -> str:
    """The summary page (Markdown) from the table CSVs named by ``tables`` (keys of :data:`LINES`)."""
    rows = []
    for key, line in LINES.items():
        table = _read(tables.get(key))
        if table is None or table.empty:
            rows.append({"result": key, "paper's claim": CLAIMS[key], "this run": "table not computed", "agrees": "n/a"})
            continue
        text, ok = line(table)
        rows.append({"result": key, "paper's claim": CLAIMS[key], "this run": text, "agrees": _verdict(ok)})
    page = [
        "# Summary: multi-fidelity MoE Allegro potential for Pt(111)+CO against the paper's claims",
        "",
        ("Numbers from results/tables/*.csv of this run (energies in meV/atom, forces in meV/A, B0 in GPa). "
        "'agrees' applies the criterion stated in each row; it is a reading of this run's numbers, not a "
        "statistical test."),
        "",
        pd.DataFrame(rows).to_markdown(index=False),
        "",
        *[line for note in (notes or []) for line in (f"- {note}",)],
        "",
    ]
    return "\n".join(page)


def write_summary(tables: Mapping[str, str | Path | None], path: str | Path, *, notes: list[str] | None = None) -> str:
    """Write :func:`summary_page` to ``path`` (atomically); returns the text."""
    text = summary_page(tables, notes=notes)
    write_atomic(path, lambda p: p.write_text(text))
    return text
