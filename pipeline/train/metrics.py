"""Error statistics of an expert pair: MAE/RMSE per expert and the HF-LF disagreement on bulk atoms.

:class:`ErrorSums` accumulates, per named quantity, the sum of absolute errors, the sum of squared
errors and the number of values (float64, so sums over processes are one all-reduce). Quantities
(:func:`pair_errors`):

==========================  =================================================  ===================
name                        values                                             unit
==========================  =================================================  ===================
``hf_energy``               (E_HF - E_dft) / N, every frame                    eV/atom
``hf_force``                F_HF - F_dft components, every atom                eV/A
``lf_energy``               LF on its own frames (``train.lf_data``)           eV/atom
``lf_force``                LF on its own atoms                                eV/A
``lf_energy_all``           LF on every frame                                  eV/atom
``lf_force_all``            LF on every atom                                   eV/A
``bulk_energy_disagree``    e_i^HF - e_i^LF on bulk atoms                      eV/atom
``bulk_force_disagree``     F_i^HF - F_i^LF components on bulk atoms           eV/A
==========================  =================================================  ===================

Force errors count the three Cartesian components separately (MAE and RMSE per component).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pipeline.data import keys as K
from pipeline.train.data import Batch
from pipeline.names import EXPERTS

QUANTITIES = (
    "hf_energy",
    "hf_force",
    "lf_energy",
    "lf_force",
    "lf_energy_all",
    "lf_force_all",
    "bulk_energy_disagree",
    "bulk_force_disagree",
)
_UNITS = {"energy": "mev_atom", "force": "mev_a"}


class ErrorSums:
    """Sums of |error|, error^2 and counts per quantity of :data:`QUANTITIES`."""

    def __init__(self) -> None:
        self.values = torch.zeros(len(QUANTITIES), 3, dtype=torch.float64)

    def add(self, name: str, errors: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the rows of ``errors`` (``(n,)`` or ``(n, 3)``) selected by the bool ``mask`` ``(n,)``."""
        err = errors.detach().to(torch.float64).cpu()[mask.cpu()]
        self.values[QUANTITIES.index(name)] += torch.stack(
            [err.abs().sum(), (err**2).sum(), torch.tensor(float(err.numel()), dtype=torch.float64)]
        )

    def reduce(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> ErrorSums:
        """Sum over processes in place (``all_reduce`` of the ``(n_quantities, 3)`` tensor); returns self."""
        if all_reduce is not None:
            self.values = all_reduce(self.values)
        return self

    def mae(self, name: str) -> float:
        s = self.values[QUANTITIES.index(name)]
        return float(s[0] / s[2]) if s[2] > 0 else math.nan

    def rmse(self, name: str) -> float:
        s = self.values[QUANTITIES.index(name)]
        return math.sqrt(float(s[1] / s[2])) if s[2] > 0 else math.nan

    def count(self, name: str) -> int:
        return int(self.values[QUANTITIES.index(name), 2])

    def summary(self, prefix: str) -> dict[str, float]:
        """Columns ``{prefix}_{expert}_{energy|force}_{mae|rmse}_{mev_atom|mev_a}`` (meV units) and
        ``{prefix}_bulk_{energy|force}_disagreement_{unit}`` (RMS, meV units)."""
        out = {}
        for name in ("hf_energy", "hf_force", "lf_energy", "lf_force"):
            unit = _UNITS[name.split("_")[1]]
            out[f"{prefix}_{name}_mae_{unit}"] = 1000.0 * self.mae(name)
            out[f"{prefix}_{name}_rmse_{unit}"] = 1000.0 * self.rmse(name)
        for kind in ("energy", "force"):
            out[f"{prefix}_bulk_{kind}_disagreement_{_UNITS[kind]}"] = 1000.0 * self.rmse(f"bulk_{kind}_disagree")
        return out


def pair_errors(sums: ErrorSums, outputs: dict[str, dict[str, torch.Tensor]], batch: Batch) -> None:
    """Add the errors of one batch's outputs (keys ``hf`` and/or ``lf``) to ``sums`` (see the module table);
    the disagreement needs both."""
    graph = batch.graph(next(iter(batch.graphs)))
    n_atoms = graph[K.NUM_ATOMS].to(torch.float64)
    all_frames = torch.ones_like(batch.lf_energy)
    all_atoms = torch.ones_like(batch.bulk)
    for name in EXPERTS:
        if name not in outputs:
            continue
        out = outputs[name]
        e_err = (out[K.ENERGY].detach().to(torch.float64) - graph[K.ENERGY].to(torch.float64)) / n_atoms
        f_err = out[K.FORCES].detach().to(torch.float64) - graph[K.FORCES].to(torch.float64)
        if name == "hf":
            sums.add("hf_energy", e_err, all_frames)
            sums.add("hf_force", f_err, all_atoms)
        else:
            sums.add("lf_energy", e_err, batch.lf_energy)
            sums.add("lf_force", f_err, batch.lf_forces)
            sums.add("lf_energy_all", e_err, all_frames)
            sums.add("lf_force_all", f_err, all_atoms)
    if "hf" in outputs and "lf" in outputs:
        hf, lf = outputs["hf"], outputs["lf"]
        sums.add("bulk_energy_disagree", hf[K.PER_ATOM_ENERGY] - lf[K.PER_ATOM_ENERGY], batch.bulk)
        sums.add("bulk_force_disagree", hf[K.FORCES] - lf[K.FORCES], batch.bulk)
