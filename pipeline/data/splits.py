"""Deterministic train / validation / test split by structure group, stratified by family.

A *group* is ``info['group']`` when the frame has one, else its source file: all frames of one
trajectory or file stay together, so no split sees a near-copy of another split's frame. Each group
belongs to the family most of its frames have (ties: first in :data:`pipeline.data.regions.FAMILIES`
order). Within each family the sorted group names are shuffled by a generator seeded with
``(seed, family)`` and cut into validation, test and train. Each family with at least 3 groups gets
at least one validation and one test group when the corresponding fraction is > 0; every family keeps
at least one training group.

Two refinements make the held-out splits test something:

- gas-phase molecules of one group (a bond-length scan) are regrouped by windows of their shortest
  interatomic distance (:func:`refine_gas_groups`, ``ingest.gas_bond_window_a``), so whole windows of
  the scan are held out instead of the family sitting wholly in train;
- the bulk equation-of-state series (:func:`is_eos_frame`) goes to its own split ``eos``
  (``ingest.hold_out_eos``), which no training or model selection reads: the EOS analysis judges
  the models on volumes they never saw.

:func:`training_subset` cuts nested, group-complete subsets of the training frames for a data learning curve
(``python -m pipeline train --train-fraction``); the validation and test splits stay as they are.

>>> split_counts(10, 0.1, 0.15), split_counts(3, 0.1, 0.15), split_counts(2, 0.1, 0.15)
((1, 2), (1, 1), (0, 0))
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms

from pipeline.data.regions import FAMILIES

SPLITS = ("train", "validation", "test", "eos")
MIN_GROUPS_STRATIFIED = 3
_SUBSET_STREAM = 0x5B5E7  # generator stream of training_subset (not the split's)


def is_eos_frame(atoms: Atoms) -> bool:
    """Whether ``atoms`` belongs to a bulk equation-of-state series: family ``bulk`` and
    ``info['config_type'] == 'eos'`` or a ``structure_id`` starting with ``bulk-eos``."""
    sid = str(atoms.info.get("structure_id", ""))
    return atoms.info.get("family") == "bulk" and (atoms.info.get("config_type") == "eos" or sid.startswith("bulk-eos"))


def refine_gas_groups(frames: Sequence[Atoms], window_a: float) -> None:
    """Append the bond-length window to the group of every gas-phase frame, in place.

    The window of a frame is ``floor(d_min / window_a)``, with d_min its shortest interatomic
    distance (A); the group becomes ``<group>/bond-<lo>-<hi>A``. ``window_a`` <= 0 leaves the groups
    as they are; frames with fewer than two atoms keep theirs.
    """
    if window_a <= 0:
        return
    for atoms in frames:
        if atoms.info.get("family") != "gas" or len(atoms) < 2:
            continue
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        d_min = float(d[np.triu_indices(len(atoms), k=1)].min())
        k = int(np.floor(d_min / window_a))
        atoms.info["group"] = f"{group_of(atoms)}/bond-{k * window_a:.2f}-{(k + 1) * window_a:.2f}A"


def group_of(atoms: Atoms) -> str:
    """The structure group of a frame: ``info['group']`` if set (as str), else ``info['source_file']``."""
    group = atoms.info.get("group")
    if group is not None and str(group) != "":
        return str(group)
    return str(atoms.info.get("source_file", "<memory>"))


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def split_counts(n_groups: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Numbers of validation and test groups among ``n_groups`` (the rest are training groups)."""
    n_val = _round_half_up(validation_fraction * n_groups)
    n_test = _round_half_up(test_fraction * n_groups)
    if n_groups >= MIN_GROUPS_STRATIFIED:
        n_val = max(n_val, 1) if validation_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    while n_val + n_test > max(n_groups - 1, 0):  # keep at least one training group
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def _family_seed(seed: int, family: str) -> list[int]:
    digest = hashlib.sha256(family.encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def group_families(frames: Sequence[Atoms], unit: Callable[[Atoms], str] = group_of) -> dict[str, str]:
    """Family of every group (``unit`` of a frame): the most common ``info['family']`` among its frames."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for atoms in frames:
        votes[unit(atoms)][atoms.info["family"]] += 1
    rank = {f: k for k, f in enumerate(FAMILIES)}
    return {
        group: min(counter, key=lambda f: (-counter[f], rank.get(f, len(rank)), f))
        for group, counter in votes.items()
    }


def assign_splits(
    frames: Sequence[Atoms],
    *,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
    hold_out_eos: bool = False,
    unit: Callable[[Atoms], str] = group_of,
) -> dict[str, str]:
    """Assign every group to a split and write ``info['split']`` (and ``info['group']``) on each frame.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Frames with ``info['family']``; modified in place.
    seed : int
        The configuration's seed: the same seed and groups give the same split.
    validation_fraction, test_fraction : float
        Fractions of each family's groups in validation and test.
    unit : callable, optional
        What is kept in one split: the frame's group (default, :func:`group_of`), or e.g. its own structure id
        (:func:`structure_of`), which splits the frames of a group independently.

    Returns
    -------
    dict
        ``{unit: split}`` for every unit.
    """
    assignment: dict[str, str] = {}
    if hold_out_eos:
        assignment.update({unit(a): "eos" for a in frames if is_eos_frame(a)})
    families = group_families([a for a in frames if unit(a) not in assignment], unit)
    by_family: dict[str, list[str]] = defaultdict(list)
    for group, family in families.items():
        by_family[family].append(group)
    for family in sorted(by_family):
        groups = sorted(by_family[family])
        order = np.random.default_rng(_family_seed(seed, family)).permutation(len(groups))
        n_val, n_test = split_counts(len(groups), validation_fraction, test_fraction)
        for rank, k in enumerate(order):
            split = "validation" if rank < n_val else "test" if rank < n_val + n_test else "train"
            assignment[groups[k]] = split
    for atoms in frames:
        atoms.info["group"] = group_of(atoms)
        atoms.info["split"] = assignment[unit(atoms)]
    return assignment


def structure_of(atoms: Atoms) -> str:
    """A frame's own ``info['structure_id']``: the unit of a split that separates the frames of one group.

    Raises ``ValueError`` when the frame has none.
    """
    sid = atoms.info.get("structure_id")
    if sid is None or str(sid) == "":
        raise ValueError(f"frame (sample_index {atoms.info.get('sample_index')}) has no info['structure_id']")
    return str(sid)


def training_subset(frames: Sequence[Atoms], fraction: float, *, seed: int) -> list[Atoms]:
    """Whole groups of ``frames`` holding about ``fraction`` of each family's frames (a data learning curve).

    Within each family (:func:`group_families`) the sorted group names are shuffled by a generator seeded
    with ``(seed, family)`` (its own stream, independent of the split's), and the first groups in that order are
    taken whose frame count is closest to ``fraction`` of the family's frames (at least one group per family).
    The order does not depend on ``fraction`` and the count closest to a larger target is never smaller, so the
    subsets are nested: a smaller fraction's subset is contained in a larger one's. ``fraction == 1`` returns
    every frame.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        The training frames (``info['family']``, ``info['group']``); validation and test frames must not be
        passed: the subset is cut from what is given.
    fraction : float
        In (0, 1].
    seed : int
        Seed of the group order.

    Returns
    -------
    list of ase.Atoms
        The chosen frames, in input order.

    >>> from ase import Atoms
    >>> frames = [Atoms("Pt", info={"family": "bulk", "group": f"g{i // 2}"}) for i in range(8)]
    >>> [len(training_subset(frames, f, seed=0)) for f in (0.25, 0.5, 1.0)]
    [2, 4, 8]
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"training fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(frames)
    sizes = Counter(group_of(a) for a in frames)
    by_family: dict[str, list[str]] = defaultdict(list)
    for group, family in group_families(frames).items():
        by_family[family].append(group)
    keep: set[str] = set()
    for family, groups in sorted(by_family.items()):
        groups = sorted(groups)
        family_seed = _family_seed(seed, family) + [_SUBSET_STREAM]
        ordered = [groups[k] for k in np.random.default_rng(family_seed).permutation(len(groups))]
        cumulative = np.cumsum([sizes[g] for g in ordered])  # frames in the first 1, 2, ... groups
        n_groups = int(np.argmin(np.abs(cumulative - fraction * cumulative[-1]))) + 1
        keep.update(ordered[:n_groups])
    return [a for a in frames if group_of(a) in keep]
