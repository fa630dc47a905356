"""Data learning curve: HF error against the number of training frames (is the expert data- or capacity-limited?).

The HF expert of one seed is trained on nested, group-complete subsets of the training frames
(``python -m pipeline train --stage hf --train-fraction F``; :func:`pipeline.data.splits.training_subset`;
validation and test splits unchanged) and evaluated here on the test split and on the shipped generalisation
set, with the accuracy table's near-equilibrium selection (every family but ``close_contact``, all atoms):
energy MAE per atom (meV/atom) and force MAE per Cartesian component (meV/A).

The table (:data:`COLUMNS`) has one row per fraction and split; the notes give the log-log slope
d log(MAE) / d log(N_train) per split and error: near 0 means more data of the same kind does not help
(capacity- or label-noise-limited), about -0.5 or steeper means data-limited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.analysis._common import predict, pyplot, save_figure, single, write_table
from pipeline.analysis.accuracy import accuracy_rows
from pipeline.config import Config
from pipeline.data.generalisation_set import GENERALISATION_SPLIT, read_generalisation
from pipeline.data.splits import group_of, training_subset
from pipeline.devices import DTYPES, resolve_device
from pipeline.models import load_checkpoint, read_checkpoint
from pipeline.train.data import read_splits

log = logging.getLogger(__name__)

COLUMNS = ("fraction", "n_train_frames", "n_train_groups", "split", "n_frames", "energy_mae_mev_atom",
           "force_mae_mev_a", "force_rmse_mev_a", "checkpoint")
SELECTION = ("all", "near_equilibrium")  # (region, family) of the accuracy table


def loglog_slope(n: Sequence[float], mae: Sequence[float]) -> float:
    """Least-squares slope of log(mae) against log(n) (NaN with fewer than two finite points).

    >>> round(loglog_slope([10, 100], [1.0, 0.1]), 6)
    -1.0
    """
    n, mae = np.asarray(n, dtype=float), np.asarray(mae, dtype=float)
    keep = np.isfinite(n) & np.isfinite(mae) & (n > 0) & (mae > 0)
    if keep.sum() < 2 or np.unique(n[keep]).size < 2:
        return float("nan")
    return float(np.polyfit(np.log(n[keep]), np.log(mae[keep]), 1)[0])


def data_curve_table(
    cfg: Config,
    *,
    dataset: str | Path,
    fractions: Sequence[float],
    checkpoints: Sequence[str | Path],
    generalisation: str | Path | None = None,
) -> pd.DataFrame:
    """Near-equilibrium errors of the HF expert trained on each fraction of the training frames.

    Parameters
    ----------
    cfg : Config
        Uses ``analysis`` (dtype, accuracy), ``generalisation.learning_curve.subset_seed``, ``ingest`` and
        ``regions`` (generalisation set), ``species``, ``device``, ``torch_threads``.
    dataset : path
        The ingest stage's dataset (the training subset sizes are recomputed from it; test split).
    fractions, checkpoints : sequences of equal length
        Training fraction and HF checkpoint of each point.
    generalisation : path, optional
        The shipped generalisation set; without it only the test split is evaluated.

    Returns
    -------
    pandas.DataFrame (:data:`COLUMNS`), one row per fraction and split.
    """
    if len(fractions) != len(checkpoints):
        raise ValueError(f"one checkpoint per fraction: {len(fractions)} fractions, {len(checkpoints)} checkpoints")
    torch.set_num_threads(cfg.torch_threads)
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.analysis.dtype]
    split = cfg.analysis.accuracy.split
    splits = read_splits(str(dataset), splits=("train", split))
    sets = {split: splits[split]}
    if generalisation is not None:
        sets[GENERALISATION_SPLIT] = read_generalisation(cfg, generalisation)
    seed = cfg.generalisation.learning_curve.subset_seed
    rows = []
    for fraction, path in sorted(zip(map(float, fractions), checkpoints)):
        subset = training_subset(splits["train"], fraction, seed=seed)
        stored = read_checkpoint(path)["metadata"].get("n_train_frames")
        if stored is not None and int(stored) != len(subset):
            log.warning("%s: trained on %s frames, but fraction %g of %s gives %d", path, stored, fraction, dataset,
                        len(subset))
        potential = single(load_checkpoint(path, species=cfg.species, dtype=dtype, map_location=device).eval(), "hf")
        for name, frames in sets.items():
            energies, forces = predict(potential, frames, batch_size=cfg.analysis.accuracy.batch_size)
            found = [r for r in accuracy_rows("hf", frames, energies, forces)
                     if (r["region"], r["family"]) == SELECTION]
            row = found[0] if found else {"n_frames": 0, "energy_mae_mev_atom": np.nan, "force_mae_mev_a": np.nan,
                                          "force_rmse_mev_a": np.nan}
            rows.append({"fraction": fraction, "n_train_frames": len(subset),
                         "n_train_groups": len({group_of(a) for a in subset}), "split": name,
                         "n_frames": row["n_frames"], "energy_mae_mev_atom": row["energy_mae_mev_atom"],
                         "force_mae_mev_a": row["force_mae_mev_a"], "force_rmse_mev_a": row["force_rmse_mev_a"],
                         "checkpoint": str(path)})
            log.info("data learning curve: fraction %g, %s: force MAE %.1f meV/A", fraction, name,
                     row["force_mae_mev_a"])
    return pd.DataFrame(rows, columns=list(COLUMNS))


def slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of each error against ``n_train_frames``, per split."""
    out = []
    for name, part in table.groupby("split", sort=False):
        out.append({"split": name, **{col: loglog_slope(part["n_train_frames"], part[col])
                                      for col in ("energy_mae_mev_atom", "force_mae_mev_a")}})
    return pd.DataFrame(out)


