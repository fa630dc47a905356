"""Elastic constants: exact fit of a known energy, EMT against stress finite differences, the DFT set, the table."""

import dataclasses

import numpy as np
import pytest
from analysis_support import tiny_analysis_config, write_pair
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.units import GPa

from pipeline.analysis.elastic import (
    PATTERNS,
    StrainSet,
    deformation,
    elastic_row,
    elastic_table,
    fit_cubic_elastic,
    strain_grid,
    strained,
    write_elastic,
)
from pipeline.analysis.elastic_dft import grid_points, ship_elastic_set
from pipeline.config import LabelConfig

STRAINS = (-0.01, -0.005, 0.005, 0.01)


def _voigt_matrix(c11, c12, c44):
    c = np.zeros((6, 6))
    c[:3, :3] = c12
    c[np.arange(3), np.arange(3)] = c11
    c[np.arange(3, 6), np.arange(3, 6)] = c44
    return c


def test_fit_recovers_known_constants_pressure_and_cubic_terms():
    v0, c = 15.6, _voigt_matrix(2.2, 1.6, 0.45)  # eV/A^3
    voigt, pattern, amplitude = strain_grid(STRAINS)
    cubic = {"uniaxial": -3.0, "isotropic": 5.0, "shear": 0.7}
    e = np.array([-5.5 + v0 * (-0.01 * v[:3].sum() + 0.5 * v @ c @ v) + cubic.get(p, 0.0) * s ** 3
                  for v, p, s in zip(voigt, pattern, amplitude)])
    fit = fit_cubic_elastic(voigt, pattern, amplitude, e, v0=v0)
    assert [fit[k] for k in ("c11", "c12", "c44", "pressure", "e0")] == pytest.approx([2.2, 1.6, 0.45, 0.01, -5.5],
                                                                                       rel=1e-8)
    assert [fit[f"k_{p}"] for p in PATTERNS] == pytest.approx([-3.0, 5.0, 0.7], rel=1e-6)
    assert fit["rms"] < 1e-12
    row, _ = elastic_row(StrainSet(voigt, pattern, amplitude, e, v0))
    assert row["b_gpa"] == pytest.approx((2.2 + 2 * 1.6) / 3 / GPa, rel=1e-8)
    assert row["zener_anisotropy"] == pytest.approx(2 * 0.45 / 0.6, rel=1e-8)


def test_fit_refuses_too_few_strains():
    voigt, pattern, amplitude = strain_grid((-0.01, 0.01))
    with pytest.raises(ValueError, match="amplitudes"):
        fit_cubic_elastic(voigt, pattern, amplitude, np.zeros(len(voigt)), v0=15.0)


def test_deformation_gives_the_lagrangian_strain():
    v = np.array([0.01, -0.004, 0.002, 0.006, -0.003, 0.008])
    f = deformation(v)
    eta = 0.5 * (f.T @ f - np.eye(3))
    assert np.allclose(f, f.T)
    assert np.allclose([eta[0, 0], eta[1, 1], eta[2, 2], 2 * eta[1, 2], 2 * eta[0, 2], 2 * eta[0, 1]], v, atol=1e-14)


def _emt_pt(a):
    atoms = bulk("Pt", "fcc", a=a)
    atoms.calc = EMT()
    return atoms


def test_emt_constants_agree_with_stress_finite_differences_and_the_eos():
    scan = [_emt_pt(3.92 * f ** (1 / 3)) for f in np.linspace(0.97, 1.03, 9)]
    eos = EquationOfState([a.get_volume() for a in scan], [a.get_potential_energy() for a in scan])
    v0, _, b0 = eos.fit()
    a0 = (4 * v0) ** (1 / 3)
    voigt, pattern, amplitude = strain_grid(STRAINS)
    energies = []
    for v in voigt:
        atoms = strained(_emt_pt(a0), v)
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
    row, _ = elastic_row(StrainSet(voigt, pattern, amplitude, np.array(energies), v0))

    def stress(v):  # ASE stress (Voigt), GPa
        atoms = strained(_emt_pt(a0), v)
        atoms.calc = EMT()
        return atoms.get_stress() / GPa

    h = 1e-5
    d1 = (stress([h, 0, 0, 0, 0, 0]) - stress([-h, 0, 0, 0, 0, 0])) / (2 * h)
    d4 = (stress([0, 0, 0, h, 0, 0]) - stress([0, 0, 0, -h, 0, 0])) / (2 * h)
    assert row["c11_gpa"] == pytest.approx(d1[0], rel=0.01)
    assert row["c12_gpa"] == pytest.approx(d1[1], rel=0.01)
    assert row["c44_gpa"] == pytest.approx(d4[3], rel=0.01)
    assert row["b_gpa"] == pytest.approx(b0 / GPa, rel=0.02)
    assert abs(row["residual_pressure_gpa"]) < 1.0


@pytest.fixture(scope="module")
def emt_strain_set(tmp_path_factory):
    """An EMT-labelled (NOT DFT) elastic strain set on two 'meshes', through the DFT generator."""
    root = tmp_path_factory.mktemp("elastic_dft")
    cfg = LabelConfig(calculator="emt")
    conv = ship_elastic_set(cfg, [2, 4], lattice_constant_a=3.97, strains=STRAINS, cache_dir=root / "cache",
                            log_dir=root / "logs", dest=root / "dest", command="pytest")
    return root / "dest", conv


