"""Co-training table: test-split accuracy of each expert and the HF-LF disagreement on bulk atoms.

One row per trained pair (``cotrained``, ``independent``), from the saved checkpoints (best EMA
weights) evaluated on the test split of the dataset, in the checkpoints' precision. Columns
(:data:`COLUMNS`; energies per atom in meV/atom, forces in meV/A, force errors per Cartesian
component):

- ``hf_energy_mae_mev_atom``, ``hf_force_mae_mev_a``: HF on every test frame / atom;
- ``lf_energy_mae_bulk_frames_mev_atom``, ``lf_force_mae_bulk_mev_a``: LF on its own data (the
  ``bulk_atoms`` assignment: energies of the frames whose atoms are all bulk, forces on bulk atoms);
- ``lf_energy_mae_all_mev_atom``, ``lf_force_mae_all_mev_a``: LF on every test frame / atom;
- ``bulk_energy_disagreement_mev_atom``: RMS of e_i^HF - e_i^LF over the bulk test atoms;
- ``bulk_force_disagreement_mev_a``: RMS of the components of F_i^HF - F_i^LF over the bulk test atoms;
- ``lf_atoms_force_disagreement_mev_a``: the same over the atoms the ``md.partition`` rule gives to the LF
  expert in each test frame (what the mixture uses LF for; ``lf_test_atoms`` of them), and
  ``bulk_force_disagreement_near_eq_mev_a`` over the bulk test atoms outside the close-contact family;
- ``test_frames``, ``bulk_test_atoms``, ``best_epoch``, ``epochs``, ``dtype``.

The Markdown version adds, when both pairs are present, the factor by which co-training cuts the
bulk disagreement and the relative change of the LF expert's own force MAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import Config
from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.data.partition import LF, partition_atoms
from pipeline.devices import resolve_device
from pipeline.models import load_checkpoint, read_checkpoint
from pipeline.train.data import prepare_samples, read_splits
from pipeline.train.ddp import DistInfo
from pipeline.train.loop import evaluate
from pipeline.train.losses import LossWeights

COLUMNS = (
    "pair",
    "hf_energy_mae_mev_atom",
    "hf_force_mae_mev_a",
    "lf_energy_mae_bulk_frames_mev_atom",
    "lf_force_mae_bulk_mev_a",
    "lf_energy_mae_all_mev_atom",
    "lf_force_mae_all_mev_a",
    "bulk_energy_disagreement_mev_atom",
    "bulk_force_disagreement_mev_a",
    "lf_atoms_force_disagreement_mev_a",
    "bulk_force_disagreement_near_eq_mev_a",
    "test_frames",
    "bulk_test_atoms",
    "lf_test_atoms",
    "best_epoch",
    "epochs",
    "dtype",
)


def pair_row(cfg: Config, pair: str, hf_path: str | Path, lf_path: str | Path, test_frames: list) -> dict:
    """One table row: the pair's checkpoints evaluated on ``test_frames``."""
    device = resolve_device(cfg.device)
    hf = load_checkpoint(hf_path, species=cfg.species, map_location=device)
    lf = load_checkpoint(lf_path, species=cfg.species, map_location=device)
    samples = prepare_samples(test_frames, species=cfg.species, r_maxes=[hf.r_max, lf.r_max], dtype=hf.dtype,
                              lf_data="bulk_atoms")
    _, _, errors = evaluate({"hf": hf, "lf": lf}, samples, weights=LossWeights(), info=DistInfo(device=device))
    meta = read_checkpoint(hf_path).get("metadata", {})
    mev = lambda value: 1000.0 * value  # noqa: E731
    lf_atoms, near_eq = _disagreement_subsets(cfg, hf, lf, test_frames, device)
    return {
        "pair": pair,
        "hf_energy_mae_mev_atom": mev(errors.mae("hf_energy")),
        "hf_force_mae_mev_a": mev(errors.mae("hf_force")),
        "lf_energy_mae_bulk_frames_mev_atom": mev(errors.mae("lf_energy")),
        "lf_force_mae_bulk_mev_a": mev(errors.mae("lf_force")),
        "lf_energy_mae_all_mev_atom": mev(errors.mae("lf_energy_all")),
        "lf_force_mae_all_mev_a": mev(errors.mae("lf_force_all")),
        "bulk_energy_disagreement_mev_atom": mev(errors.rmse("bulk_energy_disagree")),
        "bulk_force_disagreement_mev_a": mev(errors.rmse("bulk_force_disagree")),
        "lf_atoms_force_disagreement_mev_a": mev(_rms(lf_atoms)),
        "bulk_force_disagreement_near_eq_mev_a": mev(_rms(near_eq)),
        "test_frames": len(test_frames),
        "bulk_test_atoms": errors.count("bulk_energy_disagree"),
        "lf_test_atoms": len(lf_atoms),
        "best_epoch": int(meta.get("best_epoch", -1)),
        "epochs": int(meta.get("epochs", -1)),
        "dtype": str(hf.dtype).removeprefix("torch."),
    }


