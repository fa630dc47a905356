"""The generalisation rules dry-run; the default run reads the shipped generalisation set and never labels it;
training rules never take it as input."""

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


def _dry_run(*targets, cwd):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "2", *targets],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _jobs(stdout):
    """``{rule: [input line of each job]}`` of a dry run."""
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", stdout):
        match = re.match(r"rule (\w+):", block)
        if match:
            inputs = re.search(r"^\s+input: (.*)$", block, flags=re.M)
            jobs.setdefault(match.group(1), []).append(inputs.group(1) if inputs else "")
    return jobs


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
    config["generalisation"]["path"] = "data/generalisation.extxyz"
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_generalisation_and_learning_curve_targets_dry_run(workdir):
    jobs = _jobs(_dry_run("generalisation", "data_learning_curve", cwd=workdir))
    assert len(jobs["generalisation_label"]) == 2  # generalisation.n_chunks, one resumable job each
    for rule in ("generalisation_sample", "generalisation_merge", "generalisation_ship", "generalisation", "train_hf",
                 "data_learning_curve"):
        assert rule in jobs, rule
    assert sorted(re.search(r"frac([\d.]+)", line).group(1) for line in jobs["data_learning_curve"][0].split()
                  if "frac" in line) == ["0.25", "0.5"]  # fraction 1 is train_hf's own checkpoint
    assert "generalisation.extxyz" not in jobs["data_learning_curve"][0]  # absent file: test split only


def test_default_run_reads_the_shipped_set_and_labels_nothing(workdir):
    write(workdir / "data" / "generalisation.extxyz", bulk("Pt", "fcc", a=3.95))
    jobs = _jobs(_dry_run(cwd=workdir))
    assert not {"generalisation_sample", "generalisation_label", "generalisation_ship", "label"} & set(jobs)
    assert "data/generalisation.extxyz" in jobs["accuracy"][0]
    for rule in ("train_hf", "train_lf", "ingest"):
        assert all("generalisation" not in line for line in jobs[rule]), rule
