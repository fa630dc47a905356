"""The adaptive HF/LF mixture: a smooth per-atom switching weight, one conserved energy.

Every atom i has a weight ``lambda_i(R)`` in [0, 1] of the HF expert (the LF expert gets ``1 - lambda_i``):

    E(R) = sum_i [ lambda_i(R) e_i^HF(R) + (1 - lambda_i(R)) e_i^LF(R) ],

    lambda_i = 1 - prod_{(j, S)} (1 - s(d_ijS)),     s(d) = 1 - 10 x^3 + 15 x^4 - 6 x^5,
    x = clip((d - r_in) / (r_out - r_in), 0, 1),

where the product runs over every adsorbate atom j (species ``regions.adsorbate_species``, default C and
O) and every periodic image S of it (``d_ijS = |R_j + S cell - R_i|``; for cells wider than ``2 r_out``
this is the minimum image, and in smaller cells the product over images keeps lambda smooth where a min
over images would kink). The switch ``s`` is 1 for ``d <= r_in``, 0 for ``d >= r_out`` and C2 at both
radii (value, first and second derivative continuous); the product is smooth everywhere, also where an
atom is equidistant from two adsorbate atoms (no min over atoms). Adsorbate atoms have ``lambda = 1``
(their own pair ``d_jj = 0`` is never formed). Forces and stress come from ONE autograd pass over the
total, through the experts and through lambda (:func:`pipeline.models.evaluate_with_derivatives`, as the
static :class:`~pipeline.md.potential.MixturePotential`); lambda depends on pair vectors only, so the
total momentum is conserved and the strain derivative (virial) is exact. With ``centres_per_chunk`` > 0
(:meth:`AdaptiveMixturePotential.set_centres_per_chunk`, as the static mixture) the centres are evaluated
in chunks, each with its own backward pass, summed: an HF chunk C gives ``sum_{i in C} lambda_i e_i^HF``,
an LF chunk ``sum_{i in C} (1 - lambda_i) e_i^LF``, lambda of the chunk's atoms recomputed in the chunk's
pass (so its gradient reaches the adsorbate atoms and the strain): the same function and derivatives, to
rounding, at a cost per atom that does not grow with the system. The chunks hold only the atoms of the
kept sets (below) whose term may be nonzero at the current positions (:meth:`AdaptiveSets.active`), i.e.
the cost of margin 0 without its rebuilds.

LF never saw C or O in training (``train.lf_data: bulk_atoms``). An atom with ``lambda < 1`` has every
adsorbate atom farther than ``r_in``; Allegro is strictly local (an atom's energy depends on neighbours
within ``r_max`` only), so with ``r_in >= lf.r_max`` the LF expert never sees C/O. The constructor
enforces ``r_in >= lf.r_max`` (``allow_lf_near_adsorbate=True`` lifts it, for studies only).

Cost: HF evaluates only centres with ``lambda > 0``, LF only centres with ``lambda < 1`` (centre-subset
evaluation; every atom is a neighbour). The centre sets are kept between calls with a margin, like a
Verlet skin (:class:`AdaptiveCentres`): built at positions R0 from the adsorbate pairs within
``r_out + margin``, the HF set holds every atom within ``r_out + margin`` of an adsorbate image (and the
adsorbates), the LF set every non-adsorbate atom with no adsorbate image within ``r_in - margin``. While no
atom has moved more than ``margin / 2`` from R0, no pair distance changed by more than ``margin``, so the
sets still contain every atom with ``lambda > 0`` (HF) and ``lambda < 1`` (LF), and the stored pairs
every pair closer than ``r_out``. An atom in a set whose weight is exactly 0 (HF) or 1 (LF) contributes
exactly zero, with zero gradient: the sets change the cost only, never the energy or forces. The sets
are rebuilt when an atom moved further (this covers an atom wrapped back into the cell), or the cell,
periodicity, atoms or species changed.

Weights can be forced (own input ``weights``, ``(n_atoms,)`` in [0, 1]): then the sets are exactly
``lambda > 0`` and ``lambda < 1`` and nothing depends on positions; the static partition is the special
case ``weights = (expert == HF)`` (:meth:`AdaptiveMixturePotential.weights_from_expert`), and equals
:class:`~pipeline.md.potential.MixturePotential` with that partition.

MD: :class:`AdaptiveEvaluator` evaluates the mixture for the LAMMPS callback of the MD stage
(``md.partition.mode: adaptive``, :mod:`pipeline.md.stage`) and the speed table, as
:class:`~pipeline.md.evaluator.MixtureEvaluator` does the static one, and reports the HF and LF centres and
lambda of every call; on one MPI rank only (:data:`SINGLE_RANK_REASON`). :func:`adaptive_mixture` builds the
mixture from ``md.partition.adaptive``; :func:`switching_weights` gives lambda of a structure without the
experts (the partition picture).

Outputs (besides the contract's): :data:`LAMBDA` ``(n_atoms,)`` (every atom's weight, also of
non-centres), :data:`~pipeline.models.contract.EXPERT_WEIGHTS` ``(n_atoms, 2)`` (columns ``lambda``,
``1 - lambda`` on evaluated atoms, zero rows elsewhere), :data:`HF_CENTRES` / :data:`LF_CENTRES`
``(n_atoms,)`` bool (the atoms each expert evaluated; :func:`centre_counts`) and
:data:`ENERGY_DISAGREEMENT` ``(n_atoms,)`` eV (``e^HF - e^LF`` on the atoms evaluated by both, 0
elsewhere).

>>> import torch
>>> from ase.build import fcc111, add_adsorbate
>>> from pipeline.data.neighbors import collate
>>> from pipeline.models import build_model
>>> from pipeline.models.testing import small_config
>>> hf = build_model(small_config(), ("Pt", "C", "O"), dtype=torch.float64, seed=0)
>>> lf = build_model(small_config(l_max=1, num_layers=1, r_max=3.5), ("Pt", "C", "O"), dtype=torch.float64, seed=1)
>>> pot = AdaptiveMixturePotential(hf, lf)  # r_in = lf.r_max = 3.5, r_out = 5.0, margin 0.5
>>> slab = fcc111("Pt", size=(3, 3, 3), vacuum=6.0); add_adsorbate(slab, "C", 1.85, "ontop")
>>> out = pot(collate([slab], species=pot.species, r_max=pot.r_max, with_targets=False))
>>> out["forces"].shape, float(out["lambda"][-1].detach()), centre_counts(out)["hf"] < len(slab)
(torch.Size([28, 3]), 1.0, True)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from pipeline.data import keys as K
from pipeline.config import MDAdaptiveConfig
from pipeline.md.evaluator import SystemEvaluator, VerletBatch, pair_lengths
from pipeline.md.potential import CentreChunking, EdgeSplit, ExpertCall
from pipeline.models import AllegroModel, edge_vectors, evaluate_with_derivatives, load_checkpoint
from pipeline.models.calculator import PotentialCalculator
from pipeline.models.contract import EXPERT_WEIGHTS, VIRIAL
from pipeline.models.geometry import centre_mask

__all__ = [
    "ENERGY_DISAGREEMENT", "HF_CENTRES", "LAMBDA", "LF_CENTRES", "SINGLE_RANK_REASON", "AdaptiveCalculator",
    "AdaptiveCentres", "AdaptiveEvaluator", "AdaptiveMixturePotential", "AdaptiveSets", "adaptive_mixture",
    "adsorbate_pairs", "centre_counts", "switch", "switching_weights",
]

HF, LF = 0, 1  # expert numbering, as pipeline.md.partition
LAMBDA = "lambda"  # (n_atoms,) float | HF weight of every atom
HF_CENTRES = "hf_centres"  # (n_atoms,) bool | atoms evaluated by the HF expert
LF_CENTRES = "lf_centres"  # (n_atoms,) bool | atoms evaluated by the LF expert
ENERGY_DISAGREEMENT = "energy_disagreement"  # (n_atoms,) float | e^HF - e^LF where both evaluated, else 0, eV

DEFAULT_SHELL_A = 1.5  # r_out - r_in by default, A
DEFAULT_MARGIN_A = 0.5  # rebuilds are cheap (pairs with the few adsorbate atoms only): keep the sets tight


def switch(d: torch.Tensor, r_in: float, r_out: float) -> torch.Tensor:
    """C2 switch: 1 for ``d <= r_in``, 0 for ``d >= r_out``, ``1 - 10x^3 + 15x^4 - 6x^5`` between
    (``x = (d - r_in) / (r_out - r_in)``); value, first and second derivative continuous at both radii."""
    x = ((d - r_in) / (r_out - r_in)).clamp(0.0, 1.0)
    return 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)


def adsorbate_pairs(
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    batch_index: torch.Tensor,
    adsorbate: torch.Tensor,
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (non-adsorbate atom i, adsorbate atom j of its structure, lattice shift S) closer than ``cutoff``.

    Parameters
    ----------
    positions : (n_atoms, 3) tensor, A
    cell : (n_structures, 3, 3) tensor, rows = cell vectors, A
    pbc : (n_structures, 3) bool tensor
    batch_index : (n_atoms,) int tensor
    adsorbate : (n_atoms,) bool tensor
    cutoff : float, A

    Returns
    -------
    edge_index : (2, P) int64
        ``[i, j]``, sorted by ``i``.
    shifts : (P, 3) int64
        ``S`` with ``d_ijS = pos[j] - pos[i] + S @ cell`` (the convention of :func:`pipeline.models.edge_vectors`).
    lengths : (P,) float64
        ``|d_ijS|``, A.
    """
    device = positions.device
    pos = positions.detach().to(torch.float64)
    centres, neighbours, all_shifts, all_lengths = [], [], [], []
    for b in range(int(cell.shape[0])):
        mine = batch_index == b
        atoms = torch.nonzero(mine & ~adsorbate).squeeze(1)
        ads = torch.nonzero(mine & adsorbate).squeeze(1)
        if atoms.numel() == 0 or ads.numel() == 0:
            continue
        c = cell[b].detach().to(torch.float64)
        periodic = torch.nonzero(pbc[b]).squeeze(1)
        disp = pos.index_select(0, ads).unsqueeze(0) - pos.index_select(0, atoms).unsqueeze(1)  # [n, m, 3]
        base = torch.zeros(*disp.shape[:2], 3, dtype=torch.int64, device=device)
        reach = [0, 0, 0]
        if periodic.numel():
            inverse = torch.linalg.pinv(c.index_select(0, periodic))  # [3, p]
            base[..., periodic] = -torch.round(disp @ inverse).long()  # wrapped: fractional parts in [-1/2, 1/2]
            widths = 1.0 / torch.linalg.vector_norm(inverse, dim=0)  # spacing of the lattice planes, [p]
            for k, width in zip(periodic.tolist(), widths.tolist()):
                reach[k] = int(math.ceil(cutoff / width + 0.5))
        images = torch.tensor(list(itertools.product(*(range(-r, r + 1) for r in reach))), dtype=torch.int64,
                              device=device)  # [n_images, 3]
        shifts = base.unsqueeze(2) + images  # [n, m, n_images, 3]
        vectors = disp.unsqueeze(2) + shifts.to(torch.float64) @ c  # [n, m, n_images, 3]
        lengths = torch.linalg.vector_norm(vectors, dim=-1)
        i, j, k = torch.nonzero(lengths < cutoff, as_tuple=True)
        centres.append(atoms[i])
        neighbours.append(ads[j])
        all_shifts.append(shifts[i, j, k])
        all_lengths.append(lengths[i, j, k])
    if not centres:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return torch.stack([empty, empty]), torch.zeros(0, 3, dtype=torch.int64, device=device), \
            torch.zeros(0, dtype=torch.float64, device=device)
    centre = torch.cat(centres)
    order = torch.argsort(centre, stable=True)
    edge_index = torch.stack([centre, torch.cat(neighbours)])[:, order]
    return edge_index, torch.cat(all_shifts)[order], torch.cat(all_lengths)[order]


