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

Generalisation split: given the shipped generalisation set (``generalisation.path``; structures outside every
training family, never trained or selected on; :mod:`pipeline.data.generalisation_set`), the same models are
evaluated on it with the same aggregates, and its rows follow the test rows (whose order is unchanged). The
table then has two more columns (:data:`SPLIT_COLUMNS`): ``split`` (the split each number comes from) and
``force_mae_ratio_to_test`` (generalisation force MAE / test force MAE of the same model, region and family;
the headline is the near-equilibrium one of region ``all``). Without the set the table is as before and its
notes say that the set is absent.
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
from pipeline.data.generalisation_set import GENERALISATION_SPLIT, read_generalisation
from pipeline.data.regions import FAMILIES
from pipeline.devices import DTYPES, resolve_device
from pipeline.md.partition import partition_atoms
from pipeline.train.data import read_splits

log = logging.getLogger(__name__)

COLUMNS = ("model", "region", "family", "energy_mae_mev_atom", "energy_rmse_mev_atom", "force_mae_mev_a",
           "force_rmse_mev_a", "n_frames", "n_atoms", "outside_training_data")
# appended when the generalisation split is evaluated
SPLIT_COLUMNS = ("split", "force_mae_ratio_to_test")
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


def with_generalisation(test: pd.DataFrame, generalisation: pd.DataFrame, *, split: str) -> pd.DataFrame:
    """Test rows (unchanged order), then generalisation rows, with the :data:`SPLIT_COLUMNS` appended.

    ``force_mae_ratio_to_test`` is set on generalisation rows whose (model, region, family) has a test row.
    """
    test = test.assign(split=split, force_mae_ratio_to_test=np.nan)
    reference = test.set_index(["model", "region", "family"])["force_mae_mev_a"]
    keys = pd.MultiIndex.from_frame(generalisation[["model", "region", "family"]])
    ratio = generalisation["force_mae_mev_a"].to_numpy() / reference.reindex(keys).to_numpy()
    generalisation = generalisation.assign(split=GENERALISATION_SPLIT, force_mae_ratio_to_test=ratio)
    return pd.concat([test, generalisation], ignore_index=True)[[*COLUMNS, *SPLIT_COLUMNS]]


def headline_ratios(table: pd.DataFrame) -> dict[str, float]:
    """``{model: generalisation / test force MAE}`` on the near-equilibrium frames, region ``all`` (empty
    without a generalisation split)."""
    if "split" not in table:
        return {}
    rows = table[(table["split"] == GENERALISATION_SPLIT) & (table["region"] == "all")
                 & (table["family"] == "near_equilibrium")]
    return {str(r.model): float(r.force_mae_ratio_to_test) for r in rows.itertuples()}


def accuracy_table(
    cfg: Config,
    *,
    dataset: str | Path,
    pairs: Mapping[str, Mapping[str, str | Path]],
    reference_pair: str,
    generalisation: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, list[np.ndarray]]], list[Atoms]]:
    """The accuracy table on split ``analysis.accuracy.split`` of ``dataset`` (and on the generalisation set).

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
    generalisation : path, optional
        The shipped generalisation set (extxyz): every model is evaluated on it too
        (:func:`pipeline.data.generalisation_set.read_generalisation`; ``ingest`` and ``regions`` apply).

    Returns
    -------
    table : pandas.DataFrame (:data:`COLUMNS`; + :data:`SPLIT_COLUMNS` with ``generalisation``)
    predictions : dict ``{model: (energies (n_frames,) eV, forces list of (n_k, 3) eV/A)}`` on the test frames
    frames : the evaluated test frames
    """
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    split = cfg.analysis.accuracy.split
    frames = read_splits(str(dataset), splits=(split,))[split]
    experts = load_pairs(pairs, species=cfg.species, dtype=DTYPES[cfg.analysis.dtype], device=device)
    sets = {split: frames}
    if generalisation is not None:
        sets[GENERALISATION_SPLIT] = read_generalisation(cfg, generalisation)
    bs = cfg.analysis.accuracy.batch_size
    rows: dict[str, list[dict]] = {name: [] for name in sets}
    predictions = {}
    for name_set, members in sets.items():
        partitions = frame_partitions(members, cfg)
        for name, (potential, is_mixture) in model_potentials(experts, reference_pair).items():
            energies, forces = predict(potential, members, partitions if is_mixture else None, batch_size=bs)
            if name_set == split:
                predictions[name] = (energies, forces)
            lf_bulk_only = name.startswith("lf_") and cfg.train.lf_data == "bulk_atoms"
            rows[name_set] += accuracy_rows(name, members, energies, forces, lf_bulk_only=lf_bulk_only)
            log.info("accuracy: %s evaluated on %d %s frames", name, len(members), name_set)
    table = pd.DataFrame(rows[split], columns=list(COLUMNS))
    if generalisation is not None:
        table = with_generalisation(table, pd.DataFrame(rows[GENERALISATION_SPLIT], columns=list(COLUMNS)),
                                    split=split)
    return table, predictions, frames


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
                   partition_rule: str, generalisation_path: str | None = None) -> None:
    """Write the accuracy table (CSV + Markdown) and the parity plots (``split`` frames).

    ``generalisation_path`` names the shipped generalisation set in the notes: evaluated when the table has
    the ``split`` column, absent otherwise.
    """
    notes = [
        (f"Errors on the {split} split ({len(frames)} frames), models evaluated in {precision}: energies per atom in "
        "meV/atom (region 'all' only), forces per Cartesian component in meV/A. moe_*: mixture with the "
        f"md.partition rule '{partition_rule}' applied to each frame."),
    ]
    if "split" in table:
        gen = table[(table["split"] == GENERALISATION_SPLIT) & (table["region"] == "all") & (table["family"] == "all")]
        ratios = ", ".join(f"{m} {r:.2f}" for m, r in headline_ratios(table).items())
        notes.append(f"Column split: the rows of split '{GENERALISATION_SPLIT}' (after the {split} rows) evaluate the "
                     f"same models on the shipped generalisation set {generalisation_path or ''} "
                     f"({int(gen['n_frames'].max()) if len(gen) else 0} frames of structures outside every training "
                     "family, never used for training or selection). force_mae_ratio_to_test = generalisation / "
                     f"{split} force MAE of the same model, region and family; near-equilibrium frames, all atoms: "
                     f"{ratios}.")
    elif generalisation_path is not None:
        notes.append(f"Generalisation split: absent (no shipped generalisation set at {generalisation_path}; "
                     "build it with `snakemake --cores 1 generalisation`): test split only.")
    if lf_data == "bulk_atoms":
        notes.append("The LF experts were trained on bulk Pt atoms only (train.lf_data: bulk_atoms): they have "
                     "never seen C or O, surface atoms, or the energy of a non-bulk frame. Their rows with "
                     "outside_training_data = True measure extrapolation; in the mixture those atoms are HF's.")
    write_table(table, csv=csv, md=md, title="Accuracy on held-out DFT data", notes=notes, floatfmt=".2f")
    plot_parity(frames, predictions, png)
