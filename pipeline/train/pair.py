"""The experts of one training stage as one module, and the loss terms of one batch.

A training stage (:mod:`pipeline.train.run`) trains some experts and may hold one frozen *anchor*:

===========  ==============  ===========  ======================================================
stage        trainable       anchor       loss
===========  ==============  ===========  ======================================================
``hf``       HF              --           HF data terms
``lf``       LF              HF (frozen)  LF data terms (+ agreement with the cached HF outputs)
``pair``     HF and LF       --           both data terms + agreement (symmetric co-training)
===========  ==============  ===========  ======================================================

:class:`Experts` evaluates its trainable experts on a batch (and on a batch of mixture cells, with the
cells' LF atoms as centres) in one ``forward`` call, so one torch DDP wrapper synchronises all their
gradients; :func:`stage_outputs` adds the anchor's cached outputs. :func:`batch_terms` turns them into
the named ``(sum, count)`` terms of :mod:`pipeline.train.losses`: ``hf_energy``, ``hf_forces``
(``hf_stress``), ``lf_energy``, ``lf_forces`` (``lf_stress``) of the trainable experts, and, when the
stage agrees, ``agree_energy``, ``agree_forces`` and ``mixture_forces``:

- ``agree_energy``: (e_i^HF - e_i^LF)^2 over the bulk atoms of the frames and the LF atoms of the cells;
- ``agree_forces``: |F_i^HF - F_i^LF|^2 over the bulk atoms of the frames (each expert's full forces);
- ``mixture_forces``: |F_i^mix - F_i^HF|^2 over the interface atoms of the cells
  (:func:`pipeline.train.cells.interface_atoms`), with F^mix - F^HF = F^LF_L - F^HF_L, the forces of
  the LF-assigned centres of each expert (the HF-assigned centres contribute alike to both). Training
  on it needs the derivative of forces (a double backward), like every force term.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipeline.data import keys as K
from pipeline.data.partition import LF
from pipeline.models import AllegroModel
from pipeline.names import EXPERTS
from pipeline.train.data import Batch
from pipeline.train.losses import Term, agreement_terms, data_terms, merge_terms, mixture_terms

AGREEMENT_MODES = ("anchored", "symmetric")
CELLS = "_cells"  # suffix of the output keys on the mixture cells


class Experts(torch.nn.Module):
    """The trainable experts of a stage.

    Parameters
    ----------
    experts : mapping
        ``{name: model}`` with names among :data:`EXPERTS`; the models must share the species list.
    """

    def __init__(self, experts: Mapping[str, AllegroModel]) -> None:
        super().__init__()
        unknown = sorted(set(experts) - set(EXPERTS))
        if unknown or not experts:
            raise ValueError(f"experts must be named among {list(EXPERTS)}, got {sorted(experts)}")
        species = {tuple(m.species) for m in experts.values()}
        if len(species) > 1:
            raise ValueError(f"the experts' species differ: {sorted(species)}")
        self.experts = torch.nn.ModuleDict(dict(experts))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in EXPERTS if name in self.experts)

    def forward(
        self,
        batch: Batch,
        cells: Batch | None = None,
        *,
        stress: bool = False,
        create_graph: bool | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Outputs of the trainable experts: key ``<name>`` on ``batch`` and ``<name>_cells`` on ``cells``.

        Each value is an expert's output dict (:mod:`pipeline.data.keys`): energies ``(n_frames,)`` eV,
        per-atom energies ``(n_atoms,)`` eV, forces ``(n_atoms, 3)`` eV/A, stress if ``stress``. On the
        cells only the LF-assigned atoms are centres.
        """
        out = {}
        for name in self.names:
            model = self.experts[name]
            out[name] = model(batch.graph(model.r_max), compute_stress=stress, create_graph=create_graph)
            if cells is not None:
                out[name + CELLS] = cell_outputs(model, cells, create_graph=create_graph)
        return out


def cell_outputs(model: AllegroModel, cells: Batch, *, create_graph: bool | None = None) -> dict[str, torch.Tensor]:
    """``model`` on mixture cells with their LF-assigned atoms as centres (see the module docstring)."""
    return model(cells.graph(model.r_max), centers=cells.expert == LF, create_graph=create_graph)


def stage_outputs(
    outputs: Mapping[str, dict[str, torch.Tensor]], batch: Batch | None, cells: Batch | None, anchor: str | None
) -> dict[str, dict[str, torch.Tensor]]:
    """``outputs`` plus the cached outputs of the ``anchor`` expert (``batch.anchor``, ``cells.anchor``)."""
    out = dict(outputs)
    if anchor is None:
        return out
    for key, source in ((anchor, batch), (anchor + CELLS, cells)):
        if source is None:
            continue
        if source.anchor is None:
            raise ValueError(f"the {anchor} anchor's outputs are not attached to the samples")
        out[key] = source.anchor
    return out


def cell_terms(outputs: Mapping[str, dict[str, torch.Tensor]], cells: Batch) -> dict[str, Term]:
    """``agree_energy`` on the LF atoms and ``mixture_forces`` on the interface atoms of mixture cells."""
    lf_atoms = cells.expert == LF
    hf_c, lf_c = outputs["hf" + CELLS], outputs["lf" + CELLS]
    e_diff = (hf_c[K.PER_ATOM_ENERGY] - lf_c[K.PER_ATOM_ENERGY]) ** 2  # [n_atoms], zero off the centres
    return {"agree_energy": (torch.where(lf_atoms, e_diff, 0.0).sum(), lf_atoms.sum().to(torch.float64)),
            **mixture_terms(hf_c, lf_c, cells.interface)}


def batch_terms(
    outputs: Mapping[str, dict[str, torch.Tensor]],
    batch: Batch,
    cells: Batch | None = None,
    *,
    trainable: tuple[str, ...] = EXPERTS,
    agreement: bool = True,
    stress: bool = False,
    huber: tuple[float, float] = (0.0, 0.0),
) -> dict[str, Term]:
    """Named loss terms of one batch (see the module docstring).

    Data terms are those of the ``trainable`` experts: HF on every frame and atom, LF on the batch's LF
    assignment (``batch.lf_energy``, ``batch.lf_forces``). Agreement terms (``agreement=True``) need
    outputs of both experts (one may be an anchor's cached outputs, :func:`stage_outputs`). ``huber`` =
    the Huber thresholds (eV/atom, eV/A) of the data terms (:func:`pipeline.train.losses.robust_square`).
    """
    graph = batch.graph(next(iter(batch.graphs)))
    masks = {"hf": (torch.ones_like(batch.lf_energy), torch.ones_like(batch.bulk)),
             "lf": (batch.lf_energy, batch.lf_forces)}
    terms: dict[str, Term] = {}
    for name in trainable:
        frames, atoms = masks[name]
        part = data_terms(outputs[name], graph, atom_mask=atoms, frame_mask=frames, stress=stress,
                          huber_energy=huber[0], huber_forces=huber[1])
        terms.update({f"{name}_{k}": v for k, v in part.items()})
    if agreement:
        terms.update({f"agree_{k}": v for k, v in agreement_terms(outputs["hf"], outputs["lf"], batch.bulk).items()})
        if cells is not None:
            terms = merge_terms(terms, cell_terms(outputs, cells))
        else:  # the same term names on every process (DDP reduces their counts as one vector)
            zero = terms["agree_forces"][0] * 0.0
            terms["mixture_forces"] = (zero, zero.detach().to(torch.float64))
    return terms
