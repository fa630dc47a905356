"""Cached outputs of a frozen anchor expert, so that training against it costs no evaluation of it.

In ``anchored`` co-training the HF expert is trained and selected first, then frozen; each LF expert
learns to agree with it. The HF outputs on the training and validation frames and on the mixture cells
never change, so they are computed once (:func:`attach_anchor`) and travel with the samples:

================  ==================  =====================================================================
key               shape               value
================  ==================  =====================================================================
``energy``        (n_frames,)         total energy, eV (data frames; the sum over the centres for cells)
``per_atom_energy`` (n_atoms,)        energy of each centre atom, eV
``forces``        (n_atoms, 3)        data frames: -dE/dR; mixture cells: the forces of the LF-assigned
                                      centres only, -d/dR sum_{j in LF} e_j^HF, eV/A
================  ==================  =====================================================================

For a mixture cell the mixture force minus the HF force is F^LF_L - F^HF_L (the HF-assigned centres
contribute alike to both), so the cached ``forces`` are exactly the target of the LF expert's
LF-centre forces (:func:`pipeline.train.pair.batch_terms`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from tqdm import tqdm

from pipeline.data import keys as K
from pipeline.data.partition import LF
from pipeline.models import AllegroModel
from pipeline.train.data import Sample, make_batch

ANCHOR_KEYS = (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES)


def anchor_centres(sample_or_batch) -> torch.Tensor | None:  # noqa: ANN001 (Sample or Batch)
    """Centre mask of a mixture cell (its LF atoms), or None (all atoms) for a data frame."""
    expert = sample_or_batch.expert
    return None if expert is None else expert == LF


def attach_anchor(samples: Sequence[Sample], model: AllegroModel, *, batch_size: int = 8,
                  progress: bool = False) -> list[Sample]:
    """``samples`` with ``anchor`` set to ``model``'s outputs (see the module table), on the CPU.

    ``samples`` must be all data frames or all mixture cells (one centre rule per batch).
    """
    if len({s.expert is None for s in samples}) > 1:
        raise ValueError("attach_anchor needs data frames and mixture cells in separate calls")
    model.eval()
    device = next(model.parameters()).device
    out: list[Sample] = []
    for start in tqdm(range(0, len(samples), batch_size), desc="anchor outputs", unit="batch", disable=not progress,
                      leave=False):
        chunk = list(samples[start : start + batch_size])
        batch = make_batch(chunk, device)
        pred = model(batch.graph(model.r_max), centers=anchor_centres(batch), create_graph=False)
        atoms = [len(s.bulk) for s in chunk]
        per_atom = [t.detach().cpu() for t in torch.split(pred[K.PER_ATOM_ENERGY], atoms)]
        forces = [t.detach().cpu() for t in torch.split(pred[K.FORCES], atoms)]
        energy = pred[K.ENERGY].detach().cpu()
        for k, sample in enumerate(chunk):
            anchor = {K.ENERGY: energy[k : k + 1], K.PER_ATOM_ENERGY: per_atom[k], K.FORCES: forces[k]}
            out.append(dataclasses.replace(sample, anchor=anchor))
    return out
