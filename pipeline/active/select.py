"""Selection of the frames to label: high committee uncertainty, then diversity by farthest-point sampling.

1. Candidates: frames whose score (:mod:`pipeline.active.uncertainty`, eV/A) is at least
   ``active.select.min_score_ev_a`` and within the top ``top_fraction`` of all scored frames.
2. Diversity: farthest-point sampling (FPS) of at most ``max_frames`` candidates in a descriptor space,
   starting from the highest-scoring candidate, each next pick being the candidate farthest (Euclidean) from
   everything picked so far.

Descriptor (:func:`frame_descriptor`): the per-element mean of the HF expert's invariant per-atom features
(:data:`pipeline.data.keys.DESCRIPTORS`, the pooled scalar edge features of the last layer, invariant under
rotations, translations, reflections and permutations of like atoms), concatenated over the species of the
model (zeros for an absent element), each column standardised over the scored frames. Why: it costs nothing
(the committee computes it while scoring), it is size-intensive (a mean, so 2x2 and 3x3 cells compare), and
it measures difference the way the model itself sees environments, so two frames far apart in it are two
frames the model treats differently; a hand-made coordination or RDF histogram would see the same
geometries but not what the model distinguishes. Its drawback (it moves when the model is retrained) does not
matter within one iteration, where all candidates are embedded by one model.

Ties (equal scores, equal distances) are broken by a permutation drawn from ``seed``, so the selection is a
deterministic function of the scores, the descriptors and the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.io import write

from pipeline.atomic import write_atomic
from pipeline.config import ActiveSelectConfig


def frame_descriptor(descriptors: np.ndarray, numbers: np.ndarray, species_numbers: Sequence[int]) -> np.ndarray:
    """Per-element mean of per-atom invariant features, concatenated in ``species_numbers`` order.

    Parameters
    ----------
    descriptors : (n_atoms, F) array
    numbers : (n_atoms,) atomic numbers
    species_numbers : atomic numbers of the model's species (the blocks' order)

    Returns
    -------
    (len(species_numbers) * F,) array; the block of an absent element is zero.

    >>> frame_descriptor(np.array([[1.0], [3.0], [5.0]]), np.array([78, 78, 6]), [78, 6, 8]).tolist()
    [2.0, 5.0, 0.0]
    """
    descriptors = np.asarray(descriptors, dtype=float)
    numbers = np.asarray(numbers)
    blocks = []
    for z in species_numbers:
        mask = numbers == z
        blocks.append(descriptors[mask].mean(axis=0) if mask.any() else np.zeros(descriptors.shape[1]))
    return np.concatenate(blocks)


def standardise(x: np.ndarray) -> np.ndarray:
    """Columns of ``x`` (n, d) centred and divided by their std; constant columns dropped."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return x
    std = x.std(axis=0)
    keep = std > 1e-12 * max(1.0, float(np.abs(x).max()))
    return (x[:, keep] - x[:, keep].mean(axis=0)) / std[keep]


def farthest_point_sampling(x: np.ndarray, k: int, *, first: int, order: np.ndarray | None = None) -> list[int]:
    """Indices of ``k`` rows of ``x`` (n, d) picked by farthest-point sampling from row ``first``.

    ``order`` (a permutation of range(n)) breaks ties: among equally far rows, the one earliest in ``order``.

    >>> farthest_point_sampling(np.array([[0.0], [0.1], [1.0], [0.5]]), 3, first=0)
    [0, 2, 3]
    """
    n = len(x)
    if n == 0 or k <= 0:
        return []
    order = np.arange(n) if order is None else np.asarray(order)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    picked = [int(first)]
    dist = np.linalg.norm(x - x[first], axis=1)
    dist[first] = -np.inf
    while len(picked) < min(k, n):
        best = np.max(dist)
        ties = np.flatnonzero(dist == best)
        nxt = int(ties[np.argmin(rank[ties])])
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
        dist[picked] = -np.inf
    return picked


def candidate_mask(scores: np.ndarray, cfg: ActiveSelectConfig) -> np.ndarray:
    """Boolean mask of the candidates: score >= ``min_score_ev_a`` and in the top ``top_fraction``."""
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return np.zeros(0, dtype=bool)
    n_top = max(1, math.ceil(cfg.top_fraction * scores.size))
    cut = np.sort(scores)[::-1][n_top - 1]
    return (scores >= cut) & (scores >= cfg.min_score_ev_a) & np.isfinite(scores)


def select_frames(scores: np.ndarray, descriptors: np.ndarray, cfg: ActiveSelectConfig, *, seed: int) -> list[int]:
    """Indices of the frames to label, in pick order (see the module docstring).

    Parameters
    ----------
    scores : (n,) array, eV/A
    descriptors : (n, D) array (frame descriptors; standardised here over all n frames)
    cfg : ActiveSelectConfig
    seed : int
        Seed of the tie-breaking permutation.
    """
    scores = np.asarray(scores, dtype=float)
    mask = candidate_mask(scores, cfg)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    x = standardise(np.asarray(descriptors, dtype=float))[idx]
    order = np.random.default_rng(seed).permutation(idx.size)
    rank = np.empty(idx.size, dtype=np.int64)
    rank[order] = np.arange(idx.size)
    top = np.flatnonzero(scores[idx] == scores[idx].max())
    first = int(top[np.argmin(rank[top])])
    if x.shape[1] == 0:  # all descriptors equal: diversity cannot rank them, take the highest scores
        picks = sorted(range(idx.size), key=lambda i: (-scores[idx][i], rank[i]))[:cfg.max_frames]
    else:
        picks = farthest_point_sampling(x, cfg.max_frames, first=first, order=order)
    return [int(idx[i]) for i in picks]


def write_selection(frames: Sequence[Atoms], chosen: Sequence[int], scores: pd.DataFrame, *, directory: str | Path,
                    chunk_size: int) -> pd.DataFrame:
    """Write the chosen frames as labelling chunks ``directory/chunk_{k:03d}.extxyz`` and ``selected.csv``.

    Each frame gets ``sample_index`` = its pick rank (the merged labels keep this order); per-atom arrays
    other than numbers and positions are dropped. At least one chunk is written (empty when nothing was
    chosen), so the labelling and merge steps always have an input.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for rank, i in enumerate(chosen):
        atoms = frames[i]
        bare = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        bare.info.update(atoms.info)
        bare.info["sample_index"] = rank
        out.append(bare)
    n_chunks = max(1, math.ceil(len(out) / chunk_size))
    for k in range(n_chunks):
        part = out[k * chunk_size:(k + 1) * chunk_size]
        write_atomic(directory / f"chunk_{k:03d}.extxyz", lambda tmp, part=part: write(tmp, part, format="extxyz"))
    table = scores.iloc[list(chosen)].copy() if len(chosen) else scores.iloc[[]].copy()
    table.insert(0, "pick", range(len(table)))
    table.insert(1, "chunk", [r // chunk_size for r in range(len(table))])
    write_atomic(directory / "selected.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table
