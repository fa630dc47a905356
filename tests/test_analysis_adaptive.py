"""Adaptive-partition analysis (pipeline.analysis.adaptive): the lateral well, the three NVE runs and their table,
the CLI command and the Snakemake target (dry run)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ase.calculators.fd import calculate_numerical_forces
from ase.calculators.mixing import SumCalculator
from analysis_support import tiny_analysis_config, write_pair
from md_support import experts, slab_partition
from workflow_support import emt_workdir, run_snakemake

from pipeline.analysis.adaptive import (
    COLUMNS,
    EXTRA_COLUMNS,
    AdaptiveProtocol,
    LateralWell,
    PartitionSettings,
    adaptive_runs,
    bias_target,
    make_case,
    protocol_with,
    run_nve,
)
from pipeline.analysis.speed import timing_slab
from pipeline.cli import main
from pipeline.config import MDSystemConfig
from pipeline.md.partition import HF, LF
from pipeline.md.system import build_production_cell

torch.set_num_threads(1)

# md_support's experts: HF r_max 4.0, LF r_max 3.5 -> r_in 3.5, r_out 5.0
SETTINGS = PartitionSettings(r_in=3.5, r_out=5.0, margin=0.5, skin=1.0)
STEPS = 12


def _slab():
    """3x3 Pt(111), 3 layers + one CO on top (29 atoms), periodic in x, y."""
    return build_production_cell(MDSystemConfig(surface_size=(3, 3), layers=3, n_co=1, vacuum_a=5.0))


def _carbon(atoms) -> int:
    return int(np.flatnonzero(atoms.numbers == 6)[0])


@pytest.fixture(scope="module")
def runs():
    hf, lf = experts()
    atoms = _slab()
    slab = timing_slab(40, layers=3, co_coverage=0.16, lattice_constant_a=3.97)
    protocol = AdaptiveProtocol(steps=STEPS, speed_n_atoms=40, speed_repeats=1, speed_warmup=0)
    table, traces = adaptive_runs(hf, lf, atoms, expert=slab_partition(atoms), settings=SETTINGS, timestep_fs=1.0,
                                  temperature_k=300.0, seed=0, protocol=protocol, speed_slab=slab,
                                  speed_expert=slab_partition(slab))
    return atoms, table, traces


def test_lateral_well_forces_are_minus_finite_differences():
    atoms = _slab()
    atoms.rattle(0.05, seed=1)
    c = _carbon(atoms)
    well = LateralWell(index=c, k=0.7, target=atoms.positions[c, :2] + [1.3, -0.4])
    atoms.calc = well
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-8)
    assert atoms.get_potential_energy() == pytest.approx(0.5 * 0.7 * (1.3**2 + 0.4**2))
    assert np.count_nonzero(atoms.get_forces()) == 2  # x, y of the C atom only
    # summed with the adaptive mixture: the total's forces are minus its derivative too
    hf, lf = experts()
    calc, _ = make_case("adaptive", hf, lf, atoms, SETTINGS)
    atoms.calc = SumCalculator([calc, LateralWell(index=c, k=0.7, target=well.target)])
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-5)


def test_bias_target_lies_offset_along_the_surface_direction():
    atoms = _slab()
    c = _carbon(atoms)
    target = bias_target(atoms, c, offset_a=4.0, direction=(1.0, 1.0))
    shift = target - atoms.positions[c, :2]
    assert np.linalg.norm(shift) == pytest.approx(4.0)
    along = atoms.cell.array[0, :2] + atoms.cell.array[1, :2]
    assert shift @ along == pytest.approx(4.0 * np.linalg.norm(along))


def test_table_has_the_columns_and_the_partitions_behave(runs):
    atoms, table, _ = runs
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert list(table.columns) == [*COLUMNS, *EXTRA_COLUMNS]
    assert table["run"].tolist() == ["A", "B", "C"]
    assert table["partition"].tolist() == ["adaptive", "static", "full_hf"]
    rows = table.set_index("partition")
    assert (table["steps"] == STEPS).all() and table["completed"].all()
    n = len(atoms)
    assert rows.loc["full_hf", ["hf_centres_min", "hf_centres_max"]].tolist() == [n, n]
    assert rows.loc["full_hf", "hf_centres_mean"] == n
    n_hf = int(np.sum(slab_partition(atoms) == HF))
    assert rows.loc["static", ["hf_centres_min", "hf_centres_max"]].tolist() == [n_hf, n_hf]  # constant
    assert 0 < rows.loc["adaptive", "hf_centres_min"] <= rows.loc["adaptive", "hf_centres_max"] < n
    assert rows.loc["adaptive", "pt_near_c_lf_fraction"] == 0.0  # r_in 3.5 >= 3: HF next to C
    assert rows.loc["full_hf", "pt_near_c_lf_fraction"] == 0.0
    # the bias pushes the system; with its impulse subtracted nothing is left (translation-invariant experts)
    assert (table["momentum_drift_raw"] > 1e-3).all()
    assert (table["momentum_drift"] < 1e-10).all()
    assert rows.loc["full_hf", "speedup_vs_hf"] == 1.0
    assert (table["speedup_vs_hf"] > 0).all() and (table["speed_n_atoms"] > 0).all()
    assert rows.loc["full_hf", "speed_hf_centres"] == rows.loc["full_hf", "speed_n_atoms"]
    assert (table["speedup_vs_hf_one_pass"] > 0).all()
    for key in ("drift_mev_atom_ps", "drift_stderr_mev_atom_ps", "temperature_k", "co_displacement_a"):
        assert np.isfinite(table[key]).all(), key


def test_conserved_energy_includes_the_bias():
    """A stiff well trades a lot of energy with the system, and E_pot + E_bias + E_kin stays put."""
    hf, lf = experts()
    atoms = _slab()
    c = _carbon(atoms)
    calc, probe = make_case("adaptive", hf, lf, atoms, SETTINGS)
    well = LateralWell(index=c, k=3.0, target=bias_target(atoms, c, offset_a=1.0, direction=(1.0, 0.0)))
    trace = run_nve(atoms, calc, probe, steps=30, timestep_fs=0.5, temperature_k=100.0, seed=0, bias=well,
                    biased_atom=c)
    conserved = np.asarray(trace.econserve_ev)
    bias = np.asarray(trace.ebias_ev)
    assert bias.max() - bias.min() > 0.3  # eV
    assert np.abs(conserved - conserved[0]).max() < 2e-3 * (bias.max() - bias.min())
    without = conserved - bias  # the energy without the bias is not conserved
    assert np.abs(without - without[0]).max() > 0.3


def test_static_lf_next_to_carbon_is_counted():
    hf, lf = experts()
    atoms = _slab()
    expert = np.where(np.isin(atoms.numbers, (6, 8)), HF, LF)  # every Pt atom LF
    calc, probe = make_case("static", hf, lf, atoms, SETTINGS, expert)
    trace = run_nve(atoms, calc, probe, steps=2, timestep_fs=1.0, temperature_k=100.0, seed=0, bias=None,
                    biased_atom=_carbon(atoms))
    assert trace.pt_near_c_lf == [True, True, True]
    assert [c["hf"] for c in trace.counts] == [2, 2, 2]


def test_protocol_overrides_keep_the_defaults():
    p = protocol_with(steps=7, bias_k_ev_a2=None, bias_direction=[1, 0])
    assert p.steps == 7 and p.bias_k_ev_a2 == AdaptiveProtocol().bias_k_ev_a2 and p.bias_direction == (1.0, 0.0)


def test_cli_writes_the_table_and_the_figure(tmp_path):
    cfg = tiny_analysis_config()
    values = cfg.to_dict()
    values["md"]["system"].update(surface_size=[3, 3], layers=3, n_co=1, vacuum_a=5.0)
    paths = write_pair(tmp_path, cfg)
    out = {key: tmp_path / f"adaptive.{key}" for key in ("csv", "md", "png")}
    status = main(["adaptive-table", "--config-json", json.dumps(values), "--hf", str(paths["hf"]), "--lf",
                   str(paths["lf"]), "--steps", "4", "--speed-atoms", "40", "--speed-repeats", "1", "--speed-warmup",
                   "0", *(arg for key, path in out.items() for arg in (f"--{key}", str(path)))])
    assert status == 0
    table = pd.read_csv(out["csv"])
    assert list(table.columns) == [*COLUMNS, *EXTRA_COLUMNS]
    assert table["steps"].tolist() == [4, 4, 4]
    text = out["md"].read_text()
    assert "k = 0.1 eV/A^2" in text and "coverage 0.16" in text
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adaptive_target_dry_run_and_not_in_the_default_run(tmp_path):
    workdir = emt_workdir(tmp_path)
    result = run_snakemake("-n", "adaptive", "--cores", "1", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule adaptive_table:" in result.stdout and "results/figures/adaptive_lambda.png" in result.stdout
    default = run_snakemake("-n", "--cores", "1", cwd=workdir)
    assert default.returncode == 0, default.stdout + default.stderr
    assert "adaptive_table" not in default.stdout
