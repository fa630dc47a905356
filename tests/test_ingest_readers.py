"""Reading DFT outputs of every supported format into canonical frames."""

from __future__ import annotations

import importlib.util

import ase.db
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from dft_texts import (
    espresso_text,
    gpaw_classic_text,
    gpaw_tabular_text,
    outcar_text,
    vasprun_text,
)
from ingest_structures import ENTROPY_EV, co_gas, emt_label, pt_bulk, pt_slab

from pipeline.data import DFTReadError, find_dft_files, read_dft
from pipeline.data.readers import detect_format


def _results(atoms):
    return atoms.calc.results


def test_extxyz_keeps_frames_metadata_and_uses_the_free_energy(tmp_path):
    frames = [emt_label(pt_slab(co=True, rattle_seed=k)) for k in range(3)]
    for k, atoms in enumerate(frames):
        atoms.info.update(family="slab_co", structure_id=f"s{k}", dft_xc="PBE", dft_kpts=np.array([4, 4, 1]),
                          dft_h_a=0.18, config_type="relax", nested={"not": "kept"})
    path = tmp_path / "traj.extxyz"
    ase.io.write(path, frames, format="extxyz")

    got = read_dft(path)

    assert [a.info["source_index"] for a in got] == [0, 1, 2]
    assert {a.info["source_file"] for a in got} == {str(path)}
    for ref, atoms in zip(frames, got):
        assert atoms.get_potential_energy() == pytest.approx(_results(ref)["free_energy"])
        assert atoms.info["energy_kind"] == "free_energy"
        assert atoms.info["dft_energy_zero_width_ev"] == pytest.approx(_results(ref)["energy"])
        # extxyz writes 8 decimals
        np.testing.assert_allclose(atoms.get_forces(), _results(ref)["forces"], atol=1e-7)
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-7)
        assert atoms.info["family"] == "slab_co" and atoms.info["dft_xc"] == "PBE"
        assert atoms.info["dft_kpts"].tolist() == [4, 4, 1]
        assert atoms.info["source_format"] == "extxyz"
        assert atoms.info["is_dft"] == "unknown"  # nothing in the file says how it was labelled
        assert "nested" not in atoms.info


def test_extxyz_without_free_energy_uses_energy(tmp_path):
    atoms = pt_bulk()
    atoms.calc = EMT()
    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    ase.io.write(tmp_path / "a.xyz", atoms, format="extxyz")
    (frame,) = read_dft(tmp_path / "a.xyz")
    assert frame.info["energy_kind"] == "energy"
    assert frame.get_potential_energy() == pytest.approx(atoms.calc.results["energy"])


def test_ase_database_rows_keep_key_value_pairs(tmp_path):
    path = tmp_path / "structures.db"
    with ase.db.connect(path) as con:
        for k in range(2):
            atoms = pt_bulk(rattle_seed=k)
            atoms.calc = EMT()
            atoms.get_forces()
            con.write(atoms, family="bulk", group="eos", structure_id=f"b{k}")
    got = read_dft(path)
    assert [a.info["source_index"] for a in got] == [0, 1]
    assert [a.info["db_id"] for a in got] == [1, 2]
    assert got[1].info["structure_id"] == "b1" and got[0].info["group"] == "eos"
    assert got[0].info["label_calculator"] == "emt" and got[0].info["is_dft"] is False
    assert got[0].get_forces().shape == (4, 3)
    assert got[0].get_stress().shape == (6,)


needs_gpaw = pytest.mark.skipif(importlib.util.find_spec("gpaw") is None,
                                reason="tabular GPAW logs are read with GPAW's log parser (the dft extra)")
BULK = [emt_label(pt_bulk(3.92, rattle_seed=k)) for k in range(3)]  # a relaxation: one cell
GAS = [emt_label(co_gas(1.10 + 0.02 * k)) for k in range(2)]


@pytest.mark.parametrize(
    "name, writer, frames, fmt, code, first_index, has_zero_width",
    [
        ("OUTCAR", outcar_text, BULK, "vasp-out", "vasp", 0, True),
        ("vasprun.xml", vasprun_text, BULK, "vasp-xml", "vasp", 0, True),
        ("relax.pwo", espresso_text, BULK, "espresso-out", "espresso", 0, False),
        ("scf.out", espresso_text, BULK, "espresso-out", "espresso", 0, False),
        ("gpaw_classic.txt", gpaw_classic_text, GAS, "gpaw-out", "gpaw", 0, True),
        pytest.param("gpaw.txt", gpaw_tabular_text, BULK, "gpaw-out", "gpaw", 1, True, marks=needs_gpaw),
        pytest.param("gpaw.out", gpaw_tabular_text, GAS, "gpaw-out", "gpaw", 1, True, marks=needs_gpaw),
    ],
)
def test_dft_code_outputs_parse_with_energies_forces_and_stress(
    tmp_path, name, writer, frames, fmt, code, first_index, has_zero_width
):
    path = tmp_path / name
    path.write_text(writer(frames))
    assert detect_format(path) == fmt

    got = read_dft(path)

    assert len(got) == len(frames)
    assert [a.info["source_index"] for a in got] == list(range(first_index, first_index + len(frames)))
    for ref, atoms in zip(frames, got):
        ref_results = ref.calc.results
        assert atoms.info["source_format"] == fmt
        assert atoms.info["dft_code"] == code and atoms.info["is_dft"] is True
        assert atoms.info["energy_kind"] == "free_energy"
        assert atoms.get_chemical_symbols() == ref.get_chemical_symbols()
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-5)
        np.testing.assert_allclose(atoms.cell.array, ref.cell.array, atol=1e-6)
        assert atoms.get_potential_energy() == pytest.approx(ref_results["free_energy"], abs=2e-6)
        np.testing.assert_allclose(atoms.get_forces(), ref_results["forces"], atol=2e-5)
        if has_zero_width:
            assert atoms.info["dft_energy_zero_width_ev"] == pytest.approx(ref_results["energy"], abs=2e-6)
            assert atoms.info["dft_energy_zero_width_ev"] - atoms.get_potential_energy() == pytest.approx(
                -ENTROPY_EV, abs=4e-6)
        if "stress" in ref_results and writer is not gpaw_classic_text:
            np.testing.assert_allclose(atoms.get_stress(), ref_results["stress"], atol=1e-6)


