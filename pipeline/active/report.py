"""The per-iteration report of the active-learning loop and the table over iterations.

One row per iteration (:func:`iteration_report`, written as JSON by ``al-report``), combined by
``al-table`` (:func:`write_iteration_table`) into CSV + Markdown. Columns:

=================================  =================================================================
column                             meaning
=================================  =================================================================
``iteration``                      loop iteration i
``train_frames``                   training-split frames of the dataset iteration i trained on
``test_frames``                    test-split frames of that dataset (the split is by group, so it
                                   grows with the added trajectories: the test set differs per iteration)
``trajectories``, ``stopped``      exploration trajectories, and those stopped as unphysical
``candidates``                     snapshots scored
``pool``                           candidates in the top ``top_fraction`` and above ``min_score_ev_a``
``selected``                       frames chosen by farthest-point sampling
``labelled``, ``failures``         frames labelled, frames whose labelling failed
``score_median_ev_a`` ...          median / 90th percentile / max score of all candidates (eV/A)
``selected_score_mean_ev_a``       mean score of the selected frames (eV/A)
``calibration_spearman``           Spearman rank correlation of score vs the committee mean's max force
                                   error, on the test split + the frames labelled this iteration
``hf_test_force_mae_mev_a``        force MAE of the committee's HF experts on the test split, mean over
                                   members (meV/A, all atoms and components)
``hf_test_energy_mae_mev_atom``    energy-per-atom MAE, same frames and members (meV/atom)
``committee_mean_force_mae_mev_a`` force MAE of the committee mean (meV/A)
``new_frames_force_mae_mev_a``     force MAE of the committee mean on the frames labelled in this
                                   iteration (meV/A): never trained on, and where the MD goes
``label_cpu_s``                    labelling time of this iteration's frames, the sum of per-frame wall
                                   times of single-threaded jobs (= CPU seconds), failures included
``label_calculator``               gpaw or emt (EMT labels are NOT DFT)
=================================  =================================================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase.io import read

from pipeline.active.select import candidate_mask
from pipeline.active.uncertainty import (
    calibration_summary,
    calibration_table,
    committee_predictions,
    load_committee,
    plot_calibration,
)
from pipeline.atomic import write_atomic
from pipeline.config import Config


MARKDOWN_COLUMNS = ("iteration", "train_frames", "test_frames", "trajectories", "stopped", "candidates", "selected",
                    "labelled", "failures", "score_median_ev_a", "score_max_ev_a", "selected_score_mean_ev_a",
                    "calibration_spearman", "hf_test_force_mae_mev_a", "hf_test_energy_mae_mev_atom",
                    "new_frames_force_mae_mev_a", "label_cpu_s")
"""The columns of the Markdown table (the CSV has all)."""


def force_energy_errors(forces: Sequence[np.ndarray], energies: np.ndarray, frames: Sequence) -> dict[str, float]:
    """Force (meV/A) and energy (meV/atom) MAE of each member and of the committee mean on labelled frames.

    ``forces``: per frame (K, n, 3) eV/A; ``energies``: (K, n_frames) eV.
    """
    if not frames:
        return {"hf_test_force_mae_mev_a": np.nan, "hf_test_energy_mae_mev_atom": np.nan,
                "committee_mean_force_mae_mev_a": np.nan}
    ref_f = np.concatenate([a.get_forces() for a in frames])  # [N, 3]
    pred_f = np.concatenate(forces, axis=1)  # [K, N, 3]
    n = np.array([len(a) for a in frames], dtype=float)
    ref_e = np.array([a.get_potential_energy() for a in frames]) / n
    members_f = np.abs(pred_f - ref_f[None]).mean(axis=(1, 2))  # [K]
    members_e = np.abs(energies / n[None] - ref_e[None]).mean(axis=1)  # [K]
    return {"hf_test_force_mae_mev_a": 1e3 * float(members_f.mean()),
            "hf_test_energy_mae_mev_atom": 1e3 * float(members_e.mean()),
            "committee_mean_force_mae_mev_a": 1e3 * float(np.abs(pred_f.mean(axis=0) - ref_f).mean())}


def _read(path: str | Path) -> list:
    return read(path, index=":", format="extxyz") if Path(path).stat().st_size else []


def iteration_report(
    cfg: Config,
    *,
    iteration: int,
    dataset: str | Path,
    committee: Sequence[str | Path],
    trajectories: Sequence[str | Path],
    scores: str | Path,
    selected: str | Path,
    labelled: str | Path,
    failures: str | Path,
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The row of one iteration, its calibration table and binned calibration (see the module docstring)."""
    torch.set_num_threads(cfg.torch_threads)
    frames = _read(dataset)
    test = [a for a in frames if a.info.get("split") == "test"]
    new = _read(labelled)
    fail = pd.read_csv(failures)
    traj = pd.concat([pd.read_csv(p) for p in trajectories], ignore_index=True)
    score_table = pd.read_csv(scores)
    chosen = pd.read_csv(selected)
    models = load_committee(committee, species=cfg.species, dtype=getattr(torch, cfg.active.dtype))
    both = test + new
    output = committee_predictions(models, both, batch_size=cfg.active.batch_size)
    calib = calibration_table(output, both, sources=["test"] * len(test) + ["selected"] * len(new))
    summary, binned = calibration_summary(calib, bins=cfg.active.calibration_bins)
    errors = force_energy_errors(output.forces[:len(test)], output.energies[:, :len(test)], test)
    new_errors = force_energy_errors(output.forces[len(test):], output.energies[:, len(test):], new)
    s = score_table["score_ev_a"].to_numpy(float) if len(score_table) else np.zeros(0)
    label_s = float(sum(float(a.info.get("label_wall_s", 0.0)) for a in new)) + float(fail["wall_s"].sum())
    row = {
        "iteration": int(iteration),
        "train_frames": sum(a.info.get("split") == "train" for a in frames),
        "test_frames": len(test),
        "trajectories": int(len(traj)),
        "stopped": int(traj["stopped"].astype(bool).sum()) if len(traj) else 0,
        "candidates": int(len(s)),
        "pool": int(candidate_mask(s, cfg.active.select).sum()),
        "selected": int(len(chosen)),
        "labelled": len(new),
        "failures": int(len(fail)),
        "score_median_ev_a": float(np.median(s)) if len(s) else np.nan,
        "score_p90_ev_a": float(np.quantile(s, 0.9)) if len(s) else np.nan,
        "score_max_ev_a": float(s.max()) if len(s) else np.nan,
        "selected_score_mean_ev_a": float(chosen["score_ev_a"].mean()) if len(chosen) else np.nan,
        "calibration_spearman": summary["spearman"],
        "calibration_spearman_test": summary.get("spearman_test", np.nan),
        "calibration_spearman_selected": summary.get("spearman_selected", np.nan),
        "calibration_frames": summary["n_frames"],
        **errors,
        "new_frames_force_mae_mev_a": new_errors["committee_mean_force_mae_mev_a"],
        "label_cpu_s": label_s,
        "label_calculator": cfg.label.calculator,
    }
    return row, calib, binned


