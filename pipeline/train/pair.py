"""The HF/LF expert pair as one module, and the loss terms of one batch.

:class:`ExpertPair` evaluates both experts on a batch (and on the extra unlabelled bulk cells) in one
``forward`` call, so that one torch DDP wrapper synchronises the gradients of both experts.
:func:`batch_terms` turns its outputs into the named ``(sum, count)`` terms of
:mod:`pipeline.train.losses`: ``hf_energy``, ``hf_forces`` (``hf_stress``), ``lf_energy``,
``lf_forces`` (``lf_stress``), ``agree_energy``, ``agree_forces``.
"""

from __future__ import annotations

import torch

from pipeline.models import AllegroModel
from pipeline.train.data import Batch
from pipeline.train.losses import Term, agreement_terms, data_terms, merge_terms

EXPERTS = ("hf", "lf")
AGREEMENT_MODES = ("symmetric", "anchored", "anchored_lf")


class ExpertPair(torch.nn.Module):
    """Holds the high-fidelity (``hf``) and low-fidelity (``lf``) experts.

    Parameters
    ----------
    hf, lf : AllegroModel
        The experts; they must share the species list.
    """

    def __init__(self, hf: AllegroModel, lf: AllegroModel) -> None:
        super().__init__()
        if tuple(hf.species) != tuple(lf.species):
            raise ValueError(f"the experts' species differ: HF {list(hf.species)}, LF {list(lf.species)}")
        self.hf = hf
        self.lf = lf

    def forward(
        self,
        batch: Batch,
        extra: Batch | None = None,
        *,
        stress: bool = False,
        create_graph: bool | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Outputs of both experts: keys ``hf``, ``lf`` and, with ``extra``, ``hf_extra``, ``lf_extra``.

        Each value is an expert's output dict (:mod:`pipeline.data.keys`): energies ``(n_frames,)`` eV,
        per-atom energies ``(n_atoms,)`` eV, forces ``(n_atoms, 3)`` eV/A, stress if ``stress``.
        """
        out = {}
        for name in EXPERTS:
            model = getattr(self, name)
            out[name] = model(batch.graph(model.r_max), compute_stress=stress, create_graph=create_graph)
            if extra is not None:
                out[f"{name}_extra"] = model(extra.graph(model.r_max), create_graph=create_graph)
        return out


def batch_terms(
    outputs: dict[str, dict[str, torch.Tensor]],
    batch: Batch,
    extra: Batch | None = None,
    *,
    stress: bool = False,
    mode: str = "symmetric",
    agreement: bool = True,
    huber: tuple[float, float] = (0.0, 0.0),
) -> dict[str, Term]:
    """Named loss terms of one batch (see the module docstring).

    HF data terms use every frame and atom; LF data terms use the batch's LF assignment
    (``batch.lf_energy``, ``batch.lf_forces``); agreement terms use ``batch.bulk`` and every atom of
    ``extra``. ``mode`` (:data:`AGREEMENT_MODES`) says which expert the agreement gradient reaches:
    both (``symmetric``), only LF (``anchored``: HF outputs detached) or only HF (``anchored_lf``).
    With ``agreement=False`` the agreement terms are left out. ``huber`` = the Huber thresholds
    (eV/atom, eV/A) of the data terms (:func:`pipeline.train.losses.robust_square`; 0 = squared error).
    """
    if mode not in AGREEMENT_MODES:
        raise ValueError(f"agreement mode must be one of {AGREEMENT_MODES}, got {mode!r}")
    detach = {"detach_hf": mode == "anchored", "detach_lf": mode == "anchored_lf"}
    graph = batch.graph(next(iter(batch.graphs)))
    all_frames = torch.ones_like(batch.lf_energy)
    all_atoms = torch.ones_like(batch.bulk)
    terms: dict[str, Term] = {}
    for name, frames, atoms in (("hf", all_frames, all_atoms), ("lf", batch.lf_energy, batch.lf_forces)):
        part = data_terms(outputs[name], graph, atom_mask=atoms, frame_mask=frames, stress=stress,
                          huber_energy=huber[0], huber_forces=huber[1])
        terms.update({f"{name}_{k}": v for k, v in part.items()})
    if agreement:
        parts = [agreement_terms(outputs["hf"], outputs["lf"], batch.bulk, **detach)]
        if extra is not None:
            parts.append(agreement_terms(outputs["hf_extra"], outputs["lf_extra"], extra.bulk, **detach))
        terms.update({f"agree_{k}": v for k, v in merge_terms(*parts).items()})
    return terms
