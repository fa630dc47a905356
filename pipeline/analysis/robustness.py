"""Robustness of the co-training verdicts over training seeds: one row per seed, then mean and std.

A verdict that depends on training is believable only if it holds for every seed. For each training
seed (``robustness.seeds``; initial weights, batch order, mixture cells; the split stays fixed) both
pairs are trained and judged on data none of them trained or was selected on:

==================================  ====================================================================
column                              definition (split / structure it comes from)
==================================  ====================================================================
``bulk_force_disagreement_cut``     RMS |F^HF - F^LF| on bulk test atoms, independent / co-trained pair
                                    (test split; :mod:`pipeline.analysis.cotraining`)
``lf_force_mae_change_percent``     co-trained LF's own force MAE (bulk test atoms) vs the independent
                                    LF's, percent (test split)
``b0_lf_cotrained_vs_hf_percent``   B0(LF co-trained) / B0(its pair's HF) - 1, percent (Birch-Murnaghan
                                    fits on perfect fcc supercells, :mod:`pipeline.analysis.eos`)
``b0_lf_independent_vs_hf_percent`` the same for the independent pair
``interface_ratio_perfect``         max interface force in the perfect split crystal, co-trained /
                                    independent (:mod:`pipeline.analysis.interface`)
``moe_vs_hf_force_mae_ratio``       co-trained mixture's force MAE / full HF's, all test atoms (test
                                    split, partition of ``md.partition``; :mod:`pipeline.analysis.accuracy`)
==================================  ====================================================================

plus context columns: the force-disagreement cut on the atoms the ``md.partition`` rule gives to LF in
the test frames (``lf_atoms_*``: what the mixture uses LF for) and on the bulk test atoms outside the
close-contact family (``near_eq_*``), the energy disagreement cut, the raw disagreements and B0 values. The criteria
of :data:`CRITERIA` are checked for every seed (``passes``); the ``mean`` and ``std`` rows (sample
standard deviation over seeds) follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.analysis._common import write_table
from pipeline.config import Config
from pipeline.names import TRAIN_PAIRS

#: The pairs of a seed, in the order of the cotraining rows of a robustness row.
PAIRS = TRAIN_PAIRS
COLUMNS = ("seed", "bulk_force_disagreement_cut", "lf_force_mae_change_percent", "b0_lf_cotrained_vs_hf_percent",
           "b0_lf_independent_vs_hf_percent", "interface_ratio_perfect", "moe_vs_hf_force_mae_ratio",
           "lf_atoms_force_disagreement_cut", "near_eq_bulk_force_disagreement_cut",
           "bulk_energy_disagreement_cut", "bulk_force_disagreement_cotrained_mev_a",
           "bulk_force_disagreement_independent_mev_a", "b0_hf_gpa", "b0_lf_cotrained_gpa", "b0_lf_independent_gpa",
           "interface_max_cotrained_mev_a", "interface_max_independent_mev_a", "hf_force_mae_mev_a",
           "moe_cotrained_force_mae_mev_a", "passes")
# column -> (kind, bound): ">=" lower bound, "<=" upper bound, "abs<=" bound on the magnitude
CRITERIA: dict[str, tuple[str, float]] = {
    "bulk_force_disagreement_cut": (">=", 5.0),
    "lf_force_mae_change_percent": ("<=", 10.0),
    "b0_lf_cotrained_vs_hf_percent": ("abs<=", 5.0),
    "interface_ratio_perfect": ("<=", 0.2),
    "moe_vs_hf_force_mae_ratio": ("<=", 1.05),
}


def meets(value: float, kind: str, bound: float) -> bool:
    """Whether ``value`` meets a criterion of :data:`CRITERIA` (NaN never does)."""
    if not np.isfinite(value):
        return False
    return {">=": value >= bound, "<=": value <= bound, "abs<=": abs(value) <= bound}[kind]


def failed_criteria(row: Mapping[str, float]) -> list[str]:
    """Names of the criteria a seed's row fails."""
    return [name for name, (kind, bound) in CRITERIA.items() if not meets(float(row[name]), kind, bound)]


