"""DFT check of the teacher: a seeded subset of the periodic-table set relabelled with GPAW PBE, and the error table.

:func:`select_check_frames` draws ``moe_study.periodic.teacher_check.n_frames`` frames of at most ``max_atoms``
atoms, from every structure family in proportion to its size (seeded by ``moe_study.periodic.seed``); no frame
holds a magnetic element (the GPAW run is spin-paired). :func:`check_label_config` is the ``label:`` section with
the check's GPAW settings (by default plane waves at 600 eV and Fermi-Dirac 0.1 eV, the settings the
label-convergence study found converged for Pt/CO, and 3.0 k-points per A^-1, 10.7 meV/A force RMS from 4.5 on a
rattled Pt8 cell at a third of the cost: ``pipeline/config.schema.yaml``); the ordinary ``label`` command labels
the subset with it, cached per frame, so a killed run resumes.

:func:`check_tables` compares teacher and GPAW frame by frame (matched by ``structure_id``):

- forces: MAE and RMS over force components (meV/A), per periodic-table family of the atom's element, per
  structure family and over all atoms, beside the size of the DFT forces and the slope of teacher on DFT forces
  (:func:`force_slope`; universal potentials are known to be softer than their DFT, slope below 1);
- energies: SevenNet-0 was trained on Materials Project's PBE(+U) with its own energy references and GPAW's PAW
  setups have theirs, so total energies differ by a constant per element. :func:`align_energies` removes it: a
  least-squares fit of ``E_teacher - E_gpaw ~ sum_el n_el mu_el`` (weighted per atom), whose residual per atom is
  the energy error (meV/atom; MAE per structure family and overall). The alignment removes a per-element
  constant and nothing else; with few frames per element it also absorbs part of the error, so the table gives
  the number of fitted constants and the degrees of freedom left, and two measures that the fit cannot flatter:
  the leave-one-out residual (:func:`leave_one_out_residual`: each frame predicted by constants fitted to the
  others, where they determine its composition's offset) and the error of energy differences between frames of
  the same composition (:func:`same_composition_pairs`, free of any reference).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.io import write

from pipeline.atomic import write_atomic
from pipeline.config import Config, LabelConfig, MoEStudyPeriodicConfig
from pipeline.data.labelling import cached_labels, geometry_mismatch
from pipeline.data.periodic_set import ELEMENT_FAMILIES, FAMILIES, MAGNETIC
from pipeline.data.periodic_ship import read_frames

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("grouping", "group", "frames", "atoms", "force_mae_mev_a", "force_rms_mev_a", "dft_force_rms_mev_a",
                 "force_slope", "energy_mae_mev_atom",
                 "energy_loo_mae_mev_atom", "loo_frames", "pair_energy_mae_mev_atom", "pairs")
_PROVENANCE_PREFIXES = ("label_", "dft_")
SLOPE_MIN_FORCE_EV_A = 0.01  # eV/A: DFT forces smaller than this (RMS) give no force slope


def check_label_config(cfg: Config) -> LabelConfig:
    """The ``label:`` section with the GPAW settings of ``moe_study.periodic.teacher_check`` (no stress)."""
    tc = cfg.moe_study.periodic.teacher_check
    return dataclasses.replace(cfg.label, calculator="gpaw", mode=tc.mode, ecut_ev=tc.ecut_ev, basis=tc.basis,
                               h_a=tc.h_a, kpt_density=tc.kpt_density, kpts=None, smearing_ev=tc.smearing_ev,
                               stress=False)


def unlabelled(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` without calculator results and without label provenance in its info."""
    out = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info.update({k: v for k, v in atoms.info.items() if not k.startswith(_PROVENANCE_PREFIXES) and k != "is_dft"})
    return out


