"""Structure sampling of the multi-element set of the MoE routing study (labelled by EMT: NOT DFT).

Three elements (Pt, C, O) cannot show periodic-table trends in a learned routing, so the study also
trains on ASE's EMT metals (Al, Ni, Cu, Pd, Ag, Pt, Au; ``moe_study.emt``). Families (``info['family']``):

- ``emt_bulk_alloy``: fcc cells of 4 (cubic) or 8 (primitive 2x2x2) atoms with 2-3 random elements,
  Vegard lattice constant (mean of ASE's reference fcc constants), a random linear strain and a
  small rattle;
- ``emt_surface``: fcc(111) and fcc(100) 2x2 slabs of 3 layers with 6 A of vacuum, 1-2 elements, rattled;
- ``emt_rattled``: elemental and binary 8-atom cells rattled by ``rattle_stdev_a``.

Each structure has its own generator seeded by ``(seed, crc32(structure id))`` as in
:mod:`pipeline.data.sampling`; labels come from the label stage with ``label.calculator: emt``, which
marks every frame ``is_dft = False``. :func:`emt_dataset` then adds the per-atom ``region`` (all
``bulk``: the study trains one model, not an HF/LF pair) and the train/validation/test split.

>>> from pipeline.config import MoEStudyEMTConfig
>>> frames = sample_alloys(MoEStudyEMTConfig(n_bulk_alloys=2, n_surfaces=1, n_rattled=1), seed=0)
>>> sorted({f.info["family"] for f in frames})
['emt_bulk_alloy', 'emt_rattled', 'emt_surface']
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc111
from ase.data import atomic_numbers, reference_states
from ase.io import read, write

from pipeline.config import MoEStudyEMTConfig
from pipeline.data.splits import assign_splits

log = logging.getLogger(__name__)

EMT_FAMILIES = ("emt_bulk_alloy", "emt_surface", "emt_rattled")


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def fcc_lattice_constant(symbol: str) -> float:
    """ASE's reference fcc lattice constant of ``symbol`` (A)."""
    state = reference_states[atomic_numbers[symbol]]
    if state is None or state.get("symmetry") != "fcc":
        raise ValueError(f"{symbol} is not an fcc metal in ASE's reference states")
    return float(state["a"])


def _assign(atoms: Atoms, elements: Sequence[str], rng: np.random.Generator) -> Atoms:
    """Random species from ``elements`` (each present at least once when the cell is large enough)."""
    symbols = list(elements) + list(rng.choice(elements, size=max(0, len(atoms) - len(elements))))
    atoms.set_chemical_symbols(list(rng.permutation(symbols))[: len(atoms)])
    return atoms


def _strain(atoms: Atoms, strain_max: float, rng: np.random.Generator) -> None:
    eps = rng.uniform(-strain_max, strain_max, size=(3, 3))
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)


def _tag(atoms: Atoms, family: str, sid: str) -> Atoms:
    atoms.info.clear()
    atoms.info.update(family=family, group=sid, config_type=family.removeprefix("emt_"), structure_id=sid, ideal=False)
    return atoms


def sample_alloys(cfg: MoEStudyEMTConfig, seed: int) -> list[Atoms]:
    """Every structure of the EMT set, in a fixed order, deterministic for ``seed``."""
    elements = list(cfg.elements)
    for symbol in elements:
        fcc_lattice_constant(symbol)
    frames: list[Atoms] = []
    for i in range(cfg.n_bulk_alloys):
        sid = f"emt_bulk_alloy_{i:04d}"
        rng = _rng(seed, sid)
        chosen = list(rng.choice(elements, size=int(rng.integers(2, 4)), replace=False))
        a = float(np.mean([fcc_lattice_constant(s) for s in chosen]))
        atoms = bulk("Cu", "fcc", a=a, cubic=True) if rng.random() < 0.5 else bulk("Cu", "fcc", a=a).repeat(2)
        _assign(atoms, chosen, rng)
        _strain(atoms, cfg.strain_max, rng)
        atoms.rattle(0.5 * cfg.rattle_stdev_a, rng=rng)
        frames.append(_tag(atoms, "emt_bulk_alloy", sid))
    for i in range(cfg.n_surfaces):
        sid = f"emt_surface_{i:04d}"
        rng = _rng(seed, sid)
        chosen = list(rng.choice(elements, size=int(rng.integers(1, 3)), replace=False))
        a = float(np.mean([fcc_lattice_constant(s) for s in chosen]))
        build = fcc111 if i % 2 == 0 else fcc100
        atoms = build("Cu", size=(2, 2, 3), a=a, vacuum=6.0, periodic=True)
        _assign(atoms, chosen, rng)
        atoms.rattle(cfg.rattle_stdev_a, rng=rng)
        frames.append(_tag(atoms, "emt_surface", sid))
    for i in range(cfg.n_rattled):
        sid = f"emt_rattled_{i:04d}"
        rng = _rng(seed, sid)
        chosen = list(rng.choice(elements, size=1 + i % 2, replace=False))
        a = float(np.mean([fcc_lattice_constant(s) for s in chosen]))
        atoms = _assign(bulk("Cu", "fcc", a=a).repeat(2), chosen, rng)
        atoms.rattle(cfg.rattle_stdev_a, rng=rng)
        frames.append(_tag(atoms, "emt_rattled", sid))
    for index, atoms in enumerate(frames):
        atoms.info["sample_index"] = index
    return frames


def write_alloys(cfg: MoEStudyEMTConfig, seed: int, output: str | Path) -> list[Atoms]:
    """Sample the EMT set and write it, unlabelled, to ``output`` (extxyz) for the label stage."""
    frames = sample_alloys(cfg, seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    write(tmp, frames, format="extxyz")
    tmp.replace(output)
    log.info("wrote %d EMT structures (%s) to %s", len(frames), ", ".join(cfg.elements), output)
    return frames


def emt_dataset(cfg: MoEStudyEMTConfig, seed: int, labelled: str | Path, output: str | Path) -> list[Atoms]:
    """Labelled EMT frames -> training dataset: checks they are marked not-DFT, adds regions and splits."""
    frames = read(labelled, index=":", format="extxyz")
    if not frames:
        raise ValueError(f"{labelled} holds no labelled frames")
    dft = [f.info.get("structure_id") for f in frames if f.info.get("is_dft", True) is not False]
    if dft:
        raise ValueError(f"{len(dft)} frames of {labelled} are not marked is_dft=False (e.g. {dft[:3]}): "
                         "label the EMT set with label.calculator: emt")
    for atoms in frames:
        atoms.arrays["region"] = np.array(["bulk"] * len(atoms))
    assign_splits(frames, seed=seed, validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    write(tmp, frames, format="extxyz")
    tmp.replace(output)
    return frames
