"""Accuracy on held-out DFT data: every expert and every mixture, by atom region and structure family.

Models (rows of :data:`COLUMNS`, column ``model``):

- ``hf``: the HF expert of the reference pair (``md.reference_pair``, the full-HF MD run's expert);
  ``hf_<pair>``: the HF experts of the other pairs;
- ``lf_<pair>``: each LF expert on every atom;
- ``moe_<pair>``: each pair's mixture, with the partition rule of ``md.partition`` applied to each frame
  (:func:`pipeline.md.partition.partition_atoms`; e.g. the default rule puts adsorbates, their
  neighbourhood and the top surface layer on HF, the rest on LF; a bulk crystal is all LF).

Errors: energies per atom in meV/atom (per frame: (E_model - E_DFT) / n_atoms); forces per Cartesian
component in meV/A. ``region`` = ``all`` (energies and forces) or a per-atom environment of the ingest
stage (forces only; a frame's energy cannot be split by atom): ``bulk``, ``surface``,
``co_neighbourhood`` (Pt within ``regions.adsorbate_radius_a`` of C/O) and ``adsorbate`` (C and O).
``family`` = ``all``, ``near_equilibrium`` (every family but ``close_contact``, so that the errors near
equilibrium are not drowned by the repulsive wall) or one of :data:`pipeline.data.regions.FAMILIES`
(``bulk``, ``clean_slab``, ``slab_co``, ``close_contact``, ``gas``). Combinations without atoms are left out. ``outside_training_data`` marks LF rows on atoms that an LF expert trained with
``train.lf_data: bulk_atoms`` never saw (non-bulk atoms, and energies of non-bulk frames).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase import Atoms

from pipeline.analysis._common import (
    load_pairs,
    model_potentials,
    predict,
    pyplot,
    save_figure,
    write_table,
)
from pipeline.config import Config
from pipeline.data.regions import FAMILIES
from pipeline.devices import DTYPES, resolve_device
from pipeline.md.partition import partition_atoms
from pipeline.train.data import read_splits

log = logging.getLogger(__name__)

COLUMNS = ("model", "region", "family", "energy_mae_mev_atom", "energy_rmse_mev_atom", "force_mae_mev_a",
           "force_rmse_mev_a", "n_frames", "n_atoms", "outside_training_data")
# region name -> environments of pipeline.data.regions.ENVIRONMENTS (None = every atom)
REGIONS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "bulk": ("bulk",),
    "surface": ("surface",),
    "co_neighbourhood": ("adsorbate_neighbourhood",),
    "adsorbate": ("adsorbate",),
}


def error_stats(errors: np.ndarray) -> tuple[float, float]:
    """MAE and RMSE of ``errors`` (any shape; every entry counts once); NaN for none."""
    errors = np.asarray(errors, dtype=float).ravel()
    if errors.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(np.abs(errors))), float(np.sqrt(np.mean(errors**2)))


def frame_partitions(frames: Sequence[Atoms], cfg: Config) -> list[np.ndarray]:
    """Expert of every atom of each frame by the rule of ``md.partition`` (0 = HF, 1 = LF)."""
    out = []
    for index, atoms in enumerate(frames):
        try:
            out.append(partition_atoms(atoms, cfg.md.partition, cfg.regions))
        except ValueError as exc:
            raise ValueError(f"partition rule {cfg.md.partition.rule!r} fails on test frame {index} "
                             f"({atoms.info.get('structure_id', atoms.get_chemical_formula())}): {exc}") from exc
    return out


def accuracy_rows(
    model: str,
    frames: Sequence[Atoms],
    energies: np.ndarray,
    forces: Sequence[np.ndarray],
    *,
    lf_bulk_only: bool = False,
) -> list[dict]:
    """Rows of one model: every (region, family) with atoms, from its predictions on ``frames``.

    Parameters
    ----------
    model : str
    frames : sequence of ase.Atoms
        Labelled frames with ``info['family']`` and the per-atom ``environment`` array.
    energies : (n_frames,) array, eV
    forces : list of (n_atoms_k, 3) arrays, eV/A
    lf_bulk_only : bool
        The model is an LF expert trained on bulk atoms only (sets ``outside_training_data``).
    """
    families = np.array([f.info.get("family", "?") for f in frames])
    n = np.array([len(f) for f in frames])
    e_err = (energies - np.array([f.calc.results["energy"] for f in frames])) / n * 1000.0  # meV/atom
    f_err = [(p - f.calc.results["forces"]) * 1000.0 for p, f in zip(forces, frames)]  # meV/A
    env = [np.asarray(f.arrays["environment"]) for f in frames]
    rows = []
    for family in ("all", "near_equilibrium", *FAMILIES):
        if family == "all":
            in_family = np.ones(len(frames), dtype=bool)
        elif family == "near_equilibrium":
            in_family = families != "close_contact"
        else:
            in_family = families == family
        if not in_family.any():
            continue
        for region, envs in REGIONS.items():
            atom_err = [e[np.isin(v, envs)] if envs is not None else e
                        for e, v, keep in zip(f_err, env, in_family) if keep]
            n_atoms = int(sum(len(a) for a in atom_err))
            if n_atoms == 0:
                continue
            f_mae, f_rmse = error_stats(np.concatenate(atom_err))
            e_mae, e_rmse = error_stats(e_err[in_family]) if region == "all" else (np.nan, np.nan)
            outside = lf_bulk_only and (region not in ("bulk",) and not (region == "all" and family == "bulk"))
            rows.append({"model": model, "region": region, "family": family, "energy_mae_mev_atom": e_mae,
                         "energy_rmse_mev_atom": e_rmse, "force_mae_mev_a": f_mae, "force_rmse_mev_a": f_rmse,
                         "n_frames": int(in_family.sum()), "n_atoms": n_atoms, "outside_training_data": outside})
    return rows


def accuracy_table(
    cfg: Config,
    *,
    dataset: str | Path,
    pairs: Mapping[str, Mapping[str, str | Path]],
    reference_pair: str,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, list[np.ndarray]]], list[Atoms]]:
    """The accuracy table on split ``analysis.accuracy.split`` of ``dataset``.

    Parameters
    ----------
    cfg : Config
        Uses ``analysis`` (dtype, accuracy), ``md.partition``, ``regions``, ``train.lf_data``, ``species``,
        ``device``, ``torch_threads``.
    dataset : path
        The ingest stage's dataset.
    pairs : mapping
        ``{pair: {"hf": path, "lf": path}}``.
    reference_pair : str
        Pair whose HF expert is the model ``hf``.

    Returns
    -------
    table : pandas.DataFrame (:data:`COLUMNS`)
    predictions : dict ``{model: (energies (n_frames,) eV, forces list of (n_k, 3) eV/A)}``
    frames : the evaluated frames
    """
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    split = cfg.analysis.accuracy.split
    frames = read_splits(str(dataset), splits=(split,))[split]
    experts = load_pairs(pairs, species=cfg.species, dtype=DTYPES[cfg.analysis.dtype], device=device)
    partitions = frame_partitions(frames, cfg)
    bs = cfg.analysis.accuracy.batch_size
    rows, predictions = [], {}
    for name, (potential, is_mixture) in model_potentials(experts, reference_pair).items():
        energies, forces = predict(potential, frames, partitions if is_mixture else None, batch_size=bs)
        predictions[name] = (energies, forces)
        lf_bulk_only = name.startswith("lf_") and cfg.train.lf_data == "bulk_atoms"
        rows += accuracy_rows(name, frames, energies, forces, lf_bulk_only=lf_bulk_only)
        log.info("accuracy: %s evaluated on %d %s frames", name, len(frames), split)
    return pd.DataFrame(rows, columns=list(COLUMNS)), predictions, frames


def plot_parity(frames: Sequence[Atoms], predictions: Mapping[str, tuple[np.ndarray, list[np.ndarray]]],
                png: str | Path) -> None:
    """Parity plots: energy per atom (top) and force components (bottom), one column per model,
    points coloured by structure family."""
    plt = pyplot()
    models = list(predictions)
    fig, axes = plt.subplots(2, len(models), figsize=(3.2 * len(models), 6.4), squeeze=False)
    families = np.array([f.info.get("family", "?") for f in frames])
    n = np.array([len(f) for f in frames])
    e_ref = np.array([f.calc.results["energy"] for f in frames]) / n
    colours = dict(zip(FAMILIES, ("#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd")))
    for col, name in enumerate(models):
        energies, forces = predictions[name]
        ax_e, ax_f = axes[0, col], axes[1, col]
        for family in FAMILIES:
            keep = families == family
            if not keep.any():
                continue
            ax_e.plot(e_ref[keep], energies[keep] / n[keep], ".", ms=4, color=colours[family], label=family)
            f_ref = np.concatenate([frames[i].calc.results["forces"].ravel() for i in np.flatnonzero(keep)])
            f_pred = np.concatenate([forces[i].ravel() for i in np.flatnonzero(keep)])
            ax_f.plot(f_ref, f_pred, ".", ms=2, alpha=0.5, color=colours[family], label=family)
        for ax, unit in ((ax_e, "eV/atom"), (ax_f, "eV/A")):
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            lo, hi = min(x0, y0), max(x1, y1)
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_xlabel(f"DFT ({unit})")
            ax.set_ylabel(f"{name} ({unit})")
        ax_e.set_title(f"{name}: energy")
        ax_f.set_title(f"{name}: force components")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png)


def write_accuracy(table: pd.DataFrame, frames: Sequence[Atoms],
                   predictions: Mapping[str, tuple[np.ndarray, list[np.ndarray]]], *, csv: str | Path,
                   md: str | Path, png: str | Path, precision: str, split: str, lf_data: str,
                   partition_rule: str) -> None:
    """Write the accuracy table (CSV + Markdown) and the parity plots."""
    notes = [
        (f"Errors on the {split} split ({len(frames)} frames), models evaluated in {precision}: energies per atom in "
        "meV/atom (region 'all' only), forces per Cartesian component in meV/A. moe_*: mixture with the "
        f"md.partition rule '{partition_rule}' applied to each frame."),
    ]
    if lf_data == "bulk_atoms":
        notes.append("The LF experts were trained on bulk Pt atoms only (train.lf_data: bulk_atoms): they have "
                     "never seen C or O, surface atoms, or the energy of a non-bulk frame. Their rows with "
                     "outside_training_data = True measure extrapolation; in the mixture those atoms are HF's.")
    write_table(table, csv=csv, md=md, title="Accuracy on held-out DFT data", notes=notes, floatfmt=".2f")
    plot_parity(frames, predictions, png)
