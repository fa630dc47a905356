"""Adaptive-partition analysis (pipeline.analysis.adaptive): the lateral well, the four NVE runs and their table,
the table over seeds and its verdicts, the CLI commands and the Snakemake target (dry run)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ase.calculators.fd import calculate_numerical_forces
from ase.calculators.mixing import SumCalculator
from analysis_support import tiny_analysis_config, write_pair
from md_support import SPECIES, experts, slab_partition
from workflow_support import emt_workdir, run_snakemake

from pipeline.analysis.adaptive import (
    COLUMNS,
    EXTRA_COLUMNS,
    LateralWell,
    PartitionSettings,
    adaptive_runs,
    bias_target,
    make_case,
    protocol_with,
    run_nve,
    seeds_table,
    shell_disagreement,
    static_partitions,
    verdict_lines,
)
from pipeline.analysis.speed import timing_slab
from pipeline.cli import main
from pipeline.config import AnalysisAdaptiveConfig, MDPartitionConfig, MDSystemConfig, RegionConfig, config_from_dict
from pipeline.md.partition import HF, LF, partition_atoms
from pipeline.md.adaptive import ENERGY_DISAGREEMENT, LAMBDA, AdaptiveMixturePotential
from pipeline.data.neighbors import collate
from pipeline.md.system import build_production_cell
from pipeline.models import build_model
from pipeline.models.testing import small_config

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
    protocol = AnalysisAdaptiveConfig(steps=STEPS, speed_n_atoms=40, speed_repeats=1, speed_warmup=0)
    table, traces = adaptive_runs(hf, lf, atoms, static=_static(atoms), settings=SETTINGS, timestep_fs=1.0,
                                  temperature_k=300.0, seed=0, protocol=protocol, speed_slab=slab,
                                  speed_static=_static(slab), lf_independent=_other_lf(), shell_snapshots=4)
    return atoms, table, traces


def _other_lf():
    """Another LF expert (other initial weights, larger scales): a stand-in for the independently trained LF."""
    _, lf = experts()
    other = build_model(small_config(l_max=1, num_layers=1, r_max=3.5), SPECIES, dtype=torch.float64, seed=7)
    other.set_scale_shift(scales=[1.2, 0.9, 0.4], shifts=[-5.3, -7.0, -6.1])
    assert other.r_max == lf.r_max
    return other


def _static(atoms) -> dict[str, np.ndarray]:
    """B: the tests' default rule; D: the same without the top layer."""
    local = partition_atoms(atoms, MDPartitionConfig(radius_a=3.0, surface_layers=0), RegionConfig())
    return {"static": slab_partition(atoms), "static_local": local}


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
    assert table["run"].tolist() == ["A", "B", "C", "D"]
    assert table["partition"].tolist() == ["adaptive", "static", "full_hf", "static_local"]
    rows = table.set_index("partition")
    n_local = int(np.sum(_static(atoms)["static_local"] == HF))
    assert rows.loc["static_local", ["hf_centres_min", "hf_centres_max"]].tolist() == [n_local, n_local]
    assert n_local < rows.loc["static", "hf_centres_min"]
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


def test_switching_shell_columns_on_run_a_only(runs):
    _, table, traces = runs
    assert len(traces["A"].snapshots) == 4 and all(len(t.snapshots) == 0 for r, t in traces.items() if r != "A")
    rows = table.set_index("run")
    for key in ("shell_atoms_mean", "shell_abs_de_mev_mean", "switch_force_rms_mev_a",
                "shell_abs_de_mev_mean_independent", "switch_force_rms_mev_a_independent"):
        assert rows.loc["A", key] > 0, key
        assert rows.loc[["B", "C", "D"], key].isna().all(), key
    assert rows.loc["A", "shell_abs_de_mev_max"] >= rows.loc["A", "shell_abs_de_mev_mean"]
    assert rows.loc["A", "shell_abs_de_mev_mean"] != rows.loc["A", "shell_abs_de_mev_mean_independent"]


