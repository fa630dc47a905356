"""NumPy-facing evaluation of the mixture for MD engines: positions in, energy / forces / virial out.

:class:`MixtureEvaluator` keeps the static data of one system (species, expert of every atom) and the
Verlet list (:class:`VerletBatch` over :class:`pipeline.md.neighbors.VerletList`) on the torch device,
and turns a set of positions (A) into an :class:`Evaluation` in eV and eV/A. The LAMMPS callback calls
it; the ASE calculator of the mixture (:class:`pipeline.md.calculator.MixtureCalculator`) builds its
batches with the same :class:`VerletBatch` and calls the same potential. The adaptive partition has its
own evaluator, :class:`pipeline.md.adaptive.AdaptiveEvaluator`; both share :class:`SystemEvaluator` (the
device, the Verlet list, the timing, the NumPy call) and report the HF and LF centres of every evaluation
(:attr:`SystemEvaluator.centres`; fixed for a static partition, of the current positions for the
adaptive one) and each atom's HF weight.

On several MPI ranks the LAMMPS callback calls :meth:`MixtureEvaluator.evaluate_domain` instead: one rank's
local and ghost atoms (LAMMPS's arrays), energies of the local atoms and exact forces on them
(:class:`DomainEvaluation`).

Timing lives here, around the calls, not in the potential: the evaluator times every call
(``model_time_s``) and, with forward hooks on the mixture's per-expert :class:`~pipeline.md.potential.ExpertCall`
modules attached only for the duration of the call, each expert's share (:class:`ExpertTimer`; CUDA is
synchronised at each mark on a GPU).

>>> import numpy as np, torch
>>> from ase.build import molecule
>>> from pipeline.models import build_model
>>> from pipeline.models.testing import small_config
>>> from pipeline.md.potential import MixturePotential
>>> moe = MixturePotential([build_model(small_config(), ("Pt", "C", "O"), dtype=torch.float64, seed=0)])
>>> co = molecule("CO")
>>> ev = MixtureEvaluator(moe, numbers=co.numbers, expert=np.zeros(2, dtype=int), skin=0.5)
>>> result = ev(co.positions, np.zeros((3, 3)), (False, False, False))
>>> result.forces.shape, round(result.min_distance, 3), (result.hf_centres, result.lf_centres)
((2, 3), 1.15, (2, 0))
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.data import keys as K
from pipeline.data.neighbors import species_indices
from pipeline.md.neighbors import DomainVerletList, VerletList
from pipeline.md.potential import CentreChunking, EdgeSplit, MixturePotential
from pipeline.models import edge_vectors
from pipeline.models.contract import VIRIAL


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the mixture (float64 NumPy, eV and A).

    Attributes
    ----------
    energy : float
        Total potential energy, eV.
    energies : (n_atoms,) array
        Per-atom energies, eV (sum = ``energy``).
    forces : (n_atoms, 3) array
        -dE/dR, eV/A.
    virial : (3, 3) array or None
        ``W = -dE/d(strain)``, eV (``W = -V * stress``; LAMMPS's virial), when asked (the potential's
        :data:`~pipeline.models.contract.VIRIAL` output).
    min_distance : float
        Shortest pair distance in the neighbour list, A (``inf`` without pairs).
    closest_pair : tuple of int
        The two atoms (indices) at ``min_distance`` (``(-1, -1)`` without pairs).
    hf_centres, lf_centres : int or None
        Atoms the HF and the LF expert evaluated (shell atoms of the adaptive partition count for both;
        ``None``: not reported, e.g. a combined multi-rank figure).
    weights : (n_atoms,) array or None
        HF weight of every atom: the adaptive partition's ``lambda`` (None for a static partition).
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray | None
    min_distance: float
    closest_pair: tuple[int, int] = (-1, -1)
    hf_centres: int | None = None
    lf_centres: int | None = None
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class DomainEvaluation:
    """One MPI rank's share of an evaluation (:meth:`MixtureEvaluator.evaluate_domain`; float64, eV and A).

    Attributes
    ----------
    energy : float
        Sum of the local centres' energies, eV (the total is the sum over the ranks).
    energies : (nlocal,) array
        Per-atom energies of the local atoms, eV.
    forces : (nlocal, 3) array
        -dE/dR of the TOTAL energy on the local atoms, eV/A (exact: ghost centres included).
    virial : (3, 3) array or None
        The local centres' share of ``W = -dE/d(strain)``, eV (the total is the sum over the ranks).
    min_distance : float
        Shortest pair distance from a local atom, A (``inf`` without pairs).
    closest_pair : tuple of int
        The two atoms (atom IDs - 1) at ``min_distance``.
    n_local, n_ghost_centres : int
        Centres evaluated: the local atoms, and the ghosts evaluated for their forces on local atoms.
    """

    energy: float
    energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray | None
    min_distance: float
    closest_pair: tuple[int, int]
    n_local: int
    n_ghost_centres: int


class VerletBatch:
    """Batch dicts of one system whose atoms keep their identity, over a Verlet list kept between calls.

    Parameters
    ----------
    numbers : (n_atoms,) int array
        Atomic numbers.
    species : sequence of str
        The potential's species (the batch's ``species`` indexes into it).
    cutoff : float
        The potential's largest cutoff, A.
    skin : float
        Verlet skin, A (0 = a new list at every call).
    dtype : torch.dtype
        Floating dtype of positions and cell.
    device : torch.device

    Attributes
    ----------
    neighbors : VerletList
    """

    def __init__(
        self, *, numbers: np.ndarray, species: Sequence[str], cutoff: float, skin: float, dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.n_atoms = int(self.numbers.shape[0])
        self.device, self.dtype = torch.device(device), dtype
        self.species = torch.as_tensor(species_indices(self.numbers, species), device=self.device)
        self.neighbors = VerletList(cutoff=cutoff, skin=skin)
        self._edges: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool]) -> dict[str, torch.Tensor]:
        """The batch dict of the current positions (Verlet list updated, on the device)."""
        positions, rebuilt = self.neighbors.update(positions, cell, pbc)
        if rebuilt or self._edges is None:
            self._edges = (
                torch.as_tensor(self.neighbors.edge_index, device=self.device),
                torch.as_tensor(self.neighbors.shifts, device=self.device),
            )
        dtype, device = self.dtype, self.device
        return {
            K.POSITIONS: torch.as_tensor(positions, dtype=dtype, device=device),
            K.SPECIES: self.species,
            K.CELL: torch.as_tensor(np.asarray(cell, dtype=np.float64).reshape(1, 3, 3), dtype=dtype, device=device),
            K.PBC: torch.as_tensor(np.asarray(pbc, dtype=bool).reshape(1, 3), device=device),
            K.BATCH: torch.zeros(self.n_atoms, dtype=torch.int64, device=device),
            K.NUM_ATOMS: torch.tensor([self.n_atoms], device=device),
            K.EDGE_INDEX: self._edges[0],
            K.EDGE_CELL_SHIFT: self._edges[1],
            K.R_MAX: torch.tensor(self.neighbors.cutoff + self.neighbors.skin, dtype=torch.float64),
        }


class ExpertTimer:
    """Wall time per expert of calls of a mixture (:class:`MixturePotential` or
    :class:`~pipeline.md.adaptive.AdaptiveMixturePotential`), measured from outside it.

    :meth:`timing` attaches forward hooks to the potential's :class:`~pipeline.md.potential.ExpertCall`
    modules for one call and removes them afterwards (nothing stays on the modules). Each expert
    evaluation is marked at its start and end (after ``torch.cuda.synchronize`` on a GPU). Attributed to
    an expert: in one-pass mode, its forward (energy) pass (the backward pass is shared and not split);
    in chunked mode (:attr:`~pipeline.md.potential.MixturePotential.centres_per_chunk`), each chunk's
    forward and backward pass, from its start to the next chunk's start or the end of the call.

    Attributes
    ----------
    seconds : dict[str, float]
        Accumulated time (s) per expert name.
    """

    def __init__(self, potential: MixturePotential | CentreChunking, device: torch.device) -> None:
        self.potential = potential
        self.sync = torch.device(device).type == "cuda"
        self.device = device
        self.seconds = {name: 0.0 for name in potential.names}

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Time the expert evaluations of the potential calls made inside the block."""
        marks: list[tuple[str, float, float]] = []  # (expert name, start, end) of every expert call
        starts: dict[int, float] = {}

        def before(module, args, kwargs):  # noqa: ANN001, ARG001
            starts[id(module)] = self._now()

        def after(module, args, kwargs, output):  # noqa: ANN001, ARG001
            marks.append((module.name, starts.pop(id(module)), self._now()))

        handles = []
        for call in self.potential.calls:
            handles.append(call.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(call.register_forward_hook(after, with_kwargs=True))
        try:
            yield
            end = self._now()
        finally:
            for handle in handles:
                handle.remove()
        chunked = any(self.potential.chunk_size(k) for k in range(len(self.potential.experts)))
        for index, (name, start, stop) in enumerate(marks):
            if chunked:
                stop = marks[index + 1][1] if index + 1 < len(marks) else end
            self.seconds[name] += stop - start


class SystemEvaluator(ABC):
    """Evaluate a mixture on one system whose atoms keep their identity: the part shared by
    :class:`MixtureEvaluator` (static partition) and :class:`~pipeline.md.adaptive.AdaptiveEvaluator`.

    The device, the Verlet list (:class:`VerletBatch`), the NumPy call (:meth:`__call__`: positions in,
    :class:`Evaluation` out), the timing around it and the centre counts. A subclass says what the
    potential gets besides the batch (:meth:`_inputs`) and what an evaluation changes
    (:meth:`_observe`).

    Parameters
    ----------
    potential : MixturePotential or AdaptiveMixturePotential
        The mixture (moved to ``device``, eval mode).
    numbers : (n_atoms,) int array
        Atomic numbers.
    skin : float
        Verlet skin, A (0 = rebuild the neighbour list at every call).
    device : str or torch.device, optional
        Where to evaluate (default: where the potential's parameters are).
    centres_per_chunk : int or sequence of int (one per expert), optional
        Set the potential's ``centres_per_chunk`` (:class:`~pipeline.md.potential.CentreChunking`; 0 = one
        pass; default: leave it as it is).

    Attributes
    ----------
    neighbors : VerletList
    n_calls : int
    model_time_s : float
        Total wall time (s) of the evaluations (neighbour-list update, pair split, energies, backward pass),
        measured around them.
    expert_time_s : dict[str, float]
        Accumulated time (s) per expert (:class:`ExpertTimer`): forward only in one-pass mode (the backward
        pass is shared and not split), forward and backward with ``centres_per_chunk`` > 0.
    centres : dict[str, int]
        ``{"hf": ..., "lf": ...}``: the atoms each expert evaluated in the last evaluation (a static
        partition: its fixed counts, also before the first call).
    weights : (n_atoms,) float64 array or None
        HF weight (lambda) of every atom in the last evaluation of the adaptive partition (None for a
        static one).
    """

    def __init__(
        self,
        potential: MixturePotential | CentreChunking,
        *,
        numbers: np.ndarray,
        skin: float,
        device: str | torch.device | None = None,
        centres_per_chunk: int | Sequence[int] | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(potential.parameters()).device
        self.potential = potential.to(self.device).eval()
        if centres_per_chunk is not None:
            self.potential.set_centres_per_chunk(centres_per_chunk)
        numbers = np.asarray(numbers, dtype=np.int64)
        self.n_atoms = int(numbers.shape[0])
        self.graph = VerletBatch(numbers=numbers, species=potential.species, cutoff=potential.r_max, skin=skin,
                                 dtype=potential.dtype, device=self.device)
        self.species = self.graph.species
        self.neighbors = self.graph.neighbors
        self.n_calls = 0
        self.model_time_s = 0.0
        self.timer = ExpertTimer(self.potential, self.device)
        self.expert_time_s = self.timer.seconds
        self.centres: dict[str, int] = {"hf": 0, "lf": 0}
        self.weights: np.ndarray | None = None

    def batch(self, positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool]) -> dict[str, torch.Tensor]:
        """The batch dict of the current positions (Verlet list updated, on the device)."""
        return self.graph(positions, cell, pbc)

    def reset(self) -> None:
        """Forget what is kept between calls (the Verlet list; subclasses: their own state): the next call
        gives, bit for bit, what a new evaluator would (counts and times are kept)."""
        self.neighbors.reset()

    @abstractmethod
    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
        """``(keyword inputs of the potential besides the batch, length (A) of every pair of the shared list)``."""

    def _observe(self, out: dict[str, torch.Tensor]) -> None:
        """Take what an evaluation changes from the potential's outputs (:attr:`centres`, :attr:`weights`)."""

    def __call__(
        self, positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], *, virial: bool = False
    ) -> Evaluation:
        """Energy, per-atom energies, forces (and the virial) at ``positions``, with the centre counts.

        Parameters
        ----------
        positions : (n_atoms, 3) array
            Positions, A, in atom-identity order (the order of ``numbers``).
        cell : (3, 3) array
            Rows are the cell vectors, A.
        pbc : three bools
        virial : bool
            Also compute ``W = -dE/d(strain)``.
        """
        if np.shape(positions) != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape ({self.n_atoms}, 3), got {np.shape(positions)}")
        start = time.perf_counter()
        batch = self.batch(positions, cell, pbc)
        inputs, lengths = self._inputs(batch)
        with self.timer.timing():
            out = self.potential(batch, compute_forces=True, compute_stress=virial, **inputs)
        self._observe(out)
        energies = out[K.PER_ATOM_ENERGY].detach().double().cpu().numpy()
        forces = out[K.FORCES].detach().double().cpu().numpy()
        w = out[VIRIAL].detach().double().cpu().numpy()[0] if virial else None
        min_distance, closest = float("inf"), (-1, -1)
        if lengths.numel():
            shortest = int(torch.argmin(lengths))
            min_distance = float(lengths[shortest])
            closest = (int(self.neighbors.edge_index[0, shortest]), int(self.neighbors.edge_index[1, shortest]))
        self.model_time_s += time.perf_counter() - start
        self.n_calls += 1
        return Evaluation(
            energy=float(energies.sum()), energies=energies, forces=forces, virial=w, min_distance=min_distance,
            closest_pair=closest, hf_centres=self.centres["hf"], lf_centres=self.centres["lf"], weights=self.weights,
        )

    def timing_summary(self) -> dict[str, float]:
        """Calls, neighbour-list builds and times (s): model total, list builds, forward per expert and
        each expert's share of the forward time."""
        summary: dict[str, float] = {
            "calls": self.n_calls,
            "neighbor_builds": self.neighbors.n_builds,
            "neighbor_time_s": self.neighbors.build_time_s,
            "model_time_s": self.model_time_s,
        }
        summary.update({f"forward_{name}_s": seconds for name, seconds in self.expert_time_s.items()})
        total = sum(self.expert_time_s.values())
        summary.update({f"forward_share_{name}": seconds / total if total > 0 else float("nan")
                        for name, seconds in self.expert_time_s.items()})
        return summary


