"""The contract of a potential: what an expert, a mixture of experts (static or adaptive) take and return.

Every interatomic potential of the project (:class:`pipeline.models.AllegroModel`, one expert;
:class:`pipeline.md.potential.MixturePotential`, the static mixture; a later adaptive mixture) is a
``torch.nn.Module`` satisfying :class:`Potential`. Everything that evaluates a potential (the one ASE
calculator :class:`pipeline.models.calculator.PotentialCalculator`, the MD evaluator, training) relies
on this page and on nothing else. Units: eV and Angstrom (A) throughout.

Inputs: the batch
-----------------
A ``dict[str, torch.Tensor]`` with the keys of :mod:`pipeline.data.keys`, built by
:func:`pipeline.data.neighbors.collate` (training, tests, the calculator) or by an MD neighbour list
(:class:`pipeline.md.evaluator.VerletBatch`). One or more structures, concatenated atom-wise and
edge-wise:

============================  ===========================  ===============================================
key                           shape, dtype                 meaning
============================  ===========================  ===============================================
``positions``                 (n_atoms, 3) float           Cartesian positions, A (cast to the potential's
                                                           :attr:`~Potential.dtype`)
``species``                   (n_atoms,) int64             index of each atom's element in
                                                           :attr:`~Potential.species`
``atomic_numbers`` (optional) (n_atoms,) int64             element numbers; when present they are checked
                                                           against ``species`` (a mismatch raises)
``cell``                      (n_structures, 3, 3) float   rows = cell vectors, A (zeros: no cell)
``pbc``                       (n_structures, 3) bool       periodicity (carried; the graph already holds
                                                           the periodic images)
``batch``                     (n_atoms,) int64             structure of each atom
``num_atoms``                 (n_structures,) int64        atoms per structure
``edge_index``                (2, n_edges) int64           ``[centre, neighbour]`` of every pair, full list
                                                           (both directions)
``edge_cell_shift``           (n_edges, 3) int64           lattice shift S: ``r_ij = pos[j] - pos[i] + S @
                                                           cell``
``r_max``                     () float                     cutoff (A) the graph was built with
============================  ===========================  ===============================================

The graph may reach further than the potential's :attr:`~Potential.r_max` (a Verlet skin, a larger
expert's cutoff): pairs at or beyond ``r_max`` contribute exactly zero and are dropped. It must reach
at least ``r_max``. Target keys in the batch (``energy``, ``forces``, ``stress``, ``stress_mask``) are
ignored.

Inputs: the call
----------------
``potential(batch, *, centers=None, compute_forces=True, compute_stress=False, **inputs)``

``centers`` (optional)
    Boolean mask ``(n_atoms,)`` or 1-d integer index tensor: the atoms whose energies are computed.
    Only the pairs centred on them are evaluated; *every* atom still serves as a neighbour. The
    per-atom energy of any other atom is 0 (it is not computed), the total energy is the sum over the
    centres, and forces and stress are the derivatives of that partial energy (forces act on
    neighbours too). Energies, forces, stress and virial of the subsets of a partition of the atoms add
    up to the full evaluation. ``None``: all atoms.
``compute_forces``, ``compute_stress``
    Which derivatives to return (stress and virial come together).
``**inputs``: a potential's own inputs (not part of the core contract)
    A potential may require keyword-only inputs of its own, documented by it. The static mixture takes
    ``expert``, the ``(n_atoms,)`` int64 expert index of every atom; an adaptive mixture may take
    per-atom expert weights ``(n_atoms, n_experts)`` or compute them itself from the batch. They are the
    mixture's business: a caller that holds them passes them through unchanged (e.g.
    ``PotentialCalculator(potential, inputs={"expert": expert})``), and the keys, shapes and units of
    the batch and of the outputs are the same with and without them. An expert also takes
    ``create_graph`` (keep the graph of the derivatives, for training on forces; default: its training
    flag); a mixture evaluates for inference and never keeps it.

Outputs
-------
A new ``dict[str, torch.Tensor]``, floats in the potential's dtype:

=====================  ===========================  ==========================================================
key                    shape                        meaning
=====================  ===========================  ==========================================================
``energy``             (n_structures,)              total potential energy of the centres, eV (sum of
                                                    ``per_atom_energy`` per structure)
``per_atom_energy``    (n_atoms,)                   energy of each centre atom, eV (0 for non-centres)
``forces``             (n_atoms, 3)                 ``-dE/dR``, eV/A (when ``compute_forces``)
``stress``             (n_structures, 3, 3)         ``(1/V) dE/d(strain)``, eV/A^3, ASE sign (positive =
                                                    tensile); NaN for a zero cell volume (when
                                                    ``compute_stress``)
``virial``             (n_structures, 3, 3)         ``W = -dE/d(strain)`` = ``-V * stress``, eV (LAMMPS sign;
                                                    finite for any cell) (when ``compute_stress``)
``descriptors``        (n_atoms, F)                 final edge scalars pooled on each centre (0 for
                                                    non-centres; a mixture pads to its widest expert)
``center_mask``        (n_atoms,) bool              the atoms whose energies were evaluated
=====================  ===========================  ==========================================================

``strain`` is the symmetric small strain ``eps`` applied to every pair vector, ``r -> r (1 + eps)``,
at ``eps = 0``; the stress and virial are symmetric 3x3 tensors (Voigt order, where used: xx, yy, zz,
yz, xz, xy). Optional outputs, present only where they apply:

- experts with mixture-of-experts layers (:mod:`pipeline.models.moe`) return their routing of this
  evaluation (nothing is kept on the modules between calls): :data:`MOE_BALANCE_LOSS` ``()`` (the
  load-balancing loss, sum over MoE layers, differentiable), :data:`MOE_LAYER_BALANCE` ``(n_layers,)``
  (its terms per layer) and :data:`MOE_LOAD` ``(n_layers, n_species, n_experts)`` float64 on the CPU
  (centre atoms of each species routed to each routed expert, per layer);
- mixtures return :data:`EXPERT_WEIGHTS` ``(n_atoms, n_experts)``: the weight of each expert in each
  centre atom's energy (one-hot for a static partition; rows of non-centres are zero).

The outputs may carry autograd history (forces and stress are computed with ``torch.autograd``):
callers that keep them detach them.

The differentiable core
-----------------------
``potential.atomic_outputs(batch, *, positions=None, strain=None, centers=None, **inputs)`` returns
``per_atom_energy``, ``descriptors``, ``center_mask`` (and the optional routing outputs) *without*
derivatives, as a differentiable function of ``positions`` ``(n_atoms, 3)`` (default: the batch's) and
``strain`` ``(n_structures, 3, 3)`` (default: none). The call is
``evaluate_with_derivatives(atomic_outputs)`` (:func:`pipeline.models.geometry.evaluate_with_derivatives`),
so a mixture can sum the per-atom energies of its experts and take ONE backward pass over the total.

>>> import torch
>>> from pipeline.models import build_model
>>> from pipeline.models.testing import small_config
>>> isinstance(build_model(small_config(), ("Pt",)), Potential)
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from pipeline.data import keys as K

VIRIAL = "virial"  # (n_structures, 3, 3) float | W = -dE/d(strain) = -V * stress, eV (LAMMPS sign)
MOE_LAYER_BALANCE = "moe_layer_balance"  # (n_moe_layers,) float | load-balancing loss of each MoE layer
EXPERT_WEIGHTS = "expert_weights"  # (n_atoms, n_experts) float | weight of each expert in each atom's energy
MOE_BALANCE_LOSS = K.MOE_BALANCE_LOSS
MOE_LOAD = K.MOE_LOAD

REQUIRED_OUTPUTS = (K.ENERGY, K.PER_ATOM_ENERGY, K.DESCRIPTORS, K.CENTER_MASK)
"""Keys every call returns; ``forces`` with ``compute_forces``, ``stress`` and ``virial`` with ``compute_stress``."""


@runtime_checkable
class Potential(Protocol):
    """A potential: per-atom energies and their derivatives from a batch (see the module docstring).

    Attributes
    ----------
    species : tuple of str
        Chemical symbols; the batch's ``species`` indexes into this order.
    r_max : float
        Cutoff, A: the batch's graph must reach at least this far.
    dtype : torch.dtype
        Floating dtype of the evaluation (float32 or float64).
    """

    species: tuple[str, ...]

    @property
    def r_max(self) -> float: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def __call__(
        self,
        batch: dict[str, torch.Tensor],
        *,
        centers: torch.Tensor | Sequence[int] | None = None,
        compute_forces: bool = True,
        compute_stress: bool = False,
        **inputs: Any,
    ) -> dict[str, torch.Tensor]:
        """Energies, forces and (when asked) stress and virial: the outputs table of the module docstring."""
        ...

    def atomic_outputs(
        self,
        batch: dict[str, torch.Tensor],
        *,
        positions: torch.Tensor | None = None,
        strain: torch.Tensor | None = None,
        centers: torch.Tensor | Sequence[int] | None = None,
        **inputs: Any,
    ) -> dict[str, torch.Tensor]:
        """Per-atom energies without derivatives, differentiable in ``positions`` and ``strain``."""
        ...


def output_shapes(
    batch: Mapping[str, torch.Tensor], *, compute_forces: bool = True, compute_stress: bool = False
) -> dict[str, tuple[int, ...]]:
    """The shapes the contract promises for ``batch`` (``descriptors``: only its first dimension)."""
    n_atoms, n_structures = int(batch[K.POSITIONS].shape[0]), int(batch[K.CELL].shape[0])
    shapes: dict[str, tuple[int, ...]] = {
        K.ENERGY: (n_structures,), K.PER_ATOM_ENERGY: (n_atoms,), K.DESCRIPTORS: (n_atoms,), K.CENTER_MASK: (n_atoms,),
    }
    if compute_forces:
        shapes[K.FORCES] = (n_atoms, 3)
    if compute_stress:
        shapes[K.STRESS] = (n_structures, 3, 3)
        shapes[VIRIAL] = (n_structures, 3, 3)
    return shapes


def check_outputs(
    out: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    *,
    compute_forces: bool = True,
    compute_stress: bool = False,
) -> None:
    """Raise ``ValueError`` when ``out`` lacks a promised key or has a wrong shape or dtype for ``batch``."""
    for key, shape in output_shapes(batch, compute_forces=compute_forces, compute_stress=compute_stress).items():
        if key not in out:
            raise ValueError(f"missing output {key!r}")
        got = tuple(out[key].shape)
        if got[: len(shape)] != shape or (key != K.DESCRIPTORS and len(got) != len(shape)):
            tail = " + (F,)" if key == K.DESCRIPTORS else ""
            raise ValueError(f"output {key!r} has shape {got}, expected {shape}{tail}")
        want_bool = key == K.CENTER_MASK
        if (out[key].dtype == torch.bool) != want_bool or (not want_bool and not out[key].dtype.is_floating_point):
            raise ValueError(f"output {key!r} has dtype {out[key].dtype}")
