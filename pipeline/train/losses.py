"""Loss terms of co-training: per-expert data terms and the HF-LF agreement terms on bulk atoms.

Every term is returned as a ``(sum, count)`` pair of 0-d tensors, so that means over a global batch
split across processes (DDP) are exact: ``mean = all_reduce(sum) / all_reduce(count)``
(:func:`weighted_total`). With one process these are plain means.

Data terms of one expert (energies in eV, forces eV/A, stress eV/A^3)::

    energy : mean over its frames of ((E_pred - E_dft) / N_atoms)^2
    forces : mean over its atoms of |F_pred - F_dft|^2            (sum of the 3 components)
    stress : mean over its frames with a stress target of |S_pred - S_dft|^2   (9 components)

With a Huber threshold delta > 0 (``train.huber_delta_energy_ev_atom``, ``train.huber_delta_force_ev_a``)
the square x^2 of each energy-per-atom or force-component error becomes :func:`robust_square`: x^2 up to
|x| = delta and 2 delta |x| - delta^2 beyond (twice the Huber function: the same as the square for small
errors, linear growth for large ones), so a few frames far up a repulsive wall (forces of tens of eV/A)
do not dominate the fit and the validation loss.

Agreement terms on the atoms labelled bulk (labelled frames) and the mixture term on mixture cells
(:mod:`pipeline.train.cells`; which atoms of a cell count: :mod:`pipeline.train.pair`)::

    energy  : mean over bulk atoms of (e_i^HF - e_i^LF)^2          (per-atom energies)
    forces  : mean over bulk atoms of |F_i^HF - F_i^LF|^2          (each expert's full forces)
    mixture : mean over interface atoms of |F_i^mix - F_i^HF|^2    (:func:`mixture_terms`)

In ``anchored`` co-training the HF outputs are the cached outputs of a frozen expert
(:mod:`pipeline.train.anchor`), so the gradient reaches only the LF expert; ``detach_hf`` /
``detach_lf`` make either side a constant when both experts are live.

>>> import torch
>>> out = {"per_atom_energy": torch.tensor([1.0, 2.0]), "forces": torch.zeros(2, 3)}
>>> terms = agreement_terms(out, out, torch.tensor([True, True]))
>>> [float(s) for s, _ in terms.values()], [int(c) for _, c in terms.values()]
([0.0, 0.0], [2, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from pipeline.data import keys as K

Term = tuple[torch.Tensor, torch.Tensor]  # (sum, count), 0-d tensors


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms: data (w_E, w_F, w_S), agreement (lambda_E, lambda_F) and the mixture
    force term (lambda_M)."""

    energy: float = 1.0
    forces: float = 1.0
    stress: float = 0.0
    agree_energy: float = 0.0
    agree_forces: float = 0.0
    mixture_forces: float = 0.0
    huber_energy: float = 0.0  # Huber thresholds of the data terms (eV/atom, eV/A); 0 = squared error
    huber_forces: float = 0.0

    @property
    def huber(self) -> tuple[float, float]:
        """``(huber_energy, huber_forces)``, as :func:`pipeline.train.pair.batch_terms` takes them."""
        return (self.huber_energy, self.huber_forces)

    def of(self, name: str) -> float:
        """Weight of a term named ``<expert>_<kind>``, ``agree_<kind>`` or ``mixture_forces``."""
        if name.startswith(("agree_", "mixture_")):
            return getattr(self, name)
        return getattr(self, name.split("_", 1)[1])


def robust_square(x: torch.Tensor, delta: float) -> torch.Tensor:
    """``x**2`` (``delta`` <= 0) or twice the Huber function: ``x**2`` for ``|x| <= delta``, else
    ``2 delta |x| - delta**2`` (continuous with a continuous slope)."""
    if delta <= 0:
        return x**2
    a = x.abs()
    return torch.where(a <= delta, x**2, 2.0 * delta * a - delta**2)


