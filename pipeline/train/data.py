"""Training data: frames of one split, per-frame graphs, the LF data assignment, batching, extra bulk cells.

Each labelled frame is prepared once (:func:`prepare_samples`): its neighbour graph for every cutoff
the experts use (single-frame :func:`pipeline.data.neighbors.collate`), the per-atom bulk mask (from
the ingest stage's per-atom ``region`` array) and the LF data assignment of ``train.lf_data``:

- ``bulk_atoms``: LF learns the forces on the atoms labelled bulk, in every frame that has some, and
  the energy (and stress) only of frames whose atoms are *all* bulk -- a slab's total energy includes
  surface and adsorbate atoms that are not the LF expert's to learn;
- ``all``: LF learns every frame, like HF.

A batch (:class:`Batch`) concatenates prepared frames, atom-wise and edge-wise. The order of the
batches is a pure function of ``(seed, epoch)`` (:func:`batch_order`), so a resumed run sees the same
batches as an uninterrupted one.

Samples may also carry a static HF/LF partition and interface mask (the mixture cells of
:mod:`pipeline.train.cells`) and the cached outputs of a frozen expert (:mod:`pipeline.train.anchor`);
:func:`make_batch` concatenates them like the graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ase.io
import numpy as np
import torch
from ase import Atoms

from pipeline.data import keys as K
from pipeline.data.neighbors import collate
from pipeline.errors import PipelineInputError

LF_DATA = ("bulk_atoms", "all")
_EDGE_OFFSET_KEYS = (K.EDGE_INDEX,)
_ATOM_KEYS = (K.POSITIONS, K.ATOMIC_NUMBERS, K.SPECIES, K.FORCES)
_FRAME_KEYS = (K.CELL, K.PBC, K.NUM_ATOMS, K.ENERGY)
_SEED_TAG_ORDER = 0x5EED_0D
_SEED_TAG_EXTRA = 0x5EED_E7


class TrainingDataError(PipelineInputError, ValueError):
    """The dataset cannot be trained on: an empty split, missing labels or region arrays, unknown species."""


def read_splits(path: str, splits: Sequence[str] = ("train", "validation")) -> dict[str, list[Atoms]]:
    """Frames of each named split of the ingest stage's dataset (``info['split']``).

    Raises
    ------
    TrainingDataError
        If a requested split has no frame, or a frame lacks an energy, forces or the ``region`` array.
    """
    frames = ase.io.read(path, index=":", format="extxyz")
    out: dict[str, list[Atoms]] = {name: [] for name in splits}
    for index, atoms in enumerate(frames):
        atoms.info["dataset_index"] = index
        name = atoms.info.get("split")
        if name in out:
            out[name].append(atoms)
    for name, members in out.items():
        if not members:
            counts = {s: sum(1 for a in frames if a.info.get("split") == s) for s in ("train", "validation", "test")}
            raise TrainingDataError(
                f"the {name!r} split of {path} is empty (frames per split: {counts}); training needs labelled "
                "frames in the train and validation splits (see ingest.validation_fraction)"
            )
        for atoms in members:
            check_frame(atoms, where=f"{path} frame {atoms.info['dataset_index']}")
    return out


def check_frame(atoms: Atoms, *, where: str) -> None:
    """Raise :class:`TrainingDataError` unless ``atoms`` has energy, forces and per-atom regions."""
    results = atoms.calc.results if atoms.calc is not None else {}
    missing = [k for k in ("energy", "forces") if results.get(k) is None]
    if "region" not in atoms.arrays:
        missing.append("per-atom 'region' array (run the ingest stage)")
    if missing:
        raise TrainingDataError(f"{where} lacks {', '.join(missing)}")


def check_species(frames: Sequence[Atoms], species: Sequence[str], *, what: str) -> None:
    """Raise :class:`TrainingDataError` naming the elements of ``frames`` the models do not know."""
    present = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    unknown = [s for s in present if s not in species]
    if unknown:
        raise TrainingDataError(
            f"{what} contain elements {unknown} that the models do not know (species {list(species)}); "
            "add them to the top-level 'species' of the configuration"
        )


def bulk_mask(atoms: Atoms) -> np.ndarray:
    """``(n_atoms,)`` bool: atoms labelled bulk (all atoms of a cell without a ``region`` array)."""
    if "region" not in atoms.arrays:
        return np.ones(len(atoms), dtype=bool)
    return np.asarray(atoms.arrays["region"]) == "bulk"


@dataclass(frozen=True)
class Sample:
    """One prepared frame.

    Attributes
    ----------
    graphs : dict[float, dict[str, Tensor]]
        The frame collated alone, per cutoff (A); keys of :mod:`pipeline.data.keys`.
    bulk : (n_atoms,) bool tensor
        Atoms labelled bulk (the agreement terms act on them).
    lf_forces : (n_atoms,) bool tensor
        Atoms whose forces the LF expert learns.
    lf_energy : bool
        Whether the LF expert learns this frame's energy (and stress).
    expert : (n_atoms,) int64 tensor or None
        Static partition of a mixture cell (0 = HF, 1 = LF, :mod:`pipeline.data.partition`).
    interface : (n_atoms,) bool tensor or None
        Atoms of a mixture cell whose mixture force can differ from the HF expert's
        (:func:`pipeline.train.cells.interface_atoms`).
    anchor : dict or None
        Cached outputs of the frozen anchor expert (:func:`pipeline.train.anchor.attach_anchor`).
    """

    graphs: dict[float, dict[str, torch.Tensor]]
    bulk: torch.Tensor
    lf_forces: torch.Tensor
    lf_energy: bool
    expert: torch.Tensor | None = None
    interface: torch.Tensor | None = None
    anchor: dict[str, torch.Tensor] | None = None


def prepare_samples(
    frames: Sequence[Atoms],
    *,
    species: Sequence[str],
    r_maxes: Sequence[float],
    dtype: torch.dtype,
    lf_data: str = "bulk_atoms",
    labelled: bool = True,
) -> list[Sample]:
    """Graphs, bulk masks and the LF assignment of every frame (see the module docstring); frames with
    per-atom ``expert`` (int) and ``interface`` (bool) arrays become mixture-cell samples."""
    if lf_data not in LF_DATA:
        raise ValueError(f"lf_data must be one of {LF_DATA}, got {lf_data!r}")
    check_species(frames, species, what="the frames")
    samples = []
    for atoms in frames:
        bulk = bulk_mask(atoms)
        graphs = {
            float(r): collate([atoms], species=species, r_max=float(r), dtype=dtype, with_targets=labelled)
            for r in sorted(set(map(float, r_maxes)))
        }
        lf_forces = np.ones(len(atoms), dtype=bool) if lf_data == "all" else bulk
        lf_energy = True if lf_data == "all" else bool(bulk.all())
        expert = interface = None
        if "expert" in atoms.arrays:
            expert = torch.as_tensor(np.asarray(atoms.arrays["expert"], dtype=np.int64))
            interface = torch.as_tensor(np.asarray(atoms.arrays["interface"], dtype=bool))
        samples.append(Sample(graphs, torch.as_tensor(bulk), torch.as_tensor(lf_forces), lf_energy and labelled,
                              expert=expert, interface=interface))
    return samples


@dataclass(frozen=True)
class Batch:
    """Concatenated frames: graphs per cutoff and masks, all on one device.

    Attributes
    ----------
    graphs : dict[float, dict[str, Tensor]]
        Batch dict per cutoff (same atoms in the same order for every cutoff).
    bulk, lf_forces : (n_atoms,) bool tensors
    lf_energy : (n_frames,) bool tensor
    expert, interface : (n_atoms,) tensors or None
        Partition and interface mask (mixture cells only).
    anchor : dict or None
        Cached outputs of the anchor expert: per-atom keys ``(n_atoms, ...)``, ``energy`` ``(n_frames,)``.
    """

    graphs: dict[float, dict[str, torch.Tensor]]
    bulk: torch.Tensor
    lf_forces: torch.Tensor
    lf_energy: torch.Tensor
    expert: torch.Tensor | None = None
    interface: torch.Tensor | None = None
    anchor: dict[str, torch.Tensor] | None = None

    @property
    def n_frames(self) -> int:
        return int(self.lf_energy.shape[0])

    def graph(self, r_max: float) -> dict[str, torch.Tensor]:
        return self.graphs[float(r_max)]


def _concat_graphs(graphs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate single- or multi-frame batch dicts into one (edge and frame indices offset)."""
    out: dict[str, torch.Tensor] = {}
    for key in _ATOM_KEYS + _FRAME_KEYS + (K.EDGE_CELL_SHIFT,):
        if all(key in g for g in graphs):
            out[key] = torch.cat([g[key] for g in graphs])
    atom_offsets = np.cumsum([0] + [int(g[K.POSITIONS].shape[0]) for g in graphs[:-1]])
    frame_offsets = np.cumsum([0] + [int(g[K.CELL].shape[0]) for g in graphs[:-1]])
    out[K.EDGE_INDEX] = torch.cat([g[K.EDGE_INDEX] + int(o) for g, o in zip(graphs, atom_offsets)], dim=1)
    out[K.BATCH] = torch.cat([g[K.BATCH] + int(o) for g, o in zip(graphs, frame_offsets)])
    out[K.R_MAX] = graphs[0][K.R_MAX]
    if any(K.STRESS in g for g in graphs):
        stress, mask = [], []
        for g in graphs:
            n = int(g[K.CELL].shape[0])
            stress.append(g[K.STRESS] if K.STRESS in g else g[K.CELL].new_zeros(n, 3, 3))
            mask.append(g[K.STRESS_MASK] if K.STRESS in g else torch.zeros(n, dtype=torch.bool))
        out[K.STRESS], out[K.STRESS_MASK] = torch.cat(stress), torch.cat(mask)
    return out