@dataclass(frozen=True)
class AdaptiveSets:
    """Centre sets and adsorbate pairs of one build (see :class:`AdaptiveCentres`).

    Attributes
    ----------
    edge_index, shifts : (2, P), (P, 3) int64
        Adsorbate pairs ``[i, j]`` within ``r_out + margin`` at the build, sorted by ``i``.
    row, column : (P,) int64
        Slot of each pair in the ``(n_rows, width)`` table whose row products give ``1 - lambda``.
    row_atom : (n_rows,) int64
        Atom of each row (the atoms with at least one pair).
    width : int
        Most pairs of one atom.
    hf, lf : (n_atoms,) bool
        HF set (may have ``lambda > 0``) and LF set (may have ``lambda < 1``).
    adsorbate : (n_atoms,) bool
    """

    edge_index: torch.Tensor
    shifts: torch.Tensor
    row: torch.Tensor
    column: torch.Tensor
    row_atom: torch.Tensor
    width: int
    hf: torch.Tensor
    lf: torch.Tensor
    adsorbate: torch.Tensor

    @classmethod
    def build(
        cls, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, batch_index: torch.Tensor,
        adsorbate: torch.Tensor, *, r_in: float, r_out: float, margin: float,
    ) -> AdaptiveSets:
        """The sets at ``positions``, valid while no atom moves more than ``margin / 2``."""
        edge_index, shifts, lengths = adsorbate_pairs(positions, cell, pbc, batch_index, adsorbate, r_out + margin)
        n_atoms = positions.shape[0]
        centre = edge_index[0]
        row_atom, counts = torch.unique_consecutive(centre, return_counts=True)
        row = torch.repeat_interleave(torch.arange(row_atom.numel(), device=centre.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        column = torch.arange(centre.numel(), device=centre.device) - starts.index_select(0, row)
        hf = adsorbate.clone()
        hf[centre] = True  # every pair is within r_out + margin
        near = torch.zeros(n_atoms, dtype=torch.bool, device=centre.device)
        near[centre[lengths <= r_in - margin]] = True
        lf = ~adsorbate & ~near
        return cls(edge_index=edge_index, shifts=shifts, row=row, column=column, row_atom=row_atom,
                   width=int(counts.max()) if counts.numel() else 0, hf=hf, lf=lf, adsorbate=adsorbate)

    def weights(
        self, positions: torch.Tensor, cell: torch.Tensor, batch_index: torch.Tensor, *, r_in: float, r_out: float,
        strain: torch.Tensor | None = None, atoms: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``lambda`` ``(n_atoms,)``, differentiable in ``positions`` and ``strain``.

        ``atoms = (first, stop)``: only the non-adsorbate atoms ``first <= i < stop`` get their weight (bit-identical
        to the full evaluation, with its dependence on the adsorbate positions), the others 0 (adsorbates 1);
        the cost is that of their pairs only (a contiguous slice: the pairs are sorted by ``i``).
        """
        lam = positions.new_zeros(positions.shape[0])
        edge_index, shifts, row, column, row_atom = self.edge_index, self.shifts, self.row, self.column, self.row_atom
        if atoms is not None and edge_index.shape[1]:
            bounds = torch.tensor([int(atoms[0]), int(atoms[1])], dtype=edge_index.dtype, device=edge_index.device)
            lo, hi = (int(b) for b in torch.searchsorted(edge_index[0].contiguous(), bounds))
            first_row = int(row[lo]) if hi > lo else 0
            stop_row = int(row[hi - 1]) + 1 if hi > lo else 0
            edge_index, shifts, column = edge_index[:, lo:hi], shifts[lo:hi], column[lo:hi]
            row, row_atom = row[lo:hi] - first_row, row_atom[first_row:stop_row]
        if edge_index.shape[1]:
            vectors = edge_vectors(positions, cell, batch_index, edge_index, shifts, strain)
            squared = (vectors * vectors).sum(dim=1)
            # below r_in the switch is constant: the clamp keeps the gradient finite for coincident atoms
            distance = torch.sqrt(squared.clamp(min=(0.5 * r_in) ** 2))
            factor = 1.0 - switch(distance, r_in, r_out)  # [P], 1 beyond r_out
            table = positions.new_ones(row_atom.numel(), self.width).index_put((row, column), factor)
            lam = lam.index_add(0, row_atom, 1.0 - table.prod(dim=1))
        return lam + self.adsorbate.to(lam.dtype)

    def active(
        self, positions: torch.Tensor, cell: torch.Tensor, batch_index: torch.Tensor, *, r_in: float, r_out: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hf, lf)`` ``(n_atoms,)`` bool: the atoms of :attr:`hf` / :attr:`lf` whose HF / LF term may be nonzero
        at ``positions``, from the kept pairs (no rebuild).

        HF: the adsorbates and the atoms with a pair shorter than ``r_out``; LF: the non-adsorbate atoms with
        no pair within ``r_in``. An atom left out has ``lambda`` exactly 0 (every pair at ``x >= 1``) or 1 (a
        factor exactly 0 at ``x <= 0``) with exactly zero gradient (the switch is flat there and the clamp
        stops the gradient), so its term and its derivatives are exactly zero. The distances are those of
        :meth:`weights` (same formula), so the comparison agrees with its clamp.
        """
        hf, lf = self.adsorbate.clone(), ~self.adsorbate
        if self.edge_index.shape[1]:
            with torch.no_grad():
                vectors = edge_vectors(positions.detach(), cell, batch_index, self.edge_index, self.shifts)
                squared = (vectors * vectors).sum(dim=1)
                distance = torch.sqrt(squared.clamp(min=(0.5 * r_in) ** 2))
            centre = self.edge_index[0]
            hf[centre[distance < r_out]] = True
            lf[centre[distance <= r_in]] = False
        return hf & self.hf, lf & self.lf


class AdaptiveCentres:
    """The centre sets of a system, kept between calls with a margin (a Verlet skin for the partition).

    Parameters
    ----------
    r_in, r_out : float
        Switching radii, A.
    margin : float
        Margin, A (0 = new sets at every call). The sets are rebuilt when an atom moved more than
        ``margin / 2`` since the last build, or the structure (atoms, species, cell, periodicity) changed.

    Attributes
    ----------
    sets : AdaptiveSets or None
        The current sets.
    n_builds, n_calls : int
    """

    def __init__(self, *, r_in: float, r_out: float, margin: float) -> None:
        if margin < 0:
            raise ValueError(f"the margin must be >= 0, got {margin}")
        self.r_in, self.r_out, self.margin = float(r_in), float(r_out), float(margin)
        self.sets: AdaptiveSets | None = None
        self.n_builds = 0
        self.n_calls = 0
        self._reference: tuple[torch.Tensor, ...] | None = None

    def reset(self) -> None:
        """Forget the sets (the next call builds new ones)."""
        self.sets, self._reference = None, None

    def _valid(self, positions: torch.Tensor, structure: tuple[torch.Tensor, ...]) -> bool:
        if self.sets is None or self._reference is None or self.margin == 0:
            return False
        reference, *old = self._reference
        if reference.shape != positions.shape or reference.device != positions.device:
            return False
        for a, b in zip(old, structure):
            if a.shape != b.shape or not (torch.equal(a, b) if not a.dtype.is_floating_point
                                          else bool(torch.allclose(a, b, rtol=0.0, atol=1e-10))):
                return False
        if positions.shape[0] == 0:
            return True
        moved = torch.linalg.vector_norm(positions - reference, dim=1).max()  # wrapped atoms move a lot: rebuild
        return float(moved) <= 0.5 * self.margin

    def update(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, batch_index: torch.Tensor,
        adsorbate: torch.Tensor,
    ) -> AdaptiveSets:
        """The sets valid at ``positions`` (rebuilt if needed)."""
        positions = positions.detach().to(torch.float64)
        cell = cell.detach().to(torch.float64)
        structure = (cell, pbc, batch_index, adsorbate)
        self.n_calls += 1
        if not self._valid(positions, structure):
            self.sets = AdaptiveSets.build(positions, cell, pbc, batch_index, adsorbate, r_in=self.r_in,
                                           r_out=self.r_out, margin=self.margin)
            self._reference = (positions.clone(), *(t.clone() for t in structure))
            self.n_builds += 1
        return self.sets


class AdaptiveMixturePotential(CentreChunking, torch.nn.Module):
    """HF/LF mixture with a smooth, position-dependent HF weight per atom (module docstring).

    Parameters
    ----------
    hf, lf : AllegroModel
        The experts (0 = HF, 1 = LF); same species and dtype.
    r_in : float, optional
        Inner radius, A: atoms this close to an adsorbate atom are pure HF. Default ``lf.r_max``; must be
        ``>= lf.r_max`` (LF never sees C/O) unless ``allow_lf_near_adsorbate``.
    r_out : float, optional
        Outer radius, A: atoms this far from every adsorbate atom are pure LF. Default ``r_in + 1.5``.
    margin : float
        Margin of the centre sets, A (:class:`AdaptiveCentres`); cost only.
    adsorbate_species : sequence of str
        The adsorbate elements (``regions.adsorbate_species``); those absent from the species are ignored.
    names : two str
        Expert names (for :class:`~pipeline.md.potential.ExpertCall` hooks and timings).
    allow_lf_near_adsorbate : bool
        Accept ``r_in < lf.r_max`` (LF then sees C/O it was never trained on).

    Attributes
    ----------
    experts : ModuleList [hf, lf]
    calls : ModuleList of ExpertCall
        ``calls[k]`` evaluates expert ``k`` (hook it to observe or time that expert).
    centres : AdaptiveCentres
        The centre sets kept between calls (cost only) and their build count.
    """

    def __init__(
        self,
        hf: AllegroModel,
        lf: AllegroModel,
        *,
        r_in: float | None = None,
        r_out: float | None = None,
        margin: float = DEFAULT_MARGIN_A,
        adsorbate_species: Sequence[str] = ("C", "O"),
        names: Sequence[str] = ("hf", "lf"),
        allow_lf_near_adsorbate: bool = False,
    ) -> None:
        super().__init__()
        if tuple(hf.species) != tuple(lf.species):
            raise ValueError(f"the experts' species differ: {list(hf.species)} and {list(lf.species)}")
        if hf.dtype != lf.dtype:
            raise ValueError(f"the experts' dtypes differ: {hf.dtype} and {lf.dtype}: build both in one dtype")
        names = tuple(names)
        if len(names) != 2 or names[0] == names[1]:
            raise ValueError(f"need two distinct expert names, got {list(names)}")
        r_in = float(lf.r_max if r_in is None else r_in)
        r_out = float(r_in + DEFAULT_SHELL_A if r_out is None else r_out)
        if not 0.0 < r_in < r_out:
            raise ValueError(f"need 0 < r_in < r_out, got r_in {r_in}, r_out {r_out}")
        if r_in < lf.r_max and not allow_lf_near_adsorbate:
            raise ValueError(
                f"r_in = {r_in} A is below the LF cutoff {lf.r_max} A: LF (trained without C/O) would see "
                f"adsorbate atoms; use r_in >= {lf.r_max} or pass allow_lf_near_adsorbate=True"
            )
        self.experts = torch.nn.ModuleList([hf, lf])
        self.names = names
        self.species = tuple(hf.species)
        self.calls = torch.nn.ModuleList(ExpertCall(k, name) for k, name in enumerate(names))
        self.centres_per_chunk: int | tuple[int, ...] = 0  # set_centres_per_chunk
        self.r_in, self.r_out = r_in, r_out
        self.adsorbate_species = tuple(s for s in adsorbate_species if s in self.species)
        self.register_buffer(
            "adsorbate_index", torch.tensor([self.species.index(s) for s in self.adsorbate_species], dtype=torch.int64),
            persistent=False,
        )
        self.centres = AdaptiveCentres(r_in=r_in, r_out=r_out, margin=margin)

    @property
    def r_max(self) -> float:
        """Largest expert cutoff, A: the neighbour list must reach at least this far (lambda needs no graph)."""
        return max(float(m.r_max) for m in self.experts)

    @property
    def dtype(self) -> torch.dtype:
        return self.experts[0].dtype

    @property
    def margin(self) -> float:
        return self.centres.margin

    def centre_chunks(self, masks: Sequence[torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
        """``(expert index, centre mask (n_atoms,))`` of every chunk: the centres of ``masks[k]`` (expert
        ``k``'s centre set) in index order, at most :meth:`chunk_size` per chunk (shell atoms are in one HF
        chunk and one LF chunk)."""
        chunks = []
        for k, mine in enumerate(masks):
            index = torch.nonzero(mine).squeeze(1)
            n = int(index.numel())
            size = self.chunk_size(k) or max(n, 1)
            for start in range(0, n, size):
                mask = torch.zeros_like(mine)
                mask[index[start:start + size]] = True
                chunks.append((k, mask))
        return chunks

    @staticmethod
    def weights_from_expert(expert: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Forced weights of a static partition: ``1.0`` where ``expert == HF``, else ``0.0`` (float64)."""
        return (torch.as_tensor(expert) == HF).to(torch.float64)

    def adsorbate_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Boolean ``(n_atoms,)``: the adsorbate atoms of the batch."""
        return torch.isin(batch[K.SPECIES], self.adsorbate_index.to(batch[K.SPECIES].device))

    def check_weights(self, weights: Any, n_atoms: int, like: torch.Tensor) -> torch.Tensor:
        """Forced weights as a ``(n_atoms,)`` tensor like ``like``; wrong shape or values outside [0, 1] raise."""
        weights = torch.as_tensor(weights, device=like.device)
        if weights.shape != (n_atoms,):
            raise ValueError(f"weights must have shape ({n_atoms},), got {tuple(weights.shape)}")
        weights = weights.to(like.dtype)
        if n_atoms and not bool(((weights >= 0) & (weights <= 1)).all()):
            raise ValueError(f"weights must lie in [0, 1], got [{float(weights.min())}, {float(weights.max())}]")
        return weights

    def sets(self, batch: dict[str, torch.Tensor], positions: torch.Tensor | None = None) -> AdaptiveSets:
        """The centre sets for the batch's positions (kept, or rebuilt, by :attr:`centres`)."""
        pos = batch[K.POSITIONS] if positions is None else positions
        return self.centres.update(pos, batch[K.CELL], batch[K.PBC].to(pos.device).bool().reshape(-1, 3),
                                   batch[K.BATCH], self.adsorbate_mask(batch))

    def switching(
        self, batch: dict[str, torch.Tensor], *, positions: torch.Tensor | None = None,
        strain: torch.Tensor | None = None, sets: AdaptiveSets | None = None,
    ) -> torch.Tensor:
        """``lambda`` ``(n_atoms,)`` of the batch, differentiable in ``positions`` and ``strain``."""
        pos = batch[K.POSITIONS].to(self.dtype) if positions is None else positions
        sets = self.sets(batch, pos) if sets is None else sets
        return sets.weights(pos, batch[K.CELL], batch[K.BATCH], r_in=self.r_in, r_out=self.r_out, strain=strain)

    def split_edges(
        self, batch: dict[str, torch.Tensor], masks: Sequence[torch.Tensor], positions: torch.Tensor
    ) -> EdgeSplit:
        """Each expert's pairs of the shared list: centred on its centre set and shorter than its ``r_max``."""
        edge_index, shifts = batch[K.EDGE_INDEX], batch[K.EDGE_CELL_SHIFT]
        with torch.no_grad():
            vectors = edge_vectors(positions.detach(), batch[K.CELL], batch[K.BATCH], edge_index, shifts)
            lengths = torch.linalg.vector_norm(vectors, dim=1)
        split = []
        for model, mask in zip(self.experts, masks):
            keep = mask.index_select(0, edge_index[0]) & (lengths < model.r_max)
            split.append((edge_index[:, keep], shifts[keep]))
        return split

    def atomic_outputs(
        self,
        batch: dict[str, torch.Tensor],
        *,
        positions: torch.Tensor | None = None,
        strain: torch.Tensor | None = None,
        centers: torch.Tensor | Sequence[int] | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-atom energies ``lambda e^HF + (1 - lambda) e^LF``, without derivatives.

        Parameters
        ----------
        batch : dict
            Structure and graph keys (the graph may reach beyond an expert's cutoff).
        positions, strain : tensors, optional
            As in :meth:`pipeline.models.AllegroModel.atomic_outputs`; lambda depends on both.
        centers : bool mask (n_atoms,) or index tensor, optional
            Evaluate only these atoms.
        weights : (n_atoms,) float tensor in [0, 1], optional
            Forced HF weights (constant in the positions); default: lambda from the positions.

        Returns
        -------
        dict with :data:`keys.PER_ATOM_ENERGY`, :data:`keys.DESCRIPTORS` (each atom's from the expert of
        larger weight, zero-padded to the wider expert), :data:`keys.CENTER_MASK`,
        :data:`~pipeline.models.contract.EXPERT_WEIGHTS` ``(n_atoms, 2)``, :data:`LAMBDA`,
        :data:`HF_CENTRES`, :data:`LF_CENTRES`, :data:`ENERGY_DISAGREEMENT`.
        """
        pos = batch[K.POSITIONS].to(self.dtype) if positions is None else positions
        n_atoms = pos.shape[0]
        if weights is not None:
            lam = self.check_weights(weights, n_atoms, pos)
            hf_set, lf_set = lam > 0, lam < 1
        else:
            sets = self.sets(batch, pos)
            lam = self.switching(batch, positions=pos, strain=strain, sets=sets)
            hf_set, lf_set = sets.hf, sets.lf
        subset = centre_mask(centers, n_atoms, pos.device)
        masks = [hf_set, lf_set] if subset is None else [hf_set & subset, lf_set & subset]
        split = self.split_edges(batch, masks, pos)
        width = max(m.config.num_scalar_features for m in self.experts)
        energies, descriptors = [], []
        for model, call, mask, (edge_index, shifts) in zip(self.experts, self.calls, masks, split):
            if not bool(mask.any()):
                energies.append(pos.new_zeros(n_atoms))
                descriptors.append(pos.new_zeros(n_atoms, width))
                continue
            sub = dict(batch)
            sub[K.EDGE_INDEX], sub[K.EDGE_CELL_SHIFT] = edge_index, shifts
            out = call(model, sub, positions=pos, strain=strain, centers=mask)
            energies.append(out[K.PER_ATOM_ENERGY])  # zero outside the expert's centres
            f = out[K.DESCRIPTORS].shape[1]
            descriptors.append(torch.nn.functional.pad(out[K.DESCRIPTORS], (0, width - f)))
        e_hf, e_lf = energies
        return self._outputs(lam, energies, descriptors, masks, lam * e_hf + (1.0 - lam) * e_lf)

    @staticmethod
    def _outputs(
        lam: torch.Tensor, energies: Sequence[torch.Tensor], descriptors: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor], per_atom: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The outputs of :meth:`atomic_outputs` from lambda, each expert's per-atom energies and (padded)
        descriptors (zero outside its centres), the centre masks and the per-atom energies."""
        e_hf, e_lf = energies
        evaluated = masks[HF] | masks[LF]
        both = masks[HF] & masks[LF]
        expert_weights = torch.stack([lam, 1.0 - lam], dim=1) * evaluated.unsqueeze(1).to(lam.dtype)
        return {
            K.PER_ATOM_ENERGY: per_atom,
            K.DESCRIPTORS: torch.where((lam >= 0.5).unsqueeze(1), descriptors[HF], descriptors[LF]),
            K.CENTER_MASK: evaluated,
            EXPERT_WEIGHTS: expert_weights,
            LAMBDA: lam,
            HF_CENTRES: masks[HF],
            LF_CENTRES: masks[LF],
            ENERGY_DISAGREEMENT: torch.where(both, e_hf - e_lf, torch.zeros_like(e_hf)),
        }

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        centers: torch.Tensor | Sequence[int] | None = None,
        compute_forces: bool = True,
        compute_stress: bool = False,
        weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energy, per-atom energies, forces and optionally stress and virial (one backward pass through
        both experts and lambda): the call of the :class:`~pipeline.models.contract.Potential` contract,
        with the own input ``weights`` (forced HF weights, optional) and the outputs of :meth:`atomic_outputs`.
        With :attr:`centres_per_chunk` > 0: one forward and backward pass per chunk of centres, summed
        (:meth:`_chunked_forward`)."""
        if any(self.chunk_size(k) for k in range(len(self.experts))):
            return self._chunked_forward(batch, centers=centers, compute_forces=compute_forces,
                                         compute_stress=compute_stress, weights=weights)
        return self._pass(batch, centers=centers, compute_forces=compute_forces, compute_stress=compute_stress,
                          weights=weights)

    def _pass(
        self, batch: dict[str, torch.Tensor], *, centers: torch.Tensor | Sequence[int] | None, compute_forces: bool,
        compute_stress: bool, weights: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """One forward pass over ``centers`` (None: all atoms) and one backward pass."""
        return evaluate_with_derivatives(
            lambda pos, strain: self.atomic_outputs(batch, positions=pos, strain=strain, centers=centers,
                                                    weights=weights),
            batch,
            dtype=self.dtype,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=False,
        )

    def _chunked_forward(
        self, batch: dict[str, torch.Tensor], *, centers: torch.Tensor | Sequence[int] | None, compute_forces: bool,
        compute_stress: bool, weights: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with :attr:`centres_per_chunk` > 0, exact to rounding.

        ``E = sum_c E_c`` over the chunks of :meth:`centre_chunks`: an HF chunk ``C`` contributes
        ``sum_{i in C} lambda_i e_i^HF``, an LF chunk ``sum_{i in C} (1 - lambda_i) e_i^LF``, each evaluated
        with its own forward and backward pass. ``lambda_i`` of the chunk's atoms is recomputed in its pass
        from their adsorbate pairs (:meth:`AdaptiveSets.weights` on the chunk's slice of pairs), so its
        gradient reaches atom ``i``, the adsorbate atoms and the strain; forces, stress and virial are the
        sums over chunks. The centre sets are updated once per call, and only their atoms whose terms may be
        nonzero at the current positions are evaluated (:meth:`AdaptiveSets.active`: the margin's atoms of
        weight exactly 0 or 1 are skipped, exactly); :data:`HF_CENTRES`, :data:`LF_CENTRES` and
        :data:`ENERGY_DISAGREEMENT` report these. Per-atom energies, lambda and the other outputs are
        assembled as in :meth:`atomic_outputs`, the energy summed from the per-atom ones.
        """
        pos = batch[K.POSITIONS].to(self.dtype)
        n_atoms = pos.shape[0]
        if weights is not None:
            forced, sets = self.check_weights(weights, n_atoms, pos), None
            hf_set, lf_set = forced > 0, forced < 1
        else:  # the atoms of the kept sets whose terms may be nonzero now (the sets hold the pairs)
            forced, sets = None, self.sets(batch, pos)
            hf_set, lf_set = sets.active(pos, batch[K.CELL], batch[K.BATCH], r_in=self.r_in, r_out=self.r_out)
        subset = centre_mask(centers, n_atoms, pos.device)
        masks = [hf_set, lf_set] if subset is None else [hf_set & subset, lf_set & subset]
        chunks = self.centre_chunks(masks)
        if not chunks:  # no centre at all: one pass gives the zeros with the right shapes
            return self._pass(batch, centers=centers, compute_forces=compute_forces, compute_stress=compute_stress,
                              weights=weights)
        split = self.split_edges(batch, masks, pos)
        width = max(m.config.num_scalar_features for m in self.experts)
        energies = [pos.new_zeros(n_atoms) for _ in self.experts]
        descriptors = [pos.new_zeros(n_atoms, width) for _ in self.experts]
        per_atom = pos.new_zeros(n_atoms)
        totals: dict[str, torch.Tensor] = {}

        for k, chunk in chunks:
            index = torch.nonzero(chunk).squeeze(1)
            atoms = (int(index[0]), int(index[-1]) + 1)
            sub = dict(batch)
            sub[K.EDGE_INDEX], sub[K.EDGE_CELL_SHIFT] = split[k]

            def outputs(positions: torch.Tensor, strain: torch.Tensor | None, k: int = k, chunk: torch.Tensor = chunk,
                        atoms: tuple[int, int] = atoms, sub: dict[str, torch.Tensor] = sub) -> dict[str, torch.Tensor]:
                if forced is not None:
                    lam = forced
                else:
                    lam = sets.weights(positions, batch[K.CELL], batch[K.BATCH], r_in=self.r_in, r_out=self.r_out,
                                       strain=strain, atoms=atoms)
                out = self.calls[k](self.experts[k], sub, positions=positions, strain=strain, centers=chunk)
                energy = out[K.PER_ATOM_ENERGY]  # zero outside the chunk
                weight = lam if k == HF else 1.0 - lam
                return {K.PER_ATOM_ENERGY: weight * energy, "expert_energy": energy,
                        K.DESCRIPTORS: out[K.DESCRIPTORS]}

            out = evaluate_with_derivatives(outputs, batch, dtype=self.dtype, compute_forces=compute_forces,
                                            compute_stress=compute_stress, create_graph=False)
            per_atom = per_atom + out[K.PER_ATOM_ENERGY].detach()
            energies[k] = energies[k] + out["expert_energy"].detach()
            f = out[K.DESCRIPTORS].shape[1]
            descriptors[k] = descriptors[k] + torch.nn.functional.pad(out[K.DESCRIPTORS].detach(), (0, width - f))
            for key in (K.FORCES, K.STRESS, VIRIAL):
                if key in out:
                    totals[key] = out[key].detach() if key not in totals else totals[key] + out[key].detach()
        with torch.no_grad():
            lam = forced if forced is not None else sets.weights(pos, batch[K.CELL], batch[K.BATCH], r_in=self.r_in,
                                                                  r_out=self.r_out)
        result = self._outputs(lam, energies, descriptors, masks, per_atom)
        result[K.ENERGY] = per_atom.new_zeros(int(batch[K.CELL].shape[0])).index_add(0, batch[K.BATCH], per_atom)
        result.update(totals)
        return result

    def extra_repr(self) -> str:
        return (f"names={list(self.names)}, species={list(self.species)}, r_in={self.r_in}, r_out={self.r_out}, "
                f"margin={self.margin}, adsorbate_species={list(self.adsorbate_species)}")


def centre_counts(out: dict[str, torch.Tensor]) -> dict[str, int]:
    """Centres evaluated by each expert in one evaluation: ``hf``, ``lf`` and ``shell`` (both)."""
    hf, lf = out[HF_CENTRES], out[LF_CENTRES]
    return {"hf": int(hf.sum()), "lf": int(lf.sum()), "shell": int((hf & lf).sum())}


def adaptive_mixture(
    hf: AllegroModel, lf: AllegroModel, settings: MDAdaptiveConfig, *, adsorbate_species: Sequence[str] = ("C", "O"),
) -> AdaptiveMixturePotential:
    """The adaptive mixture of ``hf`` and ``lf`` with the radii and margin of ``md.partition.adaptive``
    (``settings``; the inner radius defaults to the LF expert's ``r_max``, :meth:`MDAdaptiveConfig.radii`)."""
    r_in, r_out = settings.radii(lf.r_max)
    return AdaptiveMixturePotential(hf, lf, r_in=r_in, r_out=r_out, margin=settings.margin_a,
                                    adsorbate_species=adsorbate_species)


def switching_weights(
    atoms: Atoms, *, r_in: float, r_out: float, adsorbate_species: Sequence[str] = ("C", "O"),
) -> np.ndarray:
    """``lambda`` ``(n_atoms,)`` (float64) of every atom of ``atoms`` at its positions, without the experts
    (it depends on the positions, species and radii only; A)."""
    positions = torch.as_tensor(atoms.positions, dtype=torch.float64)
    cell = torch.as_tensor(atoms.cell.array, dtype=torch.float64).reshape(1, 3, 3)
    pbc = torch.as_tensor(np.asarray(atoms.pbc, dtype=bool)).reshape(1, 3)
    batch_index = torch.zeros(len(atoms), dtype=torch.int64)
    adsorbate = torch.as_tensor(np.isin(atoms.get_chemical_symbols(), list(adsorbate_species)))
    sets = AdaptiveSets.build(positions, cell, pbc, batch_index, adsorbate, r_in=r_in, r_out=r_out, margin=0.0)
    with torch.no_grad():
        return sets.weights(positions, cell, batch_index, r_in=r_in, r_out=r_out).numpy()


# why an adaptive run cannot be split over MPI ranks (pipeline.md.lammps_driver, pipeline.md.stage)
SINGLE_RANK_REASON = (
    "the adaptive partition (md.partition.mode: adaptive) runs on one MPI rank only: an atom's switching weight "
    "depends on adsorbate atoms up to r_out away, beyond the per-rank scheme of fix external (each rank "
    "evaluates its local atoms with ghosts within 2 r_max + skin); set md.run.mpi_ranks: 1"
)


class AdaptiveEvaluator(SystemEvaluator):
    """Evaluate an :class:`AdaptiveMixturePotential` on one system whose atoms keep their identity (the MD
    stage's LAMMPS callback, the speed table), as :class:`~pipeline.md.evaluator.MixtureEvaluator` does
    the static mixture: Verlet list, timing per expert, :class:`~pipeline.md.evaluator.Evaluation` out.

    Every call goes through the potential's forward (one autograd pass over the total, or one per chunk),
    so the forces include the gradient of lambda and the per-atom energies ``lambda_i e_i^HF + (1 -
    lambda_i) e_i^LF`` sum to the energy. One MPI rank only (:data:`SINGLE_RANK_REASON`): there is no
    :meth:`~pipeline.md.evaluator.MixtureEvaluator.evaluate_domain`.

    Parameters
    ----------
    potential : AdaptiveMixturePotential
        The mixture (moved to ``device``, eval mode); its centre sets are kept between calls.
    numbers : (n_atoms,) int array
        Atomic numbers.
    skin : float
        Verlet skin, A (0 = rebuild the neighbour list at every call).
    device : str or torch.device, optional
    centres_per_chunk : int or sequence of int (hf, lf), optional
        Set the potential's ``centres_per_chunk`` (0 = one pass; default: leave it as it is).

    Attributes
    ----------
    As :class:`~pipeline.md.evaluator.SystemEvaluator`; after each call :attr:`centres` holds the HF and
    LF centres the experts evaluated (:func:`centre_counts`: with chunks, the atoms of nonzero weight;
    in one pass, the kept sets with their margin) and :attr:`weights` every atom's lambda.
    """

    single_rank_reason = SINGLE_RANK_REASON  # read by pipeline.md.lammps_driver.LammpsMD

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
        return {}, pair_lengths(batch, self.potential.dtype)

    def reset(self) -> None:
        """Forget the Verlet list and the centre sets (the next call builds both afresh)."""
        super().reset()
        self.potential.centres.reset()

    def _observe(self, out: dict[str, torch.Tensor]) -> None:
        counts = centre_counts(out)
        self.centres = {"hf": counts["hf"], "lf": counts["lf"]}
        self.weights = out[LAMBDA].detach().double().cpu().numpy()

    def timing_summary(self) -> dict[str, float]:
        """As :meth:`~pipeline.md.evaluator.SystemEvaluator.timing_summary`, plus the builds of the centre sets."""
        return {**super().timing_summary(), "centre_set_builds": self.potential.centres.n_builds}


class _SystemGraph:
    """Graph builder of :class:`AdaptiveCalculator`: a Verlet list kept between calls (new when the atoms change)."""

    def __init__(self, potential: AdaptiveMixturePotential, *, skin: float, device: torch.device) -> None:
        self.species, self.r_max, self.dtype = potential.species, potential.r_max, potential.dtype
        self.skin, self.device = float(skin), torch.device(device)
        self._batch: VerletBatch | None = None

    def __call__(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        if self._batch is None or not np.array_equal(self._batch.numbers, atoms.numbers):
            self._batch = VerletBatch(numbers=atoms.numbers, species=self.species, cutoff=self.r_max,
                                      skin=self.skin, dtype=self.dtype, device=self.device)
        return self._batch(atoms.positions, atoms.cell.array, atoms.pbc)


class AdaptiveCalculator(PotentialCalculator):
    """:class:`~pipeline.models.calculator.PotentialCalculator` of an :class:`AdaptiveMixturePotential`
    over a Verlet list kept between calls (energy, per-atom energies, forces, stress = ``-virial / V``).

    Parameters
    ----------
    potential : AdaptiveMixturePotential
    weights : (n_atoms,) array in [0, 1], optional
        Forced HF weights (e.g. a static partition); default: lambda from the positions.
    skin : float
        Verlet skin, A, of the neighbour list (0 = a new list at every call).
    device : str or torch.device, optional
    """

    def __init__(
        self,
        potential: AdaptiveMixturePotential,
        *,
        weights: np.ndarray | None = None,
        skin: float = 0.0,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> None:
        device = torch.device(device) if device is not None else next(potential.parameters()).device
        inputs = None if weights is None else {"weights": np.asarray(weights, dtype=np.float64)}
        graph = _SystemGraph(potential, skin=skin, device=device)
        super().__init__(potential, inputs=inputs, graph=graph, device=device, **kwargs)
        self.skin = float(skin)

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        *,
        r_in: float | None = None,
        r_out: float | None = None,
        margin: float = DEFAULT_MARGIN_A,
        adsorbate_species: Sequence[str] = ("C", "O"),
        names: Sequence[str] = ("hf", "lf"),
        allow_lf_near_adsorbate: bool = False,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        skin: float = 0.0,
    ) -> AdaptiveCalculator:
        """Calculator for the experts saved at ``paths`` (``[hf, lf]``)."""
        if len(paths) != 2:
            raise ValueError(f"need two checkpoints (hf, lf), got {len(paths)}")
        hf, lf = (load_checkpoint(p, dtype=dtype, map_location=device) for p in paths)
        potential = AdaptiveMixturePotential(hf, lf, r_in=r_in, r_out=r_out, margin=margin,
                                             adsorbate_species=adsorbate_species, names=names,
                                             allow_lf_near_adsorbate=allow_lf_near_adsorbate)
        return cls(potential, skin=skin, device=device)
