"""The periodic-table set of the MoE study: sampling (deterministic, coverage, no magnetic elements, sizes, tags),
length scales, and the workflow's DAG for it."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from pipeline.config import MoEStudyPeriodicConfig, config_from_dict
from pipeline.data.periodic_lattice import (
    COMPOUNDS,
    COORDINATION,
    LATTICES,
    element_cell,
    lattice_distance,
    nearest_neighbour_distance,
)
from pipeline.data.periodic_set import (
    ELEMENT_FAMILIES,
    MAGNETIC,
    PLUS_U,
    check_elements,
    sample_periodic,
)
from workflow_support import emt_workdir, run_snakemake

SMALL = MoEStudyPeriodicConfig(n_bulk=40, n_alloys=34, n_compounds=34, n_surfaces=31)
INFO_KEYS = ("family", "elements", "structure_id", "config_type", "group", "perturbation", "length_source",
             "sample_index")


@pytest.fixture(scope="module")
def frames():
    return sample_periodic(SMALL)


def test_sampling_is_deterministic_for_a_seed(frames):
    again = sample_periodic(SMALL)
    assert [f.info["structure_id"] for f in frames] == [f.info["structure_id"] for f in again]
    assert all(np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions)
               and np.allclose(a.cell.array, b.cell.array) for a, b in zip(frames, again))
    other = sample_periodic(MoEStudyPeriodicConfig(n_bulk=40, n_alloys=34, n_compounds=34, n_surfaces=31, seed=1))
    assert not all(np.allclose(a.positions, b.positions) for a, b in zip(frames, other) if len(a) == len(b))


def test_every_family_and_at_least_20_elements_of_every_kind(frames):
    assert Counter(f.info["family"] for f in frames) == {"bulk": 40, "alloy": 34, "compound": 34, "surface": 31}
    elements = {s for f in frames for s in f.get_chemical_symbols()}
    assert len(elements) >= 20 and elements == set(SMALL.elements)
    kinds = {ELEMENT_FAMILIES[s] for s in elements}
    assert {"alkali", "alkaline earth", "3d (non-magnetic)", "4d", "5d", "noble", "p-block metal", "metalloid",
            "non-metal"} <= kinds
    assert {"H", "C", "N", "O"} <= elements
    assert {f.info["config_type"].split("_")[1] for f in frames if f.info["family"] == "compound"} == {
        "rocksalt", "zincblende", "wurtzite", "cesiumchloride"}
    assert any(f.info["adsorbates"] != "none" for f in frames if f.info["family"] == "surface")


def test_no_magnetic_element_and_no_oxygen_with_plus_u_metals(frames):
    for f in frames:
        symbols = set(f.get_chemical_symbols())
        assert not symbols & MAGNETIC
        assert not ("O" in symbols and symbols & PLUS_U), f.info["structure_id"]
    assert not MAGNETIC & set(ELEMENT_FAMILIES)
    with pytest.raises(ValueError, match="magnetic"):
        check_elements(["Cu", "Fe"])
    with pytest.raises(Exception, match="moe_study.periodic.elements"):
        config_from_dict({"moe_study": {"periodic": {"elements": ["Cu", "Ni", "Pt", "O"]}}})


def test_cells_are_small_tagged_and_have_no_collisions(frames):
    sizes = np.array([len(f) for f in frames])
    assert sizes.max() <= SMALL.max_atoms and np.mean(sizes <= 16) > 0.8
    for f in frames:
        assert all(k in f.info for k in INFO_KEYS), f.info
        assert f.info["elements"] == " ".join(sorted(set(f.get_chemical_symbols())))
        assert f.info["structure_id"].startswith(f"periodic_{f.info['family']}_")
        d = neighbor_list("d", f, 2.0)
        assert d.size == 0 or d.min() > 0.6, (f.info["structure_id"], d.min())
    surfaces = [f for f in frames if f.info["family"] == "surface"]
    assert all(tuple(f.pbc) == (True, True, False) for f in surfaces)
    assert all(f.pbc.all() for f in frames if f.info["family"] != "surface")
    assert [f.info["sample_index"] for f in frames] == list(range(len(frames)))


def test_length_scales_come_from_ase_reference_or_covalent_radii():
    assert nearest_neighbour_distance("Pt") == (pytest.approx(3.92 / np.sqrt(2)), "ase_reference")
    assert nearest_neighbour_distance("Ga")[1] == "covalent_radii"  # ASE has no basis for Ga's crystal
    d = nearest_neighbour_distance("Mo")[0]
    for lattice in LATTICES[1:]:  # Pauling's bond-order relation from bcc's 8 neighbours
        cell = element_cell("Mo", lattice)
        expected = d + 0.6 * np.log10(COORDINATION[lattice] / 8)
        assert lattice_distance("Mo", lattice) == pytest.approx(expected)
        assert neighbor_list("d", cell, 1.5 * d).min() == pytest.approx(expected), lattice
    assert lattice_distance("C", "diamond") == pytest.approx(nearest_neighbour_distance("C")[0])
    assert lattice_distance("C", "fcc") > 1.8  # not diamond's 1.55 A bond in a close-packed lattice
    assert all(c.prototype in ("rocksalt", "zincblende", "wurtzite", "cesiumchloride") for c in COMPOUNDS)
    assert not any("O" in c.elements and set(c.elements) & (PLUS_U | MAGNETIC) for c in COMPOUNDS)


def test_the_study_takes_the_periodic_elements_as_species():
    from pipeline.train.moe_study import dataset_species

    cfg = config_from_dict({"moe_study": {"datasets": ["periodic"]}})
    assert dataset_species(cfg, "periodic") == cfg.moe_study.periodic.elements


def test_dry_run_shows_the_periodic_rules(tmp_path):
    def configure(config):
        config["moe_study"].update(enabled=True, datasets=["periodic"], variants=["dense"])
        config["moe_study"]["periodic"]["use_shipped"] = False

    workdir = emt_workdir(tmp_path, configure)
    result = run_snakemake("-n", "--cores", "1", "moe_study", "moe_periodic_ship", "moe_periodic_check", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for rule in ("moe_periodic_sample", "moe_periodic_label", "moe_periodic_dataset", "moe_periodic_ship",
                 "moe_periodic_check_sample", "moe_periodic_check_label", "moe_periodic_check_merge",
                 "moe_periodic_check", "moe_study_train"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule
    assert "moe_emt_label" not in out


def test_the_shipped_set_is_teacher_labelled_sane_and_documented():
    from ase.io import read

    from pipeline.resources import resolve

    cfg = MoEStudyPeriodicConfig()
    path = resolve(cfg.path)
    if not Path(path).exists():
        pytest.skip(f"{cfg.path} not shipped")
    frames = read(path, index=":")
    assert len(frames) >= 1500 and {f.info["family"] for f in frames} == {"bulk", "alloy", "compound", "surface"}
    assert len({s for f in frames for s in f.get_chemical_symbols()}) >= 20
    assert all(f.info["label_level"] == "teacher" and f.info["is_dft"] is False for f in frames)
    energies = np.array([f.get_potential_energy() / len(f) for f in frames])
    forces = np.concatenate([f.get_forces() for f in frames])
    assert np.isfinite(energies).all() and np.isfinite(forces).all()
    assert -15 < energies.min() and energies.max() < 0  # eV/atom: no extrapolated nonsense
    assert np.linalg.norm(forces, axis=1).max() < 50  # eV/A, the ingest stage's bound
    readme = (Path(path).parent / "README.md").read_text()
    assert "not DFT" in readme and "SevenNet-0" in readme and "MIT" in readme


def test_the_routing_pca_groups_the_periodic_set_by_periodic_table_family():
    from pipeline.train.moe_report import GROUPS, element_groups, group_separation

    assert element_groups("periodic") is ELEMENT_FAMILIES and element_groups("emt_alloys") is GROUPS
    species = ["Li", "Na", "Cu", "Ag", "Ti", "V"]
    vectors = np.array([[0, 0], [0, 0.1], [5, 5], [5, 5.1], [10, 0], [10, 0.1]], dtype=float)
    stats = group_separation(species, vectors, element_groups("periodic"))
    assert stats["nn_purity"] == 1.0 and stats["within_between_ratio"] < 0.1


def test_dataset_split_by_group_or_by_structure(tmp_path):
    """``split: group`` keeps every group in one split; ``split: structure`` splits the frames of a group
    independently (fractions of frames per family); every frame records which."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from pipeline.data.periodic_ship import periodic_dataset

    sizes = dict(n_bulk=20, n_alloys=10, n_compounds=120, n_surfaces=10)  # several frames per compound group
    frames = sample_periodic(MoEStudyPeriodicConfig(**sizes))
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
        atoms.info.update(label_level="teacher", is_dft=False)
    write(tmp_path / "labelled.extxyz", frames)
    spans = {}
    for split in ("group", "structure"):
        cfg = MoEStudyPeriodicConfig(**sizes, split=split)
        out = periodic_dataset(cfg, tmp_path / "labelled.extxyz", tmp_path / f"{split}.extxyz")
        assert {f.info["split_unit"] for f in out} == {split}
        groups = {}
        for atoms in out:
            groups.setdefault(atoms.info["group"], set()).add(atoms.info["split"])
        spans[split] = max(len(s) for s in groups.values())
        if split == "structure":
            compounds = [f for f in out if f.info["family"] == "compound"]
            assert sum(f.info["split"] == "test" for f in compounds) == round(0.2 * len(compounds))
    assert spans["group"] == 1 and spans["structure"] > 1