def select_check_frames(frames: Sequence[Atoms], cfg: MoEStudyPeriodicConfig) -> list[Atoms]:
    """The seeded subset of the check (see the module docstring), in the order of ``frames``.

    Raises
    ------
    ValueError
        When fewer than ``n_frames`` frames are eligible.
    """
    tc = cfg.teacher_check
    eligible = [i for i, f in enumerate(frames)
                if len(f) <= tc.max_atoms and not set(f.get_chemical_symbols()) & MAGNETIC]
    if len(eligible) < tc.n_frames:
        raise ValueError(f"only {len(eligible)} frames have <= {tc.max_atoms} atoms and no magnetic element; "
                         f"teacher_check.n_frames is {tc.n_frames}")
    by_family: dict[str, list[int]] = {}
    for i in eligible:
        by_family.setdefault(str(frames[i].info.get("family")), []).append(i)
    names = sorted(by_family, key=lambda f: (FAMILIES.index(f) if f in FAMILIES else len(FAMILIES), f))
    share = np.array([len(by_family[f]) for f in names], dtype=float) * tc.n_frames / len(eligible)
    quota = np.floor(share).astype(int)
    for k in np.argsort(-(share - quota), kind="stable")[: tc.n_frames - quota.sum()]:  # largest remainders
        quota[k] += 1
    rng = np.random.default_rng([cfg.seed, 0x7EAC])
    chosen = [int(i) for name, q in zip(names, quota) for i in rng.choice(by_family[name], size=q, replace=False)]
    return [frames[i] for i in sorted(chosen)]


def interleaved_by_family(frames: Sequence[Atoms]) -> list[Atoms]:
    """``frames`` reordered so that every structure family is spread evenly through the sequence (the i-th of a
    family's n frames sits at fraction (i + 1/2) / n), each family keeping its own order: a check stopped part way
    has labelled about the same fraction of every family.

    >>> from ase import Atoms
    >>> frames = [Atoms(info={"family": f}) for f in ["bulk"] * 4 + ["alloy"] * 2]
    >>> [f.info["family"] for f in interleaved_by_family(frames)]
    ['bulk', 'alloy', 'bulk', 'bulk', 'alloy', 'bulk']
    """
    families = [str(f.info.get("family")) for f in frames]
    size = Counter(families)
    seen: dict[str, int] = {}
    keys = []
    for i, fam in enumerate(families):
        rank = seen.get(fam, 0)
        seen[fam] = rank + 1
        keys.append(((rank + 0.5) / size[fam], i))
    return [frames[i] for _, i in sorted(keys)]


def write_check_subset(labelled: str | Path, cfg: MoEStudyPeriodicConfig, subset: str | Path,
                       chunks: Sequence[str | Path]) -> list[Atoms]:
    """Select the check frames of ``labelled`` (teacher labels); write them with their teacher labels to ``subset``
    and, unlabelled, round-robin into the ``chunks`` files for the GPAW ``label`` jobs, in the order of
    :func:`interleaved_by_family` (the label jobs work through their chunk in order)."""
    picked = select_check_frames(read_frames(labelled), cfg)
    write_atomic(subset, lambda tmp: write(tmp, picked, format="extxyz"))
    order = interleaved_by_family(picked)
    for k, path in enumerate(chunks):
        part = [unlabelled(f) for f in order[k :: len(chunks)]]
        write_atomic(path, lambda tmp, part=part: write(tmp, part, format="extxyz"))
    log.info("teacher check: %d frames in %d chunks", len(picked), len(chunks))
    return picked


# ----------------------------------------------------------------------------------------------
# shipping the GPAW labels done so far (resources/), so that a later run computes only the rest
# ----------------------------------------------------------------------------------------------


