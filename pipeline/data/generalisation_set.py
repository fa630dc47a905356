"""The shipped generalisation set: shipping (file + README written by code) and reading it for evaluation.

:func:`ship_generalisation` copies the labelled frames (``python -m pipeline label`` on the chunks of
``sample-generalisation``) to ``DEST/generalisation.extxyz`` and writes ``DEST/generalisation_README.md``:
how the set was made, the command, the DFT settings (checked against the training set's), the frame list with
kinds, sizes and CPU time, and the failures.

:func:`read_generalisation` reads the shipped file through the ingest stage (the same validation and
per-atom region labels as the training data) and marks every frame ``info['split'] = 'generalisation'``:
:data:`GENERALISATION_SPLIT` is not a split of the ingest stage's dataset, so training
(:func:`pipeline.train.data.read_splits` reads ``train`` and ``validation``) and selection never see it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.io import read

from pipeline.atomic import write_atomic
from pipeline.config import Config, GeneralisationConfig, LabelConfig
from pipeline.data.sanity import _settings

log = logging.getLogger(__name__)

GENERALISATION_SPLIT = "generalisation"
SHIPPED_NAME = "generalisation.extxyz"
README_NAME = "generalisation_README.md"
# label settings that must agree with the training set's (k meshes follow from the density and the cell)
PROTOCOL_KEYS = ("label_calculator", "dft_code", "dft_version", "dft_xc", "dft_mode", "dft_basis", "dft_h_a",
                 "dft_ecut_ev", "dft_smearing", "dft_setups", "dft_spin")
FRAME_COLUMNS = ("structure_id", "kind", "family", "perturbation", "n_atoms", "formula", "dft_kpts", "status",
                 "cpu_s")


def frame_list(structures: Sequence[Atoms], labelled: Sequence[Atoms]) -> pd.DataFrame:
    """One row per sampled structure (:data:`FRAME_COLUMNS`): ``status`` labelled / failed, ``cpu_s`` the
    labelling wall time on one core (s; NaN when not labelled)."""
    done = {f.info["structure_id"]: f for f in labelled}
    rows = []
    for atoms in sorted(structures, key=lambda a: int(a.info.get("sample_index", 0))):
        sid = atoms.info["structure_id"]
        frame = done.get(sid)
        rows.append({
            "structure_id": sid, "kind": atoms.info.get("generalisation_kind", "?"),
            "family": atoms.info.get("family", "?"), "perturbation": atoms.info.get("perturbation", "?"),
            "n_atoms": len(atoms), "formula": atoms.get_chemical_formula(),
            "dft_kpts": frame.info.get("dft_kpts", "") if frame is not None else "",
            "status": "labelled" if frame is not None else "failed",
            "cpu_s": float(frame.info.get("label_wall_s", np.nan)) if frame is not None else np.nan,
        })
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def protocol_differences(frames: Sequence[Atoms], reference: Sequence[Atoms]) -> dict[str, tuple[str, str]]:
    """``{setting: (this set, reference set)}`` for every :data:`PROTOCOL_KEYS` value that differs."""
    ours, theirs = _settings(frames), _settings(reference)
    return {k: (ours.get(k, "-"), theirs.get(k, "-")) for k in PROTOCOL_KEYS if ours.get(k) != theirs.get(k)}


def readme_text(table: pd.DataFrame, frames: Sequence[Atoms], failures: pd.DataFrame, *, command: str,
                label_cfg: LabelConfig, reference: str | None, differences: dict[str, tuple[str, str]] | None,
                generalisation_cfg: GeneralisationConfig | None = None) -> str:
    """README (Markdown) of the shipped generalisation set."""
    built = ""
    if generalisation_cfg is not None:
        g = dataclasses.asdict(generalisation_cfg)
        keys = ("seed", "thick_layers", "vacancy_layers", "step_layers", "rattle_stdev_a", "rattle_adsorbate_stdev_a")
        built = " Builder settings: " + ", ".join(f"`{k}` {g[k]}" for k in keys) + " (lattice constant, vacuum, CO " \
                "heights and bond from `sample:`, as for the training structures)."
    cpu = float(table["cpu_s"].sum(skipna=True))
    per_kind = table.groupby("kind", sort=False).agg(frames=("structure_id", "size"),
                                                     n_atoms=("n_atoms", "max"), cpu_s=("cpu_s", "sum"))
    if differences is None:
        protocol = "No reference set was given: the protocol was not compared."
    elif not differences:
        protocol = (f"The DFT settings ({', '.join(PROTOCOL_KEYS)}) are those of the training set `{reference}`; "
                    "k meshes follow from the same `kpt_density`.")
    else:
        protocol = (f"**The DFT settings differ from the training set `{reference}`**: "
                    + "; ".join(f"{k}: {a} here, {b} there" for k, a, b in
                                ((k, *v) for k, v in differences.items())) + ".")
    lines = [
        "# Generalisation set: Pt(111) + CO structures outside every training family",
        "",
        f"`{SHIPPED_NAME}`: {len(frames)} labelled frames, {sum(len(f) for f in frames)} atoms in total "
        f"({len(table)} sampled, {int((table['status'] == 'failed').sum())} failed). Energies in eV, forces in "
        "eV/A (extended XYZ, `ase.io.read`). Built by `pipeline.data.generalisation` (section `generalisation:` of "
        "the configuration): thicker slabs, CO at sites and coverages the training sampler does not use, an "
        "adatom, a vacancy, a step and a bulk vacancy, each ideal and thermally rattled. The frames are never "
        "used for training or model selection: the accuracy table evaluates every model on them as the split "
        "`generalisation`. Every frame carries `family`, `group`, `config_type`, `structure_id`, "
        "`generalisation_kind` and the DFT settings in its info." + built,
        "",
        protocol,
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Settings",
        "",
        pd.DataFrame(sorted(_settings(frames).items()), columns=["setting", "value"]).to_markdown(index=False),
        "",
        pd.DataFrame([(k, str(v)) for k, v in sorted(dataclasses.asdict(label_cfg).items())],
                     columns=["label.key", "value"]).to_markdown(index=False),
        "",
        "## Frames",
        "",
        table.to_markdown(index=False, floatfmt=".1f"),
        "",
        per_kind.reset_index().to_markdown(index=False, floatfmt=".1f"),
        "",
        f"Total CPU time (sum of per-structure wall times, 1 core each): {cpu:.0f} s ({cpu / 3600:.2f} core-hours); "
        f"{cpu / max(len(frames), 1):.0f} s per labelled frame.",
        "",
        "## Failures",
        "",
        failures.to_markdown(index=False) if len(failures) else "None: every sampled structure converged.",
        "",
    ]
    return "\n".join(lines)


def ship_generalisation(
    labelled: str | Path,
    failures: str | Path,
    structures: Sequence[str | Path],
    dest: str | Path,
    *,
    label_cfg: LabelConfig,
    command: str,
    reference: str | Path | None = None,
    generalisation_cfg: GeneralisationConfig | None = None,
) -> pd.DataFrame:
    """Copy the labelled generalisation set to ``dest/generalisation.extxyz`` and write its README.

    Parameters
    ----------
    labelled, failures : path
        The merged labelled frames (extxyz) and failures (CSV) of the labelling rules.
    structures : sequence of path
        The unlabelled chunk files (every sampled structure, for the frame list).
    dest : path
        Output directory (``generalisation.dest``, e.g. resources/dft).
    label_cfg : LabelConfig
        The ``label:`` section the frames were labelled with (README).
    command : str
        The command that produced the set (README).
    reference : path, optional
        The shipped training set: its DFT settings are compared with these frames' (README).
    generalisation_cfg : GeneralisationConfig, optional
        The builder settings (README).

    Returns
    -------
    pandas.DataFrame
        The frame list (:func:`frame_list`).
    """
    frames = read(labelled, index=":", format="extxyz") if Path(labelled).stat().st_size else []
    sampled = [a for path in structures for a in read(path, index=":", format="extxyz")]
    table = frame_list(sampled, frames)
    fail = pd.read_csv(failures) if Path(failures).exists() else pd.DataFrame()
    differences = None
    if reference is not None and Path(reference).exists():
        differences = protocol_differences(frames, read(reference, index=":", format="extxyz"))
        if differences:
            log.warning("generalisation set: DFT settings differ from %s: %s", reference, differences)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_atomic(dest / SHIPPED_NAME, lambda tmp: shutil.copyfile(labelled, tmp))
    text = readme_text(table, frames, fail, command=command, label_cfg=label_cfg,
                       reference=str(reference) if reference is not None else None, differences=differences,
                       generalisation_cfg=generalisation_cfg)
    write_atomic(dest / README_NAME, lambda tmp: tmp.write_text(text))
    log.info("shipped %d generalisation frames to %s", len(frames), dest / SHIPPED_NAME)
    return table


def read_generalisation(cfg: Config, path: str | Path) -> list[Atoms]:
    """The shipped generalisation frames, validated and region-labelled like the training data.

    Runs the ingest stage (:func:`pipeline.data.ingest.ingest`: validation with ``ingest:``, family and
    per-atom ``environment`` / ``region`` arrays with ``regions:``) on ``path`` alone, then sets
    ``info['split']`` to :data:`GENERALISATION_SPLIT` on every accepted frame.

    Returns
    -------
    list of ase.Atoms
        The accepted frames (rejections are logged), in file order.
    """
    from pipeline.data.ingest import ingest

    result = ingest(cfg, paths=[str(path)], progress=False)
    for reason, count in result.manifest["rejected"]["by_reason"].items():
        log.warning("generalisation set %s: %d frame(s) rejected (%s)", path, count, reason)
    for atoms in result.frames:
        atoms.info["split"] = GENERALISATION_SPLIT
    return result.frames
