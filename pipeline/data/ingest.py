"""The ingest stage: DFT outputs -> validated, region-labelled, split dataset + manifest + statistics.

:func:`ingest` does the work in memory and returns an :class:`IngestResult`;
:func:`write_ingest_outputs` writes it (every file atomically: temporary file, then ``os.replace``):

- the dataset, one extxyz: energy (eV), forces (eV/A) and stress (eV/A^3, Voigt) in the standard
  extxyz places, per-atom arrays ``region`` and ``environment``, and in ``info`` the metadata,
  ``family``, ``group``, ``split`` and provenance (``source_file``, ``source_index``, ...);
  ``ase.io.read(path, ":")`` reads it back with energies and forces;
- the manifest (JSON): counts per split, family and region, species, rejections by reason, the
  configuration sections used, the energy and stress conventions, the SHA-256 of every input file
  and the pipeline version;
- the rejected frames (CSV: source_file, source_index, reason, detail);
- the statistics table (CSV and Markdown).

Example::

    from pipeline.config import load_config
    result = ingest(load_config("config/config.yaml"), paths=["dft_runs/"])
    result.split("train")[0].arrays["region"]   # per-atom 'bulk' / 'complex'
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
import pandas as pd
from ase import Atoms

import pipeline
from pipeline.atomic import write_atomic
from pipeline.config import Config
from pipeline.data.canonical import (
    ENERGY_CONVENTION,
    FORCE_CONVENTION,
    STRESS_CONVENTION,
)
from pipeline.data.readers import find_dft_files, read_files
from pipeline.data.regions import FAMILIES, family_of, label_regions, region_summary
from pipeline.data.splits import SPLITS, assign_splits, group_families, refine_gas_groups
from pipeline.data.stats import statistics_table
from pipeline.data.validation import (
    EnergyFit,
    Rejection,
    TooManyRejectedError,
    check_rejected_fraction,
    validate_frames,
)
from pipeline.resources import resolve

log = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 1
REJECTED_COLUMNS = ("source_file", "source_index", "reason", "detail")


@dataclass
class IngestResult:
    """What :func:`ingest` produced.

    Attributes
    ----------
    frames : list of ase.Atoms
        Accepted frames in input order, with ``info['family']``, ``info['group']``, ``info['split']``
        and per-atom ``arrays['region']`` / ``arrays['environment']``.
    rejected : list of Rejection
        Rejected frames with file, frame index, reason and detail.
    manifest : dict
        JSON-serialisable description of the dataset (see the module docstring).
    stats : pandas.DataFrame
        Statistics per family and split (:func:`pipeline.data.stats.statistics_table`).
    regions : pandas.DataFrame
        Atom counts per family and environment (:func:`pipeline.data.regions.region_summary`).
    """

    frames: list[Atoms]
    rejected: list[Rejection]
    manifest: dict[str, Any]
    stats: pd.DataFrame
    regions: pd.DataFrame

    def split(self, name: str) -> list[Atoms]:
        """The accepted frames of one split (``train``, ``validation`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        return [a for a in self.frames if a.info["split"] == name]


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def label_frames(frames: Sequence[Atoms], cfg: Config) -> None:
    """Set ``info['family']`` (+ ``family_source``) and the per-atom region arrays, in place."""
    for atoms in frames:
        given = atoms.info.get("family")
        family, how = family_of(atoms, cfg.regions)
        if given is not None and how == "geometry":
            log.warning("%s frame %s: info family %r is not one of %s; inferred %r from the geometry",
                        atoms.info.get("source_file"), atoms.info.get("source_index"), given,
                        FAMILIES, family)
        atoms.info["family"] = family
        atoms.info["family_source"] = how
        region, environment = label_regions(atoms, family, cfg.regions)
        atoms.arrays["region"] = region
        atoms.arrays["environment"] = environment


def _counts(values: Sequence[Any]) -> dict[str, int]:
    return dict(sorted(Counter(str(v) for v in values).items()))


def build_manifest(
    cfg: Config,
    *,
    paths: Sequence[str],
    inputs: list[dict[str, Any]],
    n_read: int,
    frames: Sequence[Atoms],
    rejected: Sequence[Rejection],
    fit: EnergyFit,
    regions: pd.DataFrame,
) -> dict[str, Any]:
    """The manifest dict of an ingestion (JSON-serialisable)."""
    full = cfg.to_dict()
    families = group_families(frames)
    splits: dict[str, Any] = {}
    for split in SPLITS:
        chosen = [a for a in frames if a.info["split"] == split]
        splits[split] = {
            "frames": len(chosen),
            "groups": len({a.info["group"] for a in chosen}),
            "atoms": int(sum(len(a) for a in chosen)),
            "frames_by_family": _counts([a.info["family"] for a in chosen]),
        }
    groups: dict[str, dict[str, Any]] = {}
    for atoms in frames:
        entry = groups.setdefault(atoms.info["group"], {"split": atoms.info["split"],
                                                        "family": families[atoms.info["group"]],
                                                        "frames": 0})
        entry["frames"] += 1
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "pipeline_version": pipeline.__version__,
        "software": {"ase": ase.__version__, "numpy": np.__version__, "pandas": pd.__version__,
                     "python": platform.python_version()},
        "conventions": {
            "units": "energy eV, length A, forces eV/A, stress eV/A^3",
            "energy": ENERGY_CONVENTION,
            "forces": FORCE_CONVENTION,
            "stress": STRESS_CONVENTION,
            "cell": "rows of the cell matrix are the cell vectors (A)",
            "regions": "region = complex for environments adsorbate, adsorbate_neighbourhood and "
                       "surface; bulk otherwise (see pipeline.data.regions)",
        },
        "config": {key: full[key] for key in ("seed", "species", "data", "ingest", "regions")},
        "input_paths": list(paths),
        "inputs": inputs,
        "frames": {"read": n_read, "accepted": len(frames), "rejected": len(rejected)},
        "rejected": {
            "count": len(rejected),
            "fraction": len(rejected) / n_read if n_read else 0.0,
            "by_reason": _counts([r.reason for r in rejected]),
        },
        "species": sorted({s for a in frames for s in a.get_chemical_symbols()}),
        "energy_kind": _counts([a.info["energy_kind"] for a in frames]),
        "is_dft": _counts([a.info.get("is_dft", "unknown") for a in frames]),
        "families": _counts([a.info["family"] for a in frames]),
        "family_source": _counts([a.info["family_source"] for a in frames]),
        "splits": splits,
        "regions": {row["family"]: {k: int(v) for k, v in row.items() if k != "family"}
                    for row in regions.to_dict(orient="records")},
        "energy_reference_fit": {
            "references_ev_per_atom": fit.references_ev,
            "residual_median_ev_per_atom": fit.median_ev,
            "residual_mad_ev_per_atom": fit.mad_ev,
            "z_scale_ev_per_atom": fit.scale_ev,
        },
        "groups": dict(sorted(groups.items())),
    }


def ingest(cfg: Config, paths: Sequence[str | Path] | None = None, *,
           progress: bool | None = None) -> IngestResult:
    """Read, validate, label and split DFT data.

    Parameters
    ----------
    cfg : Config
        The validated configuration (sections ``data``, ``ingest``, ``regions``, ``seed``, ``species``).
    paths : sequence of str or Path, optional
        Files, directories or globs; default ``cfg.data.paths``. ``cfg.data.format`` applies.
    progress : bool, optional
        tqdm progress bars; None = only on a terminal.

    Returns
    -------
    IngestResult

    Raises
    ------
    pipeline.data.readers.DFTReadError
        An input matches nothing or a file cannot be parsed.
    TooManyRejectedError
        More than ``ingest.max_rejected_fraction`` of the frames (or all of them) was rejected.
    """
    entries = [resolve(p) for p in (paths if paths is not None else cfg.data.paths)]
    pairs = find_dft_files(entries, cfg.data.format)
    frames = read_files(pairs, progress=progress)
    accepted, rejected, fit = validate_frames(frames, species=cfg.species, cfg=cfg.ingest,
                                              progress=progress)
    check_rejected_fraction(len(frames), rejected, cfg.ingest.max_rejected_fraction)
    if not accepted:
        raise TooManyRejectedError(f"all {len(frames)} frames were rejected", rejected)
    label_frames(accepted, cfg)
    refine_gas_groups(accepted, cfg.ingest.gas_bond_window_a)
    assign_splits(accepted, seed=cfg.ingest.split_seed, validation_fraction=cfg.ingest.validation_fraction,
                  test_fraction=cfg.ingest.test_fraction, hold_out_eos=cfg.ingest.hold_out_eos)
    per_file = Counter(a.info["source_file"] for a in frames)
    readers = {a.info["source_file"]: a.info["source_reader"] for a in frames}
    inputs = [
        {"path": str(path), "format": fmt, "reader": readers.get(str(path), fmt),
         "bytes": path.stat().st_size, "sha256": sha256_file(path), "frames": per_file[str(path)]}
        for path, fmt in pairs
    ]
    regions = region_summary(accepted)
    manifest = build_manifest(cfg, paths=entries, inputs=inputs, n_read=len(frames), frames=accepted,
                              rejected=rejected, fit=fit, regions=regions)
    log.info("ingested %d frames (%d rejected) from %d file(s): %s", len(accepted), len(rejected),
             len(pairs), {s: manifest["splits"][s]["frames"] for s in SPLITS})
    return IngestResult(accepted, list(rejected), manifest, statistics_table(accepted), regions)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def stats_markdown(result: IngestResult) -> str:
    """The Markdown statistics page: the statistics table and the atoms per environment."""
    return (
        "# Dataset statistics\n\n"
        "Total energies in eV (the free energy where the DFT output gives it; per frame kind: "
        f"{result.manifest['energy_kind']}), forces in eV/A; conventions in the manifest.\n\n"
        f"{result.stats.to_markdown(index=False, floatfmt='.4f')}\n\n"
        "## Atoms per environment and region\n\n"
        f"{result.regions.to_markdown(index=False)}\n\n"
        f"Rejected frames: {result.manifest['rejected']['count']} "
        f"({result.manifest['rejected']['by_reason'] or 'none'}).\n"
    )


def write_ingest_outputs(
    result: IngestResult,
    *,
    dataset: str | Path,
    manifest: str | Path,
    rejected: str | Path,
    stats_csv: str | Path,
    stats_md: str | Path,
) -> None:
    """Write the dataset (extxyz), manifest (JSON), rejected frames (CSV) and statistics (CSV, Markdown)."""
    write_atomic(dataset, lambda tmp: ase.io.write(tmp, result.frames, format="extxyz"))
    rejected_table = pd.DataFrame([r.as_dict() for r in result.rejected], columns=list(REJECTED_COLUMNS))
    write_atomic(rejected, lambda tmp: rejected_table.to_csv(tmp, index=False))
    write_atomic(stats_csv, lambda tmp: result.stats.to_csv(tmp, index=False))
    write_atomic(stats_md, lambda tmp: tmp.write_text(stats_markdown(result)))
    text = json.dumps(result.manifest, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_atomic(manifest, lambda tmp: tmp.write_text(text))
    log.info("wrote %s (%d frames), %s, %s, %s, %s", dataset, len(result.frames), manifest, rejected,
             stats_csv, stats_md)