def _rms(diffs: np.ndarray) -> float:
    return float(np.sqrt(np.mean(diffs**2))) if len(diffs) else float("nan")


def _disagreement_subsets(cfg: Config, hf, lf, frames: list, device) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """F^HF - F^LF (eV/A, rows of 3) on the md.partition LF atoms and on the near-equilibrium bulk atoms."""
    lf_rows, near_rows = [], []
    for atoms in frames:
        batch = {k: v.to(device) for k, v in collate([atoms], species=cfg.species, r_max=hf.r_max, dtype=hf.dtype,
                                                      with_targets=False).items()}
        diff = (hf(batch, create_graph=False)[K.FORCES] - lf(batch, create_graph=False)[K.FORCES])
        diff = diff.detach().double().cpu().numpy()
        lf_rows.append(diff[partition_atoms(atoms, cfg.md.partition, cfg.regions) == LF])
        if atoms.info.get("family") != "close_contact":
            near_rows.append(diff[np.asarray(atoms.arrays["region"]) == "bulk"])
    return (np.concatenate(lf_rows) if lf_rows else np.zeros((0, 3)),
            np.concatenate(near_rows) if near_rows else np.zeros((0, 3)))


def cotraining_table(
    cfg: Config, dataset: str | Path, pairs: Sequence[str], hf_paths: Sequence[str | Path], lf_paths: Sequence[str | Path]
) -> pd.DataFrame:
    """The table (one row per pair, :data:`COLUMNS`) on the test split of ``dataset``."""
    if not (len(pairs) == len(hf_paths) == len(lf_paths)):
        raise ValueError(f"need one HF and one LF checkpoint per pair, got {len(pairs)} pairs, "
                         f"{len(hf_paths)} HF and {len(lf_paths)} LF checkpoints")
    torch.set_num_threads(cfg.torch_threads)
    test = read_splits(str(dataset), splits=("test",))["test"]
    rows = [pair_row(cfg, p, h, lf, test) for p, h, lf in zip(pairs, hf_paths, lf_paths)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summary_lines(table: pd.DataFrame) -> list[str]:
    """Disagreement reduction and LF force-MAE change of ``cotrained`` against ``independent``."""
    by_pair = table.set_index("pair")
    if not {"cotrained", "independent"} <= set(by_pair.index):
        return []
    co, ind = by_pair.loc["cotrained"], by_pair.loc["independent"]
    ratio = lambda a, b: a / b if b > 0 else np.inf  # noqa: E731
    e_cut = ratio(ind["bulk_energy_disagreement_mev_atom"], co["bulk_energy_disagreement_mev_atom"])
    f_cut = ratio(ind["bulk_force_disagreement_mev_a"], co["bulk_force_disagreement_mev_a"])
    lf_change = 100.0 * (ratio(co["lf_force_mae_bulk_mev_a"], ind["lf_force_mae_bulk_mev_a"]) - 1.0)
    return [
        f"Co-training cuts the bulk disagreement by {e_cut:.1f}x (energy) and {f_cut:.1f}x (force) against "
        f"the independent pair; the LF expert's own test force MAE (bulk atoms) changes by {lf_change:+.1f} %.",
    ]


def write_cotraining_table(table: pd.DataFrame, *, csv: str | Path, md: str | Path) -> None:
    """Write the table as CSV and Markdown (with the summary line and units)."""
    for path in (csv, md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv, index=False, float_format="%.4f")
    text = [
        "# Co-training: test-split accuracy and HF-LF disagreement on bulk atoms",
        "",
        "Energies in meV/atom, forces in meV/A (MAE and RMS per Cartesian component); LF 'bulk' columns are "
        "on the LF expert's own data (energies of all-bulk frames, forces on bulk atoms). Disagreements are "
        "RMS over the bulk test atoms (regions: rule), over the atoms the md.partition rule gives to LF "
        "(lf_atoms_*: what the mixture uses LF for) and over the bulk test atoms outside the close-contact "
        f"family (*_near_eq_*). Test split only. Evaluated in {', '.join(sorted(set(table['dtype'])))}.",
        "",
        table.to_markdown(index=False, floatfmt=".2f"),
        "",
        *summary_lines(table),
        "",
    ]
    Path(md).write_text("\n".join(text))
