"""One canonical form for every DFT frame, whatever code or file format it came from.

A canonical frame is an :class:`ase.Atoms` with

- ``numbers``, ``positions`` (A, shape ``(n_atoms, 3)``), ``cell`` (A, rows are the cell vectors) and
  ``pbc``; constraints, tags, momenta and initial moments of the source are dropped;
- a :class:`~ase.calculators.singlepoint.SinglePointCalculator` holding ``energy`` (eV, total),
  ``forces`` (eV/A, ``(n_atoms, 3)``) and ``stress`` (eV/A^3, Voigt ``(6,)``) when the source has them,
  so that ``get_potential_energy()``, ``get_forces()`` and ``get_stress()`` work and extxyz writes
  them in the standard places;
- ``info``: every scalar (and short 1-D numeric) metadata key of the source, plus the provenance keys
  ``source_file``, ``source_index``, ``source_format``, ``source_reader``, ``energy_kind``, ``is_dft``
  and, for the output of a DFT code, ``dft_code``.

Energy convention (:data:`ENERGY_CONVENTION`): the total energy is the Mermin free energy
F = E - TS (ASE's ``free_energy``) whenever the reader provides it, because the forces DFT codes print
are derivatives of F; otherwise the reader's ``energy``. ``info['energy_kind']`` records which, and
``info['dft_energy_zero_width_ev']`` keeps the zero-smearing extrapolation when the reader gives both.

>>> from ase import Atoms
>>> from ase.calculators.singlepoint import SinglePointCalculator
>>> raw = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]])
>>> raw.calc = SinglePointCalculator(raw, energy=-14.9, free_energy=-15.0, forces=[[0, 0, 1], [0, 0, -1]])
>>> frame = canonical_frame(raw, source_file="co.out", source_index=0, source_format="gpaw-out")
>>> frame.get_potential_energy(), frame.info["energy_kind"], frame.info["dft_code"]
(-15.0, 'free_energy', 'gpaw')
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

log = logging.getLogger(__name__)

ENERGY_CONVENTION = (
    "total energy in eV: the Mermin free energy F = E - TS (ASE 'free_energy', the energy the DFT "
    "forces are derivatives of) whenever the reader provides it, otherwise the reader's 'energy'; "
    "info['energy_kind'] of each frame says which, and info['dft_energy_zero_width_ev'] keeps the "
    "zero-smearing extrapolation when the reader gives both"
)
STRESS_CONVENTION = (
    "eV/A^3, ASE sign convention: stress = +(1/V) dE/d(strain) (positive = tensile, pressure = "
    "-trace/3); Voigt order xx yy zz yz xz xy"
)
FORCE_CONVENTION = "eV/A, F = -dE/dR of the total energy above"

#: Which DFT code wrote a file, by (configuration) format. extxyz and db carry no such knowledge.
DFT_CODE_OF_FORMAT = {
    "vasp-out": "vasp",
    "vasp-xml": "vasp",
    "espresso-out": "espresso",
    "gpaw-out": "gpaw",
}

#: Calculator names (ASE ``calc.name`` / db ``calculator``) that are DFT codes, and some that are not.
DFT_CALCULATORS = frozenset(
    {"vasp", "espresso", "gpaw", "aims", "castep", "abinit", "siesta", "cp2k", "nwchem", "qchem"}
)
NON_DFT_CALCULATORS = frozenset({"emt", "lj", "morse", "eam", "tip3p", "tip4p"})

#: Keys this module sets itself; a source value under the same name is replaced.
PROVENANCE_KEYS = (
    "source_file",
    "source_index",
    "source_format",
    "source_reader",
    "energy_kind",
)
#: Per-frame results that belong in the calculator, never in ``info``.
RESULT_KEYS = frozenset({"energy", "free_energy", "forces", "stress", "virial", "energies", "stresses"})
#: Longest 1-D numeric sequence kept from the source ``info`` (e.g. ``dft_kpts = [4, 4, 1]``).
MAX_INFO_SEQUENCE = 16


def metadata_value(value: Any) -> Any | None:
    """``value`` as a plain scalar or short 1-D numeric array, or None when it cannot be kept.

    Keeps str, bool, int and float (numpy scalars converted to Python) and 1-D sequences of at most
    :data:`MAX_INFO_SEQUENCE` numbers or booleans (as numpy arrays); extxyz writes all of these.

    >>> metadata_value(np.float64(1.5)), metadata_value([4, 4, 1]).tolist(), metadata_value({"a": 1})
    (1.5, [4, 4, 1], None)
    """
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.ndim == 1 and 0 < arr.size <= MAX_INFO_SEQUENCE and arr.dtype.kind in "biuf":
            return arr.copy()
    return None


def voigt_stress(stress: Any) -> np.ndarray:
    """Stress as a Voigt 6-vector (xx yy zz yz xz xy), from a 6-vector or a 3x3 tensor.

    Other shapes are returned unchanged (as a float array) for validation to reject.
    """
    arr = np.asarray(stress, dtype=float)
    if arr.shape == (3, 3):
        return full_3x3_to_voigt_6_stress(arr)
    return arr.reshape(-1) if arr.size == 6 else arr


def _dft_label(info: dict[str, Any], source_format: str, calc_name: str | None) -> None:
    """Fill ``is_dft`` / ``dft_code`` / ``label_calculator`` in ``info`` where the source is silent."""
    code = DFT_CODE_OF_FORMAT.get(source_format)
    if code is not None:
        info.setdefault("dft_code", code)
        info.setdefault("is_dft", True)
        return
    name = (calc_name or "").lower()
    if name and name != "unknown":
        info.setdefault("label_calculator", name)
    label = str(info.get("label_calculator", "")).lower()
    if "is_dft" not in info:
        if "dft_code" in info or label in DFT_CALCULATORS:
            info["is_dft"] = True
        elif label in NON_DFT_CALCULATORS:
            info["is_dft"] = False
        else:
            info["is_dft"] = "unknown"
    if info.get("is_dft") is True and "dft_code" not in info and label in DFT_CALCULATORS:
        info["dft_code"] = label


def canonical_frame(
    raw: Atoms,
    *,
    source_file: str,
    source_index: int,
    source_format: str,
    source_reader: str | None = None,
) -> Atoms:
    """Return ``raw`` in canonical form (a new object; ``raw`` is left as it is).

    Parameters
    ----------
    raw : ase.Atoms
        A frame as an ASE reader returned it, results in ``raw.calc.results`` (ASE units).
    source_file : str
        The file it was read from, as it should appear in the manifest and in error messages.
    source_index : int
        Its index among the frames ASE reads from that file (``ase.io.read(file, index)``).
    source_format : str
        The configuration's format name: ``extxyz``, ``db``, ``vasp-out``, ``vasp-xml``,
        ``espresso-out`` or ``gpaw-out``.
    source_reader : str, optional
        The ASE reader that parsed it (e.g. ``gpaw-log`` for GPAW's tabular text output); defaults to
        ``source_format``.

    Returns
    -------
    ase.Atoms
        The canonical frame. Missing energy or forces are left missing (validation rejects them);
        nothing is invented.
    """
    frame = Atoms(
        numbers=raw.get_atomic_numbers(),
        positions=np.asarray(raw.get_positions(), dtype=float),
        cell=np.asarray(raw.get_cell(), dtype=float),
        pbc=raw.get_pbc(),
    )
    info: dict[str, Any] = {}
    for key, value in raw.info.items():
        if key in RESULT_KEYS or key in PROVENANCE_KEYS:
            continue
        kept = metadata_value(value)
        if kept is None:
            log.debug("%s[%d]: info key %r (%s) is not a scalar; not kept", source_file, source_index,
                      key, type(value).__name__)
            continue
        info[key] = kept

    results = dict(raw.calc.results) if raw.calc is not None else {}
    energy, kind = None, "missing"
    if results.get("free_energy") is not None:
        energy, kind = float(results["free_energy"]), "free_energy"
        extrapolated = results.get("energy")
        if extrapolated is not None and float(extrapolated) != energy:
            info["dft_energy_zero_width_ev"] = float(extrapolated)
    elif results.get("energy") is not None:
        energy, kind = float(results["energy"]), "energy"

    calc_results: dict[str, Any] = {}
    if energy is not None:
        calc_results["energy"] = energy
        if kind == "free_energy":
            calc_results["free_energy"] = energy
    if results.get("forces") is not None:
        calc_results["forces"] = np.asarray(results["forces"], dtype=float)
    if results.get("stress") is not None:
        calc_results["stress"] = voigt_stress(results["stress"])
    calc = SinglePointCalculator(frame, **calc_results)
    frame.calc = calc

    _dft_label(info, source_format, getattr(raw.calc, "name", None))
    info.update(
        source_file=str(source_file),
        source_index=int(source_index),
        source_format=source_format,
        source_reader=source_reader or source_format,
        energy_kind=kind,
    )
    frame.info = info
    return frame


def frame_energy(atoms: Atoms) -> float | None:
    """The canonical total energy (eV) of a frame, or None when it has none."""
    if atoms.calc is None:
        return None
    value = atoms.calc.results.get("energy")
    return None if value is None else float(value)


def frame_forces(atoms: Atoms) -> np.ndarray | None:
    """The forces (eV/A), shape as stored (``(n_atoms, 3)`` when valid), or None."""
    if atoms.calc is None or atoms.calc.results.get("forces") is None:
        return None
    return np.asarray(atoms.calc.results["forces"], dtype=float)


def frame_stress(atoms: Atoms) -> np.ndarray | None:
    """The stress (eV/A^3, Voigt ``(6,)`` when valid), or None when the frame has none."""
    if atoms.calc is None or atoms.calc.results.get("stress") is None:
        return None
    return np.asarray(atoms.calc.results["stress"], dtype=float)
