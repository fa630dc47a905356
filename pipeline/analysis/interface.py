"""Spurious forces at the HF/LF interface of a split fcc Pt crystal, per trained pair.

A cubic fcc supercell (``analysis.interface.supercell``) is split along its third cell vector into an
HF half (fractional coordinate < 1/2 in the perfect crystal) and an LF half; with periodic boundaries
there are two interface planes. The assignment belongs to the atom index, and is the same in the
perfect and in the thermal crystals (``thermal_samples`` snapshots with independent Gaussian
displacements of standard deviation ``thermal_rattle_a`` per component).

The *interface force* on atom i is

    dF_i = F_i(mixture) - F_i(expert k(i) on the whole crystal),

the part of the mixture's force that comes from the other expert's energies. It vanishes when the two
experts are identical, and exactly for every atom farther than one cutoff from the interface planes
(strict locality). In the perfect crystal every single-expert force is zero by symmetry, so dF_i is
the mixture's force itself. Table columns (:data:`COLUMNS`): per pair and lattice, the largest and the
RMS |dF_i| (meV/A) over the *interface atoms* (within the larger expert cutoff of an interface plane,
all snapshots), the largest |dF_i| beyond that distance (a check, zero up to rounding), and counts.
The profile (:func:`interface_profile`) is the RMS |dF| and the mean normal component per atomic layer
against the signed distance from the nearest interface plane (negative on the HF side).

>>> from pipeline.analysis.eos import fcc_supercell, half_split
>>> atoms = fcc_supercell(3.97, (1, 1, 4))
>>> expert = half_split(atoms)
>>> d = signed_interface_distance(atoms, expert)
>>> sorted(set(np.round(d, 2).tolist()))
[-2.98, -0.99, 0.99, 2.98]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase import Atoms

from pipeline.analysis._common import (
    load_pairs,
    pair_mixture,
    predict,
    pyplot,
    save_figure,
    single,
    write_table,
)
from pipeline.analysis.eos import fcc_supercell, half_split
from pipeline.config import Config
from pipeline.devices import DTYPES, resolve_device
from pipeline.md.partition import HF
from pipeline.models import AllegroModel

log = logging.getLogger(__name__)

COLUMNS = ("pair", "lattice", "max_force_mev_a", "rms_force_mev_a", "mean_normal_force_mev_a",
           "far_max_force_mev_a", "interface_atoms", "snapshots", "cutoff_a", "precision")


def signed_interface_distance(reference: Atoms, expert: np.ndarray) -> np.ndarray:
    """Distance (A) of every atom from the nearest HF/LF interface plane, negative on the HF side.

    The planes lie half-way between the outermost layers of the two halves of :func:`half_split`
    (perfect crystal ``reference``), measured along the normal of the first two cell vectors.

    Returns
    -------
    (n_atoms,) float array
    """
    return _interface_geometry(reference, expert)[0]


def _interface_geometry(reference: Atoms, expert: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance (A), the sign (+1/-1) of the normal direction pointing into the LF side at the
    nearest plane, and the unit normal (3,)."""
    c = reference.cell.array
    normal = np.cross(c[0], c[1])
    normal /= np.linalg.norm(normal)
    length = float(abs(np.dot(c[2], normal)))  # period along the normal, A
    z = (reference.cell.scaled_positions(reference.positions)[:, 2] % 1.0) * length
    hf = np.asarray(expert) == HF
    if hf.all() or not hf.any():
        raise ValueError("the crystal must have both HF and LF atoms")
    z_lo, z_hi = z[hf].min(), z[hf].max()
    if np.any((z[~hf] > z_lo) & (z[~hf] < z_hi)):
        raise ValueError("the HF atoms must form one slab along the normal (as from half_split)")
    gap_above = z[~hf].min() - z_hi  # LF block starts above the HF block
    gap_below = z_lo - (z[~hf].max() - length)
    plane_top = z_hi + 0.5 * gap_above  # LF above this plane
    plane_bottom = z_lo - 0.5 * gap_below  # LF below this plane
    planes = np.array([plane_bottom, plane_top, plane_bottom + length, plane_top - length])
    into_lf = np.array([-1.0, 1.0, -1.0, 1.0])
    offset = np.abs(z[:, None] - planes[None, :])
    nearest = np.argmin(offset, axis=1)
    dist = offset[np.arange(len(z)), nearest]
    return np.where(hf, -dist, dist), into_lf[nearest], normal


def interface_forces(experts: Mapping[str, AllegroModel], frames: list[Atoms], expert: np.ndarray) -> np.ndarray:
    """dF = F(mixture) - F(own expert alone) for every frame, eV/A, shape ``(n_frames, n_atoms, 3)``."""
    moe = pair_mixture(experts)
    _, f_moe = predict(moe, frames, [expert] * len(frames), batch_size=2)
    _, f_hf = predict(single(experts["hf"], "hf"), frames, batch_size=2)
    _, f_lf = predict(single(experts["lf"], "lf"), frames, batch_size=2)
    own = [np.where((expert == HF)[:, None], h, lf) for h, lf in zip(f_hf, f_lf)]
    return np.stack([m - o for m, o in zip(f_moe, own)])


def crystals(cfg: Config) -> tuple[Atoms, np.ndarray, dict[str, list[Atoms]]]:
    """The perfect reference crystal, its expert split, and ``{"perfect": [...], "thermal": [...]}``."""
    ic = cfg.analysis.interface
    reference = fcc_supercell(cfg.analysis.lattice_constant_a, ic.supercell)
    expert = half_split(reference)
    rng = np.random.default_rng([cfg.seed, 0x1F7E])
    thermal = []
    for _ in range(ic.thermal_samples):
        atoms = reference.copy()
        atoms.positions += rng.normal(0.0, ic.thermal_rattle_a, size=atoms.positions.shape)
        thermal.append(atoms)
    return reference, expert, {"perfect": [reference.copy()], "thermal": thermal}


