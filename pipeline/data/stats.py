"""Statistics of an ingested dataset, per family and split, as a pandas table.

One row per (family, split) present, plus ``all`` rows over splits, over families, and over both.
Columns (units in the names): ``frames``, ``groups``, ``atoms``, ``bulk_atoms``, ``complex_atoms``,
``energy_per_atom_mean_ev``, ``energy_per_atom_std_ev`` (population std over frames),
``force_rms_ev_a`` (sqrt of the mean squared force norm over atoms), ``is_dft`` (``yes``, ``no``,
``unknown`` or ``mixed (...)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from ase import Atoms

from pipeline.data.canonical import frame_energy, frame_forces
from pipeline.data.regions import FAMILIES
from pipeline.data.splits import SPLITS, group_of

STATS_COLUMNS = (
    "family",
    "split",
    "frames",
    "groups",
    "atoms",
    "bulk_atoms",
    "complex_atoms",
    "energy_per_atom_mean_ev",
    "energy_per_atom_std_ev",
    "force_rms_ev_a",
    "is_dft",
)


def is_dft_label(values: Sequence[object]) -> str:
    """Summarise ``info['is_dft']`` values: yes / no / unknown, or mixed with counts.

    >>> is_dft_label([True, True]), is_dft_label([True, "unknown"])
    ('yes', 'mixed (1 yes, 1 unknown)')
    """
    names = Counter("yes" if v is True else "no" if v is False else "unknown" for v in values)
    if len(names) == 1:
        return next(iter(names))
    return "mixed (" + ", ".join(f"{names[k]} {k}" for k in ("yes", "no", "unknown") if names[k]) + ")"


def _row(family: str, split: str, frames: Sequence[Atoms]) -> dict[str, object]:
    e_per_atom = np.array([frame_energy(a) / len(a) for a in frames])
    forces = np.concatenate([frame_forces(a) for a in frames])
    return {
        "family": family,
        "split": split,
        "frames": len(frames),
        "groups": len({group_of(a) for a in frames}),
        "atoms": int(sum(len(a) for a in frames)),
        "bulk_atoms": int(sum(np.sum(a.arrays["region"] == "bulk") for a in frames)),
        "complex_atoms": int(sum(np.sum(a.arrays["region"] == "complex") for a in frames)),
        "energy_per_atom_mean_ev": float(e_per_atom.mean()),
        "energy_per_atom_std_ev": float(e_per_atom.std()),
        "force_rms_ev_a": float(np.sqrt(np.mean(np.sum(forces**2, axis=1)))),
        "is_dft": is_dft_label([a.info.get("is_dft", "unknown") for a in frames]),
    }


def statistics_table(frames: Sequence[Atoms]) -> pd.DataFrame:
    """The statistics table of accepted, labelled and split frames (see the module docstring).

    Frames need energies, forces, ``info['family']``, ``info['split']`` and ``arrays['region']``.
    """
    families = [f for f in FAMILIES if any(a.info["family"] == f for a in frames)]
    splits = [s for s in SPLITS if any(a.info["split"] == s for a in frames)]
    rows = []
    for family in [*families, "all"]:
        for split in [*splits, "all"]:
            chosen = [a for a in frames if family in ("all", a.info["family"])
                      and split in ("all", a.info["split"])]
            if chosen:
                rows.append(_row(family, split, chosen))
    return pd.DataFrame(rows, columns=list(STATS_COLUMNS))