def pair_lengths(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Length (A) of every pair of the batch's list, ``(n_edges,)``, without gradient."""
    with torch.no_grad():
        vectors = edge_vectors(batch[K.POSITIONS].detach().to(dtype), batch[K.CELL], batch[K.BATCH],
                               batch[K.EDGE_INDEX], batch[K.EDGE_CELL_SHIFT])
        return torch.linalg.vector_norm(vectors, dim=1)


def static_hf_atoms(names: Sequence[str], expert: np.ndarray) -> np.ndarray:
    """Boolean ``(n_atoms,)``: the HF atoms of a static assignment ``expert`` (index per atom) to experts named
    ``names``: the atoms of the expert named ``hf``; none if only ``lf`` is named; those of expert 0 for
    other names (the project's numbering, 0 = HF).

    >>> static_hf_atoms(("lf",), np.zeros(2, dtype=int)).tolist(), static_hf_atoms(("hf", "lf"), [0, 1]).tolist()
    ([False, False], [True, False])
    """
    names = list(names)
    hf = names.index("hf") if "hf" in names else (None if "lf" in names else 0)
    expert = np.asarray(expert)
    return expert == hf if hf is not None else np.zeros(expert.shape, dtype=bool)


class MixtureEvaluator(SystemEvaluator):
    """Evaluate a :class:`MixturePotential` (static partition) on one system whose atoms keep their identity.

    Parameters
    ----------
    potential : MixturePotential
        The mixture (moved to ``device``, eval mode).
    numbers : (n_atoms,) int array
        Atomic numbers.
    expert : (n_atoms,) int array
        Expert index of every atom (static).
    skin : float
        Verlet skin, A (0 = rebuild the neighbour list at every call).
    device : str or torch.device, optional
        Where to evaluate (default: where the potential's parameters are).
    centres_per_chunk : int or sequence of int (one per expert), optional
        Set the potential's :attr:`~pipeline.md.potential.MixturePotential.centres_per_chunk` (0 = one
        pass; default: leave it as it is).

    Attributes
    ----------
    As :class:`SystemEvaluator`; :attr:`centres` are fixed: the atoms of the expert named ``hf``
    (:func:`static_hf_atoms`) and the others; no :attr:`weights`.
    """

    def __init__(
        self,
        potential: MixturePotential,
        *,
        numbers: np.ndarray,
        expert: np.ndarray,
        skin: float,
        device: str | torch.device | None = None,
        centres_per_chunk: int | Sequence[int] | None = None,
    ) -> None:
        expert = np.asarray(expert, dtype=np.int64)
        if expert.shape != np.shape(numbers):
            raise ValueError(f"expert has shape {expert.shape}, the system has {np.shape(numbers)[0]} atoms")
        super().__init__(potential, numbers=numbers, skin=skin, device=device, centres_per_chunk=centres_per_chunk)
        self.expert = torch.as_tensor(expert, device=self.device)
        self.potential.check_expert(self.expert, self.n_atoms)
        n_hf = int(static_hf_atoms(potential.names, expert).sum())
        self.centres = {"hf": n_hf, "lf": self.n_atoms - n_hf}
        self.domain: DomainVerletList | None = None  # the list of evaluate_domain (one MPI rank's atoms)
        self.domain_centres: dict[str, int] = {}
        self._domain_graph: tuple[torch.Tensor, ...] | None = None

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
        split, lengths = self.potential.split_edges(batch, self.expert)
        inputs: dict[str, torch.Tensor | EdgeSplit] = {"expert": self.expert, "split": split}
        return inputs, lengths

    def evaluate_domain(
        self, positions: np.ndarray, tags: np.ndarray, nlocal: int, *, virial: bool = False
    ) -> DomainEvaluation:
        """One MPI rank's share: energies of its local atoms, exact forces on them (and its virial share).

        The atoms are LAMMPS's arrays of one rank: the first ``nlocal`` local, then the ghosts (periodic
        images included, each a point of its own; no cell, no minimum image). Two passes, each with its
        backward pass: (1) every local atom as a centre, evaluated by its expert with the ghosts as
        neighbours: the local energies, the virial share, and the gradients on the local atoms and on
        the ghosts that are periodic images of local atoms (added to their local atom); (2) the ghosts
        of other ranks' atoms within the list's cutoff of a local atom as centres
        (:class:`~pipeline.md.neighbors.DomainVerletList`): their gradients on the local atoms are the
        forces that other ranks' centres cause (their energies and gradients on ghosts are discarded).
        So the forces on the local atoms are exact. The ghost shell must reach ``2 * r_max + skin``
        (LAMMPS's skin) beyond the rank's domain.

        Parameters
        ----------
        positions : (n_slots, 3) array
            Local then ghost positions, A (Cartesian, LAMMPS frame).
        tags : (n_slots,) int array
            Atom IDs (index + 1 in the order of ``numbers`` / ``expert``).
        nlocal : int
        virial : bool
        """
        start = time.perf_counter()
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        tags = np.asarray(tags, dtype=np.int64).reshape(-1)
        nlocal = int(nlocal)
        if self.domain is None:
            self.domain = DomainVerletList(cutoff=self.neighbors.cutoff, skin=self.neighbors.skin)
            self.domain_centres = {"local": 0, "ghost": 0}
        if self.domain.update(positions, tags, nlocal) or self._domain_graph is None:
            index = torch.as_tensor(tags - 1, device=self.device)
            self._domain_graph = (
                self.species.index_select(0, index),
                self.expert.index_select(0, index),
                torch.as_tensor(self.domain.edge_index, device=self.device),
                torch.as_tensor(np.arange(len(tags)) < nlocal, device=self.device),
                torch.as_tensor(self.domain.centres & (np.arange(len(tags)) >= nlocal), device=self.device),
                torch.as_tensor(np.flatnonzero(self.domain.owner >= 0), device=self.device),
                torch.as_tensor(self.domain.owner[self.domain.owner >= 0], device=self.device),
            )
        species, expert, edge_index, local, ghost, own_slots, owners = self._domain_graph
        n, dtype, device = positions.shape[0], self.potential.dtype, self.device
        batch = {
            K.POSITIONS: torch.as_tensor(positions, dtype=dtype, device=device),
            K.SPECIES: species,
            K.CELL: torch.zeros(1, 3, 3, dtype=dtype, device=device),
            K.PBC: torch.zeros(1, 3, dtype=torch.bool, device=device),
            K.BATCH: torch.zeros(n, dtype=torch.int64, device=device),
            K.NUM_ATOMS: torch.tensor([n], device=device),
            K.EDGE_INDEX: edge_index,
            K.EDGE_CELL_SHIFT: torch.zeros(edge_index.shape[1], 3, dtype=torch.int64, device=device),
            K.R_MAX: torch.tensor(self.domain.cutoff + self.domain.skin, dtype=torch.float64),
        }
        split, lengths = self.potential.split_edges(batch, expert)
        n_ghost = self.domain.n_ghost_centres
        with self.timer.timing():
            out = self.potential(batch, expert=expert, centers=local, compute_forces=True, compute_stress=virial,
                                 split=split)
            own = out[K.FORCES].detach()
            forces = own.new_zeros(nlocal, 3).index_add_(0, owners, own.index_select(0, own_slots))
            if n_ghost:
                forces += self.potential(batch, expert=expert, centers=ghost, compute_forces=True,
                                         split=split)[K.FORCES].detach()[:nlocal]
        energies = out[K.PER_ATOM_ENERGY][:nlocal].detach().double().cpu().numpy()
        forces = forces.double().cpu().numpy()
        w = out[VIRIAL].detach().double().cpu().numpy()[0] if virial else None
        min_distance, closest = float("inf"), (-1, -1)
        from_local = edge_index[0] < nlocal
        if bool(from_local.any()):
            masked = torch.where(from_local, lengths, torch.full_like(lengths, float("inf")))
            shortest = int(torch.argmin(masked))
            min_distance = float(masked[shortest])
            closest = (int(tags[int(edge_index[0, shortest])]) - 1, int(tags[int(edge_index[1, shortest])]) - 1)
        self.model_time_s += time.perf_counter() - start
        self.n_calls += 1
        self.domain_centres["local"] += nlocal
        self.domain_centres["ghost"] += n_ghost
        return DomainEvaluation(
            energy=float(energies.sum()), energies=energies, forces=forces, virial=w, min_distance=min_distance,
            closest_pair=closest, n_local=nlocal, n_ghost_centres=n_ghost,
        )

    def timing_summary(self) -> dict[str, float]:
        """As :meth:`SystemEvaluator.timing_summary`, plus this rank's list builds and centres after
        :meth:`evaluate_domain`."""
        summary = super().timing_summary()
        if self.domain is not None:  # evaluated as one MPI rank's domain: this rank's list and centres
            summary.update({
                "domain_neighbor_builds": self.domain.n_builds,
                "domain_neighbor_time_s": self.domain.build_time_s,
                "local_centres": self.domain_centres["local"],
                "ghost_centres": self.domain_centres["ghost"],
            })
        return summary
