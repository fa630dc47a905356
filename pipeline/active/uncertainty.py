"""Uncertainty of a committee of HF experts (different training seeds) and its calibration.

Score
-----
For a frame with atoms i and K committee members k with forces F_i^k (eV/A), the per-atom force spread is

    sigma_i = sqrt( sum_k |F_i^k - mean_k F_i^k|^2 / (K - 1) )        (eV/A, rotation invariant)

and the frame's score is ``max_i sigma_i``. Why this choice:

- forces, not energies: MD follows the forces, and the committee's energy spread is extensive (it grows
  with the number of atoms and is dominated by the many bulk-like atoms) while the per-atom force spread is
  local and comparable between cells of different sizes;
- the maximum over atoms, not the mean: what breaks a trajectory is one atom in an environment the
  experts never saw (a CO pushed into a hollow, a Pt pulled out of the surface); a mean over ~40 atoms
  dilutes that one atom by the number of well-described ones, the maximum does not;
- the norm over Cartesian components makes sigma_i independent of the orientation of the cell.

It costs K force evaluations per frame (no DFT). Whether it predicts the error is measured, not assumed:
:func:`calibration_table` compares it, on labelled frames, with the actual error of the committee mean,
``max_i |mean_k F_i^k - F_i^DFT|`` (the same statistic form), by Spearman rank correlation and binned means,
and :func:`plot_calibration` draws it.

The committee also gives, per frame, the invariant descriptors of its first member (the per-atom
pooled scalar features :data:`pipeline.data.keys.DESCRIPTORS`) that the selection uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase import Atoms

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.models import AllegroModel, load_checkpoint

CALIBRATION_COLUMNS = ("structure_id", "source", "family", "n_atoms", "score_ev_a", "mean_spread_ev_a",
                       "error_max_ev_a", "error_mae_ev_a")


@dataclass
class CommitteeOutput:
    """Predictions of K committee members on n frames.

    Attributes
    ----------
    energies : (K, n_frames) float64 array
        Total energies (eV).
    forces : list of (K, n_atoms_f, 3) float64 arrays
        Forces of every member on every atom of frame f (eV/A).
    descriptors : list of (n_atoms_f, F) float64 arrays
        Invariant per-atom features of the first member (its pooled final edge scalars).
    """

    energies: np.ndarray
    forces: list[np.ndarray]
    descriptors: list[np.ndarray]


def load_committee(paths: Sequence[str | Path], *, species: Sequence[str], dtype: torch.dtype = torch.float64,
                   device: str | torch.device = "cpu") -> list[AllegroModel]:
    """Load the committee's HF checkpoints (eval mode), checking that they share the species list."""
    if len(paths) < 2:
        raise ValueError(f"a committee needs at least 2 members, got {len(paths)}")
    return [load_checkpoint(p, species=tuple(species), dtype=dtype, map_location=device).eval() for p in paths]


def committee_predictions(models: Sequence[AllegroModel], frames: Sequence[Atoms], *,
                          batch_size: int = 8) -> CommitteeOutput:
    """Energies, forces (every member) and descriptors (first member) of ``frames``; batched."""
    n = len(frames)
    energies = np.zeros((len(models), n))
    forces = [np.zeros((len(models), len(a), 3)) for a in frames]
    descriptors: list[np.ndarray] = [np.zeros((len(a), 0)) for a in frames]
    for k, model in enumerate(models):
        device = next(model.parameters()).device
        for start in range(0, n, batch_size):
            chunk = list(frames[start:start + batch_size])
            batch = collate(chunk, species=model.species, r_max=model.r_max, dtype=model.dtype, with_targets=False)
            batch = {key: value.to(device) for key, value in batch.items()}
            out = model(batch, compute_forces=True, create_graph=False)
            energies[k, start:start + len(chunk)] = out[K.ENERGY].detach().double().cpu().numpy()
            f = out[K.FORCES].detach().double().cpu().numpy()
            d = out[K.DESCRIPTORS].detach().double().cpu().numpy()
            offsets = np.cumsum([0, *[len(a) for a in chunk]])
            for i in range(len(chunk)):
                forces[start + i][k] = f[offsets[i]:offsets[i + 1]]
                if k == 0:
                    descriptors[start + i] = d[offsets[i]:offsets[i + 1]]
    return CommitteeOutput(energies, forces, descriptors)


def force_spread(forces: np.ndarray) -> np.ndarray:
    """Per-atom committee force spread sigma_i (eV/A), shape ``(n_atoms,)``, from ``(K, n_atoms, 3)`` forces.

    >>> f = np.zeros((2, 1, 3)); f[0, 0, 0], f[1, 0, 0] = 1.0, -1.0
    >>> float(force_spread(f)[0])   # sqrt((1 + 1) / (2 - 1))
    1.4142135623730951
    """
    forces = np.asarray(forces, dtype=float)
    if forces.ndim != 3 or forces.shape[0] < 2 or forces.shape[2] != 3:
        raise ValueError(f"forces must have shape (K >= 2, n_atoms, 3), got {forces.shape}")
    dev = forces - forces.mean(axis=0, keepdims=True)  # [K, n, 3]
    return np.sqrt(np.sum(dev**2, axis=(0, 2)) / (forces.shape[0] - 1))