def test_dft_generator_writes_the_set_and_its_readme(emt_strain_set):
    dest, conv = emt_strain_set
    assert list(conv["kpts"]) == ["2x2x2", "4x4x4"]
    assert {p.name for p in dest.iterdir()} == {"pt_elastic_gpaw.extxyz", "pt_elastic_gpaw_kconv.extxyz",
                                                 "kpoint_convergence.csv", "README.md"}
    readme = (dest / "README.md").read_text()
    assert "NOT DFT (emt)" in readme and "4x4x4" in readme and "pytest" in readme
    assert conv["b_gpa"].iloc[-1] == pytest.approx(conv["b0_eos_gpa"].iloc[-1], rel=0.02)


def test_generator_resumes_from_its_cache(emt_strain_set, tmp_path):
    dest, conv = emt_strain_set
    again = ship_elastic_set(LabelConfig(calculator="emt"), [2, 4], lattice_constant_a=3.97, strains=STRAINS,
                             cache_dir=dest.parent / "cache", log_dir=tmp_path, dest=tmp_path / "dest", command="x")
    assert np.allclose(again["c44_gpa"], conv["c44_gpa"], rtol=0, atol=0)


def test_table_rows_end_to_end_on_tiny_experts(tmp_path, emt_strain_set):
    cfg = tiny_analysis_config()
    pairs = {"independent": write_pair(tmp_path / "same", cfg, identical=True),
             "cotrained": write_pair(tmp_path / "other", cfg, seeds=(2, 3))}
    table, sets = elastic_table(cfg, dft_set=emt_strain_set[0] / "pt_elastic_gpaw.extxyz", pairs=pairs,
                                reference_pair="independent")
    assert list(table["model"]) == ["dft", "experiment", "dft_literature", "hf", "hf_cotrained", "lf_independent",
                                    "lf_cotrained", "moe_independent", "moe_cotrained"]
    t = table.set_index("model")
    assert t.loc["dft", "source"].startswith("NOT DFT")
    for name in ("lf_independent", "moe_independent"):  # identical experts: the single model's constants
        assert t.loc[name, ["c11_gpa", "c12_gpa", "c44_gpa"]].to_numpy() == pytest.approx(
            t.loc["hf", ["c11_gpa", "c12_gpa", "c44_gpa"]].to_numpy(), rel=1e-6, abs=1e-6)
    assert t.loc["hf", "dc44_vs_hf_percent"] == 0.0
    assert np.isfinite(t.loc[["dft", "hf", "moe_cotrained"], "c44_gpa"]).all()
    assert t.loc["experiment", "b_gpa"] == pytest.approx((358 + 2 * 254) / 3)
    out = tmp_path / "out"
    write_elastic(table, sets, csv=out / "elastic.csv", md=out / "elastic.md", png=out / "elastic.png",
                  precision=cfg.analysis.dtype, strains=cfg.analysis.elastic.strains)
    assert (out / "elastic.png").stat().st_size > 0
    assert "Macfarlane" in (out / "elastic.md").read_text()


def test_label_config_fixed_mesh_overrides_the_density():
    from pipeline.data.labelling import kpoints_for

    atoms = bulk("Pt", "fcc", a=3.97)
    cfg = LabelConfig()
    assert kpoints_for(atoms, dataclasses.replace(cfg, kpts=(16, 16, 16))) == (16, 16, 16)
    fixed = dataclasses.replace(cfg, kpts=(16, 16, 16))
    assert kpoints_for(strained(atoms, [0.01, 0, 0, 0, 0, 0]), fixed) == (16, 16, 16)


def test_grid_points_is_gpaws_h2gpts():
    h2gpts = pytest.importorskip("gpaw.utilities").h2gpts
    for atoms in (bulk("Pt", "fcc", a=3.97), bulk("Pt", "fcc", a=3.97, cubic=True),
                  strained(bulk("Pt", "fcc", a=3.9), [0.01, 0, 0, 0.01, 0.01, 0.01])):
        for h in (0.2, 0.25):
            assert grid_points(atoms, h) == tuple(h2gpts(h, atoms.cell, idiv=4))
    assert grid_points(bulk("Pt", "fcc", a=3.97), 0.25) == (8, 8, 8)


@pytest.mark.gpaw
def test_gpaw_one_atom_cell_on_a_fixed_mesh(tmp_path):
    pytest.importorskip("gpaw")
    from pipeline.data.labelling import label_one

    cfg = LabelConfig(calculator="gpaw", kpts=(3, 3, 3), h_a=0.25)
    atoms = strained(bulk("Pt", "fcc", a=3.97), [0.01, 0, 0, 0, 0, 0])
    atoms.info.update(structure_id="test-pt-strained")
    frame, failure = label_one(atoms, cfg, cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs")
    assert failure is None and frame.info["dft_kpts"] == "3x3x3"
    assert np.isfinite(frame.get_potential_energy())
    assert np.array_equal(frame.get_forces(), np.zeros((1, 3)))  # one atom: zero by symmetry, not computed