@pytest.mark.gpaw
@needs_gpaw
def test_a_real_gpaw_log_reads_free_energy_forces_and_skips_the_geometry_echo(tmp_path):
    from gpaw import GPAW

    atoms = co_gas(1.15)
    log_file = tmp_path / "co_gpaw.txt"
    atoms.calc = GPAW(mode="lcao", basis="sz(dzp)", h=0.3, xc="PBE", txt=str(log_file), symmetry="off",
                      occupations={"name": "fermi-dirac", "width": 0.1})
    free = atoms.get_potential_energy(force_consistent=True)
    forces = atoms.get_forces()

    (frame,) = read_dft(log_file)

    assert frame.info["source_reader"] == "gpaw-log" and frame.info["dft_code"] == "gpaw"
    assert frame.info["source_index"] == 1  # block 0 is GPAW's geometry echo at initialisation
    assert frame.get_potential_energy() == pytest.approx(free, abs=1e-5)
    np.testing.assert_allclose(frame.get_forces(), forces, atol=1e-4)
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-6)


def test_directories_are_searched_recursively_and_globs_expanded(tmp_path):
    (tmp_path / "vasp" / "run1").mkdir(parents=True)
    (tmp_path / "vasp" / "run1" / "OUTCAR").write_text(outcar_text(BULK[:2]))
    (tmp_path / "vasp" / "vasprun.xml").write_text(vasprun_text(BULK[:1]))
    (tmp_path / "qe.out").write_text(espresso_text(BULK[:1]))
    ase.io.write(tmp_path / "set.extxyz", GAS, format="extxyz")
    (tmp_path / "notes.txt").write_text("not a DFT output\n")
    (tmp_path / "job.out").write_text("slurm job finished\n")
    (tmp_path / ".hidden.extxyz").write_text("garbage")

    pairs = find_dft_files([tmp_path])
    assert [(p.relative_to(tmp_path).as_posix(), f) for p, f in pairs] == [
        ("qe.out", "espresso-out"),
        ("set.extxyz", "extxyz"),
        ("vasp/run1/OUTCAR", "vasp-out"),
        ("vasp/vasprun.xml", "vasp-xml"),
    ]
    assert len(read_dft(tmp_path)) == 1 + 2 + 2 + 1
    assert len(read_dft(str(tmp_path / "**" / "OUTCAR*"))) == 2
    # the same file named twice is read once
    assert len(read_dft([tmp_path / "set.extxyz", str(tmp_path / "*.extxyz")])) == 2


def test_explicit_unrecognised_file_is_an_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(DFTReadError, match="notes.txt: cannot tell which DFT output"):
        read_dft(path)


def test_forced_format_reads_named_files_and_glob_matches_whatever_their_name(tmp_path):
    ase.io.write(tmp_path / "frames.dat", GAS, format="extxyz")
    ase.io.write(tmp_path / "more.dat", GAS[:1], format="extxyz")
    assert len(read_dft(tmp_path / "frames.dat", format="extxyz")) == 2
    assert len(read_dft(str(tmp_path / "*.dat"), format="extxyz")) == 3
    with pytest.raises(DFTReadError, match="no DFT output found"):  # directories: recognised names only
        read_dft(tmp_path, format="extxyz")


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("OUTCAR", " vasp.6.4.2\n POTCAR:    PAW_PBE Pt 06Sep2000\n", "as vasp-out"),
        ("broken.extxyz", "2\nLattice=\"oops\n Pt 0 0\n", "as extxyz"),
        ("vasprun.xml", "<modeling><atominfo>", "as vasp-xml"),
        ("empty.db", "this is not an sqlite file", "as db"),
    ],
)
def test_unparsable_file_raises_naming_it(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DFTReadError) as err:
        read_dft(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_entry_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(DFTReadError, match="no DFT output found"):
        read_dft(str(tmp_path / "missing" / "*.extxyz"))