def interface_rows(pair: str, experts: Mapping[str, AllegroModel], cfg: Config) -> tuple[list[dict], pd.DataFrame]:
    """Table rows of one pair (one per lattice) and its per-layer profile."""
    reference, expert, lattices = crystals(cfg)
    distance, into_lf, normal = _interface_geometry(reference, expert)
    cutoff = max(float(m.r_max) for m in experts.values())
    near = np.abs(distance) < cutoff
    rows, profile = [], []
    for lattice, frames in lattices.items():
        df = interface_forces(experts, frames, expert) * 1000.0  # [n_frames, n_atoms, 3], meV/A
        norm = np.linalg.norm(df, axis=2)  # [n_frames, n_atoms]
        f_normal = (df @ normal) * into_lf  # [n_frames, n_atoms], component towards the LF side
        rows.append({
            "pair": pair,
            "lattice": lattice,
            "max_force_mev_a": float(norm[:, near].max()),
            "rms_force_mev_a": float(np.sqrt(np.mean(norm[:, near] ** 2))),
            "mean_normal_force_mev_a": float(np.mean(f_normal[:, near])),
            "far_max_force_mev_a": float(norm[:, ~near].max()) if (~near).any() else np.nan,
            "interface_atoms": int(near.sum()),
            "snapshots": len(frames),
            "cutoff_a": cutoff,
            "precision": str(next(iter(experts.values())).dtype).removeprefix("torch."),
        })
        layers = np.round(distance, 2)  # one atomic layer per value (0.01 A bins)
        for d in np.unique(layers):
            layer = layers == d
            profile.append({"pair": pair, "lattice": lattice, "distance_a": float(d),
                            "rms_force_mev_a": float(np.sqrt(np.mean(norm[:, layer] ** 2))),
                            "mean_normal_force_mev_a": float(np.mean(f_normal[:, layer]))})
    return rows, pd.DataFrame(profile)


def interface_table(
    cfg: Config, *, pairs: Mapping[str, Mapping[str, str | Path]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interface table (:data:`COLUMNS`) and the per-layer profile of every pair and lattice.

    Parameters
    ----------
    cfg : Config
        Uses ``analysis`` (dtype, lattice constant, ``interface``), ``seed``, ``species``, ``device``,
        ``torch_threads``.
    pairs : mapping
        ``{pair: {"hf": path, "lf": path}}``.

    Returns
    -------
    table : pandas.DataFrame
    profile : pandas.DataFrame
        Columns ``pair``, ``lattice``, ``distance_a`` (A, negative on the HF side),
        ``rms_force_mev_a``, ``mean_normal_force_mev_a`` (meV/A, positive = towards the LF side).
    """
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    loaded = load_pairs(pairs, species=cfg.species, dtype=DTYPES[cfg.analysis.dtype], device=device)
    rows, profiles = [], []
    for pair, experts in loaded.items():
        r, p = interface_rows(pair, experts, cfg)
        rows += r
        profiles.append(p)
    return pd.DataFrame(rows, columns=list(COLUMNS)), pd.concat(profiles, ignore_index=True)


def plot_interface(profile: pd.DataFrame, png: str | Path) -> None:
    """RMS interface force per layer against the distance from the interface, one panel per lattice."""
    plt = pyplot()
    lattices = list(dict.fromkeys(profile["lattice"]))
    fig, axes = plt.subplots(1, len(lattices), figsize=(5.5 * len(lattices), 4.5), squeeze=False)
    for ax, lattice in zip(axes[0], lattices):
        sub = profile[profile["lattice"] == lattice]
        for pair, rows in sub.groupby("pair", sort=False):
            rows = rows.sort_values("distance_a")
            ax.plot(rows["distance_a"], rows["rms_force_mev_a"], "o-", label=f"{pair}: RMS |dF|")
            ax.plot(rows["distance_a"], rows["mean_normal_force_mev_a"], "x--", label=f"{pair}: mean normal dF")
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("distance from the HF/LF interface (A; HF side < 0)")
        ax.set_ylabel("interface force dF per layer (meV/A)")
        ax.set_title(f"{lattice} fcc Pt crystal")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png)


def write_interface(table: pd.DataFrame, profile: pd.DataFrame, *, csv: str | Path, md: str | Path,
                    png: str | Path) -> None:
    """Write the interface table (CSV + Markdown) and the profile plot."""
    notes = [
        ("Interface force dF_i = F_i(mixture) - F_i(atom i's own expert on the whole crystal), meV/A: the spurious "
        "force from the other expert's energies; zero for a consistent pair. max / rms: over the atoms within "
        "cutoff_a of an interface plane (interface_atoms per snapshot), all snapshots; far_max: the largest |dF| "
        "beyond that distance (zero by locality, a check); mean_normal: mean dF component along the interface "
        "normal, positive towards the LF side."),
        ("perfect: the ideal fcc crystal (every single-expert force is zero by symmetry); thermal: Gaussian "
        "displacements (analysis.interface.thermal_rattle_a per component). HF half = lower half along z."),
    ]
    write_table(table, csv=csv, md=md, title="HF/LF interface forces in split fcc Pt crystals", notes=notes)
    plot_interface(profile, png)