def write_iteration_report(cfg: Config, *, row_json: str | Path, calibration_csv: str | Path,
                           calibration_png: str | Path, **inputs) -> dict:
    """Compute :func:`iteration_report` and write the row (JSON), calibration table (CSV) and plot (PNG)."""
    row, calib, binned = iteration_report(cfg, **inputs)
    text = json.dumps({k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()},
                      indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    write_atomic(row_json, lambda tmp: tmp.write_text(text + "\n"))
    table = pd.concat([calib.assign(kind="frame"), binned.assign(kind="bin")], ignore_index=True)
    write_atomic(calibration_csv, lambda tmp: table.to_csv(tmp, index=False))
    rho = row["calibration_spearman"]
    plot_calibration(calib, binned, calibration_png,
                     title=f"iteration {row['iteration']}: committee of {len(inputs['committee'])} HF experts\n"
                           f"Spearman {rho:.2f} on {row['calibration_frames']} frames "
                           f"(labels: {row['label_calculator']})")
    return row


def iteration_table(rows: Sequence[str | Path]) -> pd.DataFrame:
    """The per-iteration rows (JSON files) as one table, sorted by iteration."""
    table = pd.DataFrame([json.loads(Path(p).read_text()) for p in rows])
    return table.sort_values("iteration").reset_index(drop=True) if len(table) else table


def write_iteration_table(rows: Sequence[str | Path], *, csv: str | Path, md: str | Path) -> pd.DataFrame:
    """Write the table over iterations as CSV (all columns) and Markdown (:data:`MARKDOWN_COLUMNS`, with notes)."""
    table = iteration_table(rows)
    kind = ", ".join(sorted(set(table["label_calculator"].astype(str)))) if len(table) else "?"
    notes = [
        f"Labels: {kind}" + (" (EMT: NOT DFT, smoke run only)." if "emt" in kind else "."),
        "Test MAE: HF experts of the iteration's committee (mean over members) on the test split of the dataset "
        "that iteration trained on (split by group: it grows with the added trajectories, so it differs between "
        "iterations). Calibration: Spearman rank correlation of the score (max per-atom committee force spread) "
        "with the committee mean's max per-atom force error, on that test split plus the frames labelled in the "
        "iteration. label_cpu_s: sum of per-frame wall times of single-threaded labelling (CPU seconds).",
    ]
    write_atomic(csv, lambda tmp: table.to_csv(tmp, index=False))
    main = table[[c for c in MARKDOWN_COLUMNS if c in table.columns]]
    text = ["# Active learning: per-iteration table", "", *[line for note in notes for line in (note, "")],
            main.to_markdown(index=False, floatfmt=".3g"), "", f"All columns: {Path(csv).name}.", ""]
    write_atomic(md, lambda tmp: tmp.write_text("\n".join(text)))
    return table
