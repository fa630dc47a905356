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
batches as an uninterrupted one. The unlabelled configurations the agreement terms also act on
(``train.agreement_extra``) come from :func:`make_extra_cells` (``agreement_extra_source: fcc``:
rattled, strained fcc supercells) or :func:`rattle_training_frames` (``train``: rattled copies of
training frames with bulk atoms, e.g. slabs, whose bulk-labelled atoms then agree); both are
deterministic for the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.build import bulk as ase_bulk

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
    """

    graphs: dict[float, dict[str, torch.Tensor]]
    bulk: torch.Tensor
    lf_forces: torch.Tensor
    lf_energy: bool


def prepare_samples(
    frames: Sequence[Atoms],
    *,
    species: Sequence[str],
    r_maxes: Sequence[float],
    dtype: torch.dtype,
    lf_data: str = "bulk_atoms",
    labelled: bool = True,
) -> list[Sample]:
    """Graphs, bulk masks and the LF assignment of every frame (see the module docstring)."""
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
        samples.append(Sample(graphs, torch.as_tensor(bulk), torch.as_tensor(lf_forces), lf_energy and labelled))
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
    """

    graphs: dict[float, dict[str, torch.Tensor]]
    bulk: torch.Tensor
    lf_forces: torch.Tensor
    lf_energy: torch.Tensor

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
    return Batch(
        graphs=graphs,
        bulk=torch.cat([s.bulk for s in samples]).to(device),
        lf_forces=torch.cat([s.lf_forces for s in samples]).to(device),
        lf_energy=torch.as_tensor([s.lf_energy for s in samples], dtype=torch.bool, device=device),
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
            f"train.agreement_extra > 0 needs a labelled bulk {symbol} training frame to set the lattice constant"
        )
    return float((4.0 * best[1]) ** (1.0 / 3.0))


def make_extra_cells(
    n: int, *, symbol: str, lattice_a: float, repeat: int, rattle_a: float, strain: float, seed: int
) -> list[Atoms]:
    """``n`` unlabelled bulk-like cells: the cubic fcc cell (a = ``lattice_a`` A) repeated
    ``repeat``^3 times, a random symmetric strain (components uniform in [-strain, strain]) applied
    to cell and positions, then Gaussian displacements of standard deviation ``rattle_a`` A.
    Deterministic for ``seed``; every atom is labelled bulk.
    """
    base = ase_bulk(symbol, "fcc", a=lattice_a, cubic=True).repeat((repeat, repeat, repeat))
    cells = []
    for k in range(n):
        rng = np.random.default_rng([seed, k, _SEED_TAG_EXTRA])
        eps = rng.uniform(-strain, strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        atoms = base.copy()
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle_a, size=atoms.positions.shape)
        atoms.arrays["region"] = np.array(["bulk"] * len(atoms))
        atoms.info.update(family="agreement_extra", structure_id=f"agreement-extra-{k:04d}")
        cells.append(atoms)
    return cells


def rattle_training_frames(
    frames: Sequence[Atoms], n: int, *, rattle_a: float, strain: float, seed: int
) -> list[Atoms]:
    """``n`` unlabelled copies of training frames that contain bulk atoms, perturbed: 3D-periodic cells
    get a random symmetric strain (components uniform in [-strain, strain]), then every atom a Gaussian
    displacement of standard deviation ``rattle_a`` A. Frames are drawn cyclically in a seeded order;
    region labels are kept (valid for small displacements). Deterministic for ``seed``.

    Raises
    ------
    TrainingDataError
        If no training frame with more than one atom has bulk atoms.
    """
    eligible = [a for a in frames if len(a) > 1 and bulk_mask(a).any()]
    if not eligible:
        raise TrainingDataError("train.agreement_extra_source 'train' needs training frames with bulk atoms")
    order = np.random.default_rng([seed, _SEED_TAG_EXTRA, 1]).permutation(len(eligible))
    out = []
    for k in range(n):
        rng = np.random.default_rng([seed, k, _SEED_TAG_EXTRA, 1])
        source = eligible[order[k % len(eligible)]]
        atoms = Atoms(source.numbers, positions=source.positions, cell=source.cell, pbc=source.pbc)
        if atoms.pbc.all():
            eps = rng.uniform(-strain, strain, size=(3, 3))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle_a, size=atoms.positions.shape)
        atoms.arrays["region"] = np.asarray(source.arrays["region"]).copy()
        atoms.info.update(family="agreement_extra", structure_id=f"agreement-extra-{k:04d}",
                          source_structure=str(source.info.get("structure_id", "")),
                          source_dataset_index=int(source.info.get("dataset_index", -1)))
        out.append(atoms)
    return out
