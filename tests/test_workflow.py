"""The Snakemake workflow: lint clean, a dry run shows the DAG, bad configs fail before any job."""

import pytest
import yaml
from workflow_support import emt_workdir, run_snakemake


@pytest.fixture
def workdir(tmp_path):
    """A working directory with a small EMT-labelled dataset and a config pointing at it."""
    return emt_workdir(tmp_path)


def test_lint_reports_nothing(workdir):
    result = run_snakemake("--lint", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_dry_run_shows_the_dag(workdir):
    result = run_snakemake("-n", "--cores", "2", cwd=workdir)
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
    result = run_snakemake("--cores", "1", cwd=workdir)
    assert result.returncode != 0
    assert fragment in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_ingest_stage_runs_end_to_end(workdir):
    result = run_snakemake("--cores", "1", "results/tables/dataset_stats.md", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    stats = (workdir / "results" / "tables" / "dataset_stats.md").read_text()
    assert "bulk" in stats
    assert (workdir / "results" / "data" / "manifest.json").exists()