def frame_scores(output: CommitteeOutput, frames: Sequence[Atoms]) -> pd.DataFrame:
    """One row per frame: ``score_ev_a`` (max_i sigma_i), ``mean_spread_ev_a`` (mean_i sigma_i),
    ``worst_atom`` (argmax), ``energy_std_ev_atom`` (committee energy std / atoms) and the provenance."""
    rows = []
    for k, (atoms, f) in enumerate(zip(frames, output.forces)):
        sigma = force_spread(f)
        rows.append({
            "index": k,
            "structure_id": str(atoms.info.get("structure_id", k)),
            "trajectory": str(atoms.info.get("al_trajectory", "")),
            "run": str(atoms.info.get("al_source_run", "")),
            "cell": str(atoms.info.get("al_cell", "")),
            "temperature_k": float(atoms.info.get("al_temperature_k", np.nan)),
            "step": int(atoms.info.get("al_step", -1)),
            "n_atoms": len(atoms),
            "score_ev_a": float(sigma.max()),
            "mean_spread_ev_a": float(sigma.mean()),
            "worst_atom": int(np.argmax(sigma)),
            "energy_std_ev_atom": float(np.std(output.energies[:, k], ddof=1) / len(atoms)),
        })
    return pd.DataFrame(rows)


def score_frames(models: Sequence[AllegroModel], frames: Sequence[Atoms], *,
                 batch_size: int = 8) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Score ``frames`` (writes ``info['al_score']`` in place); returns the score table and descriptors."""
    output = committee_predictions(models, frames, batch_size=batch_size)
    table = frame_scores(output, frames)
    for atoms, score in zip(frames, table["score_ev_a"]):
        atoms.info["al_score"] = float(score)
    return table, output.descriptors


# ----------------------------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------------------------


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of ``x`` and ``y`` (average ranks for ties); NaN for fewer than 3 points
    or a constant input.

    >>> spearman([1, 2, 3, 4], [10, 20, 25, 40]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    rx, ry = pd.Series(x, dtype=float).rank().to_numpy(), pd.Series(y, dtype=float).rank().to_numpy()
    if len(rx) < 3 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def calibration_table(output: CommitteeOutput, frames: Sequence[Atoms], *, sources: Sequence[str]) -> pd.DataFrame:
    """Predicted score against the actual force error of the committee mean, one row per labelled frame.

    Parameters
    ----------
    output : the committee's predictions on ``frames`` (:func:`committee_predictions`)
    frames : labelled frames (reference forces from ``atoms.get_forces()``, eV/A)
    sources : one label per frame (e.g. ``test`` for the held-out split, ``selected`` for the frames this
        iteration chose and labelled)

    Returns
    -------
    DataFrame with :data:`CALIBRATION_COLUMNS`: ``score_ev_a`` = max_i sigma_i, ``error_max_ev_a`` =
    max_i |mean_k F_i^k - F_i|, ``error_mae_ev_a`` = mean over atoms and components of the absolute error.
    """
    rows = []
    for atoms, f, source in zip(frames, output.forces, sources):
        sigma = force_spread(f)
        err = f.mean(axis=0) - atoms.get_forces()  # [n, 3]
        rows.append({"structure_id": str(atoms.info.get("structure_id", "")), "source": source,
                     "family": str(atoms.info.get("family", "")), "n_atoms": len(atoms),
                     "score_ev_a": float(sigma.max()), "mean_spread_ev_a": float(sigma.mean()),
                     "error_max_ev_a": float(np.linalg.norm(err, axis=1).max()),
                     "error_mae_ev_a": float(np.abs(err).mean())})
    return pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))


def calibration_summary(table: pd.DataFrame, *, bins: int = 5) -> tuple[dict, pd.DataFrame]:
    """Spearman rank correlations (all frames and per source) and binned means.

    Returns
    -------
    summary : dict
        ``spearman`` (score vs ``error_max_ev_a``, all frames), ``spearman_<source>``, ``n_frames``.
    binned : DataFrame
        Quantile bins of the score: ``bin``, ``frames``, ``score_lo``, ``score_hi``, ``score_mean``,
        ``error_max_mean``, ``error_mae_mean`` (eV/A).
    """
    summary: dict = {"n_frames": int(len(table)),
                     "spearman": spearman(table["score_ev_a"], table["error_max_ev_a"]) if len(table) else np.nan}
    for source, part in table.groupby("source", sort=True):
        summary[f"spearman_{source}"] = spearman(part["score_ev_a"], part["error_max_ev_a"])
        summary[f"n_{source}"] = int(len(part))
    columns = ["bin", "frames", "score_lo", "score_hi", "score_mean", "error_max_mean", "error_mae_mean"]
    if len(table) == 0:
        return summary, pd.DataFrame(columns=columns)
    n_bins = max(1, min(bins, len(table)))
    codes = pd.qcut(table["score_ev_a"].rank(method="first"), n_bins, labels=False)
    binned = (table.assign(bin=codes).groupby("bin")
              .agg(frames=("score_ev_a", "size"), score_lo=("score_ev_a", "min"), score_hi=("score_ev_a", "max"),
                   score_mean=("score_ev_a", "mean"), error_max_mean=("error_max_ev_a", "mean"),
                   error_mae_mean=("error_mae_ev_a", "mean"))
              .reset_index())
    return summary, binned[columns]


def plot_calibration(table: pd.DataFrame, binned: pd.DataFrame, path: str | Path, *, title: str) -> None:
    """Scatter of actual error against score (log-log, one colour per source), binned means, y = x."""
    from pipeline.analysis._common import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for source, part in table.groupby("source", sort=True):
        ax.scatter(part["score_ev_a"], part["error_max_ev_a"], s=14, alpha=0.7, label=f"{source} ({len(part)})")
    if len(binned):
        ax.plot(binned["score_mean"], binned["error_max_mean"], "k-o", ms=4, label="binned mean")
    positive = table[["score_ev_a", "error_max_ev_a"]].to_numpy().ravel()
    positive = positive[positive > 0]
    if positive.size:
        lo, hi = positive.min() * 0.8, positive.max() * 1.25
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1, label="error = score")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("predicted: max per-atom committee force spread (eV/A)")
    ax.set_ylabel("actual: max per-atom force error of the mean (eV/A)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
