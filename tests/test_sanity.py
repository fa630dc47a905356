"""Sanity table of a labelled set (EMT labels here, so every row must say NOT DFT)."""

from __future__ import annotations

import pandas as pd
import pytest
from ase.io import write

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.data.labelling import label_structures
from pipeline.data.sampling import sample_structures

RAW = {
    "sample": {
        "bulk": {"strain_n": 0, "rattle_n": 0, "thermal_n_frames": 0},
        "clean_slab": {"rattle_n_2x2": 0, "thermal_frames_per_temperature": 0},
        "slab_co": {"perturbed_per_site_2x2": 0, "half_ml_n_2x2": 0},
        "gas": {"n_bond_lengths": 12},
    },
    "label": {"calculator": "emt", "n_chunks": 1},
}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sanity")
    cfg = config_from_dict(RAW)
    res = label_structures(sample_structures(cfg), cfg, cache_dir=tmp / "c", log_dir=tmp / "l", progress=False)
    write(tmp / "labelled.extxyz", res.frames)
    pd.DataFrame(columns=["structure_id"]).to_csv(tmp / "failures.csv", index=False)
    return tmp


def test_sanity_table_and_readme(labelled):
    d = labelled
    args = ["dft-sanity", "--labelled", str(d / "labelled.extxyz"), "--failures", str(d / "failures.csv"),
            "--csv", str(d / "s.csv"), "--md", str(d / "s.md"), "--readme", str(d / "README.md"),
            "--command", "snakemake --cores 2 results/label/labelled.extxyz"]
    assert main(args) == 0
    table = pd.read_csv(d / "s.csv")
    assert (table["labels"] == "NOT DFT (emt)").all()
    row = table.set_index("quantity")
    # EMT's fcc Pt: a0 3.92 A, B0 ~ 277 GPa (measured), far from the WIEN2k PBE reference
    assert float(row.loc["bulk Pt a0 (from V0)", "value"]) == pytest.approx(3.92, abs=0.01)
    assert float(row.loc["bulk Pt B0 (Birch-Murnaghan)", "value"]) == pytest.approx(277, abs=15)
    assert float(row.loc["bulk Pt V0 (Birch-Murnaghan)", "reference"]) == pytest.approx(15.642)
    ads = table[table["quantity"].str.startswith("E_ads")]
    assert len(ads) == 6 and ads["value"].lt(0).all()
    assert set(ads["site_or_cell"]) >= {"top, 2x2 (0.25 ML)", "fcc, 2x2 (0.25 ML)", "top, 3x3 (0.111 ML)"}
    readme = (d / "README.md").read_text()
    assert "snakemake --cores 2 results/label/labelled.extxyz" in readme
    assert "| gas" in readme and "Total CPU time" in readme and "NOT DFT" in readme
    assert "NOT DFT" in (d / "s.md").read_text()


def test_ship_copies_the_set_and_writes_readme(labelled, tmp_path):
    dest = tmp_path / "resources" / "dft"
    assert main(["ship-dft", "--labelled", str(labelled / "labelled.extxyz"),
                 "--failures", str(labelled / "failures.csv"), "--dest", str(dest)]) == 0
    assert (dest / "pt_co_gpaw.extxyz").read_bytes() == (labelled / "labelled.extxyz").read_bytes()
    assert not (dest / "failures.csv").exists()  # no failures, no file
    readme = (dest / "README.md").read_text()
    assert "`pt_co_gpaw.extxyz`" in readme and "ship-dft" in readme
    assert (dest / "sanity.csv").exists() and (dest / "sanity.md").exists()
