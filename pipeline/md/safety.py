"""Blow-up detection for MD: limits on distances, forces, temperature and energy.

Two kinds of checks, each returning ``None`` when everything is fine or a message that says what went
wrong and where:

- :func:`check_evaluation`, on every force call: non-finite energy or forces, two atoms closer than
  ``min_distance_a``;
- :func:`check_thermo`, on every thermo row: non-finite values, a temperature above
  ``max_temperature_k``, a change of the conserved energy since the start above
  ``max_energy_change_ev_atom`` per atom.

A failed check stops the run with :class:`MDBlowUpError`.

>>> import numpy as np
>>> from pipeline.config import MDSafetyConfig
>>> row = {"step": 50, "temp_k": 9000.0, "econserve_ev": -10.0, "atoms": 10}
>>> check_thermo(row, reference_energy=-10.0, limits=MDSafetyConfig())
'temperature 9000 K above the limit 5000 K (md.safety.max_temperature_k) at step 50'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.config import MDSafetyConfig
from pipeline.errors import PipelineInputError
from pipeline.md.evaluator import Evaluation


class MDBlowUpError(PipelineInputError, RuntimeError):
    """The MD run was stopped by a failed safety check (or a LAMMPS error during the run).

    Attributes
    ----------
    step : int
        Step at which the failure was detected.
    reason : str
        What went wrong.
    last_good : pathlib.Path or None
        File holding the last state that passed every check (extxyz with velocities).
    last_good_step : int or None
    """

    def __init__(self, step: int, reason: str, *, last_good: Path | None = None, last_good_step: int | None = None) -> None:
        where = f"; last good state (step {last_good_step}) written to {last_good}" if last_good is not None else ""
        super().__init__(f"MD run stopped at step {step}: {reason}{where}")
        self.step = step
        self.reason = reason
        self.last_good = last_good
        self.last_good_step = last_good_step


def check_evaluation(result: Evaluation, *, step: int, limits: MDSafetyConfig) -> str | None:
    """Message if the energy or a force is not finite or two atoms are too close, else ``None``."""
    if not math.isfinite(result.energy) or not np.all(np.isfinite(result.forces)):
        bad = np.flatnonzero(~np.all(np.isfinite(result.forces), axis=1))
        atoms = f" (atoms {bad[:10].tolist()})" if bad.size else ""
        return f"non-finite energy or forces at step {step}{atoms}"
    if result.min_distance < limits.min_distance_a:
        i, j = result.closest_pair
        return (
            f"atoms {i} and {j} are {result.min_distance:.3f} A apart at step {step}, closer than "
            f"{limits.min_distance_a} A (md.safety.min_distance_a)"
        )
    return None


def check_thermo(row: Mapping[str, float], *, reference_energy: float, limits: MDSafetyConfig) -> str | None:
    """Message if a thermo row shows a runaway, else ``None``.

    Parameters
    ----------
    row : mapping
        Needs ``step``, ``temp_k``, ``econserve_ev`` (eV) and ``atoms``.
    reference_energy : float
        Conserved energy at the start of the run, eV.
    limits : MDSafetyConfig
    """
    step = int(row["step"])
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"thermo value {key} is {value} at step {step}"
    temp = float(row["temp_k"])
    if temp > limits.max_temperature_k:
        return f"temperature {temp:.0f} K above the limit {limits.max_temperature_k:.0f} K (md.safety.max_temperature_k) at step {step}"
    change = abs(float(row["econserve_ev"]) - reference_energy) / max(int(row["atoms"]), 1)
    if change > limits.max_energy_change_ev_atom:
        return (
            f"conserved energy changed by {change:.3f} eV/atom since the start, above the limit "
            f"{limits.max_energy_change_ev_atom} eV/atom (md.safety.max_energy_change_ev_atom) at step {step}"
        )
    return None