def plot_data_curve(table: pd.DataFrame, png: str | Path) -> None:
    """Log-log energy and force MAE against the number of training frames, one line per split."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8))
    for ax, (col, label) in zip(axes, (("energy_mae_mev_atom", "energy MAE (meV/atom)"),
                                       ("force_mae_mev_a", "force MAE (meV/A)"))):
        for name, part in table.groupby("split", sort=False):
            ax.plot(part["n_train_frames"], part[col], "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training frames")
        ax.set_ylabel(label)
        ax.grid(True, which="both", lw=0.3)
    axes[0].legend(title="split (near-equilibrium)")
    fig.suptitle("HF expert: error against training-set size")
    fig.tight_layout()
    save_figure(fig, png)


def write_data_curve(table: pd.DataFrame, *, csv: str | Path, md: str | Path, png: str | Path, precision: str,
                     seed: int, subset_seed: int, generalisation: str | None) -> None:
    """Write the table (CSV + Markdown with the slopes) and the log-log plot."""
    slope = slopes(table)
    notes = [
        (f"HF expert (training seed {seed}) trained on nested, group-complete subsets of the training frames "
         f"(per family, group order seeded by {subset_seed}; validation and test splits unchanged), evaluated in "
         f"{precision} on the near-equilibrium frames (every family but close_contact, all atoms) of each split: "
         "energy MAE per atom, force MAE per Cartesian component."),
        "Log-log slope d log(MAE) / d log(N_train) per split (near 0: more data of the same kind does not help; "
        "about -0.5 or steeper: data-limited):\n\n" + slope.to_markdown(index=False, floatfmt=".2f"),
    ]
    if generalisation is None:
        notes.append("Generalisation split: absent (no shipped generalisation set): test split only.")
    else:
        notes.append(f"Generalisation split: {generalisation} (never used for training or selection).")
    write_table(table, csv=csv, md=md, title="Data learning curve of the HF expert", notes=notes, floatfmt=".2f")
    plot_data_curve(table, png)
