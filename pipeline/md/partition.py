"""The static HF/LF partition of an MD cell: partition files, pictures and layer masks.

The partition is computed once, from the starting cell, by one of the rules of ``md.partition.rule``
(:func:`pipeline.data.partition.partition_atoms`, re-exported here), and then belongs to the atom
(its index / LAMMPS ID), never to its position, so the mixture energy stays one smooth function of
the coordinates. Experts are numbered in the order of :data:`EXPERTS` (0 = ``hf``, 1 = ``lf``).

The partition file is an extxyz of the cell with a per-atom string array ``expert`` (``hf``/``lf``)
and ``info`` entries ``partition_rule`` and ``n_hf``; :func:`plot_partition` draws it. The adaptive
partition (``md.partition.mode: adaptive``, :mod:`pipeline.md.adaptive`) is drawn by :func:`plot_weights`:
the atoms coloured by their HF weight lambda.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from pipeline.config import RegionConfig
from pipeline.data.partition import EXPERTS, HF, LF, RULES, partition_atoms
from pipeline.data.regions import cluster_layers, heights, substrate_mask

__all__ = ["EXPERTS", "HF", "LF", "RULES", "bottom_layers", "expert_indices", "expert_names", "partition_atoms",
           "plot_partition", "plot_weights", "read_partition", "write_partition"]


def bottom_layers(atoms: Atoms, n_layers: int, regions: RegionConfig) -> np.ndarray:
    """Boolean ``(n_atoms,)``: substrate atoms in the ``n_layers`` lowest layers (along the surface normal).

    Layers are clusters of heights (:func:`pipeline.data.regions.cluster_layers`, tolerance
    ``regions.layer_tolerance_a``).
    """
    mask = np.zeros(len(atoms), dtype=bool)
    substrate = substrate_mask(atoms, regions)
    if n_layers <= 0 or not substrate.any():
        return mask
    h, _ = heights(atoms)
    layers = cluster_layers(h[substrate], regions.layer_tolerance_a)
    mask[np.flatnonzero(substrate)[layers < n_layers]] = True
    return mask


def expert_names(expert: np.ndarray) -> np.ndarray:
    """Per-atom expert names (``hf``/``lf``) from indices."""
    return np.asarray(EXPERTS, dtype="<U2")[np.asarray(expert, dtype=np.int64)]


def expert_indices(names: np.ndarray) -> np.ndarray:
    """Per-atom expert indices from names (``hf``/``lf``); other names raise."""
    names = np.asarray(names).astype(str)
    unknown = sorted(set(names.tolist()) - set(EXPERTS))
    if unknown:
        raise ValueError(f"unknown expert names {unknown}; known: {list(EXPERTS)}")
    return np.where(names == EXPERTS[HF], HF, LF).astype(np.int64)


def write_partition(path: str | Path, atoms: Atoms, expert: np.ndarray, *, rule: str) -> None:
    """Write the cell with its partition (per-atom ``expert`` array) to an extxyz file."""
    out = atoms.copy()
    out.calc = None
    out.new_array("expert", expert_names(expert))
    out.info["partition_rule"] = rule
    out.info["n_hf"] = int(np.sum(np.asarray(expert) == HF))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out.write(path, format="extxyz")


def read_partition(path: str | Path) -> tuple[Atoms, np.ndarray]:
    """The cell and its per-atom expert indices from a file written by :func:`write_partition`."""
    from ase.io import read

    atoms = read(path, format="extxyz")
    if "expert" not in atoms.arrays:
        raise ValueError(f"{path} has no per-atom 'expert' array (not a partition file?)")
    expert = expert_indices(atoms.arrays["expert"])
    return atoms, expert


def plot_partition(atoms: Atoms, expert: np.ndarray, path: str | Path, *, title: str | None = None) -> None:
    """Side and top views of the cell, atoms coloured by expert (HF orange, LF blue; C/O darker).

    Writes a PNG to ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.visualize.plot import plot_atoms
    from matplotlib.patches import Patch

    expert = np.asarray(expert)
    substrate = np.array([s == "Pt" for s in atoms.get_chemical_symbols()])
    palette = {(HF, True): "#f4a259", (HF, False): "#b5541c", (LF, True): "#7fa7d9", (LF, False): "#2b5d9b"}
    colors = [palette[(int(e), bool(s))] for e, s in zip(expert, substrate)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1.3, 1.0]})
    plot_atoms(atoms, axes[0], rotation="-90x", colors=colors, radii=0.6)
    axes[0].set_title("side view (x-z)")
    plot_atoms(atoms, axes[1], rotation="", colors=colors, radii=0.6)
    axes[1].set_title("top view (x-y)")
    for ax in axes:
        ax.set_xlabel("x (A)")
    axes[0].set_ylabel("z (A)")
    axes[1].set_ylabel("y (A)")
    n_hf = int(np.sum(expert == HF))
    handles = [
        Patch(color=palette[(HF, True)], label=f"HF ({n_hf} atoms)"),
        Patch(color=palette[(LF, True)], label=f"LF ({len(expert) - n_hf} atoms)"),
        Patch(color=palette[(HF, False)], label="C/O (HF)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(title or f"MoE partition: {len(atoms)} atoms, HF fraction {n_hf / max(len(atoms), 1):.2f}")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_weights(
    atoms: Atoms, weights: np.ndarray, path: str | Path, *, r_in: float, r_out: float, title: str | None = None,
) -> None:
    """Side and top views of the cell, atoms coloured by their HF weight lambda (0 = LF, blue, to 1 = HF, red;
    ``weights`` ``(n_atoms,)``), with a colour bar; adsorbate atoms (lambda 1) drawn smaller. ``r_in``,
    ``r_out``: the switching radii (A), for the title.

    Writes a PNG to ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.visualize.plot import plot_atoms
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    weights = np.asarray(weights, dtype=np.float64)
    cmap, norm = matplotlib.colormaps["coolwarm"], Normalize(vmin=0.0, vmax=1.0)
    colors = [cmap(norm(w)) for w in weights]
    substrate = np.array([s == "Pt" for s in atoms.get_chemical_symbols()])
    radii = np.where(substrate, 0.6, 0.4)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [1.3, 1.0]})
    plot_atoms(atoms, axes[0], rotation="-90x", colors=colors, radii=radii)
    axes[0].set_title("side view (x-z)")
    plot_atoms(atoms, axes[1], rotation="", colors=colors, radii=radii)
    axes[1].set_title("top view (x-y)")
    for ax in axes:
        ax.set_xlabel("x (A)")
    axes[0].set_ylabel("z (A)")
    axes[1].set_ylabel("y (A)")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), orientation="horizontal", fraction=0.05,
                       pad=0.12)
    bar.set_label("HF weight lambda (0 = LF, 1 = HF)")
    n_hf, n_shell = int(np.sum(weights > 0)), int(np.sum((weights > 0) & (weights < 1)))
    fig.suptitle(title or f"adaptive partition at t = 0: {len(atoms)} atoms, {n_hf} with lambda > 0 ({n_shell} in "
                 f"the switching shell), r_in {r_in:g} A, r_out {r_out:g} A")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
