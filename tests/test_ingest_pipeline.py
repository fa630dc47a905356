"""The ingest stage end to end: ingest + outputs round trip, mixed formats, the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pandas as pd
import pytest
from dft_texts import espresso_text, gpaw_classic_text, outcar_text, vasprun_text
from ingest_structures import co_gas, emt_label, family_frames, pt_bulk

from pipeline.cli import main
from pipeline.data import FAMILIES, SPLITS
from pipeline.data.ingest import ingest, write_ingest_outputs

REPO = Path(__file__).resolve().parents[1]


def _outputs(root: Path) -> dict[str, Path]:
    return {
        "dataset": root / "data" / "dataset.extxyz",
        "manifest": root / "data" / "manifest.json",
        "rejected": root / "data" / "rejected.csv",
        "stats_csv": root / "tables" / "dataset_stats.csv",
        "stats_md": root / "tables" / "dataset_stats.md",
    }


def test_ingest_and_outputs_round_trip(tmp_path, dataset_dir, cfg):
    result = ingest(cfg, paths=[dataset_dir])
    out = _outputs(tmp_path / "results")
    write_ingest_outputs(result, **out)

    back = ase.io.read(out["dataset"], ":")
    assert len(back) == len(result.frames) == len(family_frames())
    for mine, read in zip(result.frames, back):
        assert read.get_potential_energy() == pytest.approx(mine.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(read.get_forces(), mine.get_forces(), atol=1e-7)
        if "stress" in mine.calc.results:
            np.testing.assert_allclose(read.get_stress(), mine.get_stress(), atol=1e-8)
        assert read.arrays["region"].tolist() == mine.arrays["region"].tolist()
        assert read.arrays["environment"].tolist() == mine.arrays["environment"].tolist()
        for key in ("split", "family", "group", "source_file", "source_index", "energy_kind", "is_dft"):
            assert read.info[key] == mine.info[key], key
    assert {a.info["family"] for a in back} == set(FAMILIES) - {"close_contact"}  # none in these frames
    assert all(a.info["family_source"] == "geometry" for a in back)  # the fixture sets no family

    manifest = json.loads(out["manifest"].read_text())
    assert manifest["frames"] == {"read": 26, "accepted": 26, "rejected": 0}
    assert sum(manifest["splits"][s]["frames"] for s in SPLITS) == 26
    assert manifest["families"] == {"bulk": 8, "clean_slab": 6, "gas": 6, "slab_co": 6}
    assert manifest["species"] == ["C", "O", "Pt"]
    assert manifest["energy_kind"] == {"free_energy": 26}
    assert "free energy" in manifest["conventions"]["energy"].lower()
    assert "xx yy zz yz xz xy" in manifest["conventions"]["stress"]
    assert manifest["config"]["ingest"]["min_distance_a"] == cfg.ingest.min_distance_a
    for entry in manifest["inputs"]:
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    assert sum(e["frames"] for e in manifest["inputs"]) == 26
    assert manifest["regions"]["all"]["complex_atoms"] + manifest["regions"]["all"]["bulk_atoms"] == sum(
        len(a) for a in back)
    for group, entry in manifest["groups"].items():
        assert {a.info["split"] for a in back if a.info["group"] == group} == {entry["split"]}

    stats = pd.read_csv(out["stats_csv"])
    total = stats[(stats.family == "all") & (stats.split == "all")].iloc[0]
    assert total.frames == 26 and total.groups == 14  # 13 groups; one gas group spans two 0.1 A bond windows
    assert total.atoms == total.bulk_atoms + total.complex_atoms == sum(len(a) for a in back)
    gas = stats[(stats.family == "gas") & (stats.split == "all")].iloc[0]
    assert gas.bulk_atoms == 0 and gas.complex_atoms == 12
    bulk = stats[(stats.family == "bulk") & (stats.split == "all")].iloc[0]
    assert bulk.complex_atoms == 0
    assert "| family" in out["stats_md"].read_text()
    rejected = pd.read_csv(out["rejected"])
    assert rejected.columns.tolist() == ["source_file", "source_index", "reason", "detail"] and rejected.empty
    assert not list((tmp_path / "results").rglob(".*.tmp"))  # atomic writes leave no temporary file


def test_every_format_in_one_run(tmp_path, cfg):
    relax = [emt_label(pt_bulk(3.92, rattle_seed=k)) for k in range(3)]
    gas = [emt_label(co_gas(1.10 + 0.02 * k)) for k in range(2)]
    (tmp_path / "vasp").mkdir()
    (tmp_path / "vasp" / "OUTCAR").write_text(outcar_text(relax))
    (tmp_path / "vasp" / "vasprun.xml").write_text(vasprun_text(relax[:2]))
    (tmp_path / "qe.pwo").write_text(espresso_text(relax))
    (tmp_path / "gpaw_co.txt").write_text(gpaw_classic_text(gas))
    ase.io.write(tmp_path / "slabs.extxyz", family_frames()[8:20], format="extxyz")
    with ase.db.connect(tmp_path / "bulk.db") as con:
        for k in range(2):
            con.write(emt_label(pt_bulk(3.95, rattle_seed=50 + k)), group="db-bulk")

    result = ingest(cfg, paths=[tmp_path])

    formats = {e["path"].split("/")[-1]: e["format"] for e in result.manifest["inputs"]}
    assert formats == {"bulk.db": "db", "gpaw_co.txt": "gpaw-out", "qe.pwo": "espresso-out",
                       "slabs.extxyz": "extxyz", "OUTCAR": "vasp-out", "vasprun.xml": "vasp-xml"}
    assert result.manifest["frames"]["accepted"] == 2 + 2 + 3 + 12 + 3 + 2
    codes = {a.info["source_format"]: a.info.get("dft_code") for a in result.frames}
    assert codes["vasp-out"] == "vasp" and codes["espresso-out"] == "espresso" and codes["gpaw-out"] == "gpaw"
    # frames of one file without a group stay together
    outcar_splits = {a.info["split"] for a in result.frames if a.info["source_format"] == "vasp-out"}
    assert len(outcar_splits) == 1


def _cli_args(tmp_path: Path, inputs: list[str], config: dict) -> list[str]:
    out = _outputs(tmp_path / "results")
    return ["ingest", "--config-json", json.dumps(config), "--inputs", *inputs,
            *[x for key, path in out.items() for x in (f"--{key.replace('_', '-')}", str(path))]]


def test_cli_subprocess(tmp_path, dataset_dir):
    args = _cli_args(tmp_path, [str(dataset_dir / "*.extxyz")], {"seed": 5})
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = _outputs(tmp_path / "results")
    assert all(path.exists() for path in out.values())
    assert len(ase.io.read(out["dataset"], ":")) == 26
    assert json.loads(out["manifest"].read_text())["config"]["seed"] == 5


def test_cli_in_process_is_deterministic_and_fails_on_bad_data(tmp_path, dataset_dir, capsys):
    assert main(_cli_args(tmp_path / "a", [str(dataset_dir)], {"seed": 2})) == 0
    assert main(_cli_args(tmp_path / "b", [str(dataset_dir)], {"seed": 2})) == 0
    a = (tmp_path / "a" / "results" / "data" / "dataset.extxyz").read_text()
    b = (tmp_path / "b" / "results" / "data" / "dataset.extxyz").read_text()
    assert a == b

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "OUTCAR").write_text(" vasp.6.4.2\n")  # header only: cannot be parsed
    capsys.readouterr()
    assert main(_cli_args(tmp_path / "c", [str(bad)], {})) == 1  # one line naming the file, no traceback
    err = capsys.readouterr().err
    assert "DFTReadError" in err and "OUTCAR" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "results" / "data" / "dataset.extxyz").exists()