def test_switching_force_is_minus_disagreement_times_the_lambda_gradient():
    """F^sw_k = -sum_i (e_i^HF - e_i^LF) d lambda_i / d R_k, checked by central differences of lambda with the
    disagreement held fixed; the same expert on both sides gives no switching force."""
    hf, lf = experts()
    atoms = _slab()
    atoms.rattle(0.05, seed=3)
    shell = shell_disagreement(hf, lf, [atoms], SETTINGS)
    assert shell["shell_atoms_mean"] > 0 and shell["switch_force_max_mev_a"] > 1.0
    potential = AdaptiveMixturePotential(hf, lf, r_in=SETTINGS.r_in, r_out=SETTINGS.r_out, margin=SETTINGS.margin)
    batch = collate([atoms], species=potential.species, r_max=potential.r_max, with_targets=False)
    out = potential(batch)
    de = out[ENERGY_DISAGREEMENT].detach()
    lam = out[LAMBDA].detach()
    frozen = potential(batch, weights=lam)
    switching = (out["forces"] - frozen["forces"]).detach().numpy()
    pos = batch["positions"].clone()
    h = 1e-5
    numeric = np.zeros_like(switching)
    for k in range(len(atoms)):
        for d in range(3):
            values = []
            for sign in (1, -1):
                moved = pos.clone()
                moved[k, d] += sign * h
                values.append(float((de * potential.switching(batch, positions=moved)).sum()))
            numeric[k, d] = -(values[0] - values[1]) / (2 * h)
    np.testing.assert_allclose(switching, numeric, atol=1e-7)
    norms = np.linalg.norm(switching, axis=1)
    assert 1000.0 * norms.max() == pytest.approx(shell["switch_force_max_mev_a"], rel=1e-9)
    same = shell_disagreement(lf, lf, [atoms], SETTINGS)  # one expert on both sides
    assert same["shell_atoms_mean"] > 0
    # no disagreement, so no switching force: zero up to the round-off of two force evaluations (float64)
    assert same["shell_abs_de_mev_max"] == 0.0 and same["switch_force_max_mev_a"] < 1e-9


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


def test_protocol_overrides_keep_the_base():
    p = protocol_with(steps=7, bias_k_ev_a2=None, bias_direction=[1, 0])
    assert p.steps == 7 and p.bias_k_ev_a2 == AnalysisAdaptiveConfig().bias_k_ev_a2 and p.bias_direction == (1.0, 0.0)
    base = AnalysisAdaptiveConfig(steps=11, bias_offset_a=6.0)
    assert protocol_with(base, steps=None, speed_n_atoms=0) == AnalysisAdaptiveConfig(steps=11, bias_offset_a=6.0,
                                                                                       speed_n_atoms=0)


def test_protocol_is_read_from_the_configuration():
    cfg = config_from_dict({"analysis": {"adaptive": {"steps": 9, "bias_direction": [1, 0]}},
                            "robustness": {"seeds": [0, 4]}})
    assert cfg.analysis.adaptive.steps == 9 and cfg.analysis.adaptive.bias_direction == (1, 0)
    assert cfg.analysis.adaptive.seeds_or(cfg.robustness.seeds) == (0, 4)  # null -> robustness.seeds
    cfg = config_from_dict({"analysis": {"adaptive": {"seeds": [5]}}})
    assert cfg.analysis.adaptive.seeds_or(cfg.robustness.seeds) == (5,)


def test_static_partitions_of_the_configuration():
    cfg = config_from_dict({"md": {"partition": {"radius_a": 3.0}}})
    atoms = _slab()
    parts = static_partitions(atoms, cfg)
    assert set(parts) == {"static", "static_local"}
    np.testing.assert_array_equal(parts["static"], slab_partition(atoms))
    top = atoms.positions[:, 2] > atoms.positions[atoms.numbers == 78, 2].max() - 0.5
    assert (parts["static"][top & (atoms.numbers == 78)] == HF).all()  # the whole top layer
    assert (parts["static_local"][top & (atoms.numbers == 78)] == LF).any()  # only near the CO
    # without surface layers, or with another rule, there is no separate local partition
    assert set(static_partitions(atoms, config_from_dict({"md": {"partition": {"surface_layers": 0}}}))) == {"static"}
    assert set(static_partitions(atoms, config_from_dict({"md": {"partition": {"rule": "z_slab"}}}))) == {"static"}


def _seed_table(seed: int, *, drift: float = 0.0, momentum: float = 1e-14, speed: float = 2.5) -> pd.DataFrame:
    rows = []
    for run, partition in (("A", "adaptive"), ("B", "static"), ("C", "full_hf"), ("D", "static_local")):
        row = dict.fromkeys([*COLUMNS, *EXTRA_COLUMNS], 1.0)
        row.update(run=run, partition=partition, drift_mev_atom_ps=drift + seed * 1e-5, drift_stderr_mev_atom_ps=1e-4,
                   momentum_drift=momentum, co_displacement_a=3.5 + seed, fluctuation_mev_atom=1.5e-3,
                   speedup_vs_hf=1.0 if run == "C" else speed, pt_near_c_lf_fraction=0.25 if run == "D" else 0.0,
                   completed=True)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(0, "seed", seed)
    return table


