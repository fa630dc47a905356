"""Equation of state of fcc Pt: DFT, each expert, each mixture, and the published PBE reference.

E(V) per atom is fitted with the Birch-Murnaghan form of :class:`ase.eos.EquationOfState`, giving
V0 (A^3/atom), E0 (eV/atom), B0 (GPa) and B0'. Rows of the table (:data:`COLUMNS`), by ``model``:

- ``dft``: the bulk EOS frames of the dataset (:func:`pipeline.data.splits.is_eos_frame`); with
  ``ingest.hold_out_eos`` (default) they form the split ``eos``, which no training or model selection
  reads, and the row's ``source`` says which splits they came from;
- ``pbe_reference``: WIEN2k PBE of ASE's ``dcdft`` collection (V0 15.642 A^3/atom, B0 248.7 GPa,
  B0' 5.46); no E0;
- ``hf``: the HF expert of the reference pair (``md.reference_pair``, the expert of the full-HF MD run);
  ``hf_<pair>`` the HF experts of the other pairs;
- ``lf_<pair>``: each LF expert alone;
- ``moe_<pair>``: the mixture of each pair on a cubic supercell whose lower half along the third cell
  vector is HF and upper half LF (:func:`half_split`), so the E(V) includes the two interfaces.

``fit_ok`` is False when the fit failed (NaNs) or its V0 lies outside the sampled volumes (an
extrapolated minimum); ``source`` then says which.

Every model is evaluated on the same supercell (``analysis.eos.supercell`` cubic cells) scaled
uniformly to ``analysis.eos.n_volumes`` volumes spanning ``1 -+ volume_range`` times the volume at
``analysis.lattice_constant_a``.

>>> import numpy as np
>>> from ase.units import GPa
>>> v = np.linspace(14.0, 17.0, 9)
>>> e = birch_murnaghan(v, e0=-6.0, v0=15.5, b0=250 * GPa, b0_prime=5.0)
>>> fit = fit_birch_murnaghan(v, e)
>>> round(fit["v0_a3_atom"], 4), round(fit["b0_gpa"], 2), round(fit["b0_prime"], 3)
(15.5, 250.0, 5.0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import ase.io
import numpy as np
import pandas as pd
import torch
from ase import Atoms
from ase.build import bulk
from ase.collections import dcdft
from ase.eos import EquationOfState
from ase.units import GPa

from pipeline.analysis._common import (
    load_pairs,
    model_potentials,
    predict,
    pyplot,
    save_figure,
    write_table,
)
from pipeline.config import Config
from pipeline.data.splits import is_eos_frame
from pipeline.devices import DTYPES, resolve_device
from pipeline.md.partition import HF, LF
from pipeline.md.potential import MixturePotential

log = logging.getLogger(__name__)

COLUMNS = ("model", "v0_a3_atom", "b0_gpa", "b0_prime", "e0_ev_atom", "a0_a", "dv0_vs_hf_percent",
           "db0_vs_hf_percent", "n_points", "fit_ok", "source")


def birch_murnaghan(v: np.ndarray, *, e0: float, v0: float, b0: float, b0_prime: float) -> np.ndarray:
    """Birch-Murnaghan energy (eV) at volumes ``v`` (A^3); ``b0`` in eV/A^3."""
    eta = (v0 / np.asarray(v, dtype=float)) ** (2.0 / 3.0)
    return e0 + 9.0 * v0 * b0 / 16.0 * ((eta - 1.0) ** 3 * b0_prime + (eta - 1.0) ** 2 * (6.0 - 4.0 * eta))


def fit_birch_murnaghan(volumes: Sequence[float], energies: Sequence[float]) -> dict[str, float]:
    """Birch-Murnaghan fit (``ase.eos``) of E(V).

    Parameters
    ----------
    volumes : (n,) array, A^3 per atom
    energies : (n,) array, eV per atom

    Returns
    -------
    dict with ``v0_a3_atom``, ``e0_ev_atom``, ``b0_gpa``, ``b0_prime``, ``a0_a`` (fcc lattice constant
    of V0) and ``n_points``.
    """
    if len(volumes) < 5:
        raise ValueError(f"a Birch-Murnaghan fit needs >= 5 points, got {len(volumes)}")
    eos = EquationOfState(np.asarray(volumes, dtype=float), np.asarray(energies, dtype=float), eos="birchmurnaghan")
    eos.fit(warn=False)
    e0, b0, bp, v0 = eos.eos_parameters
    return {"v0_a3_atom": float(v0), "e0_ev_atom": float(e0), "b0_gpa": float(b0 / GPa), "b0_prime": float(bp),
            "a0_a": float((4.0 * v0) ** (1.0 / 3.0)), "n_points": len(volumes)}


def _safe_fit(volumes: np.ndarray, energies: np.ndarray, name: str) -> dict:
    """:func:`fit_birch_murnaghan`, or NaNs with a note when the fit fails; a note also when V0 lies
    outside the sampled volumes (an extrapolated minimum)."""
    try:
        fit = fit_birch_murnaghan(volumes, energies)
    except (RuntimeError, ValueError) as exc:
        log.warning("EOS fit of %s failed: %s", name, exc)
        nan = float("nan")
        return {"v0_a3_atom": nan, "e0_ev_atom": nan, "b0_gpa": nan, "b0_prime": nan, "a0_a": nan,
                "n_points": len(volumes), "warning": True, "note": f"Birch-Murnaghan fit failed ({exc})"}
    if not (np.min(volumes) <= fit["v0_a3_atom"] <= np.max(volumes)):
        return {**fit, "warning": True, "note": "V0 outside the sampled volumes (extrapolated minimum)"}
    return fit


def fcc_supercell(a: float, repeats: Sequence[int]) -> Atoms:
    """Perfect fcc Pt: the 4-atom cubic cell of lattice constant ``a`` (A) repeated ``repeats`` times."""
    return bulk("Pt", "fcc", a=a, cubic=True).repeat(tuple(int(r) for r in repeats))


def half_split(atoms: Atoms) -> np.ndarray:
    """Expert per atom: HF (0) for fractional coordinate along the third cell vector < 1/2, else LF (1).

    The atoms of the lower half of the cell (two periodic interfaces, at 0 and at 1/2) go to HF.
    """
    frac = atoms.cell.scaled_positions(atoms.positions)[:, 2] % 1.0
    return np.where(frac < 0.5 - 1e-6, HF, LF).astype(np.int64)


def dft_eos_frames(frames: Sequence[Atoms]) -> list[Atoms]:
    """The bulk EOS frames among ``frames`` (:func:`pipeline.data.splits.is_eos_frame`)."""
    return [f for f in frames if is_eos_frame(f)]


def split_note(frames: Sequence[Atoms]) -> str:
    """Which splits the DFT EOS points come from, and whether the models trained on any of them."""
    splits = sorted({str(f.info.get("split", "unknown")) for f in frames})
    if splits == ["eos"]:
        return "held out (split 'eos'): no model trained or was selected on these points"
    trained = [s for s in splits if s in ("train", "validation")]
    note = f"splits {', '.join(splits)}"
    return note + (f"; the models trained or were selected on the {'/'.join(trained)} points" if trained else "")


def model_eos(
    potential: MixturePotential, reference: Atoms, factors: Sequence[float], expert: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """E(V) of ``potential`` on ``reference`` scaled uniformly by volume ``factors``.

    Returns
    -------
    volumes : (n,) array, A^3/atom
    energies : (n,) array, eV/atom
    """
    frames = []
    for f in factors:
        atoms = reference.copy()
        atoms.set_cell(reference.cell.array * float(f) ** (1.0 / 3.0), scale_atoms=True)
        frames.append(atoms)
    energies, _ = predict(potential, frames, [expert] * len(frames), batch_size=4)
    n = len(reference)
    return np.array([a.get_volume() / n for a in frames]), energies / n


def eos_table(
    cfg: Config,
    *,
    dataset: str | Path | None,
    pairs: Mapping[str, Mapping[str, str | Path]],
    reference_pair: str,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The EOS table (:data:`COLUMNS`) and the E(V) points of every model.

    Parameters
    ----------
    cfg : Config
        Uses ``analysis`` (dtype, lattice constant, ``eos``), ``species``, ``device``, ``torch_threads``.
    dataset : path or None
        The ingest stage's dataset (for the DFT row); None skips the DFT row.
    pairs : mapping
        ``{pair: {"hf": path, "lf": path}}``.
    reference_pair : str
        Pair whose HF expert is the row ``hf``.

    Returns
    -------
    table : pandas.DataFrame
    points : dict ``{model: (volumes A^3/atom, energies eV/atom)}``
    """
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    experts = load_pairs(pairs, species=cfg.species, dtype=DTYPES[cfg.analysis.dtype], device=device)
    points: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sources: dict[str, str] = {}
    if dataset is not None:
        frames = dft_eos_frames(ase.io.read(str(dataset), index=":", format="extxyz"))
        if len(frames) >= 5:
            points["dft"] = (np.array([f.get_volume() / len(f) for f in frames]),
                             np.array([f.get_potential_energy() / len(f) for f in frames]))
            dft = all(isinstance(f.info.get("is_dft"), (bool, np.bool_)) and bool(f.info["is_dft"]) for f in frames)
            kind = "DFT" if dft else "labels (NOT all marked DFT)"
            sources["dft"] = f"{kind}: {len(frames)} bulk EOS frames of the dataset, {split_note(frames)}"
        else:
            log.warning("the dataset has %d bulk EOS frames (< 5): no DFT row", len(frames))
    e = cfg.analysis.eos
    reference = fcc_supercell(cfg.analysis.lattice_constant_a, e.supercell)
    split = half_split(reference)
    factors = np.linspace(1.0 - e.volume_range, 1.0 + e.volume_range, e.n_volumes)
    for name, (potential, is_mixture) in model_potentials(experts, reference_pair).items():
        expert = split if is_mixture else np.zeros(len(reference), dtype=np.int64)
        points[name] = model_eos(potential, reference, factors, expert)
        sources[name] = (f"{len(reference)}-atom cubic supercell {list(e.supercell)}"
                         + (", lower half HF / upper half LF" if is_mixture else "")
                         + (f" (HF of the {reference_pair} pair)" if name == "hf" else ""))
    rows = [{"model": name, **_safe_fit(v, en, name), "source": sources[name]} for name, (v, en) in points.items()]
    for row in rows:
        warning = bool(row.pop("warning", False))
        row["fit_ok"] = not warning
        if warning:
            row["source"] += f"; {row.get('note')}"
        row.pop("note", None)
    ref = dcdft.data["Pt"]
    rows.insert(1 if "dft" in points else 0, {
        "model": "pbe_reference", "v0_a3_atom": ref["wien2k_volume"], "b0_gpa": ref["wien2k_B"],
        "b0_prime": ref["wien2k_Bp"], "e0_ev_atom": np.nan, "a0_a": (4.0 * ref["wien2k_volume"]) ** (1.0 / 3.0),
        "n_points": 0, "source": "ASE dcdft collection, WIEN2k PBE", "fit_ok": True,
    })
    table = pd.DataFrame(rows)
    hf = table.set_index("model").loc["hf"]
    table["dv0_vs_hf_percent"] = 100.0 * (table["v0_a3_atom"] / hf["v0_a3_atom"] - 1.0)
    table["db0_vs_hf_percent"] = 100.0 * (table["b0_gpa"] / hf["b0_gpa"] - 1.0)
    return table[list(COLUMNS)], points


