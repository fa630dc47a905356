"""Checkpoints written before the library refactor (issue 17, commit 40cb42e) load and give the same
energies, per-atom energies and forces (tests/data/checkpoint_v0_*: a dense and an MoE expert with
non-trivial scales and shifts, and their outputs on a rattled Pt(111)+CO slab, written by that code)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

from pipeline.data.neighbors import collate
from pipeline.models import load_checkpoint

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_a_checkpoint_of_the_old_code_gives_its_outputs(name):
    want = json.loads((DATA / "checkpoint_v0_outputs.json").read_text())[name]
    model = load_checkpoint(DATA / f"checkpoint_v0_{name}.pt", dtype=torch.float64)
    atoms = read(DATA / "checkpoint_v0_slab.extxyz")
    out = model(collate([atoms], species=model.species, r_max=model.r_max))
    assert float(out["energy"][0]) == pytest.approx(want["energy"], rel=1e-12)
    np.testing.assert_allclose(out["per_atom_energy"].detach().numpy(), want["per_atom_energy"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["forces"].detach().numpy(), want["forces"], rtol=1e-10, atol=1e-12)
