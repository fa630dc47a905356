"""The active-learning loop's Snakemake DAG: 2 iterations dry-run with the expected jobs; the default target
does not contain it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

REPO = Path(__file__).resolve().parents[1]


def _snakemake(*args, cwd):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _job_counts(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, flags=re.M)}


@pytest.fixture
def workdir(tmp_path):
    """A working directory with a small EMT-labelled base set and a 2-iteration loop in its config."""
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
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data"]["paths"] = ["data/emt.extxyz"]
    config["label"] = {**config.get("label", {}), "calculator": "emt"}
    config["active"] = {**config["active"], "iterations": 2, "committee_seeds": [0, 1],
                        "explore": {"cells": ["2x2x4-co-top", "3x3x4-3co", "3x3x5-vacancy-co"]}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_two_iterations_dry_run(workdir):
    result = _snakemake("-n", "--cores", "2", "active", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = _job_counts(result.stdout)
    assert counts["al_ingest"] == 3  # iterations 0, 1 and the grown set after iteration 1
    assert counts["al_train_hf"] == 4 and counts["al_train_lf"] == 2  # 2 seeds x 2 iterations, LF of seed 0
    assert counts["al_explore"] == 6 and counts["al_score"] == counts["al_select"] == 2
    assert counts["al_label_merge"] == counts["al_report"] == 2 and counts["al_table"] == counts["al_ship"] == 1
    assert "checkpoint" in result.stdout  # the DAG grows with the selection (labelling jobs per chunk)
    assert "results/active/iter1/models/seed1/hf.pt" in result.stdout
    assert "resources/" not in result.stdout.replace("resources: ", "")


def test_default_target_does_not_run_the_loop(workdir):
    result = _snakemake("-n", "--cores", "2", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(name.startswith("al_") or name == "active" for name in _job_counts(result.stdout))