def check_readme_path(path: str | Path) -> Path:
    """The README beside the shipped GPAW labels: ``<stem>_README.md``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_README.md")


def ship_check_labels(chunks: Sequence[str | Path], cfg: Config, cache_dir: str | Path, *,
                      command: str) -> pd.DataFrame:
    """Write the GPAW labels of the check frames that the label cache holds to
    ``moe_study.periodic.teacher_check.path`` with a README beside it; returns the frames per family (drawn, done).

    Reads the cache, not the chunk outputs, so it ships a check that is still running or was stopped: the
    ``moe_periodic_check_label`` rule takes these labels back (``label --reuse``) instead of computing them again.
    Raises ``ValueError`` when the cache holds no label of a drawn frame.
    """
    label_cfg = check_label_config(cfg)
    drawn = [f for path in chunks for f in read_frames(path)]
    done = cached_labels(drawn, label_cfg, cache_dir)
    if not done:
        raise ValueError(f"the cache {cache_dir} holds no GPAW label of the {len(drawn)} drawn check frames")
    done.sort(key=lambda f: int(f.info.get("sample_index", 0)))
    dest = Path(cfg.moe_study.periodic.teacher_check.path)
    write_atomic(dest, lambda tmp: write(tmp, done, format="extxyz"))
    counts = pd.DataFrame([{"family": fam, "drawn": sum(f.info.get("family") == fam for f in drawn),
                            "labelled": sum(f.info.get("family") == fam for f in done),
                            "cpu_s": sum(float(f.info.get("label_wall_s", np.nan)) for f in done
                                         if f.info.get("family") == fam)}
                           for fam in dict.fromkeys(str(f.info.get("family")) for f in drawn)])
    text = check_readme_text(done, counts, label_cfg=label_cfg, dest=dest, command=command)
    write_atomic(check_readme_path(dest), lambda tmp: tmp.write_text(text))
    log.info("shipped %d of %d GPAW check labels to %s", len(done), len(drawn), dest)
    return counts


def check_readme_text(frames: Sequence[Atoms], counts: pd.DataFrame, *, label_cfg: LabelConfig, dest: Path,
                      command: str) -> str:
    """README (Markdown) of the shipped GPAW labels of the teacher check."""
    meta = frames[0].info
    n_drawn, n_done = int(counts["drawn"].sum()), int(counts["labelled"].sum())
    status = ("all drawn frames are labelled" if n_done == n_drawn else
              f"**{n_drawn - n_done} drawn frames are not labelled yet**: the check table needs them; the command "
              "below computes only those")
    lines = [
        "# GPAW PBE labels of the teacher check (periodic-table set of the MoE routing study)",
        "",
        f"`{dest.name}`: {n_done} of the {n_drawn} frames that `pipeline.data.teacher_check.select_check_frames` "
        f"draws from `periodic_teacher.extxyz` (seeded; {min(len(f) for f in frames)} to "
        f"{max(len(f) for f in frames)} atoms, no magnetic element), labelled with GPAW: {status}. Extended XYZ: "
        "energy (the force-consistent free energy) "
        "in eV, forces in eV/A, the structure's `structure_id`, `family` and `sample_index` and the DFT settings in "
        "each frame's info. **These are DFT labels**; the frames' teacher labels are in `periodic_teacher.extxyz`.",
        "",
        f"Settings (`moe_study.periodic.teacher_check`, the `label:` section of `check_label_config`): GPAW "
        f"{meta.get('dft_version', '?')}, {label_cfg.xc}, spin-paired, mode {label_cfg.mode} "
        + (f"{label_cfg.ecut_ev:g} eV" if label_cfg.mode == "pw" else f"{label_cfg.basis}, h {label_cfg.h_a:g} A")
        + f", {label_cfg.kpt_density:g} k-points per A^-1 (Monkhorst-Pack, mesh per frame in `dft_kpts`), "
        f"Fermi-Dirac {label_cfg.smearing_ev:g} eV, GPAW's standard PAW setups, no stress.",
        "",
        "The check's label jobs (`moe_periodic_check_label`) take these labels instead of computing them "
        "(`python -m pipeline label --reuse`), but only where the geometry and every setting match "
        "(`pipeline.data.labelling.reuse_mismatch`); other settings relabel from scratch.",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Frames per family",
        "",
        counts.to_markdown(index=False, floatfmt=".0f"),
        "",
        f"GPAW CPU time: {float(counts['cpu_s'].sum()) / 3600:.2f} h for the labelled frames (one core per frame, "
        "sum of per-frame wall times).",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# alignment and tables
# ----------------------------------------------------------------------------------------------


def composition_matrix(frames: Sequence[Atoms]) -> tuple[list[str], np.ndarray]:
    """Elements (sorted) and the counts ``N[frame, element]`` (shape ``(n_frames, n_elements)``)."""
    elements = sorted({s for f in frames for s in f.get_chemical_symbols()})
    counts = np.array([[f.get_chemical_symbols().count(s) for s in elements] for f in frames], dtype=float)
    return elements, counts.reshape(len(frames), len(elements))


def align_energies(counts: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-element constants ``mu`` (eV, shape ``(n_elements,)``) fitted by least squares to the per-atom energy
    differences, ``delta_f / n_f ~ sum_el N_f,el mu_el / n_f``, and the residual per atom (eV/atom, ``(n_frames,)``).

    >>> counts = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 4.0]])
    >>> mu, residual = align_energies(counts, counts @ np.array([0.5, -1.0]))
    >>> np.round(mu, 6).tolist(), bool(np.allclose(residual, 0.0))
    ([0.5, -1.0], True)
    """
    n_atoms = counts.sum(axis=1)
    mu, *_ = np.linalg.lstsq(counts / n_atoms[:, None], delta / n_atoms, rcond=None)
    return mu, (delta - counts @ mu) / n_atoms


