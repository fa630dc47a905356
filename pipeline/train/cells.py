"""Mixture cells: unlabelled supercells with a real HF/LF interface, for the mixture agreement term.

The training frames have 1 to 38 atoms: their periodic images put an HF/LF interface closer than
2 r_max to its own image, so the mixture is never exercised there as MD uses it. Co-training adds a
term on dedicated cells (``train.cells``) that makes the *mixture's* forces equal the HF expert's
(:mod:`pipeline.train.pair`, term ``mixture_forces``). Two kinds, each cell a 3D-periodic supercell
with per-atom arrays ``expert`` (0 = HF, 1 = LF), ``interface`` (:func:`interface_atoms`) and
``region``:

- **bulk** (:func:`bulk_cells`): the cubic fcc cell of the training set's lattice constant repeated
  ``bulk_repeat`` times, under a homogeneous deformation over the mechanical range that defines the bulk
  response: the volume scaled by a factor uniform in ``1 +- volume_range`` (the EOS range), then, in
  turn, nothing, a uniaxial strain e_aa (random axis a, uniform in ``+-uniaxial_max``) or a shear strain
  e_ab = e_ba (random pair, uniform in ``+-shear_max``) -- what C11, C12 and C44 measure -- and Gaussian
  displacements with a standard deviation uniform in [0, ``rattle_max_a``] (thermal rattles). The lower
  half along the third cell vector is HF, the upper half LF: two periodic interface planes, each half
  thicker than the cutoff when ``bulk_repeat[2]`` cubic cells exceed 4 r_max;
- **slab** (:func:`slab_cells`): slab frames of the training set (``clean_slab``, ``slab_co``; never the
  close-contact family) repeated in-plane until both periods reach ``slab_min_lateral_a``, rattled
  (``slab_rattle_a``) and partitioned by the ``md.partition`` rule, the partition MD uses.

Validation cells are built the same way from another random stream (bulk) and from the *validation*
frames (slab), so model selection never sees a training cell. Everything is deterministic in the seed.

>>> cells = bulk_cells(2, lattice_a=3.97, repeat=(1, 1, 4), volume_range=0.08, uniaxial_max=0.03,
...                    shear_max=0.03, rattle_max_a=0.05, cutoff=4.0, seed=0)
>>> len(cells[0]), sorted(set(cells[0].arrays["expert"].tolist()))
(16, [0, 1])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import vesin
from ase import Atoms
from ase.build import bulk as ase_bulk

from pipeline.config import MDPartitionConfig, RegionConfig
from pipeline.data.partition import HF, LF, partition_atoms
from pipeline.data.regions import family_of, label_regions
from pipeline.errors import PipelineInputError

log = logging.getLogger(__name__)

SLAB_SOURCE_FAMILIES = ("clean_slab", "slab_co")
_SEED_TAG_BULK = 0xCE11_B0
_SEED_TAG_SLAB = 0xCE11_5B


class MixtureCellError(PipelineInputError, ValueError):
    """The mixture cells cannot be built (no source frames, a partition rule that gives no interface)."""


def interface_atoms(atoms: Atoms, expert: np.ndarray, cutoff: float) -> np.ndarray:
    """``(n_atoms,)`` bool: atoms whose mixture force can differ from the HF expert's.

    The mixture force minus the HF force on atom i is -d/dR_i sum_{j in LF} (e_j^LF - e_j^HF); it can be
    non-zero only for atoms within ``cutoff`` (A, the larger expert cutoff) of an LF atom, the LF atoms
    included. Periodic images count.
    """
    lf = np.asarray(expert) == LF
    i, j = vesin.ase_neighbor_list("ij", atoms, float(cutoff))
    near = lf.copy()
    near[np.unique(i[lf[j]])] = True
    return near


def _with_mixture_arrays(atoms: Atoms, expert: np.ndarray, region: np.ndarray, cutoff: float, **info) -> Atoms:
    atoms.arrays["expert"] = np.asarray(expert, dtype=np.int64)
    atoms.arrays["interface"] = interface_atoms(atoms, expert, cutoff)
    atoms.arrays["region"] = np.asarray(region)
    atoms.info.update(family="mixture_cell", **info)
    return atoms


def half_split(atoms: Atoms) -> np.ndarray:
    """Expert per atom: HF for fractional coordinate along the third cell vector < 1/2, else LF."""
    frac = atoms.cell.scaled_positions(atoms.positions)[:, 2] % 1.0
    return np.where(frac < 0.5 - 1e-6, HF, LF).astype(np.int64)


def deformation(rng: np.random.Generator, kind: int, *, volume_range: float, uniaxial_max: float,
                shear_max: float) -> tuple[np.ndarray, str]:
    """A deformation gradient (3, 3) and its description: volume factor uniform in 1 +- volume_range, then
    ``kind`` 0 = none, 1 = uniaxial e_aa, 2 = shear e_ab = e_ba (symmetric small strain)."""
    volume = rng.uniform(1.0 - volume_range, 1.0 + volume_range)
    eps = np.zeros((3, 3))
    what = f"volume x{volume:.4f}"
    if kind == 1:
        a = int(rng.integers(3))
        eps[a, a] = rng.uniform(-uniaxial_max, uniaxial_max)
        what += f", e_{'xyz'[a]}{'xyz'[a]} {eps[a, a]:+.4f}"
    elif kind == 2:
        a, b = sorted(rng.choice(3, size=2, replace=False).tolist())
        eps[a, b] = eps[b, a] = rng.uniform(-shear_max, shear_max)
        what += f", e_{'xyz'[a]}{'xyz'[b]} {eps[a, b]:+.4f}"
    return volume ** (1.0 / 3.0) * (np.eye(3) + eps), what


def bulk_cells(
    n: int,
    *,
    lattice_a: float,
    repeat: Sequence[int],
    volume_range: float,
    uniaxial_max: float,
    shear_max: float,
    rattle_max_a: float,
    cutoff: float,
    seed: int,
    symbol: str = "Pt",
    stream: int = 0,
) -> list[Atoms]:
    """``n`` deformed, rattled, half-split fcc supercells (see the module docstring).

    Parameters
    ----------
    lattice_a : float
        Cubic lattice constant (A) before the deformation.
    repeat : (3,) ints
        Repeats of the 4-atom cubic cell.
    cutoff : float
        Larger expert cutoff (A), for the interface mask.
    seed, stream : int
        Random stream: ``stream`` 0 for training cells, 1 for validation cells.
    """
    base = ase_bulk(symbol, "fcc", a=lattice_a, cubic=True).repeat(tuple(int(r) for r in repeat))
    expert = half_split(base)
    cells = []
    for k in range(n):
        rng = np.random.default_rng([seed, stream, k, _SEED_TAG_BULK])
        grad, what = deformation(rng, k % 3, volume_range=volume_range, uniaxial_max=uniaxial_max, shear_max=shear_max)
        atoms = base.copy()
        atoms.set_cell(atoms.cell.array @ grad.T, scale_atoms=True)
        rattle = rng.uniform(0.0, rattle_max_a)
        atoms.positions += rng.normal(0.0, rattle, size=atoms.positions.shape)
        cells.append(_with_mixture_arrays(atoms, expert, np.array(["bulk"] * len(atoms)), cutoff,
                                          structure_id=f"mixture-bulk-{stream}-{k:04d}",
                                          deformation=f"{what}, rattle {rattle:.3f} A"))
    return cells


def slab_cells(
    frames: Sequence[Atoms],
    n: int,
    *,
    min_lateral_a: float,
    rattle_a: float,
    partition: MDPartitionConfig,
    regions: RegionConfig,
    cutoff: float,
    seed: int,
    stream: int = 0,
) -> list[Atoms]:
    """``n`` laterally repeated, rattled slab frames partitioned by the ``md.partition`` rule.

    Source frames are those of ``frames`` in :data:`SLAB_SOURCE_FAMILIES` on which the rule gives both
    experts, drawn cyclically in a seeded order.

    Raises
    ------
    MixtureCellError
        If ``n`` > 0 and no frame qualifies.
    """
    if n <= 0:
        return []
    sources = [a for a in frames if a.info.get("family") in SLAB_SOURCE_FAMILIES]
    order = np.random.default_rng([seed, stream, _SEED_TAG_SLAB]).permutation(len(sources))
    cells: list[Atoms] = []
    for index in order.tolist() * max(1, math.ceil(n / max(len(sources), 1))):
        if len(cells) == n:
            break
        source = sources[index]
        reps = [max(1, math.ceil(min_lateral_a / np.linalg.norm(source.cell[a]))) for a in (0, 1)]
        atoms = Atoms(source.numbers, positions=source.positions, cell=source.cell, pbc=True).repeat((*reps, 1))
        rng = np.random.default_rng([seed, stream, len(cells), _SEED_TAG_SLAB])
        atoms.positions += rng.normal(0.0, rattle_a, size=atoms.positions.shape)
        atoms.info.update(family=source.info["family"])
        try:
            expert = partition_atoms(atoms, partition, regions)
        except ValueError:
            continue
        if not ((expert == HF).any() and (expert == LF).any()):
            continue
        family, _ = family_of(atoms, regions)
        region, _ = label_regions(atoms, family, regions)
        cells.append(_with_mixture_arrays(atoms, expert, region, cutoff,
                                          structure_id=f"mixture-slab-{stream}-{len(cells):04d}",
                                          source_structure=str(source.info.get("structure_id", "")),
                                          source_family=str(source.info["family"])))
    if not cells:
        raise MixtureCellError(
            f"no slab frame ({'/'.join(SLAB_SOURCE_FAMILIES)}) among the {len(frames)} source frames gives both "
            f"experts under the md.partition rule {partition.rule!r}; set train.cells.slab to 0"
        )
    if len(cells) < n:
        log.warning("only %d of %d slab mixture cells could be built", len(cells), n)
    return cells
