"""Cubic elastic constants C11, C12, C44 of fcc Pt: DFT, experiment, each expert and each mixture.

Method (every computed row): at the row's own equilibrium lattice constant a0 (Birch-Murnaghan fit of
its E(V), :mod:`pipeline.analysis.eos`), the cell is deformed homogeneously by Lagrangian strains eta
of three patterns (:data:`PATTERNS`; Voigt order xx yy zz yz xz xy, engineering shears) with the
amplitudes ``analysis.elastic.strains`` (default -1, -0.5, 0.5, 1 %), plus the unstrained cell; the
deformation gradient is the symmetric F = sqrt(I + 2 eta). All energies per atom are fitted at once,
by linear least squares (:func:`fit_cubic_elastic`), to

    E(eta) = E0 + V0 [-P (eta1 + eta2 + eta3) + 1/2 sum_ij C_ij eta_i eta_j] + k_p s^3

with the cubic Voigt matrix (C11, C12, C44), a residual pressure P (zero at an exact minimum) and one
cubic term k_p per pattern p of amplitude s (third-order elasticity): 13 energies, 8 parameters. fcc
is a Bravais lattice, every atom stays a centre of inversion under a homogeneous strain: there are
no internal relaxations, and these clamped-ion constants are the relaxed ones for the DFT cell and the
single experts. The mixtures' supercell, split into an HF and an LF half, breaks that symmetry: their
constants are clamped-ion (atoms moved with the cell, not relaxed).

Rows (:data:`COLUMNS`, GPa): ``dft`` (the shipped GPAW strain set, :mod:`pipeline.analysis.elastic_dft`),
``experiment`` and ``dft_literature`` (:data:`REFERENCES`, not computed), then the model rows of
:func:`pipeline.analysis._common.model_potentials` on the ``analysis.eos`` supercell (mixtures split as
:func:`pipeline.analysis.eos.half_split`). Derived: B = (C11 + 2 C12)/3 beside the EOS B0, Cauchy
pressure C12 - C44, Zener anisotropy 2 C44/(C11 - C12).

>>> c = np.diag([3.0, 3.0, 3.0, 1.0, 1.0, 1.0]) * 0.01 + 0.02 * np.pad(np.ones((3, 3)) - np.eye(3), (0, 3))
>>> voigt, pattern, amplitude = strain_grid((-0.01, -0.005, 0.005, 0.01))
>>> fit = fit_cubic_elastic(voigt, pattern, amplitude, [0.5 * 15.0 * v @ c @ v for v in voigt], v0=15.0)
>>> np.allclose([fit["c11"], fit["c12"], fit["c44"]], [0.03, 0.02, 0.01], rtol=1e-9)
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import ase.io
import numpy as np
import pandas as pd
import torch
from ase import Atoms
from ase.units import GPa

from pipeline.analysis._common import load_pairs, model_potentials, predict, pyplot, save_figure, write_table
from pipeline.analysis.eos import fcc_supercell, fit_birch_murnaghan, half_split, model_eos
from pipeline.config import Config
from pipeline.devices import DTYPES, resolve_device
from pipeline.md.potential import MixturePotential

log = logging.getLogger(__name__)

# Voigt direction (xx, yy, zz, yz, xz, xy; engineering shears) of each strain pattern.
PATTERNS: dict[str, tuple[float, ...]] = {
    "uniaxial": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # C11
    "isotropic": (1.0, 1.0, 1.0, 0.0, 0.0, 0.0),  # 3 C11 + 6 C12
    "shear": (0.0, 0.0, 0.0, 1.0, 1.0, 1.0),  # trigonal [111] shear: 3 C44
}
REFERENCE = "reference"  # pattern name of the unstrained cell
_PARAMS = ("e0", "c11", "c12", "c44", "pressure", *(f"k_{p}" for p in PATTERNS))
REFERENCES = {  # C11, C12, C44 in GPa, source
    "experiment": (358.0, 254.0, 77.0, "Macfarlane, Rayne & Jones, Phys. Lett. 18, 91 (1965), ~0 K"),
    "dft_literature": (314.5, 214.8, 64.9, "DFT column of Vandermause et al., Nat. Commun. 13, 5183 (2022), Table 2"),
}
COLUMNS = ("model", "c11_gpa", "c12_gpa", "c44_gpa", "b_gpa", "b0_eos_gpa", "cauchy_pressure_gpa", "zener_anisotropy",
           "dc11_vs_hf_percent", "dc12_vs_hf_percent", "dc44_vs_hf_percent", "a0_a", "se_c11_gpa", "se_c12_gpa",
           "se_c44_gpa", "residual_pressure_gpa", "fit_rms_uev_atom", "n_points", "fit_ok", "source")


class StrainSet(NamedTuple):
    """Energies of strained cells: Voigt strains (n, 6), pattern names, amplitudes (n,), eV/atom (n,), V0 A^3/atom."""

    voigt: np.ndarray
    pattern: list[str]
    amplitude: np.ndarray
    energies: np.ndarray
    v0: float


def deformation(voigt: Sequence[float]) -> np.ndarray:
    """Symmetric deformation gradient F = sqrt(I + 2 eta) of the Lagrangian strain ``voigt``."""
    e1, e2, e3, e4, e5, e6 = (float(x) for x in voigt)
    eta = np.array([[e1, e6 / 2, e5 / 2], [e6 / 2, e2, e4 / 2], [e5 / 2, e4 / 2, e3]])
    w, u = np.linalg.eigh(np.eye(3) + 2.0 * eta)
    return (u * np.sqrt(w)) @ u.T


def strained(atoms: Atoms, voigt: Sequence[float]) -> Atoms:
    """A copy of ``atoms`` deformed homogeneously by ``voigt`` (cell rows r -> F r, atoms scaled)."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ deformation(voigt).T, scale_atoms=True)
    return out