def leave_one_out_residual(counts: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Per-atom energy error of each frame predicted by the constants fitted (:func:`align_energies`) to all the
    other frames (eV/atom, shape ``(n_frames,)``); NaN where the other frames do not determine the offset of this
    frame's composition (its row of ``counts`` is not in the span of theirs, e.g. an element no other frame has).

    >>> counts = np.array([[2.0, 0.0], [4.0, 0.0], [1.0, 1.0]])
    >>> loo = leave_one_out_residual(counts, counts @ np.array([0.5, -1.0]) + np.array([0.0, 0.4, 0.0]))
    >>> np.round(loo, 6).tolist()[:2], bool(np.isnan(loo[2]))
    ([-0.1, 0.1], True)
    """
    n_atoms = counts.sum(axis=1)
    out = np.full(len(delta), np.nan)
    for f in range(len(delta)):
        rest = np.arange(len(delta)) != f
        if not rest.any():
            continue
        rank = np.linalg.matrix_rank(counts[rest])
        if np.linalg.matrix_rank(np.vstack([counts[rest], counts[f]])) > rank:
            continue
        mu, _ = align_energies(counts[rest], delta[rest])
        out[f] = (delta[f] - counts[f] @ mu) / n_atoms[f]
    return out


def same_composition_pairs(counts: np.ndarray, delta: np.ndarray) -> list[tuple[int, int, float]]:
    """Every pair ``(i, j, error)`` of frames with the same composition and the error of their energy difference,
    ``((E_t,i - E_t,j) - (E_g,i - E_g,j)) / n`` (eV/atom), which no reference energy enters.

    >>> pairs = same_composition_pairs(np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), np.array([1.0, 5.0, 0.6]))
    >>> [(i, j, round(error, 6)) for i, j, error in pairs]
    [(0, 2, 0.2)]
    """
    pairs = []
    for i in range(len(delta)):
        for j in range(i + 1, len(delta)):
            if np.array_equal(counts[i], counts[j]):
                pairs.append((i, j, float((delta[i] - delta[j]) / counts[i].sum())))
    return pairs


def force_slope(teacher: np.ndarray, dft: np.ndarray) -> float:
    """Least-squares slope through the origin of teacher on DFT force components, ``sum(F_t F_d) / sum(F_d^2)``:
    below 1 the teacher's potential energy surface is softer than DFT's. NaN when the DFT forces' RMS is under
    :data:`SLOPE_MIN_FORCE_EV_A` (symmetric positions, where both are zero up to numerical noise).

    >>> round(force_slope(np.array([[0.5, -1.0, 0.0]]), np.array([[1.0, -2.0, 0.0]])), 6)
    0.5
    """
    norm = float((dft**2).sum())
    if dft.size == 0 or np.sqrt(norm / dft.size) < SLOPE_MIN_FORCE_EV_A:
        return np.nan
    return float((teacher * dft).sum()) / norm


def _force_rows(teacher: np.ndarray, dft: np.ndarray, labels: np.ndarray, grouping: str,
                order: Sequence[str] = ()) -> list[dict]:
    rows = []
    for group in sorted(dict.fromkeys(labels), key=lambda g: list(order).index(g) if g in order else len(order)):
        t, d = teacher[labels == group], dft[labels == group]  # [atoms, 3] eV/A
        rows.append({"grouping": grouping, "group": group, "atoms": len(t),
                     "force_mae_mev_a": 1000 * float(np.abs(t - d).mean()),
                     "force_rms_mev_a": 1000 * float(np.sqrt(((t - d) ** 2).mean())),
                     "dft_force_rms_mev_a": 1000 * float(np.sqrt((d**2).mean())),
                     "force_slope": force_slope(t, d)})
    return rows


def check_tables(teacher: Sequence[Atoms], dft: Sequence[Atoms]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The error table (:data:`TABLE_COLUMNS`: rows per element family, per structure family and ``all``), the
    fitted per-element constants (``element``, ``mu_ev``, ``frames``) and the rank of the composition matrix (the
    number of independent constants: elements that only ever appear together, as in MgO, share one, and their
    individual ``mu`` are then the minimum-norm split of it).

    Raises
    ------
    ValueError
        When no GPAW frame matches a teacher frame by ``structure_id``.
    """
    by_id = {f.info["structure_id"]: f for f in teacher}
    pairs = [(by_id[d.info["structure_id"]], d) for d in dft if d.info.get("structure_id") in by_id]
    if not pairs:
        raise ValueError("no GPAW frame matches a teacher frame by structure_id")
    for t, d in pairs:
        reason = geometry_mismatch(t, d)
        if reason is not None:
            raise ValueError(f"{d.info['structure_id']}: the GPAW frame is not the teacher's structure ({reason})")
    ref = [t for t, _ in pairs]
    elements, counts = composition_matrix(ref)
    delta = np.array([t.get_potential_energy() - d.get_potential_energy() for t, d in pairs])
    mu, residual = align_energies(counts, delta)
    loo = leave_one_out_residual(counts, delta)
    same = same_composition_pairs(counts, delta)
    f_teacher = np.concatenate([t.get_forces() for t, _ in pairs])  # [atoms, 3] eV/A
    f_dft = np.concatenate([d.get_forces() for _, d in pairs])
    symbols = np.concatenate([t.get_chemical_symbols() for t in ref])
    atom_family = np.concatenate([[t.info["family"]] * len(t) for t in ref])
    frame_family = np.array([t.info["family"] for t in ref])
    element_family = np.array([ELEMENT_FAMILIES.get(s, "?") for s in symbols])
    rows = _force_rows(f_teacher, f_dft, element_family, "element family", list(dict.fromkeys(ELEMENT_FAMILIES.values())))
    for row in rows:
        row["frames"] = sum(any(ELEMENT_FAMILIES.get(s) == row["group"] for s in t.get_chemical_symbols()) for t in ref)
    every = np.array(["all"] * len(f_dft))
    for row in (_force_rows(f_teacher, f_dft, atom_family, "structure family", FAMILIES)
                + _force_rows(f_teacher, f_dft, every, "all")):
        mask = frame_family == row["group"] if row["group"] != "all" else np.ones(len(ref), bool)
        row["frames"] = int(mask.sum())
        row["energy_mae_mev_atom"] = 1000 * float(np.abs(residual[mask]).mean())
        known = mask & np.isfinite(loo)
        row["loo_frames"] = int(known.sum())
        row["energy_loo_mae_mev_atom"] = 1000 * float(np.abs(loo[known]).mean()) if known.any() else np.nan
        own = [abs(e) for i, _, e in same if mask[i]]
        row["pairs"] = len(own)
        row["pair_energy_mae_mev_atom"] = 1000 * float(np.mean(own)) if own else np.nan
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=list(TABLE_COLUMNS))
    constants = pd.DataFrame({"element": elements, "mu_ev": mu, "frames": (counts > 0).sum(axis=0)})
    return table, constants, int(np.linalg.matrix_rank(counts))


