"""The active-learning loop's Snakemake DAG: 2 iterations dry-run with the expected jobs; the default target
does not contain it."""

from __future__ import annotations

import re

import pytest
from workflow_support import emt_workdir, run_snakemake


def _job_counts(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, flags=re.M)}


@pytest.fixture
def workdir(tmp_path):
    """A working directory with a small EMT-labelled base set and a 2-iteration loop in its config."""
    def configure(config):
        config["label"] = {**config.get("label", {}), "calculator": "emt"}
        config["active"] = {**config["active"], "iterations": 2, "committee_seeds": [0, 1],
                            "explore": {"cells": ["2x2x4-co-top", "3x3x4-3co", "3x3x5-vacancy-co"]}}

    return emt_workdir(tmp_path, configure)


def test_two_iterations_dry_run(workdir):
    result = run_snakemake("-n", "--cores", "2", "active", cwd=workdir, timeout=300)
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
    result = run_snakemake("-n", "--cores", "2", cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(name.startswith("al_") or name == "active" for name in _job_counts(result.stdout))
