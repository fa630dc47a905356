"""Edge geometry in torch and autograd derivatives: forces and stress from per-atom energies.

Edge vectors are computed from positions, integer cell shifts and the cell, so that autograd
through them gives forces (d/d positions) and, with a symmetric strain ``eps`` applied to every
edge vector (``r -> r (1 + eps)``), the virial ``W = -dE/d(eps)`` (eV) and the stress
``(1/V) dE/d(eps) = -W / V`` (ASE sign, eV/A^3).
:func:`evaluate_with_derivatives` wraps any function from (positions, strain) to per-atom energies,
so a mixture of experts can reuse it with one backward pass through all experts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from pipeline.data import keys as K
from pipeline.models.contract import VIRIAL


def centre_mask(
    centers: torch.Tensor | Sequence[int] | None, n_atoms: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean ``(n_atoms,)`` mask of centre atoms from a mask or an index list (``None`` = all atoms)."""
    if centers is None:
        return None
    centers = torch.as_tensor(centers, device=device)
    if centers.dtype == torch.bool:
        if centers.shape != (n_atoms,):
            raise ValueError(f"a boolean centre mask must have shape ({n_atoms},), got {tuple(centers.shape)}")
        return centers
    if centers.dtype.is_floating_point or centers.dim() != 1:
        raise ValueError("centers must be a boolean mask (n_atoms,) or a 1-d integer index tensor")
    if centers.numel() and (int(centers.min()) < 0 or int(centers.max()) >= n_atoms):
        low, high = int(centers.min()), int(centers.max())
        raise ValueError(f"centre indices must lie in [0, {n_atoms}), got range [{low}, {high}]")
    mask = torch.zeros(n_atoms, dtype=torch.bool, device=device)
    mask[centers.long()] = True
    return mask


def centre_edges(
    edge_index: torch.Tensor, shifts: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the edges whose centre is in ``mask``, sorted by centre (stable)."""
    if mask is not None:
        keep = mask.index_select(0, edge_index[0])
        edge_index, shifts = edge_index[:, keep], shifts[keep]
    centre = edge_index[0]
    if centre.numel() > 1 and bool((centre[1:] < centre[:-1]).any()):
        order = torch.argsort(centre, stable=True)
        edge_index, shifts = edge_index[:, order], shifts[order]
    return edge_index, shifts


def edge_vectors(
    positions: torch.Tensor,
    cell: torch.Tensor,
    batch_index: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    strain: torch.Tensor | None = None,
) -> torch.Tensor:
    """``r_ij = pos[j] - pos[i] + S @ cell`` (strained by ``1 + sym(strain)`` if given) -> ``(n_edges, 3)``.

    Parameters
    ----------
    positions : (n_atoms, 3)
    cell : (n_structures, 3, 3), rows = cell vectors
    batch_index : (n_atoms,) structure of each atom
    edge_index : (2, n_edges) [centre, neighbour]
    shifts : (n_edges, 3) integer lattice shifts
    strain : (n_structures, 3, 3) or None
    """
    centre, neighbor = edge_index[0], edge_index[1]
    vec = positions.index_select(0, neighbor) - positions.index_select(0, centre)  # [n_edges, 3]
    shifts = shifts.to(positions.dtype)
    cell = cell.to(positions.dtype)
    single = cell.shape[0] == 1
    edge_struct = None if single else batch_index.index_select(0, centre)
    if single:
        vec = vec + shifts @ cell[0]
    else:
        vec = vec + torch.bmm(shifts.unsqueeze(1), cell.index_select(0, edge_struct)).squeeze(1)
    if strain is not None:
        sym = 0.5 * (strain + strain.transpose(1, 2))  # [n_structures, 3, 3]
        if single:
            vec = vec + vec @ sym[0]
        else:
            vec = vec + torch.bmm(vec.unsqueeze(1), sym.index_select(0, edge_struct)).squeeze(1)
    return vec


def evaluate_with_derivatives(
    atomic_outputs: Callable[[torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]],
    batch: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    compute_forces: bool = True,
    compute_stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Total energies, forces and stress from a function of (positions, strain) to per-atom outputs.

    ``atomic_outputs(positions, strain)`` must return a dict with :data:`keys.PER_ATOM_ENERGY`
    ``(n_atoms,)``; its entries are passed through. Adds :data:`keys.ENERGY` ``(n_structures,)``,
    and :data:`keys.FORCES` ``(n_atoms, 3)`` when asked, :data:`keys.STRESS` and
    :data:`~pipeline.models.contract.VIRIAL` ``(n_structures, 3, 3)`` with ``compute_stress`` (stress
    NaN for a structure of zero cell volume; the virial is finite for any cell).
    ``create_graph=True`` keeps the graph of the derivatives for training on forces and stress.
    """
    n_structures = int(batch[K.CELL].shape[0])
    need_grad = compute_forces or compute_stress
    with torch.enable_grad() if need_grad else nullcontext():
        positions = batch[K.POSITIONS].to(dtype)
        if need_grad and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        strain = None
        if compute_stress:
            strain = torch.zeros(n_structures, 3, 3, dtype=dtype, device=positions.device, requires_grad=True)
        out = dict(atomic_outputs(positions, strain))
        per_atom = out[K.PER_ATOM_ENERGY]
        energy = per_atom.new_zeros(n_structures).index_add(0, batch[K.BATCH], per_atom)  # [n_structures]
        out[K.ENERGY] = energy
        if need_grad:
            inputs = [positions] + ([strain] if strain is not None else [])
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
            if compute_forces:
                out[K.FORCES] = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
            if compute_stress:
                de_dstrain = grads[-1] if grads[-1] is not None else torch.zeros_like(strain)  # [n_structures, 3, 3]
                volume = torch.linalg.det(batch[K.CELL].to(dtype)).abs()  # [n_structures]
                safe = torch.where(volume > 0, volume, torch.ones_like(volume))
                stress = de_dstrain / safe[:, None, None]
                out[K.STRESS] = torch.where((volume > 0)[:, None, None], stress, torch.full_like(stress, float("nan")))
                out[VIRIAL] = -de_dstrain
    return out
