"""The teacher-labelled periodic-table set as the MoE study's dataset, and as a shipped file with its README.

:func:`periodic_dataset` checks that every frame is teacher-labelled (``label_level == 'teacher'``, never DFT),
marks every atom ``bulk`` (the study trains one model, not an HF/LF pair) and assigns train/validation/test
splits within each family (:func:`pipeline.data.splits.assign_splits`), by ``info['group']`` or frame by frame
(``moe_study.periodic.split``; ``info['split_unit']`` records which).

:func:`ship_periodic` copies the labelled frames to ``moe_study.periodic.path`` (e.g.
``resources/moe_study/periodic_teacher.extxyz``) and writes ``README.md`` beside it: how the set was made, the
command, counts per family and per element, the teacher and its licence, and the teacher's CPU time.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.io import read, write

from pipeline.atomic import write_atomic
from pipeline.config import MoEStudyPeriodicConfig
from pipeline.data.periodic_lattice import COMPOUNDS
from pipeline.data.periodic_set import ELEMENT_FAMILIES, FAMILIES
from pipeline.data.splits import assign_splits, group_of, structure_of
from pipeline.data.teacher import TEACHER_LICENCE, TEACHER_MODEL

log = logging.getLogger(__name__)

README_NAME = "README.md"
MAX_SHIP_BYTES = 20_000_000  # larger sets are not committed to resources/


def read_frames(path: str | Path) -> list[Atoms]:
    """The frames of an extxyz file (none for an empty file)."""
    return read(path, index=":", format="extxyz") if Path(path).stat().st_size else []


def check_teacher_frames(frames: Sequence[Atoms], where: str) -> None:
    """Raise ``ValueError`` unless every frame is marked ``label_level = teacher`` and ``is_dft = False``."""
    if not frames:
        raise ValueError(f"{where} holds no labelled frames")
    wrong = [f.info.get("structure_id") for f in frames
             if f.info.get("label_level") != "teacher" or f.info.get("is_dft", True) is not False]
    if wrong:
        raise ValueError(f"{len(wrong)} frames of {where} are not marked label_level=teacher, is_dft=False "
                         f"(e.g. {wrong[:3]}): label the periodic set with label.calculator: sevenn")


def periodic_dataset(cfg: MoEStudyPeriodicConfig, labelled: str | Path, output: str | Path) -> list[Atoms]:
    """Teacher-labelled frames -> the study's dataset (extxyz): checks the labels, adds regions and splits."""
    frames = read_frames(labelled)
    check_teacher_frames(frames, str(labelled))
    for atoms in frames:
        atoms.arrays["region"] = np.array(["bulk"] * len(atoms))
    unit = {"group": group_of, "structure": structure_of}[cfg.split]
    assign_splits(frames, seed=cfg.seed, validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction,
                  unit=unit)
    for atoms in frames:
        atoms.info["split_unit"] = cfg.split
    write_atomic(output, lambda tmp: write(tmp, frames, format="extxyz"))
    log.info("periodic dataset: %d frames -> %s", len(frames), output)
    return frames


# ----------------------------------------------------------------------------------------------
# counts and README
# ----------------------------------------------------------------------------------------------


def family_counts(frames: Sequence[Atoms]) -> pd.DataFrame:
    """Per family: frames, atoms (total, smallest and largest cell), distinct elements, teacher CPU time (s)."""
    rows = []
    for family in [*FAMILIES, *sorted({f.info["family"] for f in frames} - set(FAMILIES))]:
        sub = [f for f in frames if f.info["family"] == family]
        if not sub:
            continue
        sizes = [len(f) for f in sub]
        rows.append({"family": family, "frames": len(sub), "atoms": sum(sizes), "min atoms": min(sizes),
                     "max atoms": max(sizes), "elements": len({s for f in sub for s in f.get_chemical_symbols()}),
                     "teacher cpu_s": sum(float(f.info.get("label_wall_s", np.nan)) for f in sub)})
    return pd.DataFrame(rows)


def element_counts(frames: Sequence[Atoms]) -> pd.DataFrame:
    """Per element (periodic-table order): its family, frames containing it (all and per structure family), atoms."""
    atoms_of = Counter(s for f in frames for s in f.get_chemical_symbols())
    rows = []
    for symbol in sorted(atoms_of, key=lambda s: Atoms(s).numbers[0]):
        row = {"element": symbol, "element family": ELEMENT_FAMILIES.get(symbol, "?"),
               "frames": sum(symbol in f.get_chemical_symbols() for f in frames), "atoms": atoms_of[symbol]}
        for family in FAMILIES:
            row[family] = sum(f.info["family"] == family and symbol in f.get_chemical_symbols() for f in frames)
        rows.append(row)
    return pd.DataFrame(rows)