def seed_row(cfg: Config, *, seed: int, dataset: str | Path, pairs: Mapping[str, Mapping[str, str | Path]]) -> dict:
    """The robustness row of one seed from its trained pairs (``{pair: {"hf": path, "lf": path}}``)."""
    from pipeline.analysis.accuracy import accuracy_table
    from pipeline.analysis.cotraining import cotraining_table
    from pipeline.analysis.eos import eos_table
    from pipeline.analysis.interface import interface_table

    names = list(PAIRS)
    co = cotraining_table(cfg, dataset, names, [pairs[p]["hf"] for p in names],
                          [pairs[p]["lf"] for p in names]).set_index("pair")
    eos, _ = eos_table(cfg, dataset=None, pairs=pairs, reference_pair="independent")
    fits = eos.set_index("model")
    b0 = fits["b0_gpa"].where(fits["fit_ok"].astype(bool))  # NaN (criterion failed) for an extrapolated fit
    b0_hf = {p: b0.get(f"hf_{p}", b0["hf"]) for p in names}
    interface, _ = interface_table(cfg, pairs=pairs)
    perfect = interface[interface["lattice"] == "perfect"].set_index("pair")["max_force_mev_a"]
    accuracy, _, _ = accuracy_table(cfg, dataset=dataset, pairs=pairs, reference_pair="independent")
    acc = accuracy[(accuracy["region"] == "all") & (accuracy["family"] == "all")].set_index("model")
    ratio = lambda a, b: float(a / b) if b > 0 else np.inf  # noqa: E731
    row = {
        "seed": seed,
        "bulk_force_disagreement_cut": ratio(co.loc["independent", "bulk_force_disagreement_mev_a"],
                                             co.loc["cotrained", "bulk_force_disagreement_mev_a"]),
        "lf_force_mae_change_percent": 100.0 * (ratio(co.loc["cotrained", "lf_force_mae_bulk_mev_a"],
                                                      co.loc["independent", "lf_force_mae_bulk_mev_a"]) - 1.0),
        "b0_lf_cotrained_vs_hf_percent": 100.0 * (b0["lf_cotrained"] / b0_hf["cotrained"] - 1.0),
        "b0_lf_independent_vs_hf_percent": 100.0 * (b0["lf_independent"] / b0_hf["independent"] - 1.0),
        "interface_ratio_perfect": ratio(perfect["cotrained"], perfect["independent"]),
        "moe_vs_hf_force_mae_ratio": ratio(acc.loc["moe_cotrained", "force_mae_mev_a"], acc.loc["hf", "force_mae_mev_a"]),
        "lf_atoms_force_disagreement_cut": ratio(co.loc["independent", "lf_atoms_force_disagreement_mev_a"],
                                                 co.loc["cotrained", "lf_atoms_force_disagreement_mev_a"]),
        "near_eq_bulk_force_disagreement_cut": ratio(co.loc["independent", "bulk_force_disagreement_near_eq_mev_a"],
                                                     co.loc["cotrained", "bulk_force_disagreement_near_eq_mev_a"]),
        "bulk_energy_disagreement_cut": ratio(co.loc["independent", "bulk_energy_disagreement_mev_atom"],
                                              co.loc["cotrained", "bulk_energy_disagreement_mev_atom"]),
        "bulk_force_disagreement_cotrained_mev_a": co.loc["cotrained", "bulk_force_disagreement_mev_a"],
        "bulk_force_disagreement_independent_mev_a": co.loc["independent", "bulk_force_disagreement_mev_a"],
        "b0_hf_gpa": b0_hf["cotrained"],
        "b0_lf_cotrained_gpa": b0["lf_cotrained"],
        "b0_lf_independent_gpa": b0["lf_independent"],
        "interface_max_cotrained_mev_a": perfect["cotrained"],
        "interface_max_independent_mev_a": perfect["independent"],
        "hf_force_mae_mev_a": acc.loc["hf", "force_mae_mev_a"],
        "moe_cotrained_force_mae_mev_a": acc.loc["moe_cotrained", "force_mae_mev_a"],
    }
    failed = failed_criteria(row)
    row["passes"] = "all" if not failed else "fails: " + ", ".join(failed)
    return row


def robustness_table(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Seed rows (sorted by seed) followed by ``mean`` and ``std`` rows over the seeds."""
    table = pd.DataFrame(list(rows)).sort_values("seed")
    table["seed"] = table["seed"].astype(int).astype(str)
    numeric = [c for c in COLUMNS if c not in ("seed", "passes")]
    stats = [{"seed": "mean", **table[numeric].mean().to_dict(), "passes": ""},
             {"seed": "std", **table[numeric].std(ddof=1).to_dict(), "passes": ""}]
    return pd.concat([table, pd.DataFrame(stats)], ignore_index=True)[list(COLUMNS)]


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One line per criterion: mean +- std over seeds, and how many seeds meet it."""
    seeds = table[~table["seed"].isin(["mean", "std"])]
    mean = table.set_index("seed").loc["mean"]
    std = table.set_index("seed").loc["std"]
    lines = []
    symbols = {">=": ">=", "<=": "<=", "abs<=": "|x| <="}
    for name, (kind, bound) in CRITERIA.items():
        ok = sum(meets(float(v), kind, bound) for v in seeds[name])
        lines.append(f"{name}: {mean[name]:.3g} +- {std[name]:.2g} (criterion {symbols[kind]} {bound:g}; "
                     f"met by {ok} of {len(seeds)} seeds)")
    co, ind = abs(float(mean["b0_lf_cotrained_vs_hf_percent"])), abs(float(mean["b0_lf_independent_vs_hf_percent"]))
    lines.append(f"mean |B0(LF)/B0(HF) - 1|: co-trained {co:.2f} %, independent {ind:.2f} % "
                 f"({'co-trained smaller' if co < ind else 'co-trained NOT smaller'})")
    return lines


def write_robustness(table: pd.DataFrame, *, csv: str | Path, md: str | Path, precision: str) -> None:
    """Write the robustness table (CSV + Markdown with the criteria and verdicts)."""
    notes = [
        ("One row per training seed (initial weights, batch order, mixture cells; the train/validation/test split "
         "is the same for every seed), then the mean and the sample standard deviation over seeds. Disagreements, "
         "MAEs and the mixture ratio: test split; B0: Birch-Murnaghan fits of perfect fcc supercells (no DFT point, "
         "no training frame); interface: the perfect split crystal of analysis.interface. Models evaluated in "
         f"{precision}. In anchored co-training both pairs of a seed share one HF expert."),
        "Verdicts over seeds:",
        *[f"- {line}" for line in verdict_lines(table)],
    ]
    write_table(table, csv=csv, md=md, title="Robustness of the co-training verdicts over training seeds",
                notes=notes, floatfmt=".3g")