def write_check(teacher: str | Path, dft: str | Path, failures: str | Path, *, csv: str | Path, md: str | Path,
                label_cfg: LabelConfig) -> pd.DataFrame:
    """Write the error table (CSV) and a Markdown page with the table, the fitted constants and the notes."""
    teacher_frames, dft_frames = read_frames(teacher), read_frames(dft)
    table, constants, rank = check_tables(teacher_frames, dft_frames)
    n_failed = len(pd.read_csv(failures)) if Path(failures).exists() and Path(failures).stat().st_size else 0
    n_pairs = int(table.loc[table["grouping"] == "all", "frames"].iloc[0])
    dof = n_pairs - rank
    write_atomic(csv, lambda tmp: table.to_csv(tmp, index=False))
    source = teacher_frames[0].info.get("label_source", "the teacher")
    lines = [
        "# Teacher check: SevenNet-0 vs GPAW PBE on a subset of the periodic-table set",
        "",
        f"{n_pairs} frames compared ({len(teacher_frames)} drawn, {n_failed} GPAW failures). Teacher: `{source}`. "
        f"GPAW: {label_cfg.xc}, spin-paired, mode {label_cfg.mode} "
        + (f"{label_cfg.ecut_ev:g} eV" if label_cfg.mode == "pw" else f"{label_cfg.basis}, h {label_cfg.h_a:g} A")
        + f", {label_cfg.kpt_density:g} k-points per A^-1, Fermi-Dirac {label_cfg.smearing_ev:g} eV.",
        "",
        table.to_markdown(index=False, floatfmt=".1f"),
        "",
        "Forces: MAE and RMS over Cartesian components of teacher minus GPAW (meV/A), grouped by the periodic-table "
        "family of each atom's element (frames: frames with an atom of that family), by structure family, and "
        "over all atoms; `dft_force_rms_mev_a` is the size of the GPAW forces, `force_slope` the least-squares "
        "slope through the origin of teacher on GPAW force components (below 1: the teacher's energy surface is "
        "softer than DFT's). Frames at a lattice's symmetric positions (EOS points, pure strain) have zero forces "
        "by symmetry in both, and lower the MAE of their groups.",
        "",
        "Energies: the alignment removes a per-element constant (a reference energy per element, fitted by least "
        "squares to the per-atom energy difference teacher - GPAW) and nothing else; the energy MAE is that of the "
        f"residual per atom (meV/atom). {len(constants)} constants ({rank} independent) were fitted to {n_pairs} "
        f"frames ({dof} degrees of freedom left"
        + ("; too few: the residual understates the error)." if dof < rank else ")."),
        "Two energy errors the fit cannot flatter: `energy_loo_mae_mev_atom`, each frame predicted by the constants "
        "fitted to the other frames (over the `loo_frames` frames whose composition the others determine), and "
        "`pair_energy_mae_mev_atom`, the error of the energy difference per atom between two frames of the same "
        "composition (other lattices, strains, rattles or EOS points; `pairs` such pairs), which no reference "
        "energy enters.",
        "",
        constants.to_markdown(index=False, floatfmt=".4f"),
        "",
    ]
    write_atomic(md, lambda tmp: tmp.write_text("\n".join(lines)))
    return table
