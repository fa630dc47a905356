"""Frame validation: every rejected frame gets a reason that names its file and index.

Checks, in this order (a frame is rejected by the first that fails):

========================  ==========================================================================
reason                    rule
========================  ==========================================================================
``invalid_geometry``      non-finite positions or cell, or a periodic direction with a zero cell vector
``unknown_species``       an element not in the configured ``species``
``missing_energy``        no total energy
``nonfinite_energy``      energy is NaN or infinite
``missing_forces``        no forces
``forces_shape``          forces are not ``(n_atoms, 3)``
``nonfinite_forces``      a force component is NaN or infinite
``large_force``           a force larger than ``ingest.max_force_ev_a`` (0 = no limit)
``invalid_stress``        stress present but not 6 finite numbers
``close_atoms``           two atoms closer than ``ingest.min_distance_a`` (periodic images included)
``duplicate``             same species, positions, cell and pbc (bitwise) as an earlier accepted frame
``energy_outlier``        robust z-score of the energy per atom above ``ingest.energy_outlier_z``
========================  ==========================================================================

The outlier test fits per-element reference energies mu by least squares on the frames that passed
all other checks (E_frame ~ sum_el n_el mu_el), takes the residual per atom r = (E - n.mu) / N, and
z = 0.6745 (r - median r) / max(MAD, ``ingest.energy_outlier_mad_floor_ev``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import vesin
from ase import Atoms
from tqdm import tqdm

from pipeline.config import IngestConfig
from pipeline.data.canonical import frame_energy, frame_forces, frame_stress
from pipeline.errors import PipelineInputError

log = logging.getLogger(__name__)

REASONS = (
    "invalid_geometry",
    "unknown_species",
    "missing_energy",
    "nonfinite_energy",
    "missing_forces",
    "forces_shape",
    "nonfinite_forces",
    "invalid_stress",
    "large_force",
    "close_atoms",
    "duplicate",
    "energy_outlier",
)
MAD_TO_SIGMA = 0.6745  # z = 0.6745 (x - median) / MAD is a standard normal score for normal data


class TooManyRejectedError(PipelineInputError, RuntimeError):
    """More than ``ingest.max_rejected_fraction`` of the frames were rejected."""

    def __init__(self, message: str, rejected: Sequence[Rejection]):
        super().__init__(message)
        self.rejected = list(rejected)


@dataclass(frozen=True)
class Rejection:
    """One rejected frame: where it came from, why (one of :data:`REASONS`) and the detail."""

    source_file: str
    source_index: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source_file} frame {self.source_index}: {self.reason}: {self.detail}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EnergyFit:
    """Least-squares per-element reference energies (eV/atom) and the robust residual statistics."""

    references_ev: dict[str, float]
    median_ev: float
    mad_ev: float
    scale_ev: float


def _where(atoms: Atoms) -> tuple[str, int]:
    return str(atoms.info.get("source_file", "<memory>")), int(atoms.info.get("source_index", -1))


def min_interatomic_distance(atoms: Atoms, cutoff: float) -> tuple[float, int, int] | None:
    """Shortest distance below ``cutoff`` (A, periodic images included) and its pair, else None.

    An atom closer than ``cutoff`` to its own periodic image counts (``i == j``).
    """
    i, j, d = vesin.ase_neighbor_list("ijd", atoms, cutoff)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    return float(d[k]), int(i[k]), int(j[k])


def geometry_hash(atoms: Atoms) -> str:
    """SHA-256 over species, positions, cell and pbc (bitwise): equal hashes = exact duplicates."""
    h = hashlib.sha256()
    for arr in (atoms.numbers.astype(np.int64), atoms.positions.astype(np.float64),
                atoms.cell.array.astype(np.float64), atoms.pbc.astype(np.int8)):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def check_frame(
    atoms: Atoms, *, species: Sequence[str], min_distance_a: float, max_force_ev_a: float = 0.0
) -> tuple[str, str] | None:
    """The first per-frame check ``atoms`` fails, as ``(reason, detail)``, or None if it passes all."""
    if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()):
        return "invalid_geometry", "non-finite positions or cell"
    lengths = atoms.cell.lengths()
    for axis in range(3):
        if atoms.pbc[axis] and lengths[axis] == 0:
            return "invalid_geometry", f"periodic along cell vector {axis} but it has zero length"
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(species))
    if unknown:
        return "unknown_species", f"elements {unknown} not in the configured species {list(species)}"
    energy = frame_energy(atoms)
    if energy is None:
        return "missing_energy", "the frame has no total energy"
    if not np.isfinite(energy):
        return "nonfinite_energy", f"energy = {energy}"
    forces = frame_forces(atoms)
    if forces is None:
        return "missing_forces", "the frame has no forces"
    if forces.shape != (len(atoms), 3):
        return "forces_shape", f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
    if not np.isfinite(forces).all():
        bad = np.unique(np.nonzero(~np.isfinite(forces))[0])
        return "nonfinite_forces", f"non-finite forces on atoms {bad[:10].tolist()}"
    if max_force_ev_a > 0:
        norms = np.linalg.norm(forces, axis=1)
        if norms.max() > max_force_ev_a:
            i = int(np.argmax(norms))
            return "large_force", (f"|F| = {norms[i]:.1f} eV/A on atom {i} ({atoms.get_chemical_symbols()[i]}) "
                                   f"> ingest.max_force_ev_a = {max_force_ev_a} eV/A")
    stress = frame_stress(atoms)
    if stress is not None and (stress.shape != (6,) or not np.isfinite(stress).all()):
        return "invalid_stress", f"stress {stress.tolist()} is not 6 finite numbers (Voigt)"
    closest = min_interatomic_distance(atoms, min_distance_a)
    if closest is not None:
        d, i, j = closest
        pair = f"atom {i} and its periodic image" if i == j else f"atoms {i} and {j}"
        return "close_atoms", f"{pair} are {d:.3f} A apart (< ingest.min_distance_a = {min_distance_a} A)"
    return None


def fit_energy_references(frames: Sequence[Atoms]) -> tuple[EnergyFit, np.ndarray]:
    """Per-element reference energies and robust z-scores of the per-atom residuals.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Frames with finite energies.

    Returns
    -------
    fit : EnergyFit
        References (eV/atom per element), median and MAD of the residuals (eV/atom); ``scale_ev`` is
        filled in by :func:`energy_outliers`.
    residuals : numpy.ndarray, shape (n_frames,)
        (E - sum_el n_el mu_el) / N in eV/atom.
    """
    elements = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    counts = np.zeros((len(frames), len(elements)))
    column = {el: k for k, el in enumerate(elements)}
    for row, atoms in enumerate(frames):
        for el, n in Counter(atoms.get_chemical_symbols()).items():
            counts[row, column[el]] = n
    energies = np.array([frame_energy(a) for a in frames], dtype=float)
    mu, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    residuals = (energies - counts @ mu) / counts.sum(axis=1)
    median = float(np.median(residuals))
    mad = float(np.median(np.abs(residuals - median)))
    fit = EnergyFit({el: float(m) for el, m in zip(elements, mu)}, median, mad, mad)
    return fit, residuals


def energy_outliers(frames: Sequence[Atoms], cfg: IngestConfig) -> tuple[list[tuple[int, str]], EnergyFit]:
    """Indices (into ``frames``) of energy-per-atom outliers with details, and the fit used."""
    if not frames:
        return [], EnergyFit({}, 0.0, 0.0, cfg.energy_outlier_mad_floor_ev)
    fit, residuals = fit_energy_references(frames)
    scale = max(fit.mad_ev, cfg.energy_outlier_mad_floor_ev)
    fit = EnergyFit(fit.references_ev, fit.median_ev, fit.mad_ev, scale)
    z = MAD_TO_SIGMA * (residuals - fit.median_ev) / scale
    out = []
    for k in np.nonzero(np.abs(z) > cfg.energy_outlier_z)[0]:
        out.append((int(k), f"energy per atom {residuals[k]:+.4f} eV/atom from the per-element "
                            f"reference fit (median {fit.median_ev:+.4f}), robust z = {z[k]:.1f} "
                            f"> ingest.energy_outlier_z = {cfg.energy_outlier_z}"))
    return out, fit


def validate_frames(
    frames: Sequence[Atoms],
    *,
    species: Sequence[str],
    cfg: IngestConfig,
    progress: bool | None = None,
) -> tuple[list[Atoms], list[Rejection], EnergyFit]:
    """Split ``frames`` into accepted and rejected ones (order kept; nothing is dropped silently).

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Canonical frames (:func:`pipeline.data.canonical.canonical_frame`).
    species : sequence of str
        Allowed chemical symbols.
    cfg : IngestConfig
        Thresholds (``min_distance_a``, ``max_force_ev_a``, ``energy_outlier_z``, ``energy_outlier_mad_floor_ev``).
    progress : bool, optional
        tqdm progress bar; None = only on a terminal.

    Returns
    -------
    accepted : list of ase.Atoms
    rejected : list of Rejection
        In input order, each naming file, frame index, reason and detail.
    fit : EnergyFit
        Per-element reference energies used by the outlier test.
    """
    reasons: dict[int, Rejection] = {}
    first_seen: dict[str, int] = {}
    bar = tqdm(frames, desc="validating frames", unit="frame",
               disable=None if progress is None else not progress)
    for k, atoms in enumerate(bar):
        failed = check_frame(atoms, species=species, min_distance_a=cfg.min_distance_a,
                             max_force_ev_a=cfg.max_force_ev_a)
        if failed is None:
            key = geometry_hash(atoms)
            if key in first_seen:
                f, i = _where(frames[first_seen[key]])
                failed = ("duplicate", f"same species, positions, cell and pbc as {f} frame {i}")
            else:
                first_seen[key] = k
        if failed is not None:
            reasons[k] = Rejection(*_where(atoms), *failed)
    passing = [k for k in range(len(frames)) if k not in reasons]
    outliers, fit = energy_outliers([frames[k] for k in passing], cfg)
    for pos, detail in outliers:
        k = passing[pos]
        reasons[k] = Rejection(*_where(frames[k]), "energy_outlier", detail)
    for k in sorted(reasons):
        log.warning("rejected %s", reasons[k])
    accepted = [atoms for k, atoms in enumerate(frames) if k not in reasons]
    return accepted, [reasons[k] for k in sorted(reasons)], fit


def check_rejected_fraction(n_frames: int, rejected: Sequence[Rejection], max_fraction: float) -> None:
    """Raise :class:`TooManyRejectedError` when more than ``max_fraction`` of the frames is rejected.

    Zero frames read also fails: there is nothing to build a dataset from.
    """
    if n_frames == 0:
        raise TooManyRejectedError("no frames were read: nothing to ingest", rejected)
    fraction = len(rejected) / n_frames
    if fraction <= max_fraction:
        return
    by_reason = Counter(r.reason for r in rejected)
    examples = "\n  ".join(str(r) for r in rejected[:10])
    more = f"\n  ... and {len(rejected) - 10} more" if len(rejected) > 10 else ""
    raise TooManyRejectedError(
        f"{len(rejected)} of {n_frames} frames rejected ({fraction:.1%} > ingest.max_rejected_fraction "
        f"= {max_fraction:.1%}); by reason: {dict(sorted(by_reason.items()))}\n  {examples}{more}",
        rejected,
    )
