"""Shared by the workflow tests: run Snakemake on the repository's Snakefile, and a small EMT workdir."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m snakemake -s <repo>/Snakefile ARGS`` in ``cwd``, output captured as text."""
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def emt_workdir(tmp_path: Path, configure: Callable[[dict], None] | None = None) -> Path:
    """``tmp_path`` set up as a working directory: 4 EMT-labelled rattled fcc Pt cells (one group each) in
    ``data/emt.extxyz`` and ``config/config.yaml``, the repository's config pointing at them, first passed
    to ``configure`` (which edits the dict in place) when given."""
    frames = []
    for i, a in enumerate((3.90, 3.92, 3.94, 3.96)):
        atoms = bulk("Pt", "fcc", a=a, cubic=True)
        atoms.rattle(0.02, seed=i)
        atoms.calc = EMT()
        atoms.get_forces()
        atoms.info.update(family="bulk", group=f"eos{i}", is_dft=False, label_calculator="emt")
        frames.append(atoms)
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "emt.extxyz", frames)
    (tmp_path / "config").mkdir()
    # the repository's configuration with every default filled in, so that ``configure`` can edit any key
    config = load_config(REPO / "config" / "config.yaml", check_files=False).to_dict()
    config["data"]["paths"] = ["data/emt.extxyz"]
    if configure is not None:
        configure(config)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path
