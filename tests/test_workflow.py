"""The Snakemake workflow: lint clean, a dry run shows the DAG, bad configs fail before any job."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(*args, cwd):
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def workdir(tmp_path):
    """A working directory with a small EMT-labelled dataset and a config pointing at it."""
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
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_lint_reports_nothing(workdir):
    result = _snakemake("--lint", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_dry_run_shows_the_dag(workdir):
    result = _snakemake("-n", "--cores", "2", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ingest" in result.stdout


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"ingest": {"min_distance_a": -1.0}}, "min_distance_a"),
        ({"ingest": {"no_such_key": 1}}, "no_such_key"),
        ({"seed": "abc"}, "seed"),
        ({"data": {"paths": ["missing/file.extxyz"]}}, "missing/file.extxyz"),
    ],
)
def test_bad_config_fails_before_any_job(workdir, override, fragment):
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    for section, values in override.items():
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake("--cores", "1", cwd=workdir)
    assert result.returncode != 0
    assert fragment in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_ingest_stage_runs_end_to_end(workdir):
    result = _snakemake("--cores", "1", "results/tables/dataset_stats.md", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    stats = (workdir / "results" / "tables" / "dataset_stats.md").read_text()
    assert "bulk" in stats
    assert (workdir / "results" / "data" / "manifest.json").exists()
