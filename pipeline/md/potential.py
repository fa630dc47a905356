"""The mixture-of-experts potential as one torch module over one shared neighbour list.

Every atom i belongs to one expert k(i) (static; see :mod:`pipeline.md.partition`), and

    E(R) = sum_i e_i^{k(i)}(R),

where expert k evaluates only its own centre atoms (centre-subset evaluation of
:meth:`pipeline.models.AllegroModel.atomic_outputs`); every atom serves as a neighbour of every
expert. The batch carries one neighbour list built with a cutoff at least as large as every expert's
``r_max`` (in MD, the largest ``r_max`` plus a Verlet skin); each expert uses the pairs centred on its
atoms and shorter than its own ``r_max`` (:meth:`MixturePotential.split_edges`). The per-atom energies
of all experts are summed and forces and stress come from ONE autograd pass over the total
(:func:`pipeline.models.evaluate_with_derivatives`), so the forces are exactly -dE/dR of one smooth
function and NVE conserves energy up to integrator error. With ``centres_per_chunk`` > 0 the centres are
evaluated in chunks, each with its own backward pass, and summed: the same function and derivatives (to
rounding), at a cost per atom that does not grow with the system (:meth:`MixturePotential.centre_chunks`).

With one expert and every atom assigned to it, the mixture is that expert; with two identical experts
it equals the single model.

The mixture is a :class:`~pipeline.models.contract.Potential` (inputs, centre subsets and outputs of
:mod:`pipeline.models.contract`) whose own input is ``expert``, the expert of every atom; it also
returns :data:`~pipeline.models.contract.EXPERT_WEIGHTS` (one-hot rows). It computes and nothing else:
it keeps no timings and never synchronises the device. Each expert is evaluated through its own
parameter-free :class:`ExpertCall` module (``potential.calls[k]``), so a caller can observe (and time)
every expert's evaluation from outside with standard forward hooks, as
:class:`pipeline.md.evaluator.MixtureEvaluator` does.

>>> import torch
>>> from ase.build import molecule
>>> from pipeline.data.neighbors import collate
>>> from pipeline.models import build_model
>>> from pipeline.models.testing import small_config
>>> hf = build_model(small_config(), ("Pt", "C", "O"), dtype=torch.float64, seed=0)
>>> lf = build_model(small_config(l_max=1, num_layers=1), ("Pt", "C", "O"), dtype=torch.float64, seed=1)
>>> moe = MixturePotential([hf, lf])
>>> batch = collate([molecule("CO")], species=moe.species, r_max=moe.r_max)
>>> out = moe(batch, expert=torch.tensor([0, 1]))
>>> out["forces"].shape, bool(torch.allclose(out["per_atom_energy"].sum(), out["energy"][0]))
(torch.Size([2, 3]), True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from pipeline.data import keys as K
from pipeline.models import AllegroModel, edge_vectors, evaluate_with_derivatives
from pipeline.models.contract import EXPERT_WEIGHTS
from pipeline.models.geometry import centre_mask

EdgeSplit = list[tuple[torch.Tensor, torch.Tensor]]  # per expert: (edge_index (2, E_k), shifts (E_k, 3))


class ExpertCall(torch.nn.Module):
    """One expert's :meth:`~pipeline.models.AllegroModel.atomic_outputs`, as a module call.

    Holds no parameters and no state (the expert is an argument), so the mixture's ``state_dict`` is
    unchanged. It exists so that the evaluation of expert ``index`` is a module call a caller can hook
    (:meth:`torch.nn.Module.register_forward_pre_hook` / ``register_forward_hook``), e.g. to time it.
    """

    def __init__(self, index: int, name: str) -> None:
        super().__init__()
        self.index, self.name = int(index), str(name)

    def forward(
        self,
        model: AllegroModel,
        batch: dict[str, torch.Tensor],
        *,
        positions: torch.Tensor,
        strain: torch.Tensor | None,
        centers: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return model.atomic_outputs(batch, positions=positions, strain=strain, centers=centers)

    def extra_repr(self) -> str:
        return f"index={self.index}, name={self.name!r}"


class CentreChunking:
    """Centre chunking shared by the mixtures: ``centres_per_chunk`` is 0 (one pass), one size for every
    expert, or one size per expert of ``self.experts``; each chunk of centres gets its own backward pass."""

    centres_per_chunk: int | tuple[int, ...] = 0
    experts: Sequence[torch.nn.Module]

    def set_centres_per_chunk(self, sizes: int | Sequence[int]) -> None:
        """Set :attr:`centres_per_chunk`: one size for every expert or one per expert, each >= 0."""
        values = [sizes] if isinstance(sizes, int) else list(sizes)
        if any(int(n) < 0 for n in values):
            raise ValueError(f"centres_per_chunk must be >= 0, got {sizes}")
        if not isinstance(sizes, int) and len(values) != len(self.experts):
            raise ValueError(f"centres_per_chunk needs one entry per expert ({len(self.experts)}), got {values}")
        self.centres_per_chunk = int(sizes) if isinstance(sizes, int) else tuple(int(n) for n in values)

    def chunk_size(self, k: int) -> int:
        """Centres per chunk of expert ``k`` (0 = no chunking) from :attr:`centres_per_chunk`."""
        size = self.centres_per_chunk
        return size if isinstance(size, int) else size[k]


class MixturePotential(CentreChunking, torch.nn.Module):
    """Spatial mixture of Allegro experts with a static per-atom assignment.

    Parameters
    ----------
    experts : sequence of AllegroModel
        The experts, numbered by position (in this project 0 = HF, 1 = LF). They must share the species
        list and the dtype.
    names : sequence of str, optional
        A name per expert (default ``expert0``, ...), used in timings.

    Attributes
    ----------
    calls : ModuleList of ExpertCall
        ``calls[k]`` evaluates expert ``k`` (parameter-free; hook it to observe that expert).
    centres_per_chunk : int or tuple of int (one per expert); set with :meth:`set_centres_per_chunk`
        0 (default): one forward pass over all centres and one backward pass. N > 0: each expert's centres
        are evaluated in chunks of at most N (its own entry of the sequence; 0 there = all its centres in
        one chunk), each chunk with its own backward pass, and the results summed (exact: energies,
        forces and stress are sums over centres). The activations of one chunk stay in the CPU caches, so
        the cost per atom stops growing with the system size and the memory is bounded by the chunk
        (measured by benchmarks/bench_md_step.py).
    """

    def __init__(self, experts: Sequence[AllegroModel], *, names: Sequence[str] | None = None) -> None:
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ValueError("a mixture needs at least one expert")
        species = experts[0].species
        for index, model in enumerate(experts):
            if tuple(model.species) != tuple(species):
                raise ValueError(f"expert {index} has species {list(model.species)}, expert 0 has {list(species)}")
            if model.dtype != experts[0].dtype:
                raise ValueError(f"expert {index} is {model.dtype}, expert 0 is {experts[0].dtype}: build both in one dtype")
        names = tuple(names) if names is not None else tuple(f"expert{i}" for i in range(len(experts)))
        if len(names) != len(experts) or len(set(names)) != len(names):
            raise ValueError(f"need one distinct name per expert, got {list(names)} for {len(experts)} experts")
        self.experts = torch.nn.ModuleList(experts)
        self.names = names
        self.species = tuple(species)
        self.calls = torch.nn.ModuleList(ExpertCall(k, name) for k, name in enumerate(names))
        self.centres_per_chunk = 0

    @property
    def r_max(self) -> float:
        """Largest expert cutoff, A: the shared neighbour list must reach at least this far."""
        return max(float(m.r_max) for m in self.experts)

    @property
    def dtype(self) -> torch.dtype:
        return self.experts[0].dtype

    def check_expert(self, expert: torch.Tensor, n_atoms: int) -> torch.Tensor:
        """``expert`` as an int64 ``(n_atoms,)`` tensor; a wrong shape, dtype or index raises ``ValueError``."""
        expert = torch.as_tensor(expert)
        if expert.shape != (n_atoms,) or expert.dtype.is_floating_point or expert.dtype == torch.bool:
            raise ValueError(f"expert must be an integer tensor of shape ({n_atoms},), got {expert.dtype} {tuple(expert.shape)}")
        if n_atoms and (int(expert.min()) < 0 or int(expert.max()) >= len(self.experts)):
            raise ValueError(f"expert indices must lie in [0, {len(self.experts)}), got [{int(expert.min())}, {int(expert.max())}]")
        return expert.long()

    def split_edges(
        self, batch: dict[str, torch.Tensor], expert: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[EdgeSplit, torch.Tensor]:
        """Each expert's pairs of the shared list: centred on its atoms and shorter than its ``r_max``.

        Parameters
        ----------
        batch : dict
            Structure and graph keys of :mod:`pipeline.data.keys`.
        expert : (n_atoms,) int tensor
            Expert of every atom.
        positions : (n_atoms, 3) tensor, optional
            Positions to use instead of ``batch["positions"]``.

        Returns
        -------
        split : list of (edge_index (2, E_k), shifts (E_k, 3)), one per expert
        lengths : (n_edges,) tensor
            Length (A) of every pair of the shared list (no gradient).
        """
        pos = batch[K.POSITIONS] if positions is None else positions
        edge_index, shifts = batch[K.EDGE_INDEX], batch[K.EDGE_CELL_SHIFT]
        expert = self.check_expert(expert, pos.shape[0]).to(pos.device)
        with torch.no_grad():
            vectors = edge_vectors(pos.detach().to(self.dtype), batch[K.CELL], batch[K.BATCH], edge_index, shifts)
            lengths = torch.linalg.vector_norm(vectors, dim=1)  # [n_edges]
        centre_expert = expert.index_select(0, edge_index[0])  # [n_edges]
        split = []
        for k, model in enumerate(self.experts):
            keep = (centre_expert == k) & (lengths < model.r_max)
            split.append((edge_index[:, keep], shifts[keep]))
        return split, lengths

    def atomic_outputs(
        self,
        batch: dict[str, torch.Tensor],
        *,
        expert: torch.Tensor,
        positions: torch.Tensor | None = None,
        strain: torch.Tensor | None = None,
        centers: torch.Tensor | Sequence[int] | None = None,
        split: EdgeSplit | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-atom energies of the mixture, without derivatives.

        Parameters
        ----------
        batch : dict
            Structure and graph keys; the graph may hold pairs beyond an expert's cutoff.
        expert : (n_atoms,) int tensor
            Expert of every atom.
        positions, strain : tensors, optional
            As in :meth:`pipeline.models.AllegroModel.atomic_outputs`.
        centers : bool mask (n_atoms,) or index tensor, optional
            Evaluate only these atoms (each by its own expert).
        split : output of :meth:`split_edges`, optional
            Precomputed pair split (saves recomputing the pair lengths).

        Returns
        -------
        dict with :data:`keys.PER_ATOM_ENERGY` ``(n_atoms,)`` eV, :data:`keys.DESCRIPTORS`
        ``(n_atoms, F_max)`` (each atom's from its expert, zero-padded to the widest expert),
        :data:`keys.CENTER_MASK` ``(n_atoms,)`` and ``expert_weights`` ``(n_atoms, n_experts)`` (one-hot
        rows for the evaluated atoms, zero rows elsewhere).
        """
        pos = batch[K.POSITIONS].to(self.dtype) if positions is None else positions
        n_atoms = pos.shape[0]
        expert = self.check_expert(expert, n_atoms).to(pos.device)
        subset = centre_mask(centers, n_atoms, pos.device)
        if split is None:
            split, _ = self.split_edges(batch, expert, pos)
        width = max(m.config.num_scalar_features for m in self.experts)
        per_atom = pos.new_zeros(n_atoms)
        descriptors = pos.new_zeros(n_atoms, width)
        evaluated = torch.zeros(n_atoms, dtype=torch.bool, device=pos.device)
        for k, (model, call, (edge_index, shifts)) in enumerate(zip(self.experts, self.calls, split)):
            mask = expert == k
            if subset is not None:
                mask = mask & subset
            if not bool(mask.any()):
                continue
            sub = dict(batch)
            sub[K.EDGE_INDEX], sub[K.EDGE_CELL_SHIFT] = edge_index, shifts
            out = call(model, sub, positions=pos, strain=strain, centers=mask)
            per_atom = per_atom + out[K.PER_ATOM_ENERGY]  # zero outside the expert's centres
            f = out[K.DESCRIPTORS].shape[1]
            descriptors = descriptors + torch.nn.functional.pad(out[K.DESCRIPTORS], (0, width - f))
            evaluated = evaluated | mask
        weights = torch.nn.functional.one_hot(expert, len(self.experts)).to(pos.dtype) * evaluated.unsqueeze(1)
        return {K.PER_ATOM_ENERGY: per_atom, K.DESCRIPTORS: descriptors, K.CENTER_MASK: evaluated,
                EXPERT_WEIGHTS: weights}

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        expert: torch.Tensor,
        centers: torch.Tensor | Sequence[int] | None = None,
        compute_forces: bool = True,
        compute_stress: bool = False,
        split: EdgeSplit | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energy, per-atom energies, forces and optionally stress and virial of the mixture (one backward pass).

        The call of the :class:`~pipeline.models.contract.Potential` contract, with the mixture's own
        input ``expert`` ``(n_atoms,)`` int. Returns a dict: :data:`keys.ENERGY` ``(n_structures,)`` eV,
        :data:`keys.PER_ATOM_ENERGY` ``(n_atoms,)`` eV, :data:`keys.FORCES` ``(n_atoms, 3)`` eV/A (if
        ``compute_forces``), :data:`keys.STRESS` ``(n_structures, 3, 3)`` eV/A^3 (NaN for a zero cell
        volume) and ``virial`` ``(n_structures, 3, 3)`` eV (if ``compute_stress``),
        :data:`keys.DESCRIPTORS`, :data:`keys.CENTER_MASK`, ``expert_weights``. ``split``: a precomputed
        :meth:`split_edges`.
        """
        if not any(self.chunk_size(k) for k in range(len(self.experts))):
            return self._pass(batch, expert, centers, split, compute_forces=compute_forces,
                              compute_stress=compute_stress)
        return self._chunked_forward(batch, expert=expert, centers=centers, compute_forces=compute_forces,
                                     compute_stress=compute_stress, split=split)

    def _pass(
        self, batch: dict[str, torch.Tensor], expert: torch.Tensor, centers: torch.Tensor | Sequence[int] | None,
        split: EdgeSplit | None, *, compute_forces: bool, compute_stress: bool,
    ) -> dict[str, torch.Tensor]:
        """One forward pass over ``centers`` (all atoms: None) and one backward pass."""
        return evaluate_with_derivatives(
            lambda pos, strain: self.atomic_outputs(batch, expert=expert, positions=pos, strain=strain,
                                                    centers=centers, split=split),
            batch,
            dtype=self.dtype,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=False,
        )

    def centre_chunks(self, expert: torch.Tensor, centers: torch.Tensor | Sequence[int] | None = None
                      ) -> list[tuple[int, torch.Tensor]]:
        """``(expert index, centre mask (n_atoms,))`` of every chunk: each expert's centres (within
        ``centers``) in index order, at most :meth:`chunk_size` per chunk."""
        n_atoms = expert.shape[0]
        subset = centre_mask(centers, n_atoms, expert.device)
        chunks = []
        for k in range(len(self.experts)):
            mine = expert == k
            if subset is not None:
                mine = mine & subset
            index = torch.nonzero(mine).squeeze(1)
            n = int(index.numel())
            size = self.chunk_size(k) or max(n, 1)
            for start in range(0, n, size):
                mask = torch.zeros(n_atoms, dtype=torch.bool, device=expert.device)
                mask[index[start:start + size]] = True
                chunks.append((k, mask))
        return chunks

    def _chunked_forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        expert: torch.Tensor,
        centers: torch.Tensor | Sequence[int] | None,
        compute_forces: bool,
        compute_stress: bool,
        split: EdgeSplit | None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with :attr:`centres_per_chunk` > 0: one forward and backward pass per chunk of
        centres, outputs summed (every output is a sum over centres; nothing keeps a graph)."""
        pos = batch[K.POSITIONS]
        expert = self.check_expert(expert, pos.shape[0]).to(pos.device)
        if split is None:
            split, _ = self.split_edges(batch, expert)
        total: dict[str, torch.Tensor] | None = None
        for _, mask in self.centre_chunks(expert, centers):
            out = self._pass(batch, expert, mask, split, compute_forces=compute_forces, compute_stress=compute_stress)
            out = {key: value.detach() for key, value in out.items()}
            if total is None:
                total = out
            else:
                for key, value in out.items():
                    total[key] = total[key] | value if value.dtype == torch.bool else total[key] + value
        if total is None:  # no centre at all: one pass gives the zeros with the right shapes
            return self._pass(batch, expert, centers, split, compute_forces=compute_forces,
                              compute_stress=compute_stress)
        return total

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, species={list(self.species)}, r_max={self.r_max}"


def expert_costs(
    potential: MixturePotential, batch: dict[str, torch.Tensor], expert: torch.Tensor, *, repeats: int = 3, warmup: int = 1
) -> dict[str, float]:
    """Median wall time (s) of energy + forces of each expert's own atoms alone, and of the mixture.

    Each expert is evaluated with ``centers`` = its atoms (forward and backward), so the times add up
    to about the mixture's; their ratio is the per-expert share of the step time. Timed around the
    calls (CUDA synchronised before and after each), not inside the mixture.

    Returns
    -------
    dict
        ``{name: seconds, ..., "mixture": seconds}``.
    """
    expert = torch.as_tensor(expert)
    device = batch[K.POSITIONS].device

    def timed(centers: torch.Tensor | None) -> float:
        samples = []
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            potential(batch, expert=expert, centers=centers, compute_forces=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    costs = {name: timed(expert == k) for k, name in enumerate(potential.names) if bool((expert == k).any())}
    costs["mixture"] = timed(None)
    return costs
