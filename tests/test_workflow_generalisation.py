"""The generalisation rules dry-run; the default run reads the shipped generalisation set and never labels it;
training rules never take it as input."""

import re

import pytest
from ase.build import bulk
from ase.io import write
from workflow_support import emt_workdir, run_snakemake


def _dry_run(*targets, cwd):
    result = run_snakemake("-n", "--cores", "2", *targets, cwd=cwd)
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
    return emt_workdir(tmp_path, lambda config: config["generalisation"].update(path="data/generalisation.extxyz"))


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