def make_batch(samples: Sequence[Sample], device: torch.device | str = "cpu") -> Batch:
    """Concatenate ``samples`` (at least one) into a :class:`Batch` on ``device``."""
    if not samples:
        raise ValueError("make_batch needs at least one sample")
    cutoffs = samples[0].graphs.keys()
    graphs = {r: {k: v.to(device) for k, v in _concat_graphs([s.graphs[r] for s in samples]).items()} for r in cutoffs}
    def cat(values: list) -> torch.Tensor | None:
        return torch.cat(values).to(device) if all(v is not None for v in values) else None

    anchor = None
    if all(s.anchor is not None for s in samples):
        anchor = {key: torch.cat([s.anchor[key] for s in samples]).to(device) for key in samples[0].anchor}
    return Batch(
        graphs=graphs,
        bulk=torch.cat([s.bulk for s in samples]).to(device),
        lf_forces=torch.cat([s.lf_forces for s in samples]).to(device),
        lf_energy=torch.as_tensor([s.lf_energy for s in samples], dtype=torch.bool, device=device),
        expert=cat([s.expert for s in samples]),
        interface=cat([s.interface for s in samples]),
        anchor=anchor,
    )


def batch_order(n_items: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of item indices for ``epoch``: a pure function of ``(seed, epoch)``.

    The permutation is cut into ``ceil(n / batch_size)`` batches of near-equal size (``np.array_split``).
    """
    if n_items < 1:
        raise ValueError("batch_order needs at least one item")
    perm = np.random.default_rng([seed, epoch, _SEED_TAG_ORDER]).permutation(n_items)
    return np.array_split(perm, -(-n_items // batch_size))


def extra_order(n_extra: int, per_batch: int, n_batches: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Indices of the extra cells used with each batch of ``epoch`` (shuffled, cycled; pure in seed, epoch)."""
    if n_extra == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_batches)]
    rng = np.random.default_rng([seed, epoch, _SEED_TAG_EXTRA])
    need = per_batch * n_batches
    order = np.concatenate([rng.permutation(n_extra) for _ in range(-(-need // n_extra))])
    return [order[b * per_batch : (b + 1) * per_batch] for b in range(n_batches)]


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The part of one global batch processed by process ``rank`` of ``world_size`` (strided)."""
    return np.asarray(indices)[rank::world_size]


def reference_lattice_constant(frames: Sequence[Atoms], symbol: str) -> float:
    """fcc lattice constant (A) of the lowest-energy-per-atom 3D-periodic ``symbol``-only frame.

    Raises
    ------
    TrainingDataError
        If no such frame has an energy.
    """
    best = None
    for atoms in frames:
        if not atoms.pbc.all() or set(atoms.get_chemical_symbols()) != {symbol} or atoms.calc is None:
            continue
        energy = atoms.calc.results.get("energy")
        if energy is None:
            continue
        key = energy / len(atoms)
        if best is None or key < best[0]:
            best = (key, abs(atoms.cell.volume) / len(atoms))
    if best is None:
        raise TrainingDataError(
            f"the mixture cells need a labelled bulk {symbol} training frame to set the lattice constant"
        )
    return float((4.0 * best[1]) ** (1.0 / 3.0))
