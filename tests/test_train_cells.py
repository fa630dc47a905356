"""Mixture cells and the mixture agreement term: geometry of the cells, the physics of the term (it is the
mixture's force minus the HF force), its gradient (finite differences), the cached anchor, and the
held-out EOS frames never reaching a training batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk

from pipeline.config import MDPartitionConfig, RegionConfig
from pipeline.data import keys as K
from pipeline.data.partition import HF, LF
from pipeline.md.potential import MixturePotential
from pipeline.models import build_model
from pipeline.train import run_training
from pipeline.train.anchor import attach_anchor
from pipeline.train.cells import bulk_cells, interface_atoms, slab_cells
from pipeline.train.data import make_batch, prepare_samples, read_splits
from pipeline.train.losses import mixture_terms
from pipeline.train.pair import cell_outputs, cell_terms
from train_support import TINY_EXPERT, tiny_config, tiny_frames, write_tiny_dataset

SPECIES = ("Pt", "C", "O")
CELL_ARGS = dict(lattice_a=3.95, repeat=(1, 1, 4), volume_range=0.08, uniaxial_max=0.03, shear_max=0.03,
                 rattle_max_a=0.05, cutoff=4.0)


def _expert(seed: int, **overrides):
    model = build_model({**TINY_EXPERT, **overrides}, SPECIES, dtype=torch.float64, seed=seed)
    model.set_scale_shift(scales=[0.5, 0.4, 0.3], shifts=[-5.0, -7.0, -6.0])
    return model


def test_bulk_cells_span_the_mechanical_range_and_are_deterministic():
    cells = bulk_cells(9, seed=4, **CELL_ARGS)
    again = bulk_cells(9, seed=4, **CELL_ARGS)
    other = bulk_cells(9, seed=4, stream=1, **CELL_ARGS)
    assert all(np.array_equal(a.positions, b.positions) and np.array_equal(a.cell, b.cell) for a, b in zip(cells, again))
    assert not np.array_equal(cells[0].positions, other[0].positions)  # validation stream differs
    ideal = bulk("Pt", "fcc", a=3.95, cubic=True).repeat((1, 1, 4))
    kinds = set()
    for k, atoms in enumerate(cells):
        grad = np.linalg.solve(ideal.cell.array, atoms.cell.array).T  # volume^(1/3) (1 + strain)
        scale = float(np.median(np.diag(grad)))  # at most one diagonal strain component
        assert 0.92 - 1e-9 <= scale**3 <= 1.08 + 1e-9
        strain = grad / scale - np.eye(3)
        assert np.allclose(strain, strain.T) and np.abs(strain).max() <= 0.03 + 1e-9
        off = np.abs(strain - np.diag(np.diag(strain))).max()
        kinds.add("shear" if off > 1e-9 else "uniaxial" if np.abs(strain).max() > 1e-9 else "volume")
        expert = atoms.arrays["expert"]
        frac = ideal.get_scaled_positions()[:, 2]  # assignment by index: the halves of the ideal cell
        assert np.array_equal(expert, np.where(frac < 0.5 - 1e-6, HF, LF))
    assert kinds == {"volume", "uniaxial", "shear"}


def test_interface_atoms_are_the_lf_atoms_and_hf_atoms_within_the_cutoff():
    atoms = bulk("Pt", "fcc", a=3.95, cubic=True).repeat((1, 1, 6))
    expert = np.where(atoms.positions[:, 2] < 0.5 * atoms.cell[2, 2] - 1e-6, HF, LF)
    mask = interface_atoms(atoms, expert, 4.0)
    z = atoms.positions[:, 2]
    lz = atoms.cell[2, 2]
    planes = np.array([0.0, 0.5 * lz, lz]) - 0.25 * 3.95 / 2  # between the outermost layers of the halves
    distance = np.abs(z[:, None] - planes[None, :]).min(axis=1)
    assert mask[expert == LF].all()
    hf_near = (expert == HF) & (distance < 4.0 - 0.99)  # HF layers with an LF atom within 4 A
    assert mask[hf_near].all() and not mask[(expert == HF) & (distance > 4.0 + 1.0)].any()


def test_slab_cells_are_repeated_in_plane_and_partitioned_by_the_md_rule():
    frames = tiny_frames()
    partition, regions = MDPartitionConfig(radius_a=3.0), RegionConfig()
    cells = slab_cells(frames, 4, min_lateral_a=8.0, rattle_a=0.02, partition=partition, regions=regions,
                       cutoff=4.0, seed=0)
    assert len(cells) == 4
    for atoms in cells:
        assert np.linalg.norm(atoms.cell[0]) >= 8.0 and np.linalg.norm(atoms.cell[1]) >= 8.0
        expert = atoms.arrays["expert"]
        assert (expert == HF).any() and (expert == LF).any()
        assert atoms.info["source_family"] in ("clean_slab", "slab_co")
    with pytest.raises(ValueError, match="set train.cells.slab to 0"):
        slab_cells([a for a in frames if a.info["family"] == "bulk"], 2, min_lateral_a=8.0, rattle_a=0.0,
                   partition=partition, regions=regions, cutoff=4.0, seed=0)


def _cell_batch(n: int = 2, dtype=torch.float64, repeat=(1, 1, 4)):
    cells = bulk_cells(n, seed=1, **{**CELL_ARGS, "repeat": repeat})
    return make_batch(prepare_samples(cells, species=SPECIES, r_maxes=[4.0], dtype=dtype, labelled=False))


def test_mixture_term_is_the_mixture_force_minus_the_hf_force():
    hf, lf = _expert(1), _expert(2, num_scalar_features=4)
    batch = _cell_batch(repeat=(1, 1, 8))
    graph = batch.graph(4.0)
    mixture = MixturePotential([hf, lf], names=("hf", "lf"))
    f_mix = mixture(graph, expert=batch.expert, compute_forces=True)["forces"]
    f_hf = hf(graph, create_graph=False)[K.FORCES]
    diff = cell_outputs(lf, batch, create_graph=False)[K.FORCES] - cell_outputs(hf, batch, create_graph=False)[K.FORCES]
    torch.testing.assert_close(diff, f_mix - f_hf, rtol=1e-9, atol=1e-10)
    assert float(diff[~batch.interface].abs().max()) < 1e-12  # zero where the cutoff cannot reach an LF atom
    assert float(diff[batch.interface].abs().max()) > 1e-4
    s, c = mixture_terms(cell_outputs(hf, batch, create_graph=False), cell_outputs(lf, batch, create_graph=False),
                         batch.interface)["mixture_forces"]
    assert float(s / c) == pytest.approx(float(((f_mix - f_hf)[batch.interface] ** 2).sum(1).mean()), rel=1e-10)


def test_mixture_term_gradient_matches_finite_differences():
    hf, lf = _expert(1), _expert(2, num_scalar_features=4)
    batch = _cell_batch()
    anchored = dataclasses.replace(batch, anchor=None)

    def loss_value():
        outputs = {"hf_cells": cell_outputs(hf, anchored, create_graph=True),
                   "lf_cells": cell_outputs(lf, anchored, create_graph=True)}
        outputs["hf_cells"] = {k: v.detach() for k, v in outputs["hf_cells"].items()}  # anchored: HF constant
        terms = cell_terms(outputs, anchored)
        return sum(w * s / c for w, (s, c) in zip((0.7, 1.3), (terms["agree_energy"], terms["mixture_forces"])))

    loss_value().backward()
    assert all(p.grad is None for p in hf.parameters())
    for param in [p for p in lf.parameters() if p.numel() > 4][:3]:
        flat = param.data.view(-1)
        for index in (0, flat.numel() // 2, flat.numel() - 1):
            h, old = 1e-6, float(flat[index])
            flat[index] = old + h
            plus = float(loss_value().detach())
            flat[index] = old - h
            minus = float(loss_value().detach())
            flat[index] = old
            assert float(param.grad.view(-1)[index]) == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-9)
        assert float(param.grad.abs().max()) > 0


def test_cached_anchor_equals_the_live_expert():
    hf = _expert(1)
    cells = prepare_samples(bulk_cells(2, seed=1, **CELL_ARGS), species=SPECIES, r_maxes=[4.0],
                            dtype=torch.float64, labelled=False)
    frames = prepare_samples(tiny_frames()[:5], species=SPECIES, r_maxes=[4.0], dtype=torch.float64)
    for samples in (cells, frames):
        cached = make_batch(attach_anchor(samples, hf, batch_size=2))
        live = hf(cached.graph(4.0), centers=None if cached.expert is None else cached.expert == LF, create_graph=False)
        for key in (K.ENERGY, K.PER_ATOM_ENERGY, K.FORCES):
            torch.testing.assert_close(cached.anchor[key], live[key].detach())
    with pytest.raises(ValueError, match="separate calls"):
        attach_anchor(cells + frames, hf)


def test_held_out_eos_frames_never_reach_a_training_batch(tmp_path, monkeypatch):
    frames = tiny_frames()
    for k, a in enumerate((3.84, 3.88, 3.92, 3.96, 4.00)):
        atoms = bulk("Pt", "fcc", a=a)
        from ase.calculators.emt import EMT
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        atoms.info.update(group="bulk-eos", family="bulk", config_type="eos", structure_id=f"bulk-eos-{k}")
        frames.append(atoms)
    cfg = tiny_config(max_epochs=1)
    dataset = write_tiny_dataset(tmp_path, cfg, frames)
    splits = read_splits(str(dataset), splits=("train", "validation", "test", "eos"))
    assert [a.info["structure_id"] for a in splits["eos"]] == [f"bulk-eos-{k}" for k in range(5)]
    seen = []
    import pipeline.train.run as run_module

    real = run_module.prepare_samples

    def spy(frames, **kwargs):
        seen.extend(str(a.info.get("structure_id", "")) for a in frames)
        return real(frames, **kwargs)

    monkeypatch.setattr(run_module, "prepare_samples", spy)
    run_training(cfg, stage="hf", dataset=dataset, hf_path=tmp_path / "hf.pt", metrics_path=tmp_path / "hf.csv",
                 state_dir=tmp_path / "state", progress=False)
    run_training(cfg, stage="lf", pair="cotrained", dataset=dataset, anchor_path=tmp_path / "hf.pt",
                 lf_path=tmp_path / "lf.pt", metrics_path=tmp_path / "lf.csv", state_dir=tmp_path / "state_lf",
                 progress=False)
    assert seen and not any(sid.startswith("bulk-eos") for sid in seen)