def test_seeds_table_has_every_seed_then_mean_and_std_per_run():
    table = seeds_table([_seed_table(s) for s in (2, 0, 1)])
    a = table[table["run"] == "A"]
    assert a["seed"].tolist() == ["0", "1", "2", "mean", "std"]
    assert list(table.columns[:3]) == ["run", "partition", "seed"]
    mean = a.set_index("seed").loc["mean"]
    assert mean["co_displacement_a"] == pytest.approx(4.5)
    assert a.set_index("seed").loc["std", "co_displacement_a"] == pytest.approx(1.0)  # sample std of 3.5, 4.5, 5.5
    assert table["run"].tolist()[::5] == ["A", "B", "C", "D"]


def test_verdicts_count_the_seeds_that_meet_each_criterion():
    good = verdict_lines(seeds_table([_seed_table(s) for s in range(3)]))
    assert any("A (adaptive) |drift| / stderr" in line and "3 of 3 seeds" in line for line in good)
    assert any("A (adaptive) speedup" in line and "3 of 3 seeds" in line for line in good)
    assert any("D (static_local) fraction" in line and "0 of 3 seeds" in line for line in good)
    bad = verdict_lines(seeds_table([_seed_table(0), _seed_table(1, drift=1e-3, momentum=1e-6, speed=1.5),
                                     _seed_table(2)]))
    assert any("A (adaptive) |drift| / stderr" in line and "2 of 3 seeds" in line for line in bad)
    assert any("C (full HF) |drift| / stderr" in line and "2 of 3 seeds" in line for line in bad)
    assert any("|drift(A) - drift(C)|" in line and "3 of 3 seeds" in line for line in good)
    assert any("momentum drift" in line and "2 of 3 seeds" in line for line in bad)
    assert any("A (adaptive) speedup" in line and "2 of 3 seeds" in line for line in bad)
    assert any("Only 2 seed(s)" in line for line in verdict_lines(seeds_table([_seed_table(0), _seed_table(1)])))


def test_cli_writes_the_table_and_the_figure(tmp_path):
    cfg = tiny_analysis_config()
    values = cfg.to_dict()
    values["md"]["system"].update(surface_size=[3, 3], layers=3, n_co=1, vacuum_a=5.0)
    paths = write_pair(tmp_path, cfg)
    out = {key: tmp_path / f"adaptive.{key}" for key in ("csv", "md", "png")}
    status = main(["adaptive-table", "--config-json", json.dumps(values), "--hf", str(paths["hf"]), "--lf",
                   str(paths["lf"]), "--seed", "3", "--steps", "4", "--speed-atoms", "40", "--speed-repeats", "1", "--speed-warmup",
                   "0", *(arg for key, path in out.items() for arg in (f"--{key}", str(path)))])
    assert status == 0
    table = pd.read_csv(out["csv"])
    assert list(table.columns) == ["seed", *COLUMNS, *EXTRA_COLUMNS]
    assert table["steps"].tolist() == [4, 4, 4, 4] and table["seed"].tolist() == [3, 3, 3, 3]
    text = out["md"].read_text()
    assert "k = 0.1 eV/A^2" in text and "coverage 0.16" in text and "training seed 3" in text
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table over seeds (here the same table twice under two seeds)
    other = tmp_path / "seed4.csv"
    table.assign(seed=4).to_csv(other, index=False)
    summary = {key: tmp_path / f"adaptive_seeds.{key}" for key in ("csv", "md")}
    assert main(["adaptive-seeds", "--tables", str(out["csv"]), str(other), "--figures", str(out["png"]),
                 "--csv", str(summary["csv"]), "--md", str(summary["md"])]) == 0
    stacked = pd.read_csv(summary["csv"])
    assert len(stacked) == 4 * (2 + 2)  # 4 runs x (2 seeds + mean + std)
    assert "Only 2 seed(s)" in summary["md"].read_text()


def test_adaptive_target_dry_run_and_not_in_the_default_run(tmp_path):
    workdir = emt_workdir(tmp_path)
    result = run_snakemake("-n", "adaptive", "--cores", "1", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule adaptive_table:" in result.stdout and "rule adaptive_seed:" in result.stdout
    for seed in (0, 1, 2):  # robustness.seeds
        assert f"results/figures/adaptive/lambda_seed{seed}.png" in result.stdout
        assert f"results/models/seed{seed}/cotrained/lf.pt" in result.stdout
    default = run_snakemake("-n", "--cores", "1", cwd=workdir)
    assert default.returncode == 0, default.stdout + default.stderr
    assert "adaptive_table" not in default.stdout