def strain_grid(strains: Sequence[float]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Voigt strains (n, 6), pattern names and amplitudes of the unstrained cell, then every pattern x amplitude."""
    rows = [(REFERENCE, 0.0)] + [(p, float(s)) for p in PATTERNS for s in strains if s != 0]
    voigt = np.array([s * np.asarray(PATTERNS.get(p, np.zeros(6))) for p, s in rows])
    return voigt, [p for p, _ in rows], np.array([s for _, s in rows])


def _design(voigt: np.ndarray, pattern: Sequence[str], amplitude: np.ndarray, v0: float) -> np.ndarray:
    e = np.atleast_2d(np.asarray(voigt, dtype=float))  # [n, 6]
    cols = [np.ones(len(e)), 0.5 * v0 * (e[:, :3] ** 2).sum(1),
            v0 * (e[:, 0] * e[:, 1] + e[:, 1] * e[:, 2] + e[:, 0] * e[:, 2]),
            0.5 * v0 * (e[:, 3:] ** 2).sum(1), -v0 * e[:, :3].sum(1)]
    cols += [np.where(np.asarray(pattern) == p, np.asarray(amplitude, dtype=float) ** 3, 0.0) for p in PATTERNS]
    return np.stack(cols, axis=1)  # [n, len(_PARAMS)]


def fit_cubic_elastic(voigt: np.ndarray, pattern: Sequence[str], amplitude: np.ndarray, energies: Sequence[float],
                      *, v0: float) -> dict[str, float]:
    """Least-squares fit of the module docstring's E(eta) to energies (eV/atom) of strained cells.

    Returns ``e0``, ``c11``, ``c12``, ``c44``, ``pressure`` (eV/A^3), ``k_<pattern>`` (eV/atom), the
    standard errors ``se_c11``, ``se_c12``, ``se_c44``, ``se_pressure``, the RMS residual ``rms``
    (eV/atom) and ``n_points``.
    """
    a, y = _design(voigt, pattern, amplitude, v0), np.asarray(energies, dtype=float)
    if len(y) <= a.shape[1] or np.linalg.matrix_rank(a) < a.shape[1]:
        raise ValueError(f"{len(y)} strained cells do not fix the {a.shape[1]} fit parameters: every pattern "
                         "needs >= 2 positive and >= 2 negative amplitudes")
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ coef
    se = np.sqrt(np.diag(np.linalg.inv(a.T @ a)) * float(resid @ resid) / (len(y) - a.shape[1]))
    return {**dict(zip(_PARAMS, map(float, coef))), **{f"se_{k}": float(s) for k, s in zip(_PARAMS[1:5], se[1:5])},
            "rms": float(np.sqrt(np.mean(resid ** 2))), "n_points": len(y)}


def fit_energy(fit: Mapping[str, float], voigt: np.ndarray, pattern: Sequence[str], amplitude: np.ndarray,
               *, v0: float) -> np.ndarray:
    """The fitted E(eta) (eV/atom) of :func:`fit_cubic_elastic` at the given strains."""
    return _design(voigt, pattern, amplitude, v0) @ np.array([fit[k] for k in _PARAMS])


def elastic_row(s: StrainSet) -> tuple[dict, dict]:
    """Table columns (GPa) and the raw fit of one :class:`StrainSet`."""
    fit = fit_cubic_elastic(s.voigt, s.pattern, s.amplitude, s.energies, v0=s.v0)
    c11, c12, c44 = (fit[k] / GPa for k in ("c11", "c12", "c44"))
    row = {"c11_gpa": c11, "c12_gpa": c12, "c44_gpa": c44, "b_gpa": (c11 + 2 * c12) / 3,
           "cauchy_pressure_gpa": c12 - c44, "zener_anisotropy": 2 * c44 / (c11 - c12),
           "a0_a": (4 * s.v0) ** (1 / 3), "residual_pressure_gpa": fit["pressure"] / GPa,
           "fit_rms_uev_atom": 1e6 * fit["rms"], "n_points": fit["n_points"],
           **{f"se_{k}_gpa": fit[f"se_{k}"] / GPa for k in ("c11", "c12", "c44")}}
    return row, fit


def dft_strain_set(frames: Sequence[Atoms]) -> tuple[StrainSet, dict]:
    """The strain frames and the Birch-Murnaghan fit of the volume frames of a labelled elastic set."""
    vol = [f for f in frames if f.info.get("elastic_kind") == "volume"]
    st = [f for f in frames if f.info.get("elastic_kind") == "strain"]
    ref = [f for f in st if f.info.get("elastic_pattern") == REFERENCE]
    if len(vol) < 5 or len(ref) != 1:
        raise ValueError(f"an elastic strain set needs >= 5 volume frames and one '{REFERENCE}' frame, "
                         f"got {len(vol)} and {len(ref)}")
    eos = fit_birch_murnaghan([f.get_volume() / len(f) for f in vol], [f.get_potential_energy() / len(f) for f in vol])
    pattern = [str(f.info["elastic_pattern"]) for f in st]
    amplitude = np.array([float(f.info["elastic_strain"]) for f in st])
    voigt = np.array([s * np.asarray(PATTERNS.get(p, np.zeros(6))) for p, s in zip(pattern, amplitude)])
    energies = np.array([f.get_potential_energy() / len(f) for f in st])
    return StrainSet(voigt, pattern, amplitude, energies, ref[0].get_volume() / len(ref[0])), eos


def model_strain_set(potential: MixturePotential, cfg: Config, *, mixture: bool) -> tuple[StrainSet, dict, str]:
    """Strained ``analysis.eos`` supercells at the model's own a0; returns the set, its EOS fit and a note."""
    e = cfg.analysis.eos
    reference = fcc_supercell(cfg.analysis.lattice_constant_a, e.supercell)
    expert = half_split(reference) if mixture else np.zeros(len(reference), dtype=np.int64)
    factors = np.linspace(1.0 - e.volume_range, 1.0 + e.volume_range, e.n_volumes)
    v, en = model_eos(potential, reference, factors, expert)
    try:
        eos, note = fit_birch_murnaghan(v, en), ""
    except (RuntimeError, ValueError) as exc:
        eos, note = {"v0_a3_atom": np.nan, "b0_gpa": np.nan}, f"EOS fit failed ({exc})"
    if not (v.min() <= eos["v0_a3_atom"] <= v.max()):  # also NaN
        eos["a0_a"] = cfg.analysis.lattice_constant_a
        note = f"{note or 'EOS minimum outside the sampled volumes'}: strained at analysis.lattice_constant_a"
    cell = fcc_supercell(eos["a0_a"], e.supercell)
    voigt, pattern, amplitude = strain_grid(cfg.analysis.elastic.strains)
    frames = [strained(cell, x) for x in voigt]
    energies, _ = predict(potential, frames, [expert] * len(frames), batch_size=4)
    return StrainSet(voigt, pattern, amplitude, energies / len(cell), cell.get_volume() / len(cell)), eos, note


def elastic_table(cfg: Config, *, dft_set: str | Path | None, pairs: Mapping[str, Mapping[str, str | Path]],
                  reference_pair: str) -> tuple[pd.DataFrame, dict[str, tuple[StrainSet, dict]]]:
    """The table (:data:`COLUMNS`) and ``{row: (StrainSet, fit)}`` of every computed row (for the plot)."""
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    experts = load_pairs(pairs, species=cfg.species, dtype=DTYPES[cfg.analysis.dtype], device=device)
    rows, sets = [], {}

    def add(name: str, s: StrainSet, b0: float, ok: bool, source: str) -> None:
        row, fit = elastic_row(s)
        rows.append({"model": name, **row, "b0_eos_gpa": b0, "fit_ok": ok, "source": source})
        sets[name] = (s, fit)

    if dft_set is not None:
        frames = ase.io.read(str(dft_set), index=":", format="extxyz")
        s, eos = dft_strain_set(frames)
        info = frames[0].info
        settings = " ".join(str(info.get(k, "")) for k in ("dft_xc", "dft_mode", "dft_basis"))
        add("dft", s, eos["b0_gpa"], True, f"{'DFT' if info.get('is_dft') else 'NOT DFT'}: {dft_set} ({len(frames)} "
            f"1-atom cells, {settings}, k {info.get('dft_kpts', '')}, grid {info.get('dft_gpts', '')})")
    for name, (c11, c12, c44, source) in REFERENCES.items():
        rows.append({"model": name, "c11_gpa": c11, "c12_gpa": c12, "c44_gpa": c44, "b_gpa": (c11 + 2 * c12) / 3,
                     "cauchy_pressure_gpa": c12 - c44, "zener_anisotropy": 2 * c44 / (c11 - c12), "n_points": 0,
                     "fit_ok": True, "source": source})
    for name, (potential, is_mixture) in model_potentials(experts, reference_pair).items():
        s, eos, note = model_strain_set(potential, cfg, mixture=is_mixture)
        n = int(np.prod(cfg.analysis.eos.supercell)) * 4
        add(name, s, eos["b0_gpa"], not note, "; ".join(x for x in (
            f"{n}-atom cubic supercell {list(cfg.analysis.eos.supercell)}",
            "lower half HF / upper half LF, clamped-ion" if is_mixture else "",
            f"HF of the {reference_pair} pair" if name == "hf" else "", note) if x))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    hf = table.set_index("model").loc["hf"]
    for c in ("c11", "c12", "c44"):
        table[f"d{c}_vs_hf_percent"] = 100.0 * (table[f"{c}_gpa"] / hf[f"{c}_gpa"] - 1.0)
    return table, sets


def plot_elastic(sets: Mapping[str, tuple[StrainSet, dict]], png: str | Path) -> None:
    """E - E0 (meV/atom) against the strain amplitude, one panel per pattern: points and fits."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PATTERNS), figsize=(12, 4.2))
    for name, (s, fit) in sets.items():
        style = {"color": "black", "lw": 2.0} if name == "dft" else {"lw": 1.0}
        for ax, p in zip(axes, PATTERNS):
            mask = np.array([q in (p, REFERENCE) for q in s.pattern])
            grid = np.linspace(s.amplitude[mask].min(), s.amplitude[mask].max(), 60)
            curve = fit_energy(fit, grid[:, None] * np.asarray(PATTERNS[p]), [p] * len(grid), grid, v0=s.v0)
            (line,) = ax.plot(100 * grid, 1000 * (curve - fit["e0"]), label=name, **style)
            ax.plot(100 * s.amplitude[mask], 1000 * (s.energies[mask] - fit["e0"]), "o", ms=3, color=line.get_color())
    for ax, p in zip(axes, PATTERNS):
        ax.set_title(f"{p} {PATTERNS[p]}", fontsize=9)
        ax.set_xlabel("Lagrangian strain amplitude (%)")
    axes[0].set_ylabel("E - E0 (meV/atom)")
    axes[-1].legend(fontsize=7)
    fig.suptitle("fcc Pt under homogeneous strain: energies and least-squares fits (C11, C12, C44)")
    fig.tight_layout()
    save_figure(fig, png)


def write_elastic(table: pd.DataFrame, sets: Mapping[str, tuple[StrainSet, dict]], *, csv: str | Path,
                  md: str | Path, png: str | Path, precision: str, strains: Sequence[float]) -> None:
    """Write the elastic-constant table (CSV + Markdown) and the E(strain) figure."""
    notes = [
        ("C11, C12, C44 (GPa) by one linear least-squares fit of E(eta) = E0 + V0 [-P tr(eta) + 1/2 C_ij eta_i eta_j]"
         " + k_p s^3 to the energies of the unstrained cell and three Lagrangian strain patterns (uniaxial xx, "
         "isotropic, trigonal shear yz = xz = xy, engineering) with amplitudes "
         f"{', '.join(f'{100 * x:g}' for x in strains)} %, at each row's own Birch-Murnaghan lattice constant a0; "
         "se_*: standard errors of the fit, fit_rms: RMS residual (micro-eV/atom), residual_pressure: the fitted P "
         "at a0. B = (C11 + 2 C12)/3 beside b0_eos, the row's Birch-Murnaghan B0; Cauchy pressure C12 - C44; "
         "Zener anisotropy 2 C44/(C11 - C12). d*_vs_hf: relative to the row 'hf'."),
        (f"Models evaluated in {precision} on the analysis.eos cubic supercell; fcc is a Bravais lattice, so without "
         "internal relaxation the constants are the relaxed ones, except moe_* (supercell split into an HF and an LF "
         "half): clamped-ion, and including the two HF/LF interfaces."),
        ("dft: the 1-atom GPAW strain set of resources/dft/elastic (one fixed k mesh; its README gives the settings "
         "and the k-point convergence). experiment: C11 358, C12 254, C44 77 GPa at ~0 K as quoted from Macfarlane, "
         "Rayne and Jones, Phys. Lett. 18, 91 (1965); NOT verified against that paper here. A source that was checked "
         "(Vandermause et al., Nat. Commun. 13, 5183 (2022), Table 2, "
         "https://www.nature.com/articles/s41467-022-32294-0/tables/2) lists experiment 348.7, 245.8, 73.4 GPa "
         "(temperature not stated there) and the DFT values of the row dft_literature (a 3.968 A, B 248.0 GPa)."),
    ]
    write_table(table, csv=csv, md=md, title="Elastic constants of fcc Pt", notes=notes)
    plot_elastic(sets, png)