def _count(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum().to(torch.float64)


def data_terms(
    pred: Mapping[str, torch.Tensor],
    graph: Mapping[str, torch.Tensor],
    *,
    atom_mask: torch.Tensor,
    frame_mask: torch.Tensor,
    stress: bool = False,
    huber_energy: float = 0.0,
    huber_forces: float = 0.0,
) -> dict[str, Term]:
    """Squared-error sums and counts of one expert's predictions against the targets of ``graph``.

    Parameters
    ----------
    pred : dict
        Model output: :data:`keys.ENERGY` ``(n_frames,)``, :data:`keys.FORCES` ``(n_atoms, 3)``,
        :data:`keys.STRESS` ``(n_frames, 3, 3)`` if ``stress``.
    graph : dict
        The batch with targets (same keys) and :data:`keys.NUM_ATOMS`.
    atom_mask : (n_atoms,) bool
        Atoms whose forces count.
    frame_mask : (n_frames,) bool
        Frames whose energy (and stress) count.
    stress : bool
        Include the stress term (frames with :data:`keys.STRESS_MASK` only).
    huber_energy, huber_forces : float
        Huber thresholds (eV/atom, eV/A per component) of :func:`robust_square`; 0 = squared error.

    Returns
    -------
    dict with ``energy``, ``forces`` (and ``stress``): ``(sum, count)``.
    """
    n_atoms = graph[K.NUM_ATOMS].to(pred[K.ENERGY].dtype)
    e_err = robust_square((pred[K.ENERGY] - graph[K.ENERGY].to(pred[K.ENERGY].dtype)) / n_atoms, huber_energy)
    f_err = robust_square(pred[K.FORCES] - graph[K.FORCES].to(pred[K.FORCES].dtype), huber_forces).sum(dim=1)
    terms = {
        "energy": (torch.where(frame_mask, e_err, 0.0).sum(), _count(frame_mask)),
        "forces": (torch.where(atom_mask, f_err, 0.0).sum(), _count(atom_mask)),
    }
    if stress:
        if K.STRESS in graph:
            s_mask = frame_mask & graph[K.STRESS_MASK]
            s_err = ((pred[K.STRESS] - graph[K.STRESS].to(pred[K.STRESS].dtype)) ** 2).sum(dim=(1, 2))
            s_err = torch.where(s_mask, torch.nan_to_num(s_err, nan=0.0), 0.0)  # NaN stress of cells without volume
            terms["stress"] = (s_err.sum(), _count(s_mask))
        else:
            zero = pred[K.ENERGY].sum() * 0.0
            terms["stress"] = (zero, zero.detach().to(torch.float64))
    return terms


def agreement_terms(
    hf: Mapping[str, torch.Tensor],
    lf: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
    *,
    detach_hf: bool = False,
    detach_lf: bool = False,
) -> dict[str, Term]:
    """Squared HF-LF differences of per-atom energies and forces on the atoms of ``mask``.

    Parameters
    ----------
    hf, lf : dict
        Outputs of the two experts on the same atoms: :data:`keys.PER_ATOM_ENERGY` ``(n_atoms,)``
        eV and :data:`keys.FORCES` ``(n_atoms, 3)`` eV/A.
    mask : (n_atoms,) bool
        The bulk atoms.
    detach_hf : bool
        Treat the HF outputs as constants (anchored co-training: only LF learns to agree).
    detach_lf : bool
        Treat the LF outputs as constants (only HF learns to agree).

    Returns
    -------
    dict with ``energy`` and ``forces``: ``(sum, count)``; units eV^2 and (eV/A)^2.
    """
    e_hf, f_hf = hf[K.PER_ATOM_ENERGY], hf[K.FORCES]
    e_lf, f_lf = lf[K.PER_ATOM_ENERGY], lf[K.FORCES]
    if detach_hf:
        e_hf, f_hf = e_hf.detach(), f_hf.detach()
    if detach_lf:
        e_lf, f_lf = e_lf.detach(), f_lf.detach()
    e_diff = (e_hf - e_lf) ** 2  # [n_atoms]
    f_diff = ((f_hf - f_lf) ** 2).sum(dim=1)  # [n_atoms]
    count = _count(mask)
    return {
        "energy": (torch.where(mask, e_diff, 0.0).sum(), count),
        "forces": (torch.where(mask, f_diff, 0.0).sum(), count),
    }


def mixture_terms(hf_cells: Mapping[str, torch.Tensor], lf_cells: Mapping[str, torch.Tensor],
                  mask: torch.Tensor) -> dict[str, Term]:
    """The mixture force term on mixture cells: ``mixture_forces`` = (sum, count) of |F_i^LF - F_i^HF|^2
    over the atoms of ``mask`` (eV^2/A^2), where both forces are those of the cells' LF-assigned centres
    only (:data:`keys.FORCES` ``(n_atoms, 3)`` of each expert evaluated with those centres), so that
    their difference is the mixture's force minus the HF expert's."""
    f_diff = ((hf_cells[K.FORCES] - lf_cells[K.FORCES]) ** 2).sum(dim=1)  # [n_atoms]
    return {"mixture_forces": (torch.where(mask, f_diff, 0.0).sum(), _count(mask))}


def merge_terms(*parts: Mapping[str, Term]) -> dict[str, Term]:
    """Add the sums and counts of terms with the same name."""
    out: dict[str, Term] = {}
    for part in parts:
        for name, (s, c) in part.items():
            if name in out:
                out[name] = (out[name][0] + s, out[name][1] + c)
            else:
                out[name] = (s, c)
    return out


def weighted_total(
    terms: Mapping[str, Term],
    weights: LossWeights,
    *,
    global_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss ``sum_k w_k * sum_k / count_k`` and the value of each mean term.

    ``global_counts`` maps the local counts (a float64 vector, one per term) to the counts of the
    global batch (an all-reduce under DDP); the loss is multiplied by ``world_size`` because DDP
    averages gradients over processes, so the summed gradient is that of the global mean. Terms
    with zero global count contribute 0. Returned term values are local (``sum / global count``).
    """
    names = list(terms)
    counts = torch.stack([terms[n][1].detach().to(torch.float64).reshape(()) for n in names])
    if global_counts is not None:
        counts = global_counts(counts)
    total = None
    values: dict[str, float] = {}
    for name, count in zip(names, counts.tolist()):
        s = terms[name][0]
        mean = s / count if count > 0 else s * 0.0
        values[name] = float(mean.detach())
        weight = weights.of(name)
        if weight:
            total = weight * mean if total is None else total + weight * mean
    if total is None:
        total = sum(terms[n][0] for n in names) * 0.0
    return total * world_size, values
