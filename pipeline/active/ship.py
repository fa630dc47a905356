"""Ship the grown labelled set: the base set plus every frame the active-learning loop added, with a README.

This is the only way the loop's frames reach ``resources/``: the loop itself writes under
``results/active/``, and ``al-ship --dest DIR`` writes ``DIR/<name>`` (base frames first, unchanged, then the
added frames of every iteration in order), ``DIR/failures_active.csv`` (frames whose labelling failed, when
any), ``DIR/sanity.{csv,md}`` and ``DIR/README.md``: the README of :func:`pipeline.data.sanity.write_sanity`
(command, settings, counts, CPU time, sanity table) followed by an active-learning section generated here
(frames added per iteration, source run, cell and temperature, and the per-iteration table).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from ase import Atoms
from ase.io import read, write

from pipeline.active.provenance import AL_KEYS
from pipeline.atomic import write_atomic
from pipeline.config import LabelConfig
from pipeline.data.labelling import failures_frame
from pipeline.data.sanity import write_sanity


def _read(path: str | Path) -> list[Atoms]:
    path = Path(path)
    if path.suffix not in (".extxyz", ".xyz"):
        raise ValueError(f"al-ship reads extended XYZ base sets only, got {path}")
    return read(path, index=":", format="extxyz") if path.stat().st_size else []


def provenance_counts(frames: Sequence[Atoms]) -> pd.DataFrame:
    """Added frames per iteration, source run, cell and temperature (with atoms and mean score)."""
    rows = [{"iteration": a.info.get("al_iteration"), "run": a.info.get("al_source_run"), "cell": a.info.get("al_cell"),
             "temperature_k": a.info.get("al_temperature_k"), "n_atoms": len(a), "score": a.info.get("al_score")}
            for a in frames]
    if not rows:
        return pd.DataFrame(columns=["iteration", "run", "cell", "temperature_k", "frames", "atoms", "mean_score_ev_a"])
    return (pd.DataFrame(rows).groupby(["iteration", "run", "cell", "temperature_k"], sort=True)
            .agg(frames=("n_atoms", "size"), atoms=("n_atoms", "first"), mean_score_ev_a=("score", "mean"))
            .reset_index())


def active_readme_section(added: Sequence[Atoms], table_md: str | None) -> str:
    """The README section on the frames the loop added."""
    lines = [
        "## Frames added by active learning",
        "",
        f"{len(added)} frames were added by the active-learning loop (`snakemake active`, pipeline.active): "
        "short Langevin MD of the mixture and of full HF in small cells, scored by the spread of an HF committee "
        "(different training seeds), picked by farthest-point sampling among the most uncertain, then labelled "
        "with the settings above. Every added frame carries in its info: " + ", ".join(f"`{k}`" for k in AL_KEYS)
        + " (iteration, source run, cell, temperature, MD step and time step, trajectory, selection score in "
        "eV/A), and `family`, `group` (= its trajectory), `config_type` (`al_md`), `structure_id`.",
        "",
        provenance_counts(added).to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    if table_md:
        body = table_md.split("\n", 1)[1] if table_md.startswith("# ") else table_md
        lines += ["### Per-iteration table", "", body.strip(), ""]
    return "\n".join(lines)


def ship_grown_set(
    base: Sequence[str | Path],
    added: Sequence[str | Path],
    failures: Sequence[str | Path],
    dest: str | Path,
    *,
    name: str = "pt_co_gpaw.extxyz",
    table_md: str | Path | None = None,
    command: str | None = None,
    label_cfg: LabelConfig | None = None,
) -> list[Atoms]:
    """Write base + added frames, the failures, the sanity table and the README into ``dest``.

    ``base`` entries may be glob patterns (expanded, sorted); every base file must be extended XYZ.

    Raises
    ------
    ValueError
        When two frames share a ``structure_id`` (an added frame must never replace a base frame).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base_files = [m for p in map(str, base) for m in (sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p])]
    base_frames = [f for p in base_files for f in _read(p)]
    added_frames = [f for p in added for f in _read(p)]
    frames = base_frames + added_frames
    ids = [str(f.info.get("structure_id", "")) for f in frames]
    dupes = sorted({i for i in ids if i and ids.count(i) > 1})
    if dupes:
        raise ValueError(f"al-ship: duplicate structure ids in the grown set: {dupes[:5]}")
    target = dest / name
    write_atomic(target, lambda tmp: write(tmp, frames, format="extxyz"))
    tables = [pd.read_csv(p) for p in failures if Path(p).exists()]
    fail = pd.concat(tables, ignore_index=True) if tables else failures_frame([])
    fail_path = dest / "failures_active.csv"
    if len(fail):
        write_atomic(fail_path, lambda tmp: fail.to_csv(tmp, index=False))
    elif fail_path.exists():
        fail_path.unlink()
    write_sanity(target, csv=dest / "sanity.csv", md=dest / "sanity.md", readme=dest / "README.md",
                 failures=fail_path if len(fail) else None, command=command, label_cfg=label_cfg)
    text = Path(table_md).read_text() if table_md is not None and Path(table_md).exists() else None
    readme = (dest / "README.md").read_text().rstrip("\n") + "\n\n" + active_readme_section(added_frames, text)
    write_atomic(dest / "README.md", lambda tmp: tmp.write_text(readme))
    return frames