def plot_eos(points: Mapping[str, tuple[np.ndarray, np.ndarray]], table: pd.DataFrame, png: str | Path) -> None:
    """E(V) - E0 per model (points and Birch-Murnaghan fits) and the PBE reference curve (shape only)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    fits = table.set_index("model")
    vmin = min(v.min() for v, _ in points.values())
    vmax = max(v.max() for v, _ in points.values())
    grid = np.linspace(vmin, vmax, 200)
    for name, (v, e) in points.items():
        fit = fits.loc[name]
        if not np.isfinite(fit["v0_a3_atom"]):  # failed fit: the points only, relative to their minimum
            ax.plot(v, 1000.0 * (e - e.min()), "s--", ms=3.5, lw=0.8, label=f"{name}: fit failed")
            continue
        curve = birch_murnaghan(grid, e0=0.0, v0=fit["v0_a3_atom"], b0=fit["b0_gpa"] * GPa, b0_prime=fit["b0_prime"])
        style = {"color": "black", "lw": 2.0} if name == "dft" else {"lw": 1.2}
        (line,) = ax.plot(grid, 1000.0 * curve, label=f"{name}: V0 {fit['v0_a3_atom']:.2f}, B0 {fit['b0_gpa']:.0f} GPa",
                          **style)
        ax.plot(v, 1000.0 * (e - fit["e0_ev_atom"]), "o", ms=3.5, color=line.get_color())
    ref = fits.loc["pbe_reference"]
    curve = birch_murnaghan(grid, e0=0.0, v0=ref["v0_a3_atom"], b0=ref["b0_gpa"] * GPa, b0_prime=ref["b0_prime"])
    ax.plot(grid, 1000.0 * curve, "k--", lw=1.0, label=f"PBE reference (WIEN2k): V0 {ref['v0_a3_atom']:.2f}, "
                                                      f"B0 {ref['b0_gpa']:.0f} GPa")
    ax.set_xlabel("volume (A^3/atom)")
    ax.set_ylabel("E - E0 (meV/atom)")
    ax.set_title("fcc Pt equation of state (Birch-Murnaghan fits)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png)


def write_eos(table: pd.DataFrame, points: Mapping[str, tuple[np.ndarray, np.ndarray]], *, csv: str | Path,
              md: str | Path, png: str | Path, precision: str, lf_data: str) -> None:
    """Write the EOS table (CSV + Markdown) and the plot."""
    notes = [
        ("Birch-Murnaghan fits (ase.eos) of E(V) per atom: V0 in A^3/atom, B0 in GPa, E0 in eV/atom, a0 = (4 V0)^(1/3) "
        f"in A. Models evaluated in {precision}. dv0/db0: relative to the row 'hf'."),
        ("pbe_reference: WIEN2k PBE from ASE's dcdft collection (a different DFT code and basis than the labels: "
        "compare the DFT row with it, and the models with the DFT row)."),
        ("moe_*: the two experts of a pair on one supercell split into an HF and an LF half; their E(V) includes the "
        "energy of the two HF/LF interfaces."),
    ]
    if lf_data == "bulk_atoms":
        notes.append("The LF experts were trained on bulk Pt atoms only (train.lf_data: bulk_atoms); bulk fcc Pt "
                     "is inside their data.")
    write_table(table, csv=csv, md=md, title="Equation of state of fcc Pt", notes=notes)
    plot_eos(points, table, png)
