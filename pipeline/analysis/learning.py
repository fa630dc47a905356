"""Learning curves of the training stages and a table of what each stage selected and what it cost.

Reads the per-epoch metrics CSVs of :mod:`pipeline.train.loop` (one per stage: ``hf``, ``lf_<pair>``,
``pair_<pair>``). Table columns (:data:`COLUMNS`), per stage:

- ``epochs``, ``selected_epoch`` (lowest trailing mean of the validation loss), ``time_per_epoch_s``
  (median wall time of an epoch) and ``total_time_s``;
- ``val_loss_smoothed`` at the selected epoch and ``late_change_percent``: the relative change of the
  smoothed validation loss over the last quarter of the epochs (near 0: converged; clearly negative:
  still improving when the budget ended);
- validation MAE of each expert (energy meV/atom, force meV/A) and the RMS HF-LF disagreement on the
  validation bulk atoms (meV/A) at the selected epoch (NaN where a stage has no such expert: the HF of an
  LF stage is the frozen anchor, whose figures are those of the ``hf`` stage).

Figure: per stage, the training and validation loss (and its trailing mean) with the selected epoch,
the validation force MAE of each expert and the bulk disagreement, and the loss terms of the agreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.analysis._common import pyplot, save_figure, write_table
from pipeline.train.convergence import late_change

COLUMNS = ("stage", "epochs", "selected_epoch", "time_per_epoch_s", "total_time_s", "val_loss_smoothed",
           "late_change_percent", "val_hf_energy_mae_mev_atom", "val_hf_force_mae_mev_a",
           "val_lf_energy_mae_mev_atom", "val_lf_force_mae_mev_a", "val_bulk_force_disagreement_mev_a")
TERM_COLUMNS = ("agree_energy", "agree_forces", "mixture_forces")


def stage_row(stage: str, metrics: pd.DataFrame) -> dict:
    """One table row from a stage's metrics (see the module docstring)."""
    selected = int(metrics["best_epoch"].iloc[-1])
    at = metrics.set_index("epoch").loc[selected] if selected in set(metrics["epoch"]) else metrics.iloc[-1]
    row = {"stage": stage, "epochs": int(metrics["epoch"].iloc[-1]), "selected_epoch": selected,
           "time_per_epoch_s": float(metrics["wall_s"].median()), "total_time_s": float(metrics["wall_s"].sum()),
           "val_loss_smoothed": float(at.get("val_loss_smoothed", at["val_loss"])),
           "late_change_percent": late_change(metrics.get("val_loss_smoothed", metrics["val_loss"]).to_numpy())}
    for column in COLUMNS[7:]:
        row[column] = float(at[column]) if column in at else float("nan")
    if stage.startswith("lf_"):  # the HF of an LF stage is the frozen anchor: its figures belong to stage hf
        row["val_hf_energy_mae_mev_atom"] = row["val_hf_force_mae_mev_a"] = float("nan")
    return row


def learning_table(metrics: Mapping[str, str | Path]) -> pd.DataFrame:
    """The stage table from ``{stage: metrics CSV}``."""
    return pd.DataFrame([stage_row(stage, pd.read_csv(path)) for stage, path in metrics.items()],
                        columns=list(COLUMNS))


def plot_learning(metrics: Mapping[str, str | Path], png: str | Path) -> None:
    """The learning curves (see the module docstring), one row of panels per stage."""
    plt = pyplot()
    fig, axes = plt.subplots(len(metrics), 3, figsize=(15, 3.6 * len(metrics)), squeeze=False)
    for (stage, path), (ax_l, ax_m, ax_t) in zip(metrics.items(), axes):
        m = pd.read_csv(path)
        selected = int(m["best_epoch"].iloc[-1])
        ax_l.plot(m["epoch"], m["train_loss"], lw=0.8, label="train (ramped weights)")
        ax_l.plot(m["epoch"], m["val_loss"], lw=0.8, label="validation")
        if "val_loss_smoothed" in m:
            ax_l.plot(m["epoch"], m["val_loss_smoothed"], lw=1.6, label="validation, trailing mean")
        ax_l.set_yscale("log")
        ax_l.set_title(f"{stage}: loss (selected epoch {selected})")
        for name, style in (("hf", "-"), ("lf", "--")):
            column = f"val_{name}_force_mae_mev_a"
            if column in m and np.isfinite(m[column]).any() and not (stage.startswith("lf_") and name == "hf"):
                ax_m.plot(m["epoch"], m[column], style, lw=1.0, label=f"{name.upper()} force MAE")
        if "val_bulk_force_disagreement_mev_a" in m and np.isfinite(m["val_bulk_force_disagreement_mev_a"]).any():
            ax_m.plot(m["epoch"], m["val_bulk_force_disagreement_mev_a"], ":", lw=1.2, label="bulk HF-LF RMS")
        ax_m.set_ylabel("meV/A (validation)")
        ax_m.set_title(f"{stage}: validation forces")
        plotted = False
        for term in TERM_COLUMNS:
            column = f"val_{term}"
            if column in m and (m[column] > 0).any():
                ax_t.plot(m["epoch"], m[column], lw=1.0, label=f"{term} (validation)")
                plotted = True
        if plotted:
            ax_t.set_yscale("log")
        ax_t.set_title(f"{stage}: agreement terms" + ("" if plotted else " (none)"))
        for ax in (ax_l, ax_m, ax_t):
            ax.axvline(selected, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("epoch")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png)


def write_learning(table: pd.DataFrame, metrics: Mapping[str, str | Path], *, csv: str | Path, md: str | Path,
                   png: str | Path) -> None:
    """Write the stage table (CSV + Markdown) and the learning curves."""
    notes = [
        ("Per training stage of one seed: epochs run, the selected epoch (lowest trailing mean of the stage's own "
         "validation loss), the median wall time per epoch (the LF stage of the co-trained pair includes the mixture "
         "term on the mixture cells, with its double backward; compare it with the independent LF stage), and the "
         "validation figures at the selected epoch (validation split and validation mixture cells: the frames the "
         "selection used, not a test). late_change_percent: change of the smoothed validation loss over the last "
         "quarter of the epochs (near 0 = converged)."),
    ]
    write_table(table, csv=csv, md=md, title="Training stages: selection, convergence and cost", notes=notes,
                floatfmt=".4g")
    plot_learning(metrics, png)