def readme_text(frames: Sequence[Atoms], *, cfg: MoEStudyPeriodicConfig, command: str, size_bytes: int) -> str:
    """README (Markdown) of the shipped periodic-table set."""
    source = frames[0].info.get("label_source", "?")
    families = family_counts(frames)
    cpu = float(families["teacher cpu_s"].sum())
    lengths = Counter(f.info.get("length_source", "?") for f in frames)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("teacher_check", "elements")}
    stressed = sum("stress" in f.calc.results for f in frames if f.calc is not None)
    lines = [
        "# Periodic-table set of the MoE routing study: teacher labels, NOT DFT",
        "",
        f"`{Path(cfg.path).name}`: {len(frames)} frames, {sum(len(f) for f in frames)} atoms, "
        f"{len({s for f in frames for s in f.get_chemical_symbols()})} elements, {size_bytes / 1e6:.1f} MB. "
        "Extended XYZ (`ase.io.read(path, ':')`): energy in eV, forces in eV/A, stress in eV/A^3 (ASE's sign, "
        f"3D-periodic cells only: {stressed} frames).",
        "",
        f"**Teacher labels, not DFT.** Every frame was labelled by `{source}` "
        f"(`label_level = teacher`, `is_dft = False`): SevenNet-0, a universal interatomic potential trained on "
        "Materials Project's MPtrj (PBE and PBE+U, spin-polarised), from the `sevenn` package (the `teacher` extra; "
        f"sevenn's model name `{TEACHER_MODEL}`, the weights ship in its wheel). Licence: {TEACHER_LICENCE}. "
        "Magnetic 3d metals (Cr, Mn, Fe, Co, Ni) are left out, and no frame puts O with a PBE+U metal "
        "(V, Mo, W here). How far the teacher is from PBE on these frames is measured by target "
        "`moe_periodic_check` (pipeline.data.teacher_check: GPAW PBE on a seeded subset).",
        "",
        "Built by `pipeline.data.periodic_set` (section `moe_study.periodic`) and labelled by "
        "`python -m pipeline label` with `label.calculator: sevenn` (per-frame cache, resumable). Families: "
        "`bulk` (one element in ASE's reference crystal or fcc/bcc/hcp/sc/diamond; isotropic strain, random strain "
        "+ rattle, or rattle), `alloy` (two metals of similar size, random fcc/bcc/hcp occupations and ordered "
        "L1_2/L1_0/B2), `compound` (rocksalt, zincblende, wurtzite, CsCl binaries: "
        + ", ".join(sorted({c.formula for c in COMPOUNDS}))
        + "), `surface` (2x2, 3-layer slabs, clean or with H, C, N, O, CO, OH). Every frame carries `family`, "
        "`elements`, `structure_id`, `config_type`, `group`, `perturbation`, `length_source` and the label "
        "provenance in its info.",
        "",
        "Length scales (`length_source`): " + ", ".join(f"`{k}` {v} frames" for k, v in sorted(lengths.items()))
        + ". `ase_reference`: nearest-neighbour distance of ASE's reference crystal (`ase.data.reference_states`), "
        "`covalent_radii`: twice the covalent radius, a single bond (B and Ga, whose crystals ASE cannot build); "
        "in any other lattice the distance follows Pauling's bond-order relation, d(z) = d_ref + 0.6 A "
        "log10(z / z_ref) for coordination z; `vegard(...)`: composition-weighted mean of the two elements' "
        "distances; `experimental`: rounded experimental lattice constants of the compounds "
        "(`pipeline.data.periodic_lattice.COMPOUNDS`). Slabs use ASE's reference lattice constants.",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Settings (`moe_study.periodic`)",
        "",
        pd.DataFrame([(k, str(v)) for k, v in settings.items()], columns=["key", "value"]).to_markdown(index=False),
        "",
        f"Elements: {', '.join(cfg.elements)}.",
        "",
        "## Frames per family",
        "",
        families.to_markdown(index=False, floatfmt=".0f"),
        "",
        f"Teacher CPU time: {cpu:.0f} s in all, {cpu / max(len(frames), 1):.3f} s per frame (one core, "
        "sum of per-frame wall times; the model load is not included).",
        "",
        "## Frames and atoms per element",
        "",
        element_counts(frames).to_markdown(index=False),
        "",
    ]
    return "\n".join(lines)


def ship_periodic(labelled: str | Path, *, cfg: MoEStudyPeriodicConfig, command: str) -> Path:
    """Copy the teacher-labelled frames to ``cfg.path`` and write ``README.md`` beside it; returns the path.

    Raises
    ------
    ValueError
        When a frame is not teacher-labelled, or the file is larger than :data:`MAX_SHIP_BYTES`.
    """
    frames = read_frames(labelled)
    check_teacher_frames(frames, str(labelled))
    size = Path(labelled).stat().st_size
    if size > MAX_SHIP_BYTES:
        raise ValueError(f"{labelled} is {size / 1e6:.1f} MB > {MAX_SHIP_BYTES / 1e6:.0f} MB: too large to ship")
    dest = Path(cfg.path)
    write_atomic(dest, lambda tmp: shutil.copyfile(labelled, tmp))
    text = readme_text(frames, cfg=cfg, command=command, size_bytes=dest.stat().st_size)
    write_atomic(dest.with_name(README_NAME), lambda tmp: tmp.write_text(text))
    log.info("shipped %d periodic-set frames to %s", len(frames), dest)
    return dest
