"""The file-level stages of the active-learning loop, one per CLI subcommand and Snakemake rule.

Each reads its inputs, calls the modules of :mod:`pipeline.active` and writes its outputs atomically:

- :func:`explore_stage` (``al-explore``): one cell's trajectories -> snapshots (extxyz) + trajectories (CSV);
- :func:`score_stage` (``al-score``): every snapshot of an iteration -> scored frames (extxyz, ``al_score``
  in info), score table (CSV), frame descriptors (NPZ);
- :func:`select_stage` (``al-select``): scored frames -> labelling chunks + ``selected.csv`` in a directory.

Labelling and merging reuse the ``label`` and ``merge-labels`` subcommands (:mod:`pipeline.data.labelling`),
the datasets the ``ingest`` subcommand, training the ``train`` subcommand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase.io import read, write

from pipeline.active.explore import explore_cell, write_exploration
from pipeline.active.select import frame_descriptor, select_frames, write_selection
from pipeline.active.uncertainty import load_committee, score_frames
from pipeline.atomic import write_atomic
from pipeline.config import Config

log = logging.getLogger(__name__)


def read_frames(paths: Sequence[str | Path]) -> list:
    """Frames of every extxyz file of ``paths`` in order (an empty file has none)."""
    frames = []
    for path in paths:
        frames.extend(read(path, index=":", format="extxyz") if Path(path).stat().st_size else [])
    return frames


def explore_stage(cfg: Config, cell: str, *, iteration: int, hf: str | Path, lf: str | Path | None,
                  frames: str | Path, trajectories: str | Path) -> pd.DataFrame:
    """Run one cell's exploration trajectories and write snapshots and trajectories table."""
    torch.set_num_threads(cfg.torch_threads)
    snapshots, table = explore_cell(cfg, cell, iteration=iteration, hf=hf, lf=lf)
    write_exploration(snapshots, table, frames=frames, trajectories=trajectories)
    return table


def score_stage(cfg: Config, frames: Sequence[str | Path], committee: Sequence[str | Path], *,
                scored: str | Path, scores: str | Path, descriptors: str | Path) -> pd.DataFrame:
    """Score every snapshot of ``frames`` with the committee; write scored frames, table and descriptors.

    The descriptor file (NPZ) holds ``structure_id`` (n,) and ``descriptors`` (n, n_species * F): the
    per-element mean features of the first committee member (:func:`pipeline.active.select.frame_descriptor`).
    """
    torch.set_num_threads(cfg.torch_threads)
    atoms_list = read_frames(frames)
    models = load_committee(committee, species=cfg.species, dtype=getattr(torch, cfg.active.dtype))
    if atoms_list:
        table, per_atom = score_frames(models, atoms_list, batch_size=cfg.active.batch_size)
        z = models[0].atomic_numbers.tolist()
        matrix = np.stack([frame_descriptor(d, a.numbers, z) for d, a in zip(per_atom, atoms_list)])
    else:
        table, matrix = pd.DataFrame(columns=["index", "structure_id", "score_ev_a"]), np.zeros((0, 0))
    ids = np.array([str(a.info["structure_id"]) for a in atoms_list], dtype=str)
    write_atomic(scored, lambda tmp: write(tmp, atoms_list, format="extxyz"))
    write_atomic(scores, lambda tmp: table.to_csv(tmp, index=False))

    def save_npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, structure_id=ids, descriptors=matrix)

    write_atomic(descriptors, save_npz)
    log.info("scored %d frames with a committee of %d", len(atoms_list), len(models))
    return table


def select_stage(cfg: Config, *, scored: str | Path, scores: str | Path, descriptors: str | Path,
                 directory: str | Path) -> pd.DataFrame:
    """Select the frames to label (:func:`pipeline.active.select.select_frames`) and write the chunks."""
    atoms_list = read_frames([scored])
    table = pd.read_csv(scores)
    with np.load(descriptors) as data:
        ids, matrix = data["structure_id"].astype(str), data["descriptors"]
    if [str(a.info["structure_id"]) for a in atoms_list] != ids.tolist() or len(table) != len(ids):
        raise ValueError(f"{scored}, {scores} and {descriptors} do not describe the same frames in the same order")
    chosen = select_frames(table["score_ev_a"].to_numpy(float) if len(table) else np.zeros(0), matrix,
                           cfg.active.select, seed=cfg.active.seed) if len(ids) else []
    selected = write_selection(atoms_list, chosen, table, directory=directory, chunk_size=cfg.active.select.chunk_size)
    log.info("selected %d of %d frames into %s", len(chosen), len(atoms_list), directory)
    return selected
